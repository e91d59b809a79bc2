"""The emulator, in process: moto + the virtual clock + the world model + the in-process Lambda
runtime, with ``template.yaml`` deployed into it.

    with Emulator(parameters={"AllowedShareAccounts": "111122223333"}) as emu:
        instance_id = emu.launch_instance(name="web")
        result = emu.run({"instance_id": instance_id, "regions": ["eu-west-1"]})
        assert result.status == "SUCCEEDED"
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import os
import re
import threading
import time
import uuid
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
from moto import mock_aws
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.events.models import events_backends
from moto.kms import models as kms_models
from moto.kms import utils as kms_utils
from moto.stepfunctions.exceptions import InvalidExecutionInput
from moto.stepfunctions.parser.api import HistoryEventType
from moto.stepfunctions.parser.asl.eval.event.event_manager import EventManager
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
from moto.stepfunctions.parser.asl.utils import json_path
from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication
from moto.stepfunctions.parser.models import StepFunctionsParserBackend

from ami_factory.clients import boto3_client, use_client_factory
from ami_factory.errors import error_message
from ami_factory.settings import load_settings

from .authorization import Authorizer, Role, roles_of, translated
from .callbacks import event_driven_waits
from .clock import VirtualClock
from .cloudformation import CustomResourceAnswers
from .events import ScheduledEvent
from .iam import Call
from .iam import Resource as IamResource
from .runtime import FunctionCode, InProcessRuntime
from .template import Resolver, functions, load_template, parameter_values, resources_of_type
from .world import World

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ACCOUNT_ID = "123456789012"
STACK_NAME = "ami-factory-local"

# Making a boto3 client takes about 15 ms, and a test's emulator used to make some forty (one per
# service and Region, many more than once): clients are kept for the whole process instead. That is
# safe because moto's stubber is global (a client made before an emulator started reaches the next
# one's backends), the caller's identity is per thread (``authorization.acting_as``), and only
# clients that never retry are shared, so no retry quota or adaptive rate limiter carries over.
_POOL_LOCK = threading.Lock()
_FUNCTION_CLIENTS: dict[tuple[str, str], Any] = {}
_OPERATOR_CLIENTS: dict[tuple[str, str], Any] = {}


@functools.cache
def _shared_signing_key() -> Any:
    return kms_utils.generate_private_key("RSA_2048")


def _signing_key(key_spec: str) -> Any:
    """moto makes an RSA key pair for every KMS key, symmetric ones too (tens of ms each); a symmetric
    key never signs or verifies, so they all share one."""
    if key_spec == "SYMMETRIC_DEFAULT":
        return _shared_signing_key()
    return kms_utils.generate_private_key(key_spec)


def _pooled_client(service: Any, region: str) -> Any:
    """The functions' client for ``service`` in ``region``: shared while it cannot retry."""
    settings = load_settings()
    if settings.sdk_max_attempts != 1 or settings.sdk_retry_mode == "adaptive":
        return boto3_client(service, region)
    with _POOL_LOCK:
        if (service, region) not in _FUNCTION_CLIENTS:
            _FUNCTION_CLIENTS[(service, region)] = boto3_client(service, region)
        return _FUNCTION_CLIENTS[(service, region)]


TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}
IAM_USAGE_VARIABLE = "AMI_FACTORY_IAM_USAGE"
HISTORY_QUOTA = 25_000  # events in a Standard execution's history; Step Functions fails it past that
ENDING_EVENTS = {
    HistoryEventType.ExecutionFailed,
    HistoryEventType.ExecutionAborted,
    HistoryEventType.ExecutionTimedOut,
}

# What the emulator changes in the functions' environment, and why:
EMULATOR_ENVIRONMENT = {
    # Throttling reaches the state machine's Retry (virtual time), not boto3's retries and adaptive
    # rate limiter, which sleep in real time.
    "SDK_MAX_ATTEMPTS": "1",
    "SDK_RETRY_MODE": "standard",
    "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
}


@dataclass
class RunResult:
    execution_arn: str
    name: str
    status: str
    output: dict[str, Any] | None
    error: str | None
    cause: str | None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def transitions(self) -> int:
        """State transitions, as Step Functions bills them (one per state entered)."""
        return sum(1 for event in self.history if event["type"].endswith("StateEntered"))

    @property
    def cause_message(self) -> str:
        """The error message a failing Lambda reported (the cause is its JSON error body)."""
        return error_message(self.cause) or ""


@dataclass
class Deployment:
    state_machine_arn: str
    topic_arns: dict[str, str] = field(default_factory=dict)  # logical id -> topic ARN


