"""Writes statemachine/imaging.asl.json (``make asl``): the state machine, built from Python.

This is where a step is added. The helpers below write the repetitive parts the same way every
time: a Lambda task's Retry comes from the code's own retryable errors (``RETRYABLE_ERRORS``), its
ResultSelector from the step's output model, its Catch from where a failure goes; a wait is a
bounded loop (Wait, check, Choice). JSONPath throughout: moto's interpreter does not run JSONata.

A test fails when the checked-in file differs from what this writes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from ami_factory.contracts import (
    AccountCopyRef,
    CommandRef,
    GeneralizeRef,
    ImageRef,
    InstanceRef,
    KeptDelivered,
    LaunchedInstance,
    ProtectImageOutput,
    PublishParameterOutput,
    ShareImageOutput,
)
from ami_factory.copy_slots import COPY_SLOT_MAX_WAIT_SECONDS
from ami_factory.errors import RETRYABLE_ERRORS, CopySlotBusyError, InstanceStateConflictError, WaitTimeoutError

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "statemachine" / "imaging.asl.json"

State = dict[str, Any]
States = dict[str, State]

TASK_TIMEOUT_SECONDS = 120
LAMBDA_SERVICE_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
# Transient errors of our own (throttling, eventual consistency, an instance mid-transition): retried
# with backoff and full jitter. Never States.ALL.
TRANSIENT_RETRY: State = {
    "ErrorEquals": [error.__name__ for error in RETRYABLE_ERRORS],
    "IntervalSeconds": 2,
    "BackoffRate": 2.0,
    "MaxAttempts": 6,
    "MaxDelaySeconds": 60,
    "JitterStrategy": "FULL",
}
LAMBDA_RETRY: State = {
    "ErrorEquals": LAMBDA_SERVICE_ERRORS,
    "IntervalSeconds": 2,
    "BackoffRate": 2.0,
    "MaxAttempts": 6,
    "JitterStrategy": "FULL",
}
# Steps that restore the instance outlast a slow stop: a stopping instance cannot be started yet.
PATIENT_RETRY: State = {
    "ErrorEquals": [InstanceStateConflictError.__name__],
    "IntervalSeconds": 15,
    "BackoffRate": 1.5,
    "MaxAttempts": 10,
    "MaxDelaySeconds": 120,
}


# A copy waits for its slot in the step before CopyImage (a hand-off, see ami_factory.copy_slots). This
# retry is for EC2's own copy quota into the Region, full of copies other tools started
# (ResourceLimitExceeded): every 6 minutes, for up to 4 hours. Each attempt writes 3 history events:
# the history budget (tests/workflow/test_history_budget.py) counts them.
COPY_SLOT_RETRY: State = {
    "ErrorEquals": [CopySlotBusyError.__name__],
    "IntervalSeconds": 360,
    "BackoffRate": 1.0,
    "MaxAttempts": 40,
}


def function_arn(function: str) -> str:
    """The DefinitionSubstitutions placeholder of ``<function>Function`` in template.yaml."""
    return f"${{{function}FunctionArn}}"


def paths(fields: Mapping[str, str]) -> dict[str, str]:
    """``{"image": "$.seed"}`` -> ``{"image.$": "$.seed"}``: every value is a JSONPath."""
    return {f"{name}.$": path for name, path in fields.items()}


def selector(model: type[BaseModel]) -> dict[str, str]:
    """Unwrap a Lambda result field by field, exactly the fields of the step's output model."""
    return paths({name: f"$.Payload.{name}" for name in model.model_fields})


# Errors whose Cause is plain text (Lambda's service errors, Step Functions' own); any other error a
# function raises carries its JSON error body (type, message, stack trace) as the Cause.
PLAIN_CAUSE_ERRORS = [
    *LAMBDA_SERVICE_ERRORS,
    "States.Timeout",
    "States.Permissions",
]  # not States.TaskFailed: it matches all


def catch(next_state: str, result_path: str = "$.error", explained: bool = False) -> list[State]:
    """Where any failure goes. ``explained``: through the Pass states ``fail_explained`` writes, so the
    execution's cause is the one-line message, not a stack trace."""
    if explained:
        return [
            {"ErrorEquals": PLAIN_CAUSE_ERRORS, "ResultPath": result_path, "Next": f"Quote{next_state}"},
            {"ErrorEquals": ["States.ALL"], "ResultPath": result_path, "Next": f"Explain{next_state}"},
        ]
    return [{"ErrorEquals": ["States.ALL"], "ResultPath": result_path, "Next": next_state}]


