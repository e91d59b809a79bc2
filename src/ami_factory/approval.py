"""Approval before anyone gets the images: the run's ``.waitForTaskToken`` wait after Distribute,
answered by an approver through DecideApproval (``ami_factory_cli approve|reject EXECUTION``), which
records the decision in the run's ledger and then ends the wait (SendTaskSuccess, or SendTaskFailure
with ``ApprovalRejectedError``), or ended by the deployment's ApprovalTimeoutHours."""

from __future__ import annotations

import json

from botocore.exceptions import ClientError

from .aws import Notifications, StepFunctions
from .closing import EVENT_SOURCE
from .contracts import ApprovalDecided, ApprovalRequested, AwaitApprovalInput, DecideApprovalInput
from .errors import AmiFactoryError, InvalidRequestError, ThrottledError
from .ledger import Ledger
from .observability import logger
from .settings import load_settings

APPROVAL_REQUESTED = "AMI Factory Approval Requested"


def await_approval(event: AwaitApprovalInput) -> ApprovalRequested:
    """Tell the topic (people) and the bus (automation) which images wait and how to answer. A run
    whose every Region failed has nothing to approve: its wait ends at once."""
    settings = load_settings()
    waiting = [f"{r.region}: {r.image.image_id}" for r in event.images if r.status == "COPIED" and r.image]
    if not waiting:
        StepFunctions(settings.region).end_task(event.task_token, output=json.dumps({"approved": "nothing to approve"}))
        return ApprovalRequested(waiting=[], message="no Region has an image to approve")
    # The token is kept for DecideApproval, the one way to answer: a SendTaskSuccess from anyone else
    # moves the execution on, but ShareImage then finds no decision and gives nothing away.
    Ledger().await_approval(event.run_id, event.task_token)
    cli = "PYTHONPATH=src:tools python -m ami_factory_cli"
    message = "\n".join(
        [
            f"Run {event.run_id} waits for approval before its images are shared or published:",
            *(f"  {line}" for line in waiting),
            "",
            f"Approve: {cli} approve {event.execution_arn} --stack-name STACK",
            f"Reject:  {cli} reject {event.execution_arn} --stack-name STACK --reason '...'",
            "(approvers need lambda:InvokeFunction on the stack's DecideApprovalFunctionName output)",
            f"Unanswered for {settings.approval_timeout_seconds // 3600} hours (ApprovalTimeoutHours), the images "
            f"are removed.",
        ]
    )
    detail = json.dumps({"run_id": event.run_id, "execution_arn": event.execution_arn, "waiting": waiting})
    try:
        notifications = Notifications(settings.region)
        if settings.notification_topic_arn:
            notifications.publish(
                settings.notification_topic_arn, f"AMI Factory: run {event.run_id} awaits approval", message
            )
        notifications.put_event(settings.event_bus_name, EVENT_SOURCE, APPROVAL_REQUESTED, detail, [])
    except ThrottledError:
        raise  # the state machine retries the step with backoff
    except (ClientError, AmiFactoryError) as error:  # the run still waits; DecideApproval still answers it
        logger.error("could not ask for approval: %s", error)
    return ApprovalRequested(waiting=waiting, message=message)


def decide_approval(event: DecideApprovalInput) -> ApprovalDecided:
    """An approver's answer (whoever may invoke this function: its IAM is the approvers' list). The
    decision is recorded in the run's ledger first (ShareImage gives nothing away without it), then the
    wait is ended: approved, or failed with ApprovalRejectedError and the reason."""
    settings = load_settings()
    run_id = event.execution_arn.rsplit(":", 1)[-1]
    if settings.state_machine_arn and not event.execution_arn.startswith(
        settings.state_machine_arn.replace(":stateMachine:", ":execution:") + ":"
    ):
        raise InvalidRequestError(f"{event.execution_arn} is not an execution of this deployment's state machine")
    decision = "approved" if event.decision == "approve" else "rejected"
    token = Ledger().decide(run_id, decision, event.approver or "unnamed")
    if token is None:
        raise InvalidRequestError(
            f"run {run_id} is not waiting for approval (it never asked, is still copying, or was answered already)"
        )
    if decision == "approved":
        answered = StepFunctions(settings.region).end_task(token, output=json.dumps({"approved": True}))
    else:
        why = event.reason or "rejected"
        answered = StepFunctions(settings.region).end_task(token, error="ApprovalRejectedError", cause=why[:256])
    logger.info("approval", extra={"run": run_id, "decision": decision, "by": event.approver, "answered": answered})
    return ApprovalDecided(run_id=run_id, decision=decision, answered=answered)