class Emulator:
    def __init__(
        self,
        parameters: dict[str, str] | None = None,
        region: str = "us-east-1",
        project_root: Path = PROJECT_ROOT,
        log_level: str = "WARNING",
        enforce_iam: bool = True,
    ) -> None:
        self.region = region
        self.project_root = project_root
        self.parameter_overrides = dict(parameters or {})
        self.log_level = log_level
        self.clock = VirtualClock()
        self.world = World(self.clock, account_id=ACCOUNT_ID)
        # IAM is evaluated for every call a function or the state machine makes; enforce_iam=False
        # (no test uses it) only records what would be refused.
        self.authorizer = Authorizer(ACCOUNT_ID, enforcing=enforce_iam)
        self.world.authorizer = self.authorizer
        self.runtime = InProcessRuntime()
        self.deployment: Deployment | None = None
        self._schedules: dict[str, dict[str, Any]] = {}
        self._scheduled_rules: dict[str, dict[str, Any]] = {}
        # Executions whose end is being announced (the status-change event and its targets): a run
        # counts as over only once its janitor, if any, has finished.
        self._ending: set[str] = set()
        self._ending_lock = threading.Lock()
        self.status_changes: list[dict[str, Any]] = []  # every event sent, with what its targets returned or raised
        self.history_quota = HISTORY_QUOTA  # a test may lower it to play an execution outgrowing its history
        self._deployed: tuple[dict[str, str], dict[tuple[str, str], str], list[Path]] = ({}, {}, [])
        self._stack: ExitStack | None = None
        self.custom_resource_answers = CustomResourceAnswers()
        self._custom_resources: dict[str, dict[str, Any]] = {}  # logical id -> the properties it was made with
        self._firings: set[tuple[str, int]] = set()  # (scheduled rule, which of its firings) fired on the virtual clock
        self._firing_lock = threading.Lock()
        # AWS events and scheduled firings whose target failed (EventBridge retries, then drops them).
        self.failed_deliveries: list[tuple[dict[str, Any], str]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, failed: type[BaseException] | None, *_: object) -> None:
        self.stop()
        if failed is None:  # after a failure, its own error is the one to read
            self._check_clients_made_at_init()

    def start(self) -> None:
        stack = ExitStack()
        stack.enter_context(
            mock.patch.dict(
                os.environ,
                # moto's thousands of default AMIs make every Region's first call take seconds; the
                # emulator registers the one base image it needs instead. The account is moto's default
                # (ACCOUNT_ID), not pinned: a caller with credentials from AssumeRole into another
                # account's role is in that account, as on AWS.
                {
                    "AWS_DEFAULT_REGION": self.region,
                    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
                },
            )
        )
        stack.enter_context(
            mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}})
        )
        use_client_factory(_pooled_client)
        stack.enter_context(mock.patch.object(json_path, "parse", _parse_json_path))
        # ...and parses the whole ASL with ANTLR for every execution (about a second each); executions
        # get a fresh copy of the one parse instead, so none shares state with another.
        stack.enter_context(
            mock.patch.object(AmazonStateLanguageParser, "parse", _parse_once(AmazonStateLanguageParser.parse))
        )
        stack.enter_context(
            mock.patch.object(
                BaseExecutionWorkerCommunication,
                "terminated",
                self._announcing(BaseExecutionWorkerCommunication.terminated),
            )
        )
        stack.enter_context(
            mock.patch.object(
                StepFunctionsParserBackend,
                "start_execution",
                _named_executions(StepFunctionsParserBackend.start_execution),
            )
        )
        stack.enter_context(mock.patch.object(EventManager, "add_event", self._within_quota(EventManager.add_event)))
        # History events carry the virtual time (a wait of 45 minutes shows as one), as on AWS its real time.
        stack.enter_context(
            mock.patch.object(
                EventManager,
                "_get_current_timestamp",
                staticmethod(lambda: datetime.fromtimestamp(self.clock.now(), UTC)),
            )
        )
        stack.enter_context(mock.patch.object(kms_models, "generate_private_key", _signing_key))
        stack.enter_context(self.clock.installed())
        # StartRun paces a firing's starts (RunStartsPerMinute) in virtual time.
        stack.enter_context(mock.patch("ami_factory.triggers.sleep", self._pause))
        stack.enter_context(self.world.installed())
        stack.enter_context(self.runtime.installed())
        stack.enter_context(
            event_driven_waits(
                self.clock, self.world.events, self._waited_for, self._deliver_scheduled, self._next_firing
            )
        )
        stack.enter_context(self.custom_resource_answers.running())
        self.runtime.may_put_events = self._may_put_events
        self._stack = stack
        self.deployment = self._deploy()

    def stop(self) -> None:
        """Let the runs still going end first: an execution thread that outlived its emulator would go
        on calling AWS in the next one's world (and be recorded there)."""
        if self._stack is not None:
            try:
                self._finish_runs()
            finally:
                self._stack.close()
                self._stack = None
                self._record_iam_usage()
        use_client_factory(None)

    def _check_clients_made_at_init(self) -> None:
        """Every service a function called is one its handler loaded at Init (``clients=``): a service's
        model is most of a client's making, and made in a call it costs a 256 MB function up to about
        seven times what it costs at Init (ami_factory.handler). Calls made with another account's
        credentials count as the function's. ``make iam-report`` holds the other side: a service in
        ``clients=`` that no test path called."""
        cold = []
        for name, services in self.runtime.clients_made_at_init().items():
            without_client = self.authorizer.called.get(name, set()) - services
            if without_client:
                cold.append(f"{name} calls {sorted(without_client)}")
        if cold:
            raise AssertionError(
                f"{'; '.join(cold)} without making the client at Init: add them to its handler's clients"
            )

    def _record_iam_usage(self) -> None:
        """With AMI_FACTORY_IAM_USAGE=DIR (``make iam-report``), what each role was granted and used, and
        what services each function loaded at Init and called, one file per process (test workers run
        side by side)."""
        folder = os.environ.get(IAM_USAGE_VARIABLE)
        if folder:
            clients = [
                {
                    "function": name,
                    "made_at_init": sorted(services),
                    "called": sorted(self.authorizer.called.get(name, set())),
                }
                for name, services in self.runtime.clients_made_at_init().items()
            ]
            with open(Path(folder) / f"usage-{os.getpid()}.jsonl", "a", encoding="utf-8") as usage:
                usage.writelines(json.dumps(record) + "\n" for record in [*self.authorizer.usage(), *clients])

    def _finish_runs(self, timeout: float = 60.0) -> None:
        if self.deployment is None:
            return
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while (
            running := sfn.list_executions(stateMachineArn=self.state_machine_arn, statusFilter="RUNNING")["executions"]
        ) or self._ending:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"runs still going after {timeout}s of real time: {[e['name'] for e in running] or self._ending}"
                )
            time.sleep(0.02)

    # --- clients and fixtures -----------------------------------------------------------------

    def client(self, service: str, region: str | None = None) -> Any:
        """A boto3 client of any service on the emulator, for tests and scripts (the package's own
        clients are typed per service in ``ami_factory.clients``)."""
        key = (service, region or self.region)
        with _POOL_LOCK:
            if key not in _OPERATOR_CLIENTS:
                service_name: Any = service
                _OPERATOR_CLIENTS[key] = boto3.client(service_name, region_name=key[1])
            return _OPERATOR_CLIENTS[key]

    def launch_instance(
        self,
        name: str | None = None,
        state: str = "running",
        tags: dict[str, str] | None = None,
        region: str | None = None,
        encrypted: bool = False,
        kms_key_id: str | None = None,
        data_volumes: dict[str, int] | None = None,
    ) -> str:
        """A small EBS-backed instance to image, launched from a base image the emulator registers
        (``encrypted``: its volume uses ``kms_key_id``, else the Region's aws/ebs key)."""
        ec2 = self.client("ec2", region)
        base_image = ec2.register_image(Name=f"base-{time.monotonic_ns()}", RootDeviceName="/dev/xvda")["ImageId"]
        all_tags = {**({"Name": name} if name else {}), **(tags or {})}
        spec = (
            [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in all_tags.items()]}]
            if all_tags
            else []
        )
        key = {"KmsKeyId": kms_key_id} if kms_key_id else {}
        volumes = [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8, "Encrypted": True, **key}}] if encrypted else []
        if data_volumes:  # the root where moto says it is, then gp3 data volumes (device: GiB)
            volumes = volumes or [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}]
            volumes += [
                {"DeviceName": d, "Ebs": {"VolumeSize": gib, "VolumeType": "gp3"}} for d, gib in data_volumes.items()
            ]
        instance_id = ec2.run_instances(
            ImageId=base_image,
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.micro",
            TagSpecifications=spec,
            BlockDeviceMappings=volumes,
        )["Instances"][0]["InstanceId"]
        if state == "stopped":
            ec2.stop_instances(InstanceIds=[instance_id])
        return str(instance_id)

    @property
    def state_machine_arn(self) -> str:
        assert self.deployment, "the emulator is not started"
        return self.deployment.state_machine_arn

    # --- runs ---------------------------------------------------------------------------------

    def start_run(self, request: dict[str, Any], name: str | None = None) -> str:
        name = name or f"run-{len(self.runtime.invocations)}-{int(time.time() * 1000) % 10**8}"
        response = self.client("stepfunctions").start_execution(
            stateMachineArn=self.state_machine_arn, name=name, input=json.dumps(request)
        )
        return str(response["executionArn"])

    def start_runs(self, requests: list[tuple[dict[str, Any], str]]) -> list[str]:
        """Start several runs (request, name) at the same virtual time, as one schedule firing does:
        none of them moves the clock before the last has started."""
        with self.clock.held():
            return [self.start_run(request, name) for request, name in requests]

    def wait(self, execution_arn: str, timeout: float = 60.0) -> RunResult:
        """Wait (real time, bounded) for the run to end; virtual time makes this quick."""
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while True:
            described = sfn.describe_execution(executionArn=execution_arn)
            if described["status"] in TERMINAL and execution_arn not in self._ending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{execution_arn} still {described['status']} after {timeout}s of real time")
            time.sleep(0.02)
        pages = sfn.get_paginator("get_execution_history").paginate(
            executionArn=execution_arn, PaginationConfig={"PageSize": 1000}
        )
        history = [event for page in pages for event in page["events"]]
        output = described.get("output")
        return RunResult(
            execution_arn=execution_arn,
            name=described["name"],
            status=described["status"],
            output=json.loads(output) if output else None,
            error=described.get("error"),
            cause=described.get("cause"),
            history=history,
        )

    def run(self, request: dict[str, Any], name: str | None = None, timeout: float = 60.0) -> RunResult:
        return self.wait(self.start_run(request, name), timeout)

    # --- deploying template.yaml --------------------------------------------------------------

    def _deploy(self) -> Deployment:
        """Deploy template.yaml: functions, then the state machine they make up, then the triggers."""
        template = load_template(self.project_root / "template.yaml")
        parameters = parameter_values(template, self.parameter_overrides)
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::StackName": STACK_NAME,
        }
        role_arn = self.client("iam").create_role(
            RoleName=f"{STACK_NAME}-role",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        attributes: dict[tuple[str, str], str] = {}
        cfn = translated(template, self.region)  # what `sam deploy` sends: the functions' roles included
        paths = Resolver(parameters, pseudo, {})  # a role's path names the stack at most
        for logical_id, role in resources_of_type(cfn, "AWS::IAM::Role").items():
            path = paths.resolve(role["Properties"].get("Path", "/"))
            attributes[(logical_id, "Arn")] = f"arn:aws:iam::{ACCOUNT_ID}:role{path}{STACK_NAME}-{logical_id}"
            attributes[(logical_id, "Ref")] = f"{STACK_NAME}-{logical_id}"
        for logical_id in resources_of_type(cfn, "AWS::IAM::ManagedPolicy"):
            attributes[(logical_id, "Ref")] = f"arn:aws:iam::{ACCOUNT_ID}:policy/{STACK_NAME}-{logical_id}"
        for logical_id in resources_of_type(cfn, "AWS::Events::Rule"):
            attributes[(logical_id, "Arn")] = (
                f"arn:aws:events:{self.region}:{ACCOUNT_ID}:rule/{STACK_NAME}-{logical_id}"
            )
        resolver = Resolver(parameters, pseudo, attributes, template.get("Conditions", {}))
        self._deploy_tables(template, resolver, attributes)
        self._deploy_instance_profiles(template, resolver, attributes)
        self._deploy_documents(template, resolver, attributes)
        sns = self.client("sns")
        for logical_id in resources_of_type(template, "AWS::SNS::Topic"):
            attributes[(logical_id, "Ref")] = sns.create_topic(Name=f"{STACK_NAME}-{logical_id}")["TopicArn"]
        for subscription in resources_of_type(template, "AWS::SNS::Subscription").values():
            if resolver.condition_holds(subscription.get("Condition")):
                properties = resolver.resolve(subscription["Properties"])
                sns.subscribe(
                    TopicArn=properties["TopicArn"], Protocol=properties["Protocol"], Endpoint=properties["Endpoint"]
                )
        lambda_client = self.client("lambda")
        merged = functions(template)
        for logical_id, properties in merged.items():
            name = f"{STACK_NAME}-{logical_id}"
            attributes[(logical_id, "Arn")] = lambda_client.create_function(
                FunctionName=name,
                Runtime=properties["Runtime"],
                Role=role_arn,
                Handler=properties["Handler"],
                Code={"ZipFile": _placeholder_zip()},
                Timeout=int(properties.get("Timeout", 3)),
            )["FunctionArn"]
            attributes[(logical_id, "Ref")] = name
        ((machine_id, machine),) = resources_of_type(template, "AWS::Serverless::StateMachine").items()
        definition = render_definition(self.project_root, machine["Properties"], resolver)
        state_machine_arn = self.client("stepfunctions").create_state_machine(
            name=f"{STACK_NAME}-{machine_id}", definition=definition, roleArn=role_arn, type="STANDARD"
        )["stateMachineArn"]
        attributes[(machine_id, "Ref")] = state_machine_arn
        attributes[(machine_id, "Name")] = f"{STACK_NAME}-{machine_id}"
        self.runtime.state_machine_role = resolver.resolve(machine["Properties"]["Role"]).rsplit("/", 1)[-1]
        layer_dirs = [
            self.project_root / layer["Properties"]["ContentUri"]
            for layer in resources_of_type(template, "AWS::Serverless::LayerVersion").values()
        ]
        self._cfn = cfn
        self._deploy_roles(resolver)
        for logical_id, properties in merged.items():
            self._register_function(logical_id, properties, resolver, layer_dirs)
        self._deployed = (pseudo, attributes, layer_dirs)
        self._deploy_rules(template, resolver)
        self._deploy_custom_resources(template, resolver)
        self._schedules = {
            logical_id: resolver.resolve(schedule["Properties"])
            for logical_id, schedule in resources_of_type(template, "AWS::Scheduler::Schedule").items()
            if resolver.condition_holds(schedule.get("Condition"))
        }
        self.world.stack = self._described_stack(template, resolver, "CREATE_COMPLETE")
        return Deployment(
            state_machine_arn=state_machine_arn,
            topic_arns={key[0]: value for key, value in attributes.items() if key[1] == "Ref" and ":sns:" in value},
        )

    def _deploy_roles(self, resolver: Resolver) -> None:
        """Every role's policies as SAM deploys them, for the authorizer; who may invoke what."""
        roles = roles_of(self._cfn, resolver.resolve, lambda logical_id: f"{STACK_NAME}-{logical_id}", ACCOUNT_ID)
        foreign = {name: role for name, role in self.authorizer.roles.items() if ":" in name}  # other accounts'
        self.authorizer.roles = {role.name: role for role in roles.values()} | foreign
        self.authorizer.role_arns = {
            role.name: resolver.resolve({"Fn::GetAtt": [logical_id, "Arn"]}) for logical_id, role in roles.items()
        }
        self._function_roles = {
            logical_id: resolver.resolve(function["Properties"]["Role"]).rsplit("/", 1)[-1]
            for logical_id, function in resources_of_type(self._cfn, "AWS::Lambda::Function").items()
        }
        permissions: dict[str, set[str]] = {}
        for permission in resources_of_type(self._cfn, "AWS::Lambda::Permission").values():
            if not resolver.condition_holds(permission.get("Condition")):
                continue
            properties = resolver.resolve(permission["Properties"])
            if properties["Principal"] == "events.amazonaws.com" and properties["Action"] == "lambda:InvokeFunction":
                permissions.setdefault(properties["FunctionName"], set()).add(properties["SourceArn"])
        self.runtime.invoke_permissions = permissions

    def _deploy_tables(
        self, template: dict[str, Any], resolver: Resolver, attributes: dict[tuple[str, str], str]
    ) -> None:
        """DynamoDB tables (the run ledger) into moto, with their keys, billing, encryption and backups."""
        dynamodb = self.client("dynamodb")
        for logical_id, table in resources_of_type(template, "AWS::DynamoDB::Table").items():
            properties = resolver.resolve(table["Properties"])
            name = f"{STACK_NAME}-{logical_id}"
            described = dynamodb.create_table(
                TableName=name,
                KeySchema=properties["KeySchema"],
                AttributeDefinitions=properties["AttributeDefinitions"],
                BillingMode=properties["BillingMode"],
                SSESpecification={"Enabled": properties["SSESpecification"]["SSEEnabled"]},
            )["TableDescription"]
            recovery = properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"]
            dynamodb.update_continuous_backups(
                TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": recovery}
            )
            attributes[(logical_id, "Ref")] = name
            attributes[(logical_id, "Arn")] = described["TableArn"]

    def _deploy_instance_profiles(
        self, template: dict[str, Any], resolver: Resolver, attributes: dict[tuple[str, str], str]
    ) -> None:
        """Instance profiles (the clone's) and their roles into moto's IAM: RunInstances looks them up."""
        iam = self.client("iam")
        roles = resources_of_type(template, "AWS::IAM::Role")
        for logical_id, profile in resources_of_type(template, "AWS::IAM::InstanceProfile").items():
            name = f"{STACK_NAME}-{logical_id}"
            path = profile["Properties"].get("Path", "/")
            arn = iam.create_instance_profile(InstanceProfileName=name, Path=path)["InstanceProfile"]["Arn"]
            for role_name in resolver.resolve(profile["Properties"]["Roles"]):
                (role_id,) = [key for key in roles if attributes[(key, "Ref")] == role_name]
                iam.create_role(
                    RoleName=role_name,
                    Path=roles[role_id]["Properties"].get("Path", "/"),
                    AssumeRolePolicyDocument=json.dumps(roles[role_id]["Properties"]["AssumeRolePolicyDocument"]),
                )
                iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name)
            attributes[(logical_id, "Ref")] = name
            attributes[(logical_id, "Arn")] = arn

    def _deploy_documents(
        self, template: dict[str, Any], resolver: Resolver, attributes: dict[tuple[str, str], str]
    ) -> None:
        """The stack's SSM documents into moto's SSM (the world checks SendCommand against them)."""
        ssm = self.client("ssm")
        for logical_id, document in resources_of_type(template, "AWS::SSM::Document").items():
            properties = resolver.resolve(document["Properties"])
            name = f"{STACK_NAME}-{logical_id}"
            ssm.create_document(
                Name=name,
                Content=json.dumps(properties["Content"]),
                DocumentType=properties["DocumentType"],
                DocumentFormat="JSON",
            )
            attributes[(logical_id, "Ref")] = name

    def _register_function(
        self, logical_id: str, properties: dict[str, Any], resolver: Resolver, layer_dirs: list[Path]
    ) -> None:
        environment = {
            **resolver.resolve(properties["Environment"]["Variables"]),
            **EMULATOR_ENVIRONMENT,
            "POWERTOOLS_LOG_LEVEL": self.log_level,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }
        code = FunctionCode(
            name=resolver.resolve({"Ref": logical_id}),
            arn=resolver.resolve({"Fn::GetAtt": [logical_id, "Arn"]}),
            code_dir=self.project_root / properties["CodeUri"],
            handler=properties["Handler"],
            environment={key: str(value) for key, value in environment.items()},
            layer_dirs=layer_dirs,
            timeout=int(properties.get("Timeout", 3)),
            memory=int(properties.get("MemorySize", 128)),
            role=self._function_roles[logical_id],
        )
        self.runtime.register(code)

    def _deploy_rules(self, template: dict[str, Any], resolver: Resolver) -> None:
        """EventBridge rules into moto's EventBridge: their patterns are matched by moto's matcher."""
        events = self.client("events")
        for logical_id, rule in resources_of_type(template, "AWS::Events::Rule").items():
            if not resolver.condition_holds(rule.get("Condition")):
                continue
            properties = resolver.resolve(rule["Properties"])
            if "ScheduleExpression" in properties:  # fired by fire_scheduled_rule
                self._scheduled_rules[logical_id] = properties
                continue
            pattern = properties["EventPattern"]
            name = f"{STACK_NAME}-{logical_id}"
            events.put_rule(Name=name, EventPattern=pattern if isinstance(pattern, str) else json.dumps(pattern))
            events.put_targets(Rule=name, Targets=[{"Id": t["Id"], "Arn": t["Arn"]} for t in properties["Targets"]])

    def _deploy_custom_resources(self, template: dict[str, Any], resolver: Resolver) -> None:
        """CloudFormation's requests to each custom resource: Create the first time, Update when its
        properties changed (with the old ones), nothing when they did not."""
        for logical_id, resource in template["Resources"].items():
            if not str(resource["Type"]).startswith("Custom::"):
                continue
            properties = resolver.resolve(resource["Properties"])
            old = self._custom_resources.get(logical_id)
            if old == properties:
                continue
            self._custom_resources[logical_id] = properties
            self.custom_resource_request("Create" if old is None else "Update", logical_id, properties, old)

    def custom_resource_request(
        self, request_type: str, logical_id: str, properties: dict[str, Any], old: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send a custom resource's function CloudFormation's request; its answer (FAILED raises)."""
        stack_id = f"arn:aws:cloudformation:{self.region}:{ACCOUNT_ID}:stack/{STACK_NAME}/local"
        request = self.custom_resource_answers.request(request_type, logical_id, stack_id, properties, old)
        self.runtime.invoke_checked(str(properties["ServiceToken"]).split(":function:")[-1], request)
        return self.custom_resource_answers.outcome(request)

    def delete_custom_resources(self) -> None:
        """What deleting the stack asks of its custom resources."""
        for logical_id, properties in self._custom_resources.items():
            self.custom_resource_request("Delete", logical_id, properties)
        self._custom_resources.clear()

    def _may_put_events(self, role_arn: str, bus_arn: str) -> bool:
        """Whether EventBridge, as a rule target's role, may put events on the bus."""
        decision = self.authorizer.allows(
            role_arn.rsplit("/", 1)[-1], Call("events:PutEvents", (IamResource(bus_arn),))
        )
        return decision.allowed

    def deploy_target_account(self, account: str, **parameters: str) -> str:
        """Deploy ``examples/target-account-role.yaml`` in ``account`` as its owner would for this stack
        (the stack's external id, role name and parameter prefix; ``parameters`` override them). The
        world holds the role's trust policy (moto lets anyone assume anything), the authorizer its
        policies: calls made with the role's credentials are evaluated as the role's. Returns its ARN."""
        template = load_template(self.project_root / "examples" / "target-account-role.yaml")
        stack = parameter_values(load_template(self.project_root / "template.yaml"), self.parameter_overrides)
        given = {
            "FactoryAccountId": ACCOUNT_ID,
            "FactoryStackName": STACK_NAME,
            "ExternalId": stack["CopyAccountExternalId"],
            "RoleName": stack["CopyAccountRoleName"],
            "ParameterPrefix": stack["ParameterPrefix"],
            **parameters,
        }
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": account,
            "AWS::Partition": "aws",
            "AWS::StackName": "target",
        }
        resolver = Resolver(parameter_values(template, given), pseudo, {}, template.get("Conditions", {}))
        (role,) = resources_of_type(template, "AWS::IAM::Role").values()
        properties = resolver.resolve(role["Properties"])
        arn = f"arn:aws:iam::{account}:role/{properties['RoleName']}"
        self.world.trust_policies[arn] = properties["AssumeRolePolicyDocument"]
        policies = {policy["PolicyName"]: policy["PolicyDocument"] for policy in properties["Policies"]}
        name = f"{account}:{properties['RoleName']}"
        self.authorizer.roles[name] = Role("CopyTargetRole", name, policies)
        return arn

    def reconfigure(self, **parameters: str) -> None:
        """A stack update that changes only parameters (e.g. KmsKeyIds once the keys exist): every
        function's environment is resolved again; resources stay as they are."""
        pseudo, attributes, layer_dirs = self._deployed
        self.parameter_overrides.update(parameters)
        template = load_template(self.project_root / "template.yaml")
        resolver = Resolver(
            parameter_values(template, self.parameter_overrides), pseudo, attributes, template.get("Conditions", {})
        )
        self._deploy_roles(resolver)
        for logical_id, properties in functions(template).items():
            self._register_function(logical_id, properties, resolver, layer_dirs)
        self._deploy_custom_resources(template, resolver)
        self.world.stack = self._described_stack(template, resolver, "UPDATE_COMPLETE")

    def _described_stack(self, template: dict[str, Any], resolver: Resolver, status: str) -> dict[str, Any]:
        """The stack as DescribeStacks answers it: its parameters and the outputs the emulator deploys."""
        outputs = []
        for key, output in template.get("Outputs", {}).items():
            if not resolver.condition_holds(output.get("Condition")):
                continue
            try:
                value = resolver.resolve(output["Value"])
            except KeyError:  # an output of a resource the emulator does not deploy (a dashboard, an alarm)
                continue
            outputs.append({"OutputKey": key, "OutputValue": str(value), "Description": output.get("Description", "")})
        return {
            "StackName": STACK_NAME,
            "StackId": f"arn:aws:cloudformation:{self.region}:{ACCOUNT_ID}:stack/{STACK_NAME}/local",
            "StackStatus": status,
            "CreationTime": self.world.stack["CreationTime"] if self.world.stack else datetime.now(UTC),
            "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(resolver.parameters.items())],
            "Outputs": outputs,
            "Tags": {},  # moto's serializer turns a dict into CloudFormation's Key/Value list
        }

    # --- AWS's events about the world -----------------------------------------------------------

    def _waited_for(self, token: str) -> list[str]:
        """The resources a task token waits for, as the run ledger records them (read from moto's table
        directly: the emulator's look is not one of the product's calls)."""
        table = dynamodb_backends[ACCOUNT_ID][self.region].get_table(self._deployed[1][("LedgerTable", "Ref")])
        # The wait partition only (every waiting task asks, each time it wakes: never the whole table).
        waits = list(table.items.get(DynamoType({"S": "wait"}), {}).values())
        return [
            str(item.range_key.value).rsplit("#", 1)[-1]
            for item in waits
            if (recorded := item.attrs.get("token")) is not None and recorded.value == token and item.range_key
        ]

    def _next_firing(self) -> tuple[float, Any] | None:
        """The next time after the calling thread's own that a rate() rule fires on the virtual clock
        (counted from the clock's start), and what fires it (once, whichever thread gets there first):
        EventBridge's schedule, while a wait has no event to come."""
        now = self.clock.now()
        due: list[tuple[float, str, int]] = []
        with self._firing_lock:
            for logical_id, rule in self._scheduled_rules.items():
                period = rate_seconds(str(rule["ScheduleExpression"]))
                if period is None:
                    continue
                count = math.floor((now - self.clock.started_at) / period) + 1
                while (logical_id, count) in self._firings:
                    count += 1
                due.append((self.clock.started_at + count * period, logical_id, count))
        if not due:
            return None
        at, logical_id, count = min(due)
        return at, functools.partial(self._fire, logical_id, count)

    def _fire(self, logical_id: str, count: int) -> None:
        with self._firing_lock:
            if (logical_id, count) in self._firings:
                return
            self._firings.add((logical_id, count))
        try:
            self.fire_scheduled_rule(logical_id)
        except Exception as error:  # a failed firing is the schedule's problem, not the waiting task's
            self.failed_deliveries.append(({"rule": logical_id}, f"{type(error).__name__}: {error}"))

    def _deliver_scheduled(self, scheduled: ScheduledEvent) -> None:
        """EventBridge delivering an AWS event in its own Region: its rules there (a forwarding rule
        passes it on to the home Region's bus) run their targets."""
        # Stamped when it is delivered, on the wall clock that moto's and the functions' own times use.
        event = {**scheduled.event, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self.runtime.deliver(event, events_backends[ACCOUNT_ID][scheduled.region])
        except Exception as error:  # EventBridge gives up on a target that keeps failing; the wait goes on
            self.failed_deliveries.append((event, f"{type(error).__name__}: {error}"))

    def _pause(self, seconds: float) -> None:
        with self.clock.participating(), self.runtime.paused():
            self.clock.advance(seconds)

    # --- triggers -----------------------------------------------------------------------------

    def deliver_event(self, event: dict[str, Any]) -> list[Any]:
        """EventBridge delivering ``event`` as it is (same id on a redelivery): every deployed rule
        whose pattern matches it invokes its Lambda targets. Returns their results (empty: no match)."""
        with self.clock.participating():
            return self.runtime.deliver(event, events_backends[ACCOUNT_ID][self.region])

    def fire_schedule(self, scheduled_time: str, attempt: int = 1) -> list[Any]:
        """EventBridge Scheduler firing every deployed schedule at ``scheduled_time`` (ISO 8601, UTC)."""
        results = []
        for schedule in self._schedules.values():
            target = schedule["Target"]
            payload = (
                target["Input"]
                .replace("<aws.scheduler.scheduled-time>", scheduled_time)
                .replace("<aws.scheduler.execution-id>", f"local-{scheduled_time}-{attempt}")
                .replace("<aws.scheduler.attempt-number>", str(attempt))
            )
            name = target["Arn"].split(":function:")[-1]
            self._scheduler_may_invoke(target)
            with self.clock.participating():
                results.append(self.runtime.invoke_checked(name, json.loads(payload)))
        return results

    def _scheduler_may_invoke(self, target: dict[str, Any]) -> None:
        """EventBridge Scheduler assumes the target's RoleArn to invoke it: that role must allow it."""
        call = Call("lambda:InvokeFunction", (IamResource(target["Arn"]),))
        decision = self.authorizer.allows(str(target["RoleArn"]).rsplit("/", 1)[-1], call)
        if not decision.allowed:
            raise RuntimeError(
                f"EventBridge Scheduler cannot invoke {target['Arn']} as {target['RoleArn']}: {decision.reason()}"
            )

    def fire_scheduled_rule(self, logical_id: str = "RunSweepRule") -> list[Any]:
        """EventBridge firing a deployed scheduled rule (by default the janitor's hourly sweep) with its
        Input; what its targets returned."""
        rule = self._scheduled_rules[logical_id]
        return [
            self.runtime.invoke_checked(name, json.loads(target.get("Input", "{}")))
            for target in rule["Targets"]
            if self.runtime.may_invoke(
                self._deployed[1][(logical_id, "Arn")], name := target["Arn"].split(":function:")[-1]
            )
        ]

    # --- how executions end -------------------------------------------------------------------

    def _within_quota(self, add_event: Any) -> Any:
        """Step Functions fails an execution whose history would pass 25,000 events, where no Catch
        runs; moto lets it grow. The event that would pass the quota fails the execution instead."""
        emulator = self

        def add(manager: Any, context: Any, event_type: Any, *args: Any, **kwargs: Any) -> Any:
            if event_type not in ENDING_EVENTS and len(manager._history_event_list) >= emulator.history_quota:
                raise RuntimeError(
                    f"the execution's history reached {emulator.history_quota} events, the Step Functions quota"
                )
            return add_event(manager, context, event_type, *args, **kwargs)

        return add

    def _announcing(self, terminated: Any) -> Any:
        """Step Functions sends ``Step Functions Execution Status Change`` to EventBridge when a Standard
        execution ends; moto does not. The emulator sends it as the execution ends, and runs the
        targets of the rules it matches before the run counts as over."""
        emulator = self

        def announce(communication: Any) -> None:
            execution = communication.execution
            with emulator._ending_lock:
                emulator._ending.add(execution.exec_arn)
            try:
                terminated(communication)
                emulator._send_status_change(execution)
            finally:
                with emulator._ending_lock:
                    emulator._ending.discard(execution.exec_arn)

        return announce

    def _send_status_change(self, execution: Any) -> None:
        status = str(getattr(execution.exec_status, "value", execution.exec_status))
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Step Functions Execution Status Change",
            "source": "aws.states",
            "account": ACCOUNT_ID,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": self.region,
            "resources": [execution.exec_arn],
            "detail": {
                "executionArn": execution.exec_arn,
                "stateMachineArn": execution.state_machine_arn,
                "name": execution.name,
                "status": status,
                "input": execution.execution_input,
                "output": json.dumps(execution.output) if execution.output is not None else None,
                "error": execution.error,
                "cause": execution.cause,
            },
        }
        record: dict[str, Any] = {"event": event}
        try:
            record["results"] = self.deliver_event(event)
        except Exception as error:  # an execution thread must not die of its janitor: the test reads this
            record["error"] = f"{type(error).__name__}: {error}"
        self.status_changes.append(record)


