"""A small world model on top of moto, so the workflow meets what AWS really does.

moto makes images ``available`` at once, stops instances at once, never throttles, ignores
RunInstances' and CopyImage's ClientToken, CopyImage's TagSpecifications and Encrypted/KmsKeyId, has no snapshot TagSpecification
on CreateImage, and reports its ``alias/aws/ebs`` key as customer managed.
The world fixes exactly that, driven by the virtual clock, and lets a test ask for trouble:

- images stay ``pending`` for a while, end ``failed``, or never become available;
- a stopped instance is ``stopping`` for a while first;
- an operation is throttled (``RequestLimitExceeded``) for its next N calls (in a Region, or in each);
  besides, every EC2 call of a deployed function draws on EC2's token buckets, and CopyImage meets the
  concurrent-copy quota (``limits.py``);
- a new image is invisible (``InvalidAMIID.NotFound``) for its first N DescribeImages;
- an operation's response is lost: the call takes effect, the caller sees a throttling error.

And it refuses what EC2 and SSM refuse while moto takes it: unknown filter names, unknown permission
attributes and groups, tags over EC2's limits; SendCommand with a document that does not exist, or
a parameter the document does not declare or whose value its allowedValues/allowedPattern refuse.

SSM has a small model too: which instances are managed (DescribeInstanceInformation, missing in
moto) and how Run Command invocations end (moto reports Success at once; the world can make them
take time or fail). An instance launched from an image of a managed instance (the generalize
clone) registers with SSM too, after a boot time. The generalize command (sysprep / sanitize) is
what the world cannot run, so it plays its outcome: the instance shuts itself down some virtual
minutes later while the command never reports success, or never shuts down, or the command fails.

Like AWS, tagging an instance (CreateTags, DeleteTags) emits a ``Tag Change on Resource`` event to
the default bus, where the deployed rules (and so the tag trigger) see it. Rule patterns match
fields inside arrays of objects, as EventBridge does and moto does not (CloudTrail's ``tagSet``).

GetExecutionHistory pages like Step Functions (``maxResults``, ``reverseOrder``, ``nextToken``):
moto returns and serializes the whole history on every call, which makes following a long run
slow.

Every AWS request that reaches moto is recorded (service, operation, Region, parameters), so tests
assert on what was *sent* where moto ignores a parameter.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from unittest import mock
from urllib.parse import unquote

import yaml
from moto.core.exceptions import JsonRESTError
from moto.core.responses import ActionResult, BaseResponse
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.utils import random_ami_id
from moto.events.models import EventPattern, events_backends
from moto.events.utils import EventMessageType
from moto.kms.models import kms_backends
from moto.sns.exceptions import SNSException
from moto.ssm.exceptions import InvalidDocument, SSMException
from moto.ssm.models import ssm_backends
from moto.sts.exceptions import STSClientError
from moto.sts.models import sts_backends

from ami_factory.commands import GENERALIZE_COMMENT

from . import block_devices
from .authorization import (
    IAM_ACTIONS,
    IAM_PREFIX,
    Authorizer,
    access_denied_code,
    as_operator,
    current_principal,
    refusal_error,
    session_tags,
)
from .authorization import Request as AuthorizationRequest
from .clock import VirtualClock
from .events import EventSchedule
from .iam import trust_allows
from .launch_templates import LaunchTemplates
from .limits import Ec2Limits, copy_quota_refusal

LAUNCH_TEMPLATE_CALLS = frozenset(
    {
        "CreateLaunchTemplateVersion",
        "DeleteLaunchTemplateVersions",
        "DescribeLaunchTemplates",
        "DescribeLaunchTemplateVersions",
        "ModifyLaunchTemplate",
    }
)


def _request_params(response: BaseResponse) -> dict[str, Any]:
    """The call's parameters: query-protocol services (EC2) through moto's parser, JSON ones from the body."""
    try:
        if service_protocol(response) == "json":
            return dict(json.loads(response.body or "{}"))
        return dict(response._get_params())
    except (ValueError, TypeError, AttributeError):  # the operation's name is still recorded
        return {}


def _refused(response: BaseResponse, code: str, message: str) -> Any:
    """An error answer as the service gives one: XML for SNS (a query protocol service), JSON for the
    others (EventBridge, DynamoDB, Step Functions, ...), as moto makes them."""
    if getattr(response, "service_name", "") == "sns":
        return response.serialized(ActionResult(SNSException(code, message)))
    error = JsonRESTError(code, message)
    headers: dict[str, Any] = dict(error.get_headers() or [])
    headers["status"] = error.code
    status, headers, body = response._transform_response(response.response_headers, (error.description, headers))
    return status, *response._enrich_response(headers, body)


def service_protocol(response: BaseResponse) -> str:
    return (
        "json"
        if getattr(response, "service_name", "") in ("ssm", "stepfunctions", "lambda", "events", "kms")
        else "query"
    )


def execution_events(backend: Any, execution_arn: str) -> list[Any]:
    """The execution's events, not copied: moto deep-copies the whole history on every read."""
    worker = backend.describe_execution(execution_arn=execution_arn).exec_worker
    if worker is None or worker.env is None:  # not started yet
        return []
    manager = worker.env.event_manager
    with manager._mutex:
        return list(manager._history_event_list)


def history_page(events: list[Any], params: dict[str, Any]) -> dict[str, Any]:
    """One page of an execution history, as Step Functions pages it (default 100 events, at most 1000).
    The token names the last event returned, so pages stay put while a running execution grows."""
    if params.get("reverseOrder"):
        events = events[::-1]
    start = 0
    if params.get("nextToken"):
        last_id = int(params["nextToken"])
        start = next(index + 1 for index, event in enumerate(events) if event["id"] == last_id)
    end = start + min(int(params.get("maxResults") or 100), 1000)
    # Not copied: the interpreter never changes an event once recorded, and serializing only reads it.
    page: dict[str, Any] = {"events": events[start:end]}
    if end < len(events):
        page["nextToken"] = str(events[end - 1]["id"])
    return page


# The filter names EC2 accepts (names are case-sensitive; ``tag:KEY`` takes any key), from the EC2 API
# reference; add to them when the code uses a new one. moto answers an unknown filter with nothing where
# EC2 refuses it, so a misspelt filter would pass here unseen.
FILTERS = {
    "DescribeImages": {
        "architecture",
        "block-device-mapping.delete-on-termination",
        "block-device-mapping.device-name",
        "block-device-mapping.snapshot-id",
        "block-device-mapping.volume-size",
        "block-device-mapping.volume-type",
        "block-device-mapping.encrypted",
        "creation-date",
        "description",
        "ena-support",
        "hypervisor",
        "image-allowed",
        "image-id",
        "image-type",
        "is-public",
        "kernel-id",
        "manifest-location",
        "name",
        "owner-alias",
        "owner-id",
        "platform",
        "product-code",
        "product-code.type",
        "ramdisk-id",
        "root-device-name",
        "root-device-type",
        "source-image-id",
        "source-image-region",
        "source-instance-id",
        "state",
        "state-reason-code",
        "state-reason-message",
        "sriov-net-support",
        "tag-key",
        "tag-value",
        "virtualization-type",
    },
    "DescribeInstances": {
        "availability-zone",
        "image-id",
        "instance-id",
        "instance-state-code",
        "instance-state-name",
        "instance-type",
        "platform",
        "private-ip-address",
        "subnet-id",
        "tag-key",
        "tag-value",
        "vpc-id",
        "architecture",
        "dns-name",
        "iam-instance-profile.arn",
        "instance-lifecycle",
        "key-name",
        "launch-time",
        "owner-id",
        "private-dns-name",
        "reservation-id",
        "root-device-type",
    },
    "DescribeSnapshots": {
        "description",
        "encrypted",
        "owner-alias",
        "owner-id",
        "progress",
        "snapshot-id",
        "start-time",
        "status",
        "tag-key",
        "tag-value",
        "volume-id",
        "volume-size",
    },
}