def fail_explained(name: str, error_path: str, cause_path: str, comment: str) -> States:
    """A Fail state whose cause is the error's one-line message (a function's ``errorMessage``; a plain
    cause as it is): describe-execution tells people what to fix, the logs keep the details."""
    return {
        f"Explain{name}": {
            "Type": "Pass",
            "Parameters": {"Error.$": error_path, "Cause.$": f"States.StringToJson({cause_path})"},
            "Next": name,
        },
        f"Quote{name}": {
            "Type": "Pass",
            "Parameters": {"Error.$": error_path, "Cause": {"errorMessage.$": cause_path}},
            "Next": name,
        },
        name: fail("$.Error", "$.Cause.errorMessage", comment=comment),
    }


def task(
    function: str,
    *,
    comment: str | None = None,
    payload: Mapping[str, str] | None = None,
    result: type[BaseModel] | None = None,
    result_path: str | None = None,
    output_path: str | None = None,
    on_error: str,
    error_path: str = "$.error",
    explained: bool = False,
    patient: bool = False,
    waits_for: State | None = None,
    next_state: str,
) -> State:
    """A Lambda step. ``payload``: field -> JSONPath (default: the whole state); ``result`` with
    ``result_path``: where the step's output model goes; ``output_path``: the output replaces the
    state; ``on_error``: where any failure goes, with the error at ``error_path``."""
    state: State = {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke"}
    if comment:
        state["Comment"] = comment
    state["Parameters"] = {"FunctionName": function_arn(function)}
    if payload is None:
        state["Parameters"]["Payload.$"] = "$"
    else:
        state["Parameters"]["Payload"] = paths(payload)
    state["TimeoutSeconds"] = TASK_TIMEOUT_SECONDS
    if result is not None:
        state["ResultSelector"] = selector(result)
    if result_path is not None:
        state["ResultPath"] = result_path
    if output_path is not None:
        state["OutputPath"] = output_path
    state["Retry"] = [PATIENT_RETRY, TRANSIENT_RETRY, LAMBDA_RETRY] if patient else [TRANSIENT_RETRY, LAMBDA_RETRY]
    if waits_for is not None:
        state["Retry"].insert(0, waits_for)
    state["Catch"] = catch(on_error, error_path, explained)
    state["Next"] = next_state
    return state


def choice(choices: list[State], default: str, comment: str | None = None) -> State:
    state: State = {"Type": "Choice"}
    if comment:
        state["Comment"] = comment
    state["Choices"] = choices
    state["Default"] = default
    return state


def when(variable: str, test: str, value: Any, next_state: str | None = None) -> State:
    """One Choice rule (``test`` is the comparison operator, e.g. ``StringEquals``)."""
    rule: State = {"Variable": variable, test: value}
    if next_state is not None:
        rule["Next"] = next_state
    return rule


def wait(next_state: str) -> State:
    return {"Type": "Wait", "SecondsPath": "$.poll_seconds", "Next": next_state}


def fail(error_path: str, cause_path: str, comment: str | None = None) -> State:
    state: State = {"Type": "Fail"}
    if comment:
        state["Comment"] = comment
    state.update(ErrorPath=error_path, CausePath=cause_path)
    return state


def poll(
    *,
    wait_state: str,
    check_state: str,
    choice_state: str,
    function: str,
    payload: Mapping[str, str],
    result: type[BaseModel],
    result_path: str,
    done: State,
    on_error: str,
    comment: str | None = None,
    enter_at_choice: bool = False,
) -> States:
    """A bounded wait: Wait -> check (raises WaitTimeoutError after max_polls) -> Choice (``done``
    holds the rule and where it leads; anything else waits again). The first Wait is the deployment's
    poll interval; the one the loop comes back to waits as long as the check said (``wait_seconds``:
    the interval backs off over long waits, see ``ami_factory.polling``). The loop is entered at the
    Wait, or at the Choice when what it waits for may already be true; its states are listed from there."""
    # A loop entered at its Choice has no first wait: its one Wait reads the ref's wait_seconds.
    again = wait_state if enter_at_choice else f"{wait_state}Again"
    loop = {
        wait_state: wait(check_state),
        check_state: task(
            function,
            comment=comment,
            payload={**payload, "poll_seconds": "$.poll_seconds"},
            result=result,
            result_path=result_path,
            on_error=on_error,
            next_state=choice_state,
        ),
        choice_state: choice([done], default=again),
        again: {"Type": "Wait", "SecondsPath": f"{result_path}.wait_seconds", "Next": check_state},
    }
    if enter_at_choice:
        return {choice_state: loop[choice_state], again: loop[again], check_state: loop[check_state]}
    return loop


def event_wait(
    *,
    wait_state: str,
    function: str,
    payload: Mapping[str, object],
    result_path: str | None,
    done_next: str,
    on_error: str,
    comment: str,
    timeout_path: str = "$.max_wait_seconds",
    timeout_seconds: int | None = None,
    timed_out_cause: str,
) -> States:
    """A wait that ends on AWS's own event about what it waits for: one ``.waitForTaskToken`` task,
    whose Lambda (``function``: WatchImage, WatchInstance) records the token under the resource's id
    and looks once; SettleWait ends it with the step's reference, or the step's error, when the event
    comes, or when the fallback sweep finds it settled (a lost event). The task's timeout is the
    wait's bound (``timeout_path``, or a fixed ``timeout_seconds``): it fails the wait with
    WaitTimeoutError and ``timed_out_cause`` (a States.Format expression). Six history events, however
    long the wait."""
    timed_out = f"{wait_state}TimedOut"
    return {
        wait_state: {
            "Type": "Task",
            "Comment": comment,
            "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
            "Parameters": {
                "FunctionName": function_arn(function),
                "Payload": {
                    **payload,
                    **paths({"run_id": "$.run_id", "task_token": "$$.Task.Token", "attempt": "$$.State.RetryCount"}),
                },
            },
            **({"TimeoutSeconds": timeout_seconds} if timeout_seconds else {"TimeoutSecondsPath": timeout_path}),
            "ResultPath": result_path,
            "Retry": [TRANSIENT_RETRY, LAMBDA_RETRY],
            "Catch": [
                {"ErrorEquals": ["States.Timeout"], "ResultPath": "$.error", "Next": timed_out},
                *catch(on_error),
            ],
            "Next": done_next,
        },
        timed_out: {
            "Type": "Pass",
            "Comment": "The wait's bound: the error a bounded wait raises, with what to do about it.",
            "Parameters": {"Error": WaitTimeoutError.__name__, "Cause.$": timed_out_cause},
            "ResultPath": "$.error",
            "Next": on_error,
        },
    }


def image_wait(
    *,
    wait_state: str,
    image_path: str,
    done_next: str,
    on_error: str,
    role: Literal["seed", "image"],
    copy_slot: bool = False,
    comment: str,
) -> States:
    """A wait for an image that ends on EC2's ``EC2 AMI State Change`` event: available, or
    ImageFailedError with EC2's reason."""
    return event_wait(
        wait_state=wait_state,
        function="WatchImage",
        payload={**paths({"image": image_path}), "role": role, "copy_slot": copy_slot},
        result_path=image_path,
        done_next=done_next,
        on_error=on_error,
        comment=comment,
        timed_out_cause="States.Format('image {} in {} is still not available after MaxWaitSeconds ({} s); raise "
        f"MaxWaitSeconds or check the image in the EC2 console', {image_path}.image_id, {image_path}.region, "
        "$.max_wait_seconds)",
    )


def region_states() -> States:
    """One Region's item of the Distribute map: copy (unless it is the source), launch check. Any
    failure is caught in the item, so the other Regions go on. Nothing is shared or published yet."""
    return {
        "IsSourceRegion": choice(
            [
                {
                    "And": [
                        when("$.region.is_source", "BooleanEquals", True),
                        when("$.encrypt", "BooleanEquals", False),
                    ],
                    "Next": "UseSourceImage",
                }
            ],
            default="WaitForCopySlot",
            comment="The source Region has the image already, unless it must be re-encrypted (encrypt): then it is "
            "copied too.",
        ),
        "UseSourceImage": {
            "Type": "Pass",
            "InputPath": "$.source_image",
            "ResultPath": "$.image",
            "Next": "NeedsLaunchCheck",
        },
        **event_wait(
            wait_state="WaitForCopySlot",
            function="AwaitCopySlot",
            payload=paths({"region": "$.region.name"}),
            result_path=None,
            done_next="CopyImage",
            on_error="RegionFailed",
            timeout_seconds=COPY_SLOT_MAX_WAIT_SECONDS,
            comment="Until a copy slot in the item's Region is free (CopySlotsPerRegion, shared by every run): the "
            "Region's oldest waiting copy gets the next slot given back.",
            timed_out_cause=f"States.Format('no copy slot in {{}} came free within {COPY_SLOT_MAX_WAIT_SECONDS // 3600} "
            "hours: raise CopySlotsPerRegion (EC2 allows 50 copies in flight into a Region) or split the schedule "
            "into smaller firings', $.region.name)",
        ),
        "CopyImage": task(
            "CopyImage",
            comment="CopyImage in the item's Region, with a ClientToken, with the copy slot its wait took",
            result=ImageRef,
            result_path="$.image",
            on_error="RegionFailed",
            waits_for=COPY_SLOT_RETRY,
            next_state="WaitForCopy",
        ),
        **image_wait(
            wait_state="WaitForCopy",
            image_path="$.image",
            done_next="NeedsLaunchCheck",
            on_error="RegionFailed",
            role="image",
            copy_slot=True,
            comment="Until EC2's event says the copy is available (or failed); the copy's slot is given back then.",
        ),
        "NeedsLaunchCheck": choice(
            [when("$.launch_check", "BooleanEquals", True, "StartLaunchCheck")],
            default="RegionCopied",
            comment="Before anyone can use the image: does it boot?",
        ),
        "StartLaunchCheck": task(
            "StartLaunchCheck",
            comment="A small instance from the new image (role=launch-check).",
            payload={"run_id": "$.run_id", "image": "$.image", "imds_support": "$.imds_support"},
            result=LaunchedInstance,
            result_path="$.launched",
            on_error="RegionFailed",
            next_state="WaitForLaunch",
        ),
        **poll(
            wait_state="WaitForLaunch",
            check_state="CheckLaunch",
            choice_state="IsLaunchHealthy",
            function="CheckLaunch",
            comment="Bounded: healthy once running with both status checks ok; LaunchCheckFailedError otherwise.",
            payload={"launched": "$.launched", "max_polls": "$.launch_check_max_polls"},
            result=LaunchedInstance,
            result_path="$.launched",
            done=when("$.launched.ready", "BooleanEquals", True, "EndLaunchCheck"),
            on_error="RegionFailed",
        ),
        "EndLaunchCheck": task(
            "EndLaunchCheck",
            comment="Terminate the check instance; Finalize terminates any a failed check left.",
            payload={"run_id": "$.run_id", "launched": "$.launched"},
            result=LaunchedInstance,
            result_path="$.launched",
            on_error="RegionFailed",
            next_state="RegionCopied",
        ),
        "RegionCopied": {
            "Type": "Pass",
            "Comment": "The Region's image is complete (and boots, with launch_check): ready to share and publish.",
            "Parameters": {
                "region.$": "$.region.name",
                "status": "COPIED",
                "image.$": "$.image",
                "error": None,
            },
            "End": True,
        },
        "RegionFailed": {
            "Type": "Pass",
            "Comment": "One Region failing must not sink the others: record it, Finalize cleans it up.",
            "Parameters": {
                "region.$": "$.region.name",
                "status": "FAILED",
                "image": None,
                "error.$": "$.error",
            },
            "End": True,
        },
    }


def publish_states() -> States:
    """One Region's item of the Publish map, after approval (if asked): share, protect, publish. A
    Region that failed to copy passes through as failed; a failure here fails only this Region."""
    return {
        "IsCopied": choice(
            [when("$.status", "StringEquals", "COPIED", "ShareImage")],
            default="AlreadyFailed",
            comment="A Region whose copy or launch check failed has nothing to share.",
        ),
        "AlreadyFailed": {
            "Type": "Pass",
            "Parameters": {"region.$": "$.region.name", "status": "FAILED", "error.$": "$.error"},
            "End": True,
        },
        "ShareImage": task(
            "ShareImage",
            payload={
                "image": "$.image",
                "share": "$.share",
                "imds_support": "$.imds_support",
                "run_id": "$.run_id",
                "approval": "$.approval",
            },
            result=ShareImageOutput,
            result_path="$.shared",
            on_error="PublishFailed",
            next_state="NeedsProtection",
        ),
        "NeedsProtection": choice(
            [
                {
                    "Or": [
                        when("$.protection.deregistration_protection", "BooleanEquals", True),
                        when("$.protection.deprecate_after_days", "IsNull", False),
                    ],
                    "Next": "ProtectImage",
                }
            ],
            default="NoProtection",
        ),
        "ProtectImage": task(
            "ProtectImage",
            comment="Deprecation and deregistration protection, before latest points to the image: a Region's "
            "parameter moves only to a complete image.",
            payload={"image": "$.image", "protection": "$.protection"},
            result=ProtectImageOutput,
            result_path="$.protected",
            on_error="PublishFailed",
            next_state="PublishParameter",
        ),
        "NoProtection": {
            "Type": "Pass",
            "Result": {"deprecate_at": None, "deregistration_protection": False},
            "ResultPath": "$.protected",
            "Next": "PublishParameter",
        },
        "PublishParameter": task(
            "PublishParameter",
            payload={
                "run_id": "$.run_id",
                "image": "$.image",
                "parameter_name": "$.parameter_name",
                "family": "$.family",
                "family_asked_as": "$.family_asked_as",
                "adopt_family": "$.adopt_family",
                "account_id": "$.account_id",
                "instance_id": "$.instance_id",
                "source_region": "$.source_region",
                "source_run_id": "$.source_run_id",
                "launch_templates": "$.launch_templates",
                "fast_launch": "$.fast_launch",
            },
            result=PublishParameterOutput,
            result_path="$.parameter",
            on_error="PublishFailed",
            next_state="RegionSucceeded",
        ),
        "RegionSucceeded": {
            "Type": "Pass",
            "Parameters": {
                "region.$": "$.region.name",
                "status": "AVAILABLE",
                "image_id.$": "$.image.image_id",
                "shared_with.$": "$.shared.shared_with",
                "parameter_name.$": "$.parameter.parameter_name",
                "deprecate_at.$": "$.protected.deprecate_at",
                "deregistration_protection.$": "$.protected.deregistration_protection",
                "launch_checked.$": "$.launch_check",
                "imds_support.$": "$.imds_support",
                "launch_templates.$": "$.parameter.launch_templates",
                "fast_launch.$": "$.parameter.fast_launch",
                "parameter_note.$": "$.parameter.note",
            },
            "End": True,
        },
        "PublishFailed": {
            "Type": "Pass",
            "Comment": "One Region failing must not sink the others: record it, Finalize cleans it up.",
            "Parameters": {"region.$": "$.region.name", "status": "FAILED", "error.$": "$.error"},
            "End": True,
        },
    }


# What each Region's item needs from the execution state (the Map's ItemSelector).
REGION_ITEM_FIELDS = [
    "run_id",
    "account_id",
    "instance_id",
    "source_region",
    "family",
    "family_asked_as",
    "adopt_family",
    "image_name",
    "description",
    "tags",
    "share",
    "parameter_name",
    "poll_seconds",
    "max_wait_seconds",
    "protection",
    "copy_completion_minutes",
    "encrypt",
    "launch_check",
    "launch_check_max_polls",
    "source_run_id",
    "imds_support",
    "launch_templates",
    "fast_launch",
    "approval",
]


def publish() -> State:
    return {
        "Type": "Map",
        "Comment": "One item per Region of Distribute's results: share, protect, publish the complete images.",
        "ItemsPath": "$.distribution",
        "MaxConcurrency": 20,
        "ItemSelector": {
            "region": {"name.$": "$$.Map.Item.Value.region"},
            **paths(
                {
                    "status": "$$.Map.Item.Value.status",
                    "image": "$$.Map.Item.Value.image",
                    "error": "$$.Map.Item.Value.error",
                    **{name: f"$.{name}" for name in REGION_ITEM_FIELDS},
                }
            ),
        },
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "INLINE"},
            "StartAt": "IsCopied",
            "States": publish_states(),
        },
        "ResultPath": "$.distribution",
        "Catch": catch("HandleFailure"),
        "Next": "CopiesIntoAccounts",
    }