def rate_seconds(expression: str) -> float | None:
    """``rate(10 minutes)`` -> 600.0; None for a cron() expression."""
    match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expression.strip())
    if match is None:
        return None
    unit = {"minute": 60, "hour": 3600, "day": 86400}[match.group(2).rstrip("s")]
    return float(int(match.group(1)) * unit)


def render_definition(project_root: Path, properties: dict[str, Any], resolver: Resolver) -> str:
    """The ASL file with its ``${...}`` DefinitionSubstitutions applied, as SAM does at deploy time."""
    text = (project_root / str(properties["DefinitionUri"])).read_text()
    substitutions = resolver.resolve(properties.get("DefinitionSubstitutions", {}))
    for key, value in substitutions.items():
        text = text.replace("${" + key + "}", str(value))
    return text


# Parsed definitions, kept for the process: every emulator deploys the same ASL text, and the parse
# (ANTLR, about a second) is the largest part of starting one.
_PARSED: dict[str, Any] = {}


def _named_executions(start_execution: Any) -> Any:
    """StartExecution as on AWS: without a name the execution gets a generated one (a UUID; moto names
    it None), and input that is not JSON is refused with InvalidExecutionInput (moto's refusal carries
    no error code)."""

    def start(
        backend: Any, state_machine_arn: str, name: str | None = None, execution_input: str | None = None, **kwargs: Any
    ) -> Any:
        try:
            json.loads(execution_input if execution_input is not None else "{}")
        except ValueError as error:
            raise InvalidExecutionInput(f"Invalid State Machine Execution Input: '{error}'") from error
        return start_execution(backend, state_machine_arn, name or str(uuid.uuid4()), execution_input, **kwargs)

    return start


# moto's interpreter builds a new JSONPath parser (ply tables) for every path it reads; a parsed path
# is immutable, so each one is parsed once in the process.
_parse_json_path = functools.lru_cache(maxsize=4096)(json_path.parse)  # type: ignore[attr-defined]  # moto imports it there


def _parse_once(parse: Any) -> Any:
    parsed = _PARSED

    def parse_copy(definition: str, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return parse(definition, *args, **kwargs)
        if definition not in parsed:
            parsed[definition] = parse(definition)
        program, tree = parsed[definition]
        return copy.deepcopy(program), tree

    return staticmethod(parse_copy)


def _placeholder_zip() -> bytes:
    """moto wants a code package; the real code runs from the CodeUri in process."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "# runs in process from the project's CodeUri\n")
    return buffer.getvalue()