def invalid_permission(operation: str, params: dict[str, Any]) -> str | None:
    """What EC2 refuses in a permission change and moto takes: an attribute or group it does not know."""
    if operation == "ModifySnapshotAttribute":
        if params.get("Attribute") not in ("createVolumePermission", "productCodes"):
            return f"attribute {params.get('Attribute')!r}"
        if params.get("OperationType") not in (None, "add", "remove"):
            return f"operation type {params.get('OperationType')!r}"
        groups = [str(group) for group in params.get("GroupNames", [])]
    elif operation == "ModifyImageAttribute" and "LaunchPermission" in params:
        if params.get("Attribute") not in (None, "launchPermission"):
            return f"attribute {params.get('Attribute')!r}"
        changes = params["LaunchPermission"].get("Add", []) + params["LaunchPermission"].get("Remove", [])
        groups = [str(change["Group"]) for change in changes if "Group" in change]
    else:
        return None
    unknown = [group for group in groups if group != "all"]
    return f"group {unknown[0]!r}" if unknown else None


def assumed_role(response: BaseResponse) -> Any:
    """The role session whose credentials signed the request (moto's record of the AssumeRole), if any."""
    authorization = response.headers.get("Authorization", "")
    access_key = authorization.split("Credential=", 1)[-1].split("/", 1)[0] if "Credential=" in authorization else ""
    backend = sts_backends[response.current_account]["aws"]
    return backend.get_assumed_role_from_access_key(access_key) if access_key else None


def shared_copy_refusal(
    source: Any, account: str, image_mappings: dict[str, list[dict[str, Any]]]
) -> EC2ClientError | None:
    """What EC2 answers when ``account`` copies ``source``, an image another account owns: it must be
    shared with the account (launch permission), and so must the snapshots behind it (create volume
    permission); an image from AWS Marketplace is never copied across accounts."""
    if not (source.is_public or {"UserId": account} in source.launch_permissions):
        return EC2ClientError("InvalidAMIID.NotFound", f"The image id '[{source.id}]' does not exist")
    if any(code.get("ProductCodeType", "marketplace") == "marketplace" for code in _product_codes(source)):
        return EC2ClientError("InvalidRequest", "Images from AWS Marketplace cannot be copied to another AWS account.")
    snapshot_ids = [source.ebs_snapshot.id] + [
        mapping["Ebs"]["SnapshotId"] for mapping in image_mappings.get(source.id, []) if "Ebs" in mapping
    ]
    for snapshot_id in snapshot_ids:
        snapshot = source.ec2_backend.snapshots.get(snapshot_id)
        if snapshot is not None and not (
            account in snapshot.create_volume_permission_userids or "all" in snapshot.create_volume_permission_groups
        ):
            return EC2ClientError("InvalidRequest", "You do not have permission to access the storage of this ami")
    return None


def _product_codes(ami: Any) -> list[dict[str, str]]:
    return [code if isinstance(code, dict) else {"ProductCodeId": str(code)} for code in ami.product_codes]


def flatten_event(node: Any, prefix: str = "", result: dict[str, Any] | None = None) -> dict[str, Any]:
    """An event as dotted paths for moto's pattern matcher, arrays of objects included: EventBridge
    matches ``{"items": {"key": [...]}}`` against any element of ``items`` (CloudTrail's request
    parameters are such arrays); moto stops at the array and never matches."""
    result = {} if result is None else result
    if not isinstance(node, dict):
        return result
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            flatten_event(value, path, result)
        elif isinstance(value, list) and value and all(isinstance(element, dict) for element in value):
            for element in value:
                for inner, found in flatten_event(element, path).items():
                    result.setdefault(inner, []).extend(found if isinstance(found, list) else [found])
        else:
            result[path] = value
    return result


def refused_command(account_id: str, region: str, params: dict[str, Any]) -> SSMException | None:
    """What SSM refuses and moto sends: a document that does not exist, a parameter it does not
    declare, or a value outside its allowedValues or allowedPattern."""
    name = str(params.get("DocumentName", ""))
    found = ssm_backends[account_id][region]._documents.get(name)
    if found is None:
        return InvalidDocument(f"Document {name} does not exist in {region}")
    declared = yaml.safe_load(found.get_default_version().content).get("parameters", {})
    for key, values in (params.get("Parameters") or {}).items():
        spec = declared.get(key)
        if spec is None:
            return SSMException("InvalidParameters", f"Document {name} does not support parameter {key}")
        for value in values:
            allowed = spec.get("allowedValues")
            pattern = spec.get("allowedPattern")
            if (allowed and value not in allowed) or (pattern and not re.fullmatch(pattern, value)):
                return SSMException("InvalidParameters", f"Parameter {key} of {name} does not allow {value!r}")
    return None


INSTANCE_STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}
# The calls EC2 answers with each instance's state right after it (the answer's list of changes).
STATE_CHANGES = {"StopInstances": "StoppingInstances", "StartInstances": "StartingInstances"}
CAN_START = ("stopped", "pending", "running")  # starting one that runs changes nothing
CAN_STOP = ("running", "stopping", "stopped")
VISIBLE_AFTER_SECONDS = 60  # how long a new image may answer InvalidAMIID.NotFound (hide_new_images)
MAX_TAG_KEY, MAX_TAG_VALUE, MAX_TAGS_PER_RESOURCE = 128, 256, 50  # EC2's limits, which moto does not check


def invalid_tags(operation: str, params: dict[str, Any]) -> tuple[str, str] | None:
    """(code, message) for tags EC2 refuses and moto takes: too long a key or value, the reserved aws:
    prefix, or more than 50 on one resource (CreateTags, and the TagSpecifications of CreateImage,
    CopyImage and RunInstances)."""
    if operation == "CreateTags":
        groups = [params.get("Tags", [])]
    elif operation in ("CreateImage", "CopyImage", "RunInstances"):
        groups = [spec.get("Tags", []) for spec in params.get("TagSpecifications", [])]
    else:
        return None
    for tags in groups:
        if len(tags) > MAX_TAGS_PER_RESOURCE:
            return "TagLimitExceeded", f"The maximum number of tags ({MAX_TAGS_PER_RESOURCE}) has been exceeded"
        for tag in tags:
            key, value = str(tag.get("Key", "")), str(tag.get("Value", ""))
            if not key or len(key) > MAX_TAG_KEY or key.lower().startswith("aws:"):
                return (
                    "InvalidParameterValue",
                    f"Tag key {key[:40]!r} is empty, longer than {MAX_TAG_KEY} characters or reserved",
                )
            if len(value) > MAX_TAG_VALUE:
                return (
                    "InvalidParameterValue",
                    f"Tag value for {key!r} is longer than {MAX_TAG_VALUE} characters ({len(value)})",
                )
    return None


def unknown_filters(operation: str, params: dict[str, Any]) -> list[str]:
    known = FILTERS.get(operation)
    if known is None:
        return []
    names = [str(f.get("Name", "")) for f in params.get("Filters", [])]
    return [name for name in names if name not in known and not name.startswith("tag:")]


@dataclass
class Request:
    service: str
    operation: str
    region: str
    params: dict[str, Any]
    at: float


@dataclass
class _Throttle:
    """The next ``times`` calls of ``operation`` in ``region`` (``None``: in each Region, since EC2
    throttles per account and Region, and so that parallel branches each meet their own)."""

    operation: str
    region: str | None
    times: int
    used: dict[str, int] = field(default_factory=dict)  # Region -> calls taken


@dataclass
class _Pending:
    region: str
    ready_at: float
    final_state: str
    account: str = ""  # whose resource it is ("": the stack's account)