def account_states() -> States:
    """One account and Region of copy_to_accounts: copy the Region's image into the account, wait for
    the copy, publish the account's latest. A failed cell removes its copy and fails alone."""
    return {
        "DeliverToAccount": task(
            "DeliverToAccount",
            comment="First call: CopyImage in the account (as the role it deployed). Later calls: look at the copy; "
            "once available, move the account's latest to it.",
            payload={
                **{name: f"$.{name}" for name in ACCOUNT_ITEM_FIELDS},
                "cell": "$.cell",
                "account_copy": "$.account_copy",
            },
            result=AccountCopyRef,
            result_path="$.account_copy",
            waits_for=COPY_SLOT_RETRY,
            on_error="RemoveAccountCopy",
            next_state="IsAccountCopyPublished",
        ),
        "IsAccountCopyPublished": choice(
            [when("$.account_copy.published", "BooleanEquals", True, "AccountCopyDelivered")],
            default="WaitForAccountCopy",
        ),
        "WaitForAccountCopy": {
            "Type": "Wait",
            "SecondsPath": "$.account_copy.wait_seconds",
            "Next": "DeliverToAccount",
        },
        "AccountCopyDelivered": {
            "Type": "Pass",
            "Parameters": {
                "account_id.$": "$.cell.account_id",
                "region.$": "$.cell.region",
                "status": "DELIVERED",
                "image_id.$": "$.account_copy.image_id",
                "parameter_name.$": "$.parameter_name",
                "parameter_note.$": "$.account_copy.note",
            },
            "End": True,
        },
        "RemoveAccountCopy": task(
            "RemoveAccountCopy",
            comment="The cell failed: its copy goes (as the ledger recorded it); the result says why.",
            payload={"run_id": "$.run_id", "cell": "$.cell", "error": "$.error"},
            output_path="$.Payload",
            on_error="AccountCopyNotRemoved",
            error_path="$.removal_error",
            next_state="AccountCopyFailed",
        ),
        "AccountCopyFailed": {"Type": "Pass", "End": True},
        "AccountCopyNotRemoved": {
            "Type": "Pass",
            "Comment": "Even the removal failed: the cell's error stands, and its copy may be left in the account.",
            "Parameters": {
                "account_id.$": "$.cell.account_id",
                "region.$": "$.cell.region",
                "status": "FAILED",
                "error.$": "$.error",
            },
            "End": True,
        },
    }


ACCOUNT_ITEM_FIELDS = [
    "run_id",
    "image_name",
    "description",
    "tags",
    "parameter_name",
    "poll_seconds",
    "max_wait_seconds",
]


def deliver_to_accounts() -> State:
    return {
        "Type": "Map",
        "Comment": "copy_to_accounts: one item per account and Region, after the Region is published; a failed "
        "item fails alone.",
        "ItemsPath": "$.account_cells",
        "MaxConcurrency": 20,
        "ItemSelector": {
            "account_copy": None,
            **paths(
                {
                    "cell": "$$.Map.Item.Value",
                    **{name: f"$.{name}" for name in ACCOUNT_ITEM_FIELDS},
                }
            ),
        },
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "INLINE"},
            "StartAt": "DeliverToAccount",
            "States": account_states(),
        },
        "ResultPath": "$.accounts",
        # The cells catch their own failures; the map's own (a limit) leaves what the Regions delivered.
        "Catch": catch("Finalize", "$.accounts_error"),
        "Next": "Finalize",
    }


def distribute() -> State:
    return {
        "Type": "Map",
        "Comment": "One item per Region, the source Region included: copy and check, nothing shared yet.",
        "ItemsPath": "$.regions",
        "MaxConcurrency": 20,
        "ItemSelector": paths(
            {
                "region": "$$.Map.Item.Value",
                "source_image": "$.image",
                **{name: f"$.{name}" for name in REGION_ITEM_FIELDS},
            }
        ),
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "INLINE"},
            "StartAt": "IsSourceRegion",
            "States": region_states(),
        },
        "ResultPath": "$.distribution",
        "Catch": catch("HandleFailure"),
        "Next": "NeedsApproval",
    }