@dataclass
class World:
    clock: VirtualClock
    account_id: str = "123456789012"
    image_seconds: float = 0.0
    instance_stop_seconds: float = 0.0
    requests: list[Request] = field(default_factory=list)
    # The deployed stack as CloudFormation describes it (moto knows no stack the emulator deployed).
    stack: dict[str, Any] | None = None
    _image_outcome: dict[str, str] = field(default_factory=dict)  # region or "*" -> failed / never
    _region_image_seconds: dict[str, float] = field(default_factory=dict)
    _images: dict[str, _Pending] = field(default_factory=dict)
    _stopping: dict[str, _Pending] = field(default_factory=dict)
    _throttles: list[_Throttle] = field(default_factory=list)
    _lost: list[_Throttle] = field(default_factory=list)
    _refusals: list[tuple[_Throttle, str | None]] = field(default_factory=list)  # (calls, code; None: access denied)
    _after_calls: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    _unprotected_at: dict[str, float] = field(default_factory=dict)  # image -> when a cooldown ends
    _hidden_describes: int = 0
    _hidden: dict[str, int] = field(default_factory=dict)
    _copy_tokens: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (account, Region, token)
    _copy_asked: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # copy -> (source, its Region, name)
    _copy_routes: dict[str, tuple[str, str]] = field(default_factory=dict)  # copy -> (destination, source Region)
    # EC2's token buckets (for the deployed functions' calls) and copy quota.
    limits: Ec2Limits = field(default_factory=Ec2Limits)
    # The events AWS sends about what happens here (EC2 AMI State Change), for the emulator to deliver.
    events: EventSchedule = field(init=False)
    image_lifetimes: dict[str, tuple[float, float]] = field(default_factory=dict)  # image -> (created, settled)
    _managed: dict[str, dict[str, str]] = field(default_factory=dict)  # instance -> SSM InstanceInformation
    _command_seconds: float = 0.0
    _command_outcome: str = "Success"
    _commands: dict[tuple[str, str], _Pending] = field(default_factory=dict)  # (command, instance) -> outcome
    _registration_seconds: float = 0.0
    _registrations: dict[str, tuple[float, dict[str, str], str]] = field(
        default_factory=dict
    )  # instance -> (at, info, region)
    _generalize_seconds: float | None = 0.0  # None: the instance never shuts down
    _generalize_outcome: str = "InProgress"  # what the command reports; sysprep's shutdown stops the agent reporting
    _generalize_stops_when_failing: bool = False
    _shutdowns: dict[str, _Pending] = field(default_factory=dict)  # instance -> when its generalize shuts it down
    _public_access: dict[str, str] = field(default_factory=dict)  # region -> image block public access state
    _status_check_seconds: float = 0.0
    _impaired_regions: set[str] = field(default_factory=set)
    _launched_at: dict[str, float] = field(default_factory=dict)  # instance -> virtual launch time
    deprecations: dict[str, str] = field(default_factory=dict)  # image -> DeprecateAt (moto lacks the call)
    launch_templates: LaunchTemplates = field(default_factory=LaunchTemplates)
    image_mappings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # images made with mappings
    fast_launch: dict[str, dict[str, Any]] = field(default_factory=dict)  # image -> its Windows fast launch
    protected: dict[str, bool] = field(default_factory=dict)  # image -> WithCooldown (moto lacks the call)
    image_references: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # image -> (type, ARN)
    _last_created: dict[str, datetime] = field(default_factory=dict)  # region -> newest image's CreationDate
    _lock: threading.RLock = field(default_factory=threading.RLock)
    # IAM: each call of a function or the state machine is evaluated against its role (the emulator
    # sets the roles from template.yaml); calls of the test or script driving the world are not.
    authorizer: Authorizer | None = None
    # Roles other accounts deployed for the stack (examples/target-account-role.yaml): ARN -> trust policy.
    trust_policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The tags of each session assumed into them: (role ARN, session name) -> tags (moto keeps none).
    session_tags: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events = EventSchedule(self.account_id)

    # --- what a test asks of the world ---------------------------------------------------------

    def images_take(self, seconds: float, region: str | None = None) -> None:
        """New images (in ``region``, or everywhere) stay pending for ``seconds`` of virtual time."""
        if region:
            self._region_image_seconds[region] = seconds
        else:
            self.image_seconds = seconds

    def images_fail(self, region: str = "*") -> None:
        """New images in ``region`` (``*``: everywhere) end ``failed`` instead of ``available``."""
        self._image_outcome[region] = "failed"

    def images_never_ready(self, region: str = "*") -> None:
        self._image_outcome[region] = "never"

    def instances_take_to_stop(self, seconds: float) -> None:
        self.instance_stop_seconds = seconds

    def throttle(self, operation: str, times: int, region: str | None = None) -> None:
        """The next ``times`` calls of ``operation`` (in ``region``, or in each Region) fail with
        RequestLimitExceeded."""
        with self._lock:
            self._throttles.append(_Throttle(operation, region, times))

    def lose_responses(self, operation: str, times: int, region: str | None = None) -> None:
        """The next ``times`` calls of ``operation`` (in ``region``, or in each Region) take effect, but the
        caller gets RequestLimitExceeded: the step is retried after doing its work, which is what
        idempotency is for."""
        with self._lock:
            self._lost.append(_Throttle(operation, region, times))

    def refuse(self, operation: str, times: int, code: str | None = None, region: str | None = None) -> None:
        """The next ``times`` calls of ``operation`` (any service; in ``region``, or in each Region) fail
        with ``code``, changing nothing: a permission missing in one Region (by default, the code the
        service answers a call IAM does not allow with), a service saying no."""
        with self._lock:
            self._refusals.append((_Throttle(operation, region, times), code))

    def calm(self) -> None:
        """Every throttle and refusal still pending is dropped: the bad hour is over."""
        with self._lock:
            self._throttles.clear()
            self._refusals.clear()

    def after_call(self, operation: str, action: Callable[[], None]) -> None:
        """Run ``action`` once, right after the next call of ``operation`` took effect (a fault that
        begins mid-step, e.g. throttling that starts just after StopInstances)."""
        with self._lock:
            self._after_calls.append((operation, action))

    def hide_new_images(self, describes: int) -> None:
        """Each new image answers InvalidAMIID.NotFound to its first ``describes`` DescribeImages made
        within VISIBLE_AFTER_SECONDS of its creation, and is not listed by a lookup by name (EC2's
        eventual consistency lasts seconds: an image looked at again when its event comes, minutes
        later, is visible)."""
        self._hidden_describes = describes

    def ssm_manage(self, instance_id: str, platform: str = "Linux", ping_status: str = "Online") -> None:
        """The SSM agent on ``instance_id`` is registered (``Windows`` or ``Linux``) and answers as ``ping_status``."""
        self._managed[instance_id] = {
            "InstanceId": instance_id,
            "PingStatus": ping_status,
            "PlatformType": platform,
            "AgentVersion": "3.3.0.0",
        }

    def commands_take(self, seconds: float) -> None:
        """Run Command invocations sent from now on stay InProgress for ``seconds`` of virtual time."""
        self._command_seconds = seconds

    def commands_fail(self) -> None:
        """Run Command invocations sent from now on end Failed (the script exited non-zero)."""
        self._command_outcome = "Failed"

    def clones_take_to_register(self, seconds: float) -> None:
        """Instances launched from an image of a managed instance come online in SSM ``seconds`` after launch."""
        self._registration_seconds = seconds

    def generalize_takes(self, seconds: float) -> None:
        """The generalize command shuts its instance down ``seconds`` after it is sent (and never reports success)."""
        self._generalize_seconds, self._generalize_outcome = seconds, "InProgress"

    def generalize_never_stops(self) -> None:
        self._generalize_seconds, self._generalize_outcome = None, "InProgress"

    def generalize_fails(self, seconds: float = 60, then_stops: bool = False, status: str = "Failed") -> None:
        """The generalize command ends ``status`` (Failed, TimedOut, ...) after ``seconds``; with
        ``then_stops`` the instance shuts down anyway."""
        self._generalize_seconds, self._generalize_outcome = seconds, status
        self._generalize_stops_when_failing = then_stops

    def status_checks_take(self, seconds: float) -> None:
        """New instances report ``initializing`` status checks for ``seconds`` after launch (moto: ok at once)."""
        self._status_check_seconds = seconds

    def status_checks_fail(self, region: str) -> None:
        """Instances in ``region`` fail their instance status check (``impaired``): an image that does not boot."""
        self._impaired_regions.add(region)

    def image_block_public_access(self, region: str, state: str) -> None:
        """``unblocked`` or ``block-new-sharing``; like a new AWS account, every Region starts blocked."""
        self._public_access[region] = state

    def set_platform(self, region: str, instance_id: str, platform: str | None) -> None:
        """``windows`` makes EC2 describe the instance as Windows (moto's default is Linux)."""
        ec2_backends[self.account_id][region].get_instance(instance_id).platform = platform

    def set_instance_state(self, region: str, instance_id: str, state: str) -> None:
        """Put an instance in a state moto passes through at once (``shutting-down``, ``stopping``)."""
        instance = ec2_backends[self.account_id][region].get_instance(instance_id)
        instance._state.name, instance._state.code = state, INSTANCE_STATE_CODES[state]

    def _instance_states(self, region: str, operation: str, params: dict[str, Any]) -> dict[str, str]:
        """Before StopInstances or StartInstances: the state of each instance named that exists (moto
        answers for one that does not)."""
        if operation not in STATE_CHANGES:
            return {}
        known = {
            instance.id: instance._state.name for instance in ec2_backends[self.account_id][region].all_instances()
        }
        return {
            instance_id: known[instance_id] for instance_id in params.get("InstanceIds", []) if instance_id in known
        }

    def _incorrect_state(self, region: str, operation: str, params: dict[str, Any]) -> EC2ClientError | None:
        """EC2 refuses to start or stop an instance on its way somewhere else (moto starts a stopping,
        even a terminated, instance)."""
        allowed = CAN_START if operation == "StartInstances" else CAN_STOP
        for instance_id, state in self._instance_states(region, operation, params).items():
            if state not in allowed:
                verb = "started" if operation == "StartInstances" else "stopped"
                return EC2ClientError(
                    "IncorrectInstanceState",
                    f"The instance '{instance_id}' is not in a state from which it can be {verb}.",
                )
        return None

    def _state_change(self, region: str, operation: str, before: dict[str, str]) -> dict[str, Any]:
        """StopInstances and StartInstances answered as EC2 answers them: each instance's state right
        after the call (``stopping``, ``pending``), where moto names the state it ends in. A stop the
        world makes take no time is ``stopped`` at once; the world starts instances at once, so an
        instance described after ``pending`` is ``running``, as it soon is on AWS."""
        backend = ec2_backends[self.account_id][region]
        changes = []
        for instance_id, previous in before.items():
            current = backend.get_instance(instance_id)._state.name
            if operation == "StartInstances" and previous in ("stopped", "stopping") and current == "running":
                current = "pending"
            changes.append(
                {
                    "InstanceId": instance_id,
                    "PreviousState": {"Code": INSTANCE_STATE_CODES[previous], "Name": previous},
                    "CurrentState": {"Code": INSTANCE_STATE_CODES[current], "Name": current},
                }
            )
        return {STATE_CHANGES[operation]: changes}

    @contextmanager
    def chosen_ids(
        self, instance: str | None = None, image: str | None = None, launch_template: str | None = None
    ) -> Iterator[None]:
        """The next instance, image or launch template made inside takes the id given (moto draws
        random ones): for a world whose resources must carry the ids written in the samples."""
        chosen = {
            "moto.ec2.models.instances.random_instance_id": instance,
            "moto.ec2.models.amis.random_ami_id": image,
            "moto.ec2.models.launch_templates.random_launch_template_id": launch_template,
        }
        with ExitStack() as stack:
            for target, wanted in chosen.items():
                if wanted is not None:
                    module, _, name = target.rpartition(".")
                    drawn = getattr(importlib.import_module(module), name)
                    stack.enter_context(mock.patch(target, _once(wanted, drawn)))
            yield

    def set_root_device_type(self, region: str, instance_id: str, root_device_type: str) -> None:
        ec2_backends[self.account_id][region].get_instance(instance_id).root_device_type = root_device_type

    # --- what a test reads back ----------------------------------------------------------------

    def calls(self, service: str | None = None) -> Counter[str]:
        with self._lock:
            return Counter(r.operation for r in self.requests if service is None or r.service == service)

    def images_own_time(self) -> float:
        """Virtual seconds from the first image's creation to the last one settling: AWS's share of a run."""
        with self._lock:
            spans = [span for span in self.image_lifetimes.values() if span[1] != math.inf]
        return max(end for _, end in spans) - min(start for start, _ in spans) if spans else 0.0

    def sent(self, operation: str, region: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.operation == operation and (region is None or r.region == region)]

    # --- the hooks -----------------------------------------------------------------------------

    def _unauthorized(self, response: BaseResponse, service: str, operation: str, params: dict[str, Any]) -> Any:
        """The service's refusal when the calling role may not make this call, else None."""
        principal = current_principal(response.headers)
        if self.authorizer is None or principal is None:
            return None
        account = response.current_account
        tags: dict[str, str] = {}
        if account != self.account_id:  # a function acting with a role it assumed in another account
            assumed = assumed_role(response)
            if assumed is None:
                return None
            principal = (f"{account}:{assumed.role_arn.rsplit('/', 1)[-1]}", assumed.session_name)
            tags = self.session_tags.get((assumed.role_arn, assumed.session_name), {})
        prefix = IAM_PREFIX.get(service, service)
        if account != self.account_id and (function := os.environ.get("AWS_LAMBDA_FUNCTION_NAME")):
            # The session is the account's; the call is still the function's (invocations run one at
            # a time, in their function's environment), and Init loaded the service for it.
            self.authorizer.called.setdefault(function, set()).add(prefix)
        action = IAM_ACTIONS.get((prefix, operation), operation)
        refusal = self.authorizer.check(
            principal, AuthorizationRequest(account, response.region, prefix, action, params, principal_tags=tags)
        )
        if refusal is None:
            return None
        code, message = refusal_error(service, refusal)
        if service == "ec2":
            return response.serialized(ActionResult(EC2ClientError(code, message)))
        return _refused(response, code, message)

    def _assume_role_refusal(self, response: BaseResponse, params: dict[str, Any]) -> STSClientError | None:
        """STS's AccessDenied when a function assumes a role in another account whose trust policy does
        not let its role (moto lets anyone assume anything); None: moto answers."""
        principal = current_principal(response.headers)
        role_arn = str(params.get("RoleArn", ""))
        session = str(params.get("RoleSessionName", ""))
        if not re.fullmatch(r"[\w+=,.@-]{2,64}", session):  # moto takes any name
            return STSClientError(
                "ValidationError",
                f"1 validation error detected: Value '{session}' at 'roleSessionName' failed to satisfy constraint: "
                f"Member must satisfy regular expression pattern: [\\w+=,.@-]*",
            )
        if principal is None or self.authorizer is None or role_arn.split(":")[4:5] == [self.account_id]:
            return None
        caller = self.authorizer.role_arns.get(principal[0], f"arn:aws:iam::{self.account_id}:role/{principal[0]}")
        trust = self.trust_policies.get(role_arn)
        tags = session_tags(params)
        actions = ["sts:AssumeRole", *(["sts:TagSession"] if tags else [])]
        if trust is not None and all(
            trust_allows(trust, role_arn, caller, params.get("ExternalId"), action) for action in actions
        ):
            self.session_tags[(role_arn, session)] = tags
            return None
        return STSClientError(
            "AccessDenied",
            f"User: arn:aws:sts::{self.account_id}:assumed-role/{principal[0]}/{principal[1]} is not authorized to "
            f"perform: sts:AssumeRole on resource: {role_arn}",
        )

    def _refusal(self, service: str, operation: str, region: str) -> str | None:
        """The error code of the first matching refusal, using up one of its calls."""
        with self._lock:
            for rule, code in self._refusals:
                if self._take([rule], operation, region):
                    return code or access_denied_code(service)
        return None

    def _run_after_calls(self, operation: str) -> None:
        with self._lock:
            due = [entry for entry in self._after_calls if entry[0] == operation]
            for entry in due:
                self._after_calls.remove(entry)
        for _, action in due:
            with as_operator():  # what the test does in the middle of a call is the test's, not the caller's
                action()

    def _take(self, rules: list[_Throttle], operation: str, region: str) -> bool:
        """Use up one call of the first matching rule."""
        with self._lock:
            for rule in rules:
                used = rule.used.get(region, 0)
                if used < rule.times and rule.operation == operation and rule.region in (None, region):
                    rule.used[region] = used + 1
                    return True
        return False

    def _tick(self, region: str) -> None:
        """Let virtual time act in ``region``, at the caller's time: pending images settle, stopping
        instances stop. Only the caller's Region: a Map branch's Region is its own, so one branch
        getting ahead never settles what another branch is still waiting for."""
        now = self.clock.now()
        for image_id, pending in list(self._images.items()):
            if pending.region == region and now >= pending.ready_at:
                ami = ec2_backends[pending.account or self.account_id][pending.region].amis.get(image_id)
                if ami is not None:
                    ami.state = pending.final_state
                del self._images[image_id]
        for instance_id, pending in list(self._stopping.items()):
            if pending.region == region and now >= pending.ready_at:
                instance = ec2_backends[self.account_id][pending.region].get_instance(instance_id)
                if instance._state.name == "stopping":
                    instance._state.name, instance._state.code = "stopped", 80
                del self._stopping[instance_id]
        for instance_id, (at, info, where) in list(self._registrations.items()):
            if where == region and now >= at:
                self._managed[instance_id] = info
                del self._registrations[instance_id]
        for instance_id, pending in list(self._shutdowns.items()):
            if pending.region == region and now >= pending.ready_at:
                backend = ec2_backends[self.account_id][pending.region]
                if backend.get_instance(instance_id)._state.name == "running":
                    backend.stop_instances([instance_id])
                del self._shutdowns[instance_id]

    def _new_image(self, region: str, ami: Any) -> None:
        # EC2 reports CreationDate to the second; runs here are milliseconds apart, so each new image of a
        # Region is dated at least a second after the previous one, keeping "newest" meaningful.
        previous = self._last_created.get(region)
        if previous is not None and ami.creation_date.replace(microsecond=0) <= previous:
            ami.creation_date = previous + timedelta(seconds=1)
        ami.creation_date = ami.creation_date.replace(microsecond=0)
        self._last_created[region] = ami.creation_date
        outcome = self._image_outcome.get(region) or self._image_outcome.get("*") or "available"
        seconds = self._region_image_seconds.get(region, self.image_seconds)
        ready_at = math.inf if outcome == "never" else self.clock.now() + seconds
        self.image_lifetimes[ami.id] = (self.clock.now(), ready_at)
        final_state = "failed" if outcome == "failed" else "available"
        account = ami.ec2_backend.account_id
        if ready_at > self.clock.now() or final_state != "available":
            ami.state = "pending"
            self._images[ami.id] = _Pending(region, ready_at, final_state, account)
        # Another account's images tell that account's bus, where nothing of the stack's listens.
        if ready_at != math.inf and account == self.account_id:
            self.events.image_state_changed(region, ami.id, final_state, ready_at)
        if self._hidden_describes:
            self._hidden[ami.id] = self._hidden_describes

    def _intercept_ssm(
        self, region: str, operation: str, params: dict[str, Any]
    ) -> dict[str, Any] | SSMException | None:
        """Answers moto cannot give: managed instances, and invocations that take time or fail."""
        self._tick(region)
        if code := self._refusal("ssm", operation, region):
            return SSMException(code, f"User is not authorized to perform: ssm:{operation}")
        if operation == "SendCommand" and (refused := refused_command(self.account_id, region, params)):
            return refused
        if operation == "DescribeInstanceInformation":
            wanted = [value for f in params.get("Filters", []) if f["Key"] == "InstanceIds" for value in f["Values"]]
            return {
                "InstanceInformationList": [info for iid, info in self._managed.items() if not wanted or iid in wanted]
            }
        if operation == "GetCommandInvocation":
            pending = self._commands.get((params["CommandId"], params["InstanceId"]))
            if pending is None:
                return None
            status = pending.final_state if self.clock.now() >= pending.ready_at else "InProgress"
            return {
                "CommandId": params["CommandId"],
                "InstanceId": params["InstanceId"],
                "Status": status,
                "StatusDetails": status,
                "ResponseCode": {"Success": 0, "Failed": 1}.get(status, -1),
            }
        return None

    def _intercept(self, response: BaseResponse, operation: str, params: dict[str, Any]) -> Any:
        """Runs before moto handles an EC2 call; returns an error or an answer to give instead."""
        self._tick(response.region)
        if self._take(self._throttles, operation, response.region):
            return EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
        # The buckets count the deployed functions' calls; the test or script setting the world up (a
        # person's calls, made before or beside the runs) is not throttled.
        if current_principal(response.headers) is not None and (
            throttled := self.limits.admit(response.region, operation, params, self.clock.now())
        ):
            return throttled
        if code := self._refusal("ec2", operation, response.region):
            return EC2ClientError(code, f"You are not authorized to perform this operation ({operation}).")
        if operation == "CopyImage" and (
            refused := self._copy_quota(response.current_account, response.region, params)
        ):
            return refused
        if operation in STATE_CHANGES and (refused := self._incorrect_state(response.region, operation, params)):
            return refused
        if unknown := unknown_filters(operation, params):
            return EC2ClientError("InvalidParameterValue", f"The filter '{unknown[0]}' is invalid")
        if problem := invalid_tags(operation, params):
            return EC2ClientError(*problem)
        if invalid := invalid_permission(operation, params):
            return EC2ClientError("InvalidParameterValue", f"{operation}: the {invalid} is invalid")
        if operation == "RunInstances" and params.get("ClientToken"):
            launched = self._launched_with_token(response.region, str(params["ClientToken"]))
            if launched is not None:
                return launched
        if operation == "DescribeInstanceStatus" and (self._impaired_regions or self._status_check_seconds):
            return self._instance_statuses(response.region, params.get("InstanceIds", []))
        if operation == "GetImageBlockPublicAccessState":
            return {"ImageBlockPublicAccessState": self._public_access.get(response.region, "block-new-sharing")}
        if operation in LAUNCH_TEMPLATE_CALLS:
            backend = ec2_backends[self.account_id][response.region]
            if (answer := self.launch_templates.answer(backend, response.region, operation, params)) is not None:
                return answer
        if operation in ("EnableFastLaunch", "DisableFastLaunch", "DescribeFastLaunchImages"):
            return self._fast_launch(response.region, operation, params)
        if operation == "DeregisterImage" and params.get("ImageId") in self.fast_launch:
            return EC2ClientError(
                "InvalidParameterValue",
                f"Windows fast launch is enabled for {params['ImageId']}: disable it before deregistering the image",
            )
        if operation == "ModifyImageAttribute" and "ImdsSupport" in params:
            return self._imds_support(response.region, params)
        if operation == "EnableImageDeprecation":
            self.deprecations[params["ImageId"]] = params["DeprecateAt"]
            return {"Return": True}
        if operation == "EnableImageDeregistrationProtection":
            self.protected[params["ImageId"]] = str(params.get("WithCooldown", "false")).lower() == "true"
            state = "enabled-with-cooldown" if self.protected[params["ImageId"]] else "enabled-without-cooldown"
            ami: Any = ec2_backends[self.account_id][response.region].amis.get(params["ImageId"])
            if ami is not None:
                ami.deregistration_protection = state  # moto's DescribeImages shows it, as AWS does
            return {"Return": state}
        if operation == "DisableImageDeregistrationProtection":
            image_id = params["ImageId"]
            if image_id in self.protected:
                # With a cooldown the protection lasts 24 hours after it is disabled.
                self._unprotected_at[image_id] = self.clock.now() + (86400 if self.protected[image_id] else 0)
            ami = ec2_backends[self.account_id][response.region].amis.get(image_id)
            if ami is not None:
                ami.deregistration_protection = "disabled"  # EC2 refuses the deregistration until the cooldown ends
            return {"Return": "disabled"}
        if operation == "DeregisterImage" and params.get("ImageId") in self.protected:
            image_id = params["ImageId"]
            if self.clock.now() < self._unprotected_at.get(image_id, math.inf):
                return EC2ClientError(
                    "InvalidParameterValue", f"Image {image_id} has deregistration protection enabled"
                )
        if operation == "DescribeRegions":
            return self._regions(response.region, params)
        if operation == "DescribeImageReferences":
            return {
                "ImageReferences": [
                    {"ImageId": image_id, "ResourceType": kind, "Arn": arn}
                    for image_id in params.get("ImageIds", [])
                    for kind, arn in self.image_references.get(image_id, [])
                ]
            }
        if operation == "DescribeImages":
            for image_id in params.get("ImageIds", []):
                if self._still_hidden(image_id):
                    return EC2ClientError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
            # A lookup by name lists nothing while the image is new (as EC2 may, for a few seconds).
            names = {value for f in params.get("Filters", []) if f.get("Name") == "name" for value in f["Values"]}
            amis = ec2_backends[self.account_id][response.region].amis
            named = [image_id for image_id in list(self._hidden) if image_id in amis and amis[image_id].name in names]
            if any(self._still_hidden(image_id) for image_id in named):
                return {"Images": []}
        return None

    def _fast_launch(self, region: str, operation: str, params: dict[str, Any]) -> EC2ClientError | dict[str, Any]:
        """moto lacks Windows fast launch: the world keeps each image's settings (enabled at once)."""
        if operation == "DescribeFastLaunchImages":
            wanted = params.get("ImageIds") or list(self.fast_launch)
            return {"FastLaunchImages": [self.fast_launch[i] for i in wanted if i in self.fast_launch]}
        image_id = params.get("ImageId", "")
        ami: Any = ec2_backends[self.account_id][region].amis.get(image_id)
        if ami is None:
            return EC2ClientError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        if operation == "DisableFastLaunch":
            settings = self.fast_launch.pop(image_id, None)
            if settings is None:
                return EC2ClientError("InvalidParameterValue", f"Windows fast launch is not enabled for {image_id}")
            return {**settings, "State": "disabling"}
        if str(ami.platform or "").lower() != "windows":
            return EC2ClientError(
                "InvalidParameterValue", f"{image_id} is not a Windows AMI: fast launch is for Windows"
            )
        parallel = int(params.get("MaxParallelLaunches") or 6)
        if parallel < 6:
            return EC2ClientError("InvalidParameterValue", "MaxParallelLaunches must be at least 6")
        count = int((params.get("SnapshotConfiguration") or {}).get("TargetResourceCount") or 5)
        self.fast_launch[image_id] = {
            "ImageId": image_id,
            "ResourceType": "snapshot",
            "SnapshotConfiguration": {"TargetResourceCount": count},
            "MaxParallelLaunches": parallel,
            "State": "enabled",
        }
        return {**self.fast_launch[image_id], "State": "enabling"}

    def _imds_support(self, region: str, params: dict[str, Any]) -> EC2ClientError | dict[str, Any]:
        """moto ignores ImdsSupport: EC2 takes only v2.0, and DescribeImages shows it from then on."""
        value = (params["ImdsSupport"] or {}).get("Value")
        if value != "v2.0":
            return EC2ClientError("InvalidParameterValue", f"Value ({value}) for parameter imdsSupport is invalid")
        ami: Any = ec2_backends[self.account_id][region].amis.get(params["ImageId"])
        if ami is None:
            return EC2ClientError("InvalidAMIID.NotFound", f"The image id '[{params['ImageId']}]' does not exist")
        ami.imds_support = value
        return {}

    def _still_hidden(self, image_id: str) -> bool:
        """Whether this describe of a new image (hide_new_images) is one it does not answer; counts it."""
        created = self.image_lifetimes.get(image_id, (self.clock.now(), 0.0))[0]
        if self._hidden.get(image_id, 0) > 0 and self.clock.now() - created < VISIBLE_AFTER_SECONDS:
            self._hidden[image_id] -= 1
            return True
        return False

    def _regions(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeRegions as EC2 answers it: the partition's Regions only (moto lists China's and
        GovCloud's too), enabled ones unless AllRegions, and the opt-in-status filter applied (moto
        ignores filters)."""
        wanted = {value for f in params.get("Filters", []) if f["Name"] == "opt-in-status" for value in f["Values"]}
        everything = str(params.get("AllRegions", "")).lower() == "true"
        return {
            "Regions": [
                {"RegionName": known.name, "Endpoint": known.endpoint, "OptInStatus": known.opt_in_status}
                for known in ec2_backends[self.account_id][region].describe_regions(params.get("RegionNames"))
                if not known.name.startswith(("cn-", "us-gov-", "us-iso"))
                and (everything or known.opt_in_status != "not-opted-in")
                and (not wanted or known.opt_in_status in wanted)
            ]
        }

    def _copy_quota(self, account: str, destination: str, params: dict[str, Any]) -> EC2ClientError | None:
        """EC2's concurrent-copy quota (per account); a retry with a ClientToken EC2 already took starts no copy."""
        if (account, destination, str(params.get("ClientToken") or "")) in self._copy_tokens:
            return None
        return copy_quota_refusal(
            destination, str(params.get("SourceRegion", "")), self.copies_in_flight(destination, account)
        )

    def copies_in_flight(self, destination: str, account: str | None = None) -> list[str]:
        """The source Regions of the copies into ``destination`` (of ``account``, default the stack's) that
        EC2 counts against its quota at the caller's time: not finished yet, and not deregistered (which
        cancels a copy)."""
        now, amis = self.clock.now(), ec2_backends[account or self.account_id][destination].amis
        return [
            source
            for image_id, (into, source) in self._copy_routes.items()
            if into == destination and image_id in amis and self.image_lifetimes[image_id][1] > now
        ]

    def _after(self, region: str, operation: str, params: dict[str, Any]) -> EC2ClientError | None:
        """Runs after moto handled an EC2 call: the world's consequences, and a lost answer if asked for."""
        if operation == "StopInstances":
            self._after_stop(region, params)
        if operation in ("CreateTags", "DeleteTags"):
            self._emit_tag_changes(region, params)
        if operation == "DeregisterImage" and params["ImageId"] in ec2_backends[self.account_id][region].deleted_amis:
            self.events.image_state_changed(region, params["ImageId"], "deregistered", self.clock.now())
        if operation == "TerminateInstances":
            for instance_id in params.get("InstanceIds", []):
                self.events.instance_state_changed(region, instance_id, "terminated", self.clock.now())
        if self._take(self._lost, operation, region):
            return EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
        return None

    def _describe_stack(self, name: str) -> dict[str, Any] | None:
        """The deployed stack, by its name or id (None: moto answers, as for any stack it does not know)."""
        if self.stack is None or name not in (self.stack["StackName"], self.stack["StackId"]):
            return None
        return {"Stacks": [self.stack]}

    @contextmanager
    def installed(self) -> Iterator[World]:
        world = self
        original_call_action = BaseResponse.call_action

        def call_action(response: BaseResponse) -> Any:
            service = getattr(response, "service_name", "") or ""
            operation = response._get_action()
            params = _request_params(response)
            if (
                service in ("lambda", "awslambda") and operation == "Invoke"
            ):  # the function is named in the path, not the body
                params = {"FunctionName": unquote(response.path.split("/functions/")[-1].split("/")[0])}
            with world._lock:
                world.requests.append(Request(service, operation, response.region, params, world.clock.now()))
                if refused := world._unauthorized(response, service, operation, params):
                    return refused
                answer: Any = None
                if service not in ("ec2", "ssm") and (code := world._refusal(service, operation, response.region)):
                    return _refused(response, code, f"{operation} refused ({code})")
                if service == "ec2":
                    answer = world._intercept(response, operation, params)
                elif service == "ssm":
                    answer = world._intercept_ssm(response.region, operation, params)
                elif service == "kms":
                    world._mark_aws_managed_keys(response.region)
                elif service == "sts" and operation == "AssumeRole":
                    answer = world._assume_role_refusal(response, params)
                elif service == "cloudformation" and operation == "DescribeStacks":
                    answer = world._describe_stack(params.get("StackName", ""))
                elif service == "stepfunctions" and operation == "GetExecutionHistory":
                    answer = history_page(
                        execution_events(cast(Any, response).stepfunction_backend, params["executionArn"]), params
                    )
            if answer is not None:
                if service == "ec2" and not isinstance(answer, EC2ClientError):  # took effect: as moto's answers
                    world._run_after_calls(operation)
                    if world._take(world._lost, operation, response.region):
                        answer = EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
                return response.serialized(ActionResult(answer))
            states_before = world._instance_states(response.region, operation, params) if service == "ec2" else {}
            result = original_call_action(response)
            world._run_after_calls(operation)
            if service == "ssm" and operation == "SendCommand":
                world._after_send_command(result, response.region, params)
            if service == "ec2" and operation == "RunInstances":
                world._register_clones(response.region, params.get("ImageId", ""))
                world._record_image_launch(response.region, params.get("ImageId", ""))
                world._record_launches(response.region)
            lost = world._after(response.region, operation, params) if service == "ec2" else None
            if lost is not None:
                return response.serialized(ActionResult(lost))
            if states_before and result[0] == 200:
                return response.serialized(ActionResult(world._state_change(response.region, operation, states_before)))
            return result

        def create_image(response: AmisResponse) -> ActionResult:
            specs = response._get_param("TagSpecifications", [])
            name = response._get_param("Name")
            mappings = response._get_param("BlockDeviceMappings", [])
            response.error_on_dryrun()
            world._refuse_duplicate_name(response, name)
            if mappings and (
                refused := block_devices.refusal(response.ec2_backend, response._get_param("InstanceId"), mappings)
            ):
                raise refused
            image = response.ec2_backend.create_image(
                response._get_param("InstanceId"),
                name,
                response._get_param("Description", ""),
                tag_specifications=[spec for spec in specs if spec["ResourceType"] == "image"],
            )
            world._apply_tags(image.ebs_snapshot, specs, "snapshot")
            world._encrypt_like_root(response.ec2_backend, image)
            # An instance with data volumes makes an image with a snapshot of each (moto: the root only).
            instance = response.ec2_backend.get_instance(image.instance_id)
            if mappings or len(instance.block_device_mapping) > 1:
                made = block_devices.created(response.ec2_backend, image.instance_id, image, mappings)
                world.image_mappings[image.id] = made
                for snapshot in block_devices.snapshots(response.ec2_backend, made):
                    if snapshot is not image.ebs_snapshot:
                        world._apply_tags(snapshot, specs, "snapshot")
            with world._lock:
                world._new_image(response.region, image)
            return ActionResult({"ImageId": image.id})

        def copy_image(response: AmisResponse) -> ActionResult:
            token = response._get_param("ClientToken")
            account = response.current_account
            name = response._get_param("Name")
            asked = (response._get_param("SourceImageId"), response._get_param("SourceRegion"), name)
            with world._lock:
                if token and (account, response.region, token) in world._copy_tokens:
                    earlier = world._copy_tokens[(account, response.region, token)]
                    if world._copy_asked.get(earlier, asked) != asked:  # EC2: the token names one request
                        raise EC2ClientError(
                            "IdempotentParameterMismatch",
                            f"The client token {token} was used before with other parameters: use a new token",
                        )
                    return ActionResult({"ImageId": earlier})
            response.error_on_dryrun()
            world._refuse_duplicate_name(response, name)
            source_region, source_id = response._get_param("SourceRegion"), response._get_param("SourceImageId")
            owner = world.account_id if source_id not in ec2_backends[account][source_region].amis else account
            source = ec2_backends[owner][source_region].amis.get(source_id)
            if owner != account:  # an image another account shared: moto looks only in the caller's own
                if source is None:
                    raise EC2ClientError("InvalidAMIID.NotFound", f"The image id '[{source_id}]' does not exist")
                if refused := shared_copy_refusal(source, account, world.image_mappings):
                    raise refused
                image = Ami(
                    response.ec2_backend,
                    random_ami_id(),
                    source_ami=source,
                    name=name,
                    description=response._get_param("Description"),
                )
                response.ec2_backend.amis[image.id] = image
            else:
                image = response.ec2_backend.copy_image(
                    source_id, source_region, name, response._get_param("Description")
                )
            specs = response._get_param("TagSpecifications", [])
            world._apply_tags(image, specs, "image")
            world._apply_tags(image.ebs_snapshot, specs, "snapshot")
            copied_snapshots = [image.ebs_snapshot]
            if source_id in world.image_mappings:
                made = block_devices.copied(
                    block_devices.snapshot_copier(response.ec2_backend, ec2_backends[owner][source_region], image),
                    image,
                    source,
                    world.image_mappings[source_id],
                )
                world.image_mappings[image.id] = made
                copied_snapshots = block_devices.snapshots(response.ec2_backend, made)
                for snapshot in copied_snapshots:
                    if snapshot is not image.ebs_snapshot:
                        world._apply_tags(snapshot, specs, "snapshot")
            if str(response._get_param("Encrypted", "")).lower() == "true":  # moto copies unencrypted
                for snapshot in copied_snapshots:
                    snapshot.encrypted = True
                    snapshot.kms_key_id = response._get_param("KmsKeyId")
            with world._lock:
                if token:
                    world._copy_tokens[(account, response.region, token)] = image.id
                    world._copy_asked[image.id] = asked
                world._new_image(response.region, image)
                world._copy_routes[image.id] = (response.region, source_region)
            return ActionResult({"ImageId": image.id})

        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(EventPattern, "_flatten_dict", staticmethod(flatten_event)))
            stack.enter_context(mock.patch.object(BaseResponse, "call_action", call_action))
            stack.enter_context(mock.patch.object(AmisResponse, "create_image", create_image))
            stack.enter_context(mock.patch.object(AmisResponse, "copy_image", copy_image))
            original_mappings = Ami.block_device_mappings

            def block_device_mappings(ami: Any) -> list[dict[str, Any]]:
                """An image made with mappings is described with them (moto: one 15 GiB root)."""
                made = world.image_mappings.get(ami.id)
                return made if made is not None else cast(list[dict[str, Any]], original_mappings.fget(ami))  # type: ignore[attr-defined]

            stack.enter_context(mock.patch.object(Ami, "block_device_mappings", property(block_device_mappings)))
            yield self

    def _refuse_duplicate_name(self, response: AmisResponse, name: str) -> None:
        owned = response.ec2_backend.describe_images(owners=["self"], filters={"name": [name]})
        if owned:
            raise EC2ClientError("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {owned[0].id}")

    @staticmethod
    def _encrypt_like_root(backend: Any, image: Any) -> None:
        """An image's snapshot is encrypted with its instance's root volume key, as on AWS (moto
        snapshots a fresh unencrypted volume)."""
        instance = backend.get_instance(image.instance_id)
        mapping = instance.block_device_mapping
        # moto names the root /dev/sda1 whatever device the image's volume is on: the first is the root.
        root = mapping.get(instance.root_device_name) or next(iter(mapping.values()), None)
        volume = backend.get_volume(root.volume_id) if root is not None else None
        if volume is not None and volume.encrypted:
            image.ebs_snapshot.encrypted = True
            image.ebs_snapshot.kms_key_id = volume.kms_key_id

    @staticmethod
    def _apply_tags(resource: Any, specs: list[dict[str, Any]], resource_type: str) -> None:
        """What moto leaves out of a TagSpecification: snapshots on CreateImage, everything on CopyImage."""
        for spec in specs:
            if spec["ResourceType"] == resource_type:
                for tag in spec["Tags"]:
                    resource.add_tag(tag["Key"], tag["Value"])

    def _emit_tag_changes(self, region: str, params: dict[str, Any]) -> None:
        backend = ec2_backends[self.account_id][region]
        changed = sorted({tag["Key"] for tag in params.get("Tags", [])})
        for resource_id in params.get("Resources", []):
            if not resource_id.startswith("i-"):
                continue
            tags = {tag["key"]: tag["value"] for tag in backend.describe_tags(filters={"resource-id": [resource_id]})}
            event: dict[str, Any] = {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Tag Change on Resource",
                "source": "aws.tag",
                "account": self.account_id,
                "time": datetime.fromtimestamp(self.clock.now(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": region,
                "resources": [f"arn:aws:ec2:{region}:{self.account_id}:instance/{resource_id}"],
                "detail": {
                    "changed-tag-keys": changed,
                    "service": "ec2",
                    "resource-type": "instance",
                    "version": 1,
                    "tags": tags,
                },
            }
            for rule in list(events_backends[self.account_id][region].event_buses["default"].rules.values()):
                rule.send_to_targets(cast(EventMessageType, event), transform_input=False)

    def _after_send_command(self, result: Any, region: str, params: dict[str, Any]) -> None:
        command = json.loads(result[2])["Command"]
        now = self.clock.now()
        generalizing = str(command.get("Comment", "")).startswith(GENERALIZE_COMMENT)
        with self._lock:
            # The request's targets: moto answers a SendCommand without Targets with every instance of the Region.
            for instance_id in params.get("InstanceIds", []):
                key = (command["CommandId"], instance_id)
                if not generalizing:
                    ends_at = now + self._command_seconds
                    self._commands[key] = _Pending(region, ends_at, self._command_outcome)
                    self.events.command_status_changed(
                        region, command["CommandId"], instance_id, self._command_outcome, ends_at
                    )
                    continue
                failing = self._generalize_outcome != "InProgress"
                ends_at = now + (self._generalize_seconds if self._generalize_seconds is not None else math.inf)
                self._commands[key] = _Pending(region, ends_at if failing else math.inf, self._generalize_outcome)
                if failing and ends_at != math.inf:
                    self.events.command_status_changed(
                        region, command["CommandId"], instance_id, self._generalize_outcome, ends_at
                    )
                if ends_at != math.inf and (not failing or self._generalize_stops_when_failing):
                    self._shutdowns[instance_id] = _Pending(region, ends_at, "stopped")
                    self.events.instance_state_changed(region, instance_id, "stopped", ends_at)

    def _instance_statuses(self, region: str, instance_ids: list[str]) -> dict[str, Any]:
        backend = ec2_backends[self.account_id][region]
        statuses = []
        for instance_id in instance_ids:
            instance = backend.get_instance(instance_id)
            if instance._state.name != "running":
                continue
            booting = self.clock.now() < self._launched_at.get(instance_id, 0.0) + self._status_check_seconds
            status = "initializing" if booting else "impaired" if region in self._impaired_regions else "ok"
            statuses.append(
                {
                    "InstanceId": instance_id,
                    "AvailabilityZone": instance.placement,
                    "InstanceState": {"Code": 16, "Name": "running"},
                    "SystemStatus": {"Status": "initializing" if booting else "ok"},
                    "InstanceStatus": {"Status": status},
                }
            )
        return {"InstanceStatuses": statuses}

    def _mark_aws_managed_keys(self, region: str) -> None:
        """moto creates ``alias/aws/ebs`` (for an encrypted volume without a key) as a customer managed key."""
        for key in kms_backends[self.account_id][region].keys.values():
            if any(alias.startswith("alias/aws/") for alias in key.aliases):
                key.key_manager = "AWS"

    def _record_image_launch(self, region: str, image_id: str) -> None:
        """AWS records when an image was last launched (DescribeImages LastLaunchedTime); moto does not."""
        ami: Any = ec2_backends[self.account_id][region].amis.get(image_id)
        if ami is not None:
            # Wall-clock like moto's CreationDate, which the clean-up compares it with.
            ami.last_launched_time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _launched_with_token(self, region: str, token: str) -> dict[str, Any] | None:
        """RunInstances is idempotent by ClientToken (moto launches again): the same token in the same
        Region answers with the instances it launched, whatever state they are in now."""
        for reservation in ec2_backends[self.account_id][region].reservations.values():
            instances = [instance for instance in reservation.instances if instance.client_token == token]
            if instances:
                return {
                    "ReservationId": reservation.id,
                    "OwnerId": self.account_id,
                    "Instances": [
                        {"InstanceId": instance.id, "ImageId": instance.image_id, "State": {"Name": instance.state}}
                        for instance in instances
                    ],
                }
        return None

    def _record_launches(self, region: str) -> None:
        with self._lock:
            for instance in ec2_backends[self.account_id][region].all_instances():
                self._launched_at.setdefault(instance.id, self.clock.now())

    def _register_clones(self, region: str, image_id: str) -> None:
        """A new instance from an image of a managed instance carries its agent: it registers after booting."""
        backend = ec2_backends[self.account_id][region]
        image = backend.amis.get(image_id)
        source_info = self._managed.get(getattr(image, "instance_id", None) or "")
        if source_info is None:
            return
        with self._lock:
            for instance in backend.all_instances():
                if (
                    instance.image_id == image_id
                    and instance.id not in self._managed
                    and instance.id not in self._registrations
                ):
                    info = {**source_info, "InstanceId": instance.id, "PingStatus": "Online"}
                    self._registrations[instance.id] = (self.clock.now() + self._registration_seconds, info, region)

    def _after_stop(self, region: str, params: dict[str, Any]) -> None:
        stopped_at = self.clock.now() + max(0.0, self.instance_stop_seconds)
        with self._lock:
            for instance_id in params.get("InstanceIds", []):
                instance = ec2_backends[self.account_id][region].get_instance(instance_id)
                if instance._state.name != "stopped":
                    continue
                self.events.instance_state_changed(region, instance_id, "stopped", stopped_at)
                if self.instance_stop_seconds > 0:
                    instance._state.name, instance._state.code = "stopping", 64
                    self._stopping[instance_id] = _Pending(region, stopped_at, "stopped")


def _once(first: str, then: Callable[[], str]) -> Callable[[], str]:
    """``first`` on the first call, ``then()`` after it."""
    pending = [first]
    return lambda: pending.pop() if pending else then()