def definition() -> State:
    """The whole state machine, in the order a reader follows a run."""
    states: States = {
        "ResolveRequest": task(
            "ResolveRequest",
            comment="Validate the request against the allow-lists and the instance; nothing is touched before this "
            "succeeds.",
            payload={
                "request": "$",
                "run_id": "$$.Execution.Name",
                "execution_started_at": "$$.Execution.StartTime",
                "state_machine_arn": "$$.StateMachine.Id",
            },
            output_path="$.Payload",
            on_error="RequestRejected",
            # The whole state: an input that is not an object has no field to put the error in.
            error_path="$",
            explained=True,
            next_state="ShouldCleanUp",
        ),
        **fail_explained("RequestRejected", "$.Error", "$.Cause", "A bad request: nothing was changed."),
        "ShouldCleanUp": choice(
            [
                when("$.source_image_id", "IsString", True, "UseDeliveredImage"),
                when("$.cleanup", "BooleanEquals", True, "RunCleanup"),
            ],
            default="PrepareInstance",
            comment="Optional clean-up through SSM, before the instance is stopped or imaged; none of it when the "
            "run distributes an image an earlier run delivered.",
        ),
        "UseDeliveredImage": {
            "Type": "Pass",
            "Comment": "source_image_id: ResolveRequest found it in the ledger as the family's, available; the "
            "instance is never touched.",
            "Parameters": {"region.$": "$.source_region", "image_id.$": "$.source_image_id", "state": "available"},
            "ResultPath": "$.image",
            "Next": "Distribute",
        },
        "RunCleanup": task(
            "RunCleanup",
            comment="SSM Run Command: temp files and caches (Linux), temp files and the recycle bin (Windows).",
            result=CommandRef,
            result_path="$.command",
            on_error="HandleFailure",
            next_state="WaitForCleanup",
        ),
        **event_wait(
            wait_state="WaitForCleanup",
            function="WatchInstance",
            comment="Until Systems Manager's event says the command ended: CommandFailedError unless it succeeded.",
            payload=paths({"command": "$.command"}),
            result_path="$.command",
            done_next="PrepareInstance",
            on_error="HandleFailure",
            timed_out_cause="States.Format('command {} on instance {} has not ended after MaxWaitSeconds ({} s); see "
            "it in SSM Run Command history', $.command.command_id, $.command.instance_id, $.max_wait_seconds)",
        ),
        "PrepareInstance": task(
            "PrepareInstance",
            comment="Record the instance's state; stop it in stop mode.",
            result=InstanceRef,
            result_path="$.instance",
            on_error="HandleFailure",
            next_state="ChooseMode",
        ),
        "ChooseMode": choice(
            [
                when("$.mode", "StringEquals", "no-reboot", "CreateImage"),
                when("$.mode", "StringEquals", "stop", "IsInstanceStopped"),
                when("$.mode", "StringEquals", "generalize", "CreateSeedImage"),
                when("$.mode", "StringEquals", "generalize-in-place", "Generalize"),
            ],
            default="UnsupportedMode",
            comment="One branch per preparation mode.",
        ),
        "UnsupportedMode": {
            "Type": "Pass",
            "Parameters": {"Error": "InvalidRequestError", "Cause": "this mode is not supported by the state machine"},
            "ResultPath": "$.error",
            "Next": "HandleFailure",
        },
        "CreateSeedImage": task(
            "CreateSeedImage",
            comment="Mode generalize: a no-reboot image of the instance to launch the clone from (removed when the "
            "run ends).",
            result=ImageRef,
            result_path="$.seed",
            on_error="HandleFailure",
            next_state="WaitForSeed",
        ),
        **image_wait(
            wait_state="WaitForSeed",
            image_path="$.seed",
            done_next="LaunchClone",
            on_error="HandleFailure",
            role="seed",
            comment="Until EC2's event says the seed image is available (or failed).",
        ),
        "LaunchClone": task(
            "LaunchClone",
            comment="The instance's type, subnet, security groups and profile unless the request overrides them; "
            "tagged role=clone.",
            result=LaunchedInstance,
            result_path="$.clone",
            on_error="HandleFailure",
            next_state="WaitForClone",
        ),
        **poll(
            wait_state="WaitForClone",
            check_state="CheckClone",
            choice_state="IsCloneReady",
            function="CheckClone",
            comment="Bounded: ready once running and online in SSM; raises WaitTimeoutError after generalize_max_polls.",
            payload={"clone": "$.clone", "max_polls": "$.generalize_max_polls"},
            result=LaunchedInstance,
            result_path="$.clone",
            done=when("$.clone.ready", "BooleanEquals", True, "Generalize"),
            on_error="HandleFailure",
        ),
        "Generalize": task(
            "Generalize",
            comment="SSM Run Command: sysprep (Windows) or sanitize (Linux) on the clone, or on the instance in "
            "place; it shuts itself down.",
            result=GeneralizeRef,
            result_path="$.generalize",
            on_error="HandleFailure",
            next_state="WaitForGeneralize",
        ),
        **event_wait(
            wait_state="WaitForGeneralize",
            function="WatchInstance",
            comment="Until EC2's event says the instance shut itself down (or Systems Manager's that the command "
            "failed: CommandFailedError, even if it then stopped).",
            payload=paths({"generalize": "$.generalize"}),
            result_path="$.generalize",
            done_next="CreateImage",
            on_error="HandleFailure",
            timeout_path="$.generalize_max_wait_seconds",
            timed_out_cause="States.Format('instance {} (generalizing) has not shut down after "
            "GeneralizeMaxWaitSeconds ({} s): read the command output in SSM Run Command history (sysprep/sanitize "
            "did not shut it down), or raise GeneralizeMaxWaitSeconds', $.generalize.instance_id, "
            "$.generalize_max_wait_seconds)",
        ),
        "IsInstanceStopped": choice(
            [when("$.instance.state", "StringEquals", "stopped", "CreateImage")],
            default="WaitForInstanceStop",
            comment="The instance may be stopped already.",
        ),
        **event_wait(
            wait_state="WaitForInstanceStop",
            function="WatchInstance",
            comment="Until EC2's event says the instance stopped (UnsupportedInstanceError if it went away).",
            payload=paths({"instance": "$.instance"}),
            result_path="$.instance",
            done_next="CreateImage",
            on_error="HandleFailure",
            timed_out_cause="States.Format('instance {} is still stopping after MaxWaitSeconds ({} s); find out why it "
            "does not stop', $.instance.instance_id, $.max_wait_seconds)",
        ),
        "CreateImage": task(
            "CreateImage",
            comment="The final image (of the clone in mode generalize); a retried attempt finds it by its name and the run's "
            "create token.",
            result=ImageRef,
            result_path="$.image",
            on_error="HandleFailure",
            next_state="WaitForImage",
        ),
        **image_wait(
            wait_state="WaitForImage",
            image_path="$.image",
            done_next="RestoreInstance",
            on_error="HandleFailure",
            role="image",
            comment="Until EC2's event says the image is available (or failed).",
        ),
        "RestoreInstance": task(
            "RestoreInstance",
            comment="The image is safe: give the instance back and remove the clone and seed image before the (long) "
            "distribution.",
            payload={"instance": "$.instance", "run_id": "$.run_id", "mode": "$.mode"},
            result=InstanceRef,
            result_path="$.instance",
            on_error="HandleFailure",
            patient=True,
            next_state="Distribute",
        ),
        "Distribute": distribute(),
        "NeedsApproval": choice(
            [when("$.approval", "BooleanEquals", True, "WaitForApproval")],
            default="Publish",
            comment="approval: nobody gets the images (shared, published) until a person says yes.",
        ),
        **event_wait(
            wait_state="WaitForApproval",
            function="AwaitApproval",
            comment="Until an approver answers through DecideApproval (`ami_factory_cli approve`, or `reject`: "
            "ApprovalRejectedError); AwaitApproval tells the topic which images wait and how to answer.",
            payload=paths({"images": "$.distribution", "execution_arn": "$$.Execution.Id"}),
            result_path="$.approval_answer",
            done_next="Publish",
            on_error="HandleFailure",
            timeout_path="$.approval_timeout_seconds",
            timed_out_cause="States.Format('no one approved run {} within ApprovalTimeoutHours ({} s): its images "
            "are removed; start a new run (or redrive) when someone can approve', $.run_id, "
            "$.approval_timeout_seconds)",
        ),
        "Publish": publish(),
        "CopiesIntoAccounts": choice(
            [when("$.copies_into_accounts", "BooleanEquals", True, "KeepDelivered")],
            default="Finalize",
            comment="copy_to_accounts: what the Regions delivered is kept first, then the accounts copy it.",
        ),
        "KeepDelivered": task(
            "KeepDelivered",
            comment="Record what the Regions delivered as kept: copies into accounts may take hours, and a stop "
            "then must not undo what every Region published.",
            result=KeptDelivered,
            result_path="$.kept",
            on_error="HandleFailure",
            next_state="DeliverToAccounts",
        ),
        "DeliverToAccounts": deliver_to_accounts(),
        "Finalize": task(
            "Finalize",
            comment="Keep what the run delivered, remove the rest, restore and tag the instance, tell; return the "
            "summary.",
            output_path="$.Payload",
            on_error="FinalizeFailed",
            explained=True,
            patient=True,
            next_state="IsDistributed",
        ),
        **fail_explained(
            "FinalizeFailed",
            "$.error.Error",
            "$.error.Cause",
            "Finalize could not run: the janitor, on this execution's status change, completes it from the run's "
            "ledger.",
        ),
        "IsDistributed": choice([when("$.status", "StringEquals", "FAILED", "AllRegionsFailed")], default="Done"),
        "AllRegionsFailed": fail("$.error", "$.cause"),
        "Done": {"Type": "Succeed"},
        "HandleFailure": task(
            "HandleFailure",
            comment="Restore the instance first, then remove what this run made (each on its own), tag it with "
            "the error.",
            output_path="$.Payload",
            on_error="CleanupFailed",
            error_path="$.cleanup_error",
            explained=True,
            patient=True,
            next_state="RunFailed",
        ),
        "RunFailed": fail("$.error", "$.cause"),
        **fail_explained(
            "CleanupFailed",
            "$.error.Error",
            "$.cleanup_error.Cause",
            "The clean-up could not even start the instance: the janitor, on this execution's status change, ends "
            "the run from its ledger.",
        ),
    }
    return {
        "Comment": "AMI Factory: image an EC2 instance, copy the image to Regions, share it, publish its id.",
        "StartAt": "ResolveRequest",
        "States": states,
    }


def asl_text() -> str:
    return json.dumps(definition(), indent=2) + "\n"


if __name__ == "__main__":
    TARGET.write_text(asl_text())
    print(f"wrote {TARGET.relative_to(ROOT)}", file=sys.stderr)
