"""The emulator's own parts, where a bug would make every workflow test lie."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.core.models import DEFAULT_ACCOUNT_ID

from ami_factory_local import Emulator
from ami_factory_local.clock import VirtualClock
from ami_factory_local.emulator import ACCOUNT_ID
from ami_factory_local.runtime import FunctionCode, InProcessRuntime
from ami_factory_local.template import Resolver
from tests.helpers import TEST_PARAMETERS, sample


def test_sequential_waits_add_up() -> None:
    clock = VirtualClock()
    clock.advance(60)
    clock.advance(30)
    assert clock.elapsed() == 90


def test_parallel_waits_overlap_like_map_branches() -> None:
    clock = VirtualClock()
    with clock.installed():
        clock.advance(100)  # the execution waited for its image first

        def branch() -> None:
            for _ in range(5):
                clock.advance(60)

        with clock.held():  # all three start at the same time
            threads = [clock.spawn(branch) for _ in range(3)]
        for thread in threads:
            thread.join()
    assert clock.elapsed() == 100 + 5 * 60, "three branches polling 5 times take 5 polls of time, not 15"
    assert clock.waits == 16


def test_time_stands_still_while_any_participant_runs_and_a_waiter_goes_on_at_its_time() -> None:
    """A step sees the world at its own time: no other thread's wait moves the clock while it runs;
    one that waits for another participant goes on at the time that one released it."""
    clock = VirtualClock()
    seen: dict[str, float] = {}
    with clock.installed():
        both = threading.Barrier(2)
        released = threading.Event()

        def sleeper() -> None:
            both.wait()
            for _ in range(3):
                clock.advance(60)
            released.set()

        def worker() -> None:
            both.wait()
            seen["before"] = clock.now()
            seen["work"] = float(sum(range(2_000_000)))  # real work, no virtual wait
            seen["after"] = clock.now()
            clock.advance(30)
            seen["woke"] = clock.now()
            released.wait()  # another participant's doing
            seen["released"] = clock.now()

        for thread in [clock.spawn(sleeper), clock.spawn(worker)]:
            thread.join()
    start = clock.started_at
    assert seen["before"] == seen["after"] == start, "the sleeper's waits did not move time under the worker"
    assert seen["woke"] - start == 30 and seen["released"] - start == 180
    assert clock.elapsed() == 180


def test_resolver_substitutes_what_sam_would_and_refuses_the_rest() -> None:
    resolver = Resolver(
        parameters={"ParameterPrefix": "/ami-factory"},
        pseudo={"AWS::Region": "us-east-1"},
        attributes={("CreateImageFunction", "Arn"): "arn:fn"},
    )
    assert resolver.resolve({"Fn::Sub": "${AWS::Region}:${ParameterPrefix}"}) == "us-east-1:/ami-factory"
    assert resolver.resolve({"Fn::GetAtt": ["CreateImageFunction", "Arn"]}) == "arn:fn"
    assert resolver.resolve({"a": [{"Ref": "ParameterPrefix"}]}) == {"a": ["/ami-factory"]}
    resolver.conditions = {"Yes": {"Fn::Equals": ["a", "a"]}, "No": {"Fn::Equals": ["a", "b"]}}
    no_value = {"Ref": "AWS::NoValue"}
    assert resolver.resolve({"Fn::If": ["Yes", 1, 2]}) == 1
    assert resolver.resolve([{"Fn::If": ["No", "x", no_value]}, "y"]) == ["y"], "NoValue leaves the item out"
    assert resolver.resolve({"k": {"Fn::If": ["No", "x", no_value]}}) == {}
    assert resolver.resolve({"Fn::Split": [",", {"Fn::Sub": "${AWS::Region},eu-west-1"}]}) == ["us-east-1", "eu-west-1"]
    assert resolver.resolve({"Fn::Join": ["-", ["a", {"Ref": "AWS::Region"}]]}) == "a-us-east-1"
    with pytest.raises(NotImplementedError, match="Fn::Select"):
        resolver.resolve({"Fn::Select": [0, ["a"]]})


def test_the_world_honours_copy_client_tokens_and_refuses_duplicate_names() -> None:
    """What moto ignores and the workflow's idempotency leans on."""
    with Emulator() as emu:
        instance_id = emu.launch_instance()
        source = emu.client("ec2").create_image(InstanceId=instance_id, Name="source-image")["ImageId"]
        with pytest.raises(ClientError, match=r"InvalidAMIName\.Duplicate"):
            emu.client("ec2").create_image(InstanceId=instance_id, Name="source-image")
        ec2 = emu.client("ec2", "eu-west-1")
        copy = {
            "SourceImageId": source,
            "SourceRegion": "us-east-1",
            "Name": "copy",
            "ClientToken": "token-1",
            "TagSpecifications": [{"ResourceType": "image", "Tags": [{"Key": "k", "Value": "v"}]}],
        }
        first, again = ec2.copy_image(**copy)["ImageId"], ec2.copy_image(**copy)["ImageId"]
        assert first == again
        with pytest.raises(ClientError, match="IdempotentParameterMismatch"):  # the token names one request
            ec2.copy_image(**{**copy, "Name": "another-copy"})
        (image,) = ec2.describe_images(Owners=["self"])["Images"]
        assert image["Tags"] == [{"Key": "k", "Value": "v"}]


def test_execution_history_pages_like_step_functions() -> None:
    from ami_factory_local.world import history_page

    events = [{"id": n} for n in range(1, 251)]
    first = history_page(events, {"maxResults": 100})
    assert [e["id"] for e in first["events"]] == list(range(1, 101))
    last = history_page(events, {"maxResults": 100, "nextToken": "200"})
    assert [e["id"] for e in last["events"]] == list(range(201, 251)) and "nextToken" not in last
    assert len(history_page(events, {})["events"]) == 100, "the default page size"
    newest = history_page(events, {"reverseOrder": True, "maxResults": 2})
    assert [e["id"] for e in newest["events"]] == [250, 249]
    # The execution goes on between two reads: the next page continues where the last one ended.
    grown = [*events, {"id": 251}, {"id": 252}]
    following = history_page(grown, {"reverseOrder": True, "maxResults": 2, "nextToken": newest["nextToken"]})
    assert [e["id"] for e in following["events"]] == [248, 247]


def test_a_run_with_parallel_branches_is_the_same_run_every_time() -> None:
    """Branches poll, retry with jitter, wait for EC2's events and race each other (to fire the fallback
    sweep, too); what each sees depends on its own waits only."""
    outcomes = []
    for _ in range(3):
        with Emulator(parameters=TEST_PARAMETERS) as emu:
            emu.world.images_take(20 * 60)
            emu.world.status_checks_take(150)
            emu.world.throttle("CopyImage", times=2)
            instance_id = emu.launch_instance(name="web")
            result = emu.run(sample("request-basic.json", instance_id=instance_id, launch_check=True), name="same")
            assert result.status == "SUCCEEDED", result.cause
            entered = Counter(
                e["stateEnteredEventDetails"]["name"] for e in result.history if "stateEnteredEventDetails" in e
            )
            outcomes.append((entered, emu.clock.elapsed(), emu.world.calls("ec2")))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    entered = outcomes[0][0]
    assert entered["WaitForCopy"] == 2 and entered["CheckLaunch"] == 3 * 3, "each copy's wait ends on its event"


def test_the_world_refuses_a_filter_ec2_does_not_know() -> None:
    """moto answers a misspelt filter with nothing; EC2 refuses it, and so does the world."""
    with Emulator() as emu:
        ec2 = emu.client("ec2")
        assert ec2.describe_images(Owners=["self"], Filters=[{"Name": "is-public", "Values": ["true"]}])["Images"] == []
        for name in ("IS-PUBLIC", "ispublic", "state-name"):
            with pytest.raises(ClientError, match=rf"InvalidParameterValue.*'{name}'"):
                ec2.describe_images(Owners=["self"], Filters=[{"Name": name, "Values": ["true"]}])
        with pytest.raises(ClientError, match="InvalidParameterValue"):
            ec2.describe_instances(Filters=[{"Name": "instance-state", "Values": ["running"]}])
        assert ec2.describe_instances(Filters=[{"Name": "tag:Any-Key", "Values": ["x"]}])["Reservations"] == []


def test_the_world_refuses_permission_changes_ec2_would() -> None:
    with Emulator() as emu:
        ec2 = emu.client("ec2")
        image = ec2.create_image(InstanceId=emu.launch_instance(), Name="shared")["ImageId"]
        snapshot = ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add", GroupNames=["all"]
        )
        for change in ({"Attribute": "createvolumepermission"}, {"GroupNames": ["ALL"]}):
            request = {"Attribute": "createVolumePermission", "OperationType": "add", "GroupNames": ["all"], **change}
            with pytest.raises(ClientError, match="InvalidParameterValue"):
                ec2.modify_snapshot_attribute(SnapshotId=snapshot, **request)
        with pytest.raises(ClientError, match="InvalidParameterValue"):
            ec2.modify_image_attribute(
                ImageId=image, Attribute="launchPermission", LaunchPermission={"Add": [{"Group": "everyone"}]}
            )


def test_the_world_refuses_tags_ec2_would() -> None:
    with Emulator() as emu:
        ec2 = emu.client("ec2")
        instance_id = emu.launch_instance()
        ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "k" * 128, "Value": "v" * 256}])
        for tag in ({"Key": "k" * 129, "Value": "v"}, {"Key": "k", "Value": "v" * 257}, {"Key": "aws:x", "Value": "v"}):
            with pytest.raises(ClientError, match="InvalidParameterValue"):
                ec2.create_tags(Resources=[instance_id], Tags=[tag])
        # 50 per resource, however they are given (CreateImage's TagSpecifications too, after a stop).
        fifty_one = [{"Key": f"k{n}", "Value": "v"} for n in range(51)]
        with pytest.raises(ClientError, match="TagLimitExceeded"):
            ec2.create_tags(Resources=[instance_id], Tags=fifty_one)
        with pytest.raises(ClientError, match="TagLimitExceeded"):
            ec2.create_image(
                InstanceId=instance_id,
                Name="many-tags",
                TagSpecifications=[{"ResourceType": "image", "Tags": fifty_one}],
            )
        assert ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["many-tags"]}])["Images"] == []


def test_the_world_refuses_commands_ssm_would() -> None:
    """moto runs any document name with any parameters; SSM refuses what the document does not allow."""
    with Emulator() as emu:
        ssm, instance_id = emu.client("ssm"), emu.launch_instance()
        sysprep = "ami-factory-local-SysprepWindowsDocument"
        allowed = {"AdminAccount": ["specify"], "AdminSecretParameter": ["/images/admin"]}
        assert ssm.send_command(InstanceIds=[instance_id], DocumentName=sysprep, Parameters=allowed)["Command"]
        with pytest.raises(ClientError, match="InvalidDocument"):
            ssm.send_command(InstanceIds=[instance_id], DocumentName="AWS-RunShellScript-Nope")
        for refused in (
            {"AdminAccount": ["Random"]},
            {"AdminSecretParameter": ["x'; Remove-Item -Recurse C:\\; '"]},
            {"commands": ["whoami"]},
        ):
            with pytest.raises(ClientError, match="InvalidParameters"):
                ssm.send_command(InstanceIds=[instance_id], DocumentName=sysprep, Parameters=refused)


def test_ec2_buckets_are_per_action_kind_and_refill_with_virtual_time() -> None:
    from ami_factory_local.limits import DESCRIBE, MUTATING, OWN_BUCKETS, UNFILTERED_DESCRIBE, TokenBucket, bucket_of

    assert bucket_of("DescribeImages", {"ImageIds": ["ami-1"]}) == ("describe", DESCRIBE)
    assert bucket_of("DescribeInstances", {}) == ("unfiltered-describe", UNFILTERED_DESCRIBE)
    assert bucket_of("DescribeInstances", {"InstanceIds": ["i-1"]}) == ("describe", DESCRIBE)
    assert bucket_of("CopyImage", {}) == ("CopyImage", OWN_BUCKETS["CopyImage"])
    assert bucket_of("EnableImageDeprecation", {}) == ("mutating", MUTATING)
    bucket = TokenBucket(OWN_BUCKETS["RunInstances"], tokens=5, filled_at=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.4) is False, "2 a second: not a whole token after 0.4 s"
    assert bucket.take(0.5) is True
    assert bucket.take(0.2) is False, "a thread behind the bucket's time adds nothing"
    assert [bucket.take(1000.0) for _ in range(6)] == [True] * 5 + [False], "never more than the bucket holds"


def test_copies_in_flight_are_capped_per_destination_and_per_source() -> None:
    from ami_factory_local.limits import copy_quota_refusal

    half = ["us-east-1"] * 24 + ["us-west-2"] * 25
    assert copy_quota_refusal("eu-west-1", "us-east-1", half) is None
    assert "25 concurrent AMI copies from us-west-2" in str(copy_quota_refusal("eu-west-1", "us-west-2", half))
    full = str(copy_quota_refusal("eu-west-1", "ap-south-1", [*half, "us-east-1"]))
    assert "maximum of 50 concurrent AMI copies into eu-west-1" in full


def test_the_world_throttles_a_functions_calls_as_ec2_does_and_caps_copies_in_flight() -> None:
    from ami_factory_local.authorization import acting_as

    with Emulator() as emu:
        emu.world.images_take(3600)
        instance_id = emu.launch_instance()
        source = emu.client("ec2").create_image(InstanceId=instance_id, Name="source-image")["ImageId"]
        role = emu._function_roles["CopyImageFunction"]
        ec2 = emu.client("ec2", "eu-west-1")

        def copy(n: int, token: str | None = None) -> str:
            asked = {"SourceImageId": source, "SourceRegion": "us-east-1", "Name": f"copy-{n}"}
            return str(ec2.copy_image(**asked, ClientToken=token or f"token-{n}")["ImageId"])

        with acting_as(role, "CopyImageFunction"):
            copies = [copy(n) for n in range(25)]
            with pytest.raises(ClientError, match="ResourceLimitExceeded") as refused:
                copy(25)
            assert "25 concurrent AMI copies from us-east-1 into eu-west-1" in str(refused.value)
            assert copy(0, token="token-0") == copies[0], "a retry EC2 already took starts no new copy"
            emu.clock.advance(3600)  # the copies finish; the bucket has refilled meanwhile
            assert emu.world.copies_in_flight("eu-west-1") == []
            emu.world.images_take(0)
            for n in range(26, 126):  # a full bucket: 100 at once, then one a second
                copy(n)
            with pytest.raises(ClientError, match="RequestLimitExceeded"):
                copy(126)
            emu.clock.advance(1)
            copy(127)
        assert emu.world.limits.refused == 1
        copy(128)  # the test's own calls are not throttled


def test_a_task_ended_twice_is_answered_as_step_functions_answers(emu: Emulator) -> None:
    """moto builds these two answers without the message its error class needs (a TypeError reached
    the caller instead): under the emulator they are Step Functions' own errors."""
    from moto.stepfunctions.parser import models

    for name in ("TaskTimedOut", "TaskDoesNotExist"):
        error = getattr(models, name)()
        assert (error.error_type, error.code) == (name, 400) and error.message


def test_a_pausing_function_lets_others_run_without_its_environment(tmp_path: Path) -> None:
    """StartRun pacing its starts releases the runtime to other functions (as other Lambda instances
    run meanwhile); they must not see its variables, and it gets its own back."""
    (tmp_path / "pauser.py").write_text(
        "import os\n"
        "def handler(event, context):\n"
        "    with event['runtime'].paused():\n"
        "        event['meanwhile']()\n"
        "    return os.environ.get('WHO')\n"
    )
    (tmp_path / "other.py").write_text(
        "import os\ndef handler(event, context):\n    return [os.environ.get('WHO'), os.environ.get('MINE')]\n"
    )
    runtime = InProcessRuntime()
    for name, environment in (("pauser", {"WHO": "pauser"}), ("other", {"MINE": "other"})):
        runtime.register(FunctionCode(name, f"arn:{name}", tmp_path, f"{name}.handler", environment, []))
    seen: list[object] = []

    def meanwhile() -> None:  # another invocation, on its own thread, while the first pauses
        thread = threading.Thread(target=lambda: seen.append(runtime.invoke_checked("other", {})))
        thread.start()
        thread.join(timeout=10)

    assert runtime.invoke_checked("pauser", {"runtime": runtime, "meanwhile": meanwhile}) == "pauser"
    assert seen == [[None, "other"]], "the other function ran meanwhile, with its environment only"
    assert "WHO" not in os.environ and "MINE" not in os.environ


def test_a_role_assumed_in_another_account_acts_in_that_account(emu: Emulator) -> None:
    """What copies owned by other accounts will stand on: credentials from AssumeRole into another
    account's role reach that account's resources, never the stack's (moto's own multi-account model)."""
    other = "444455556666"
    credentials = emu.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{other}:role/AmiFactoryTarget", RoleSessionName="ami-factory", ExternalId="run-1"
    )["Credentials"]
    session = boto3.session.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name="eu-west-1",
    )
    assert session.client("sts").get_caller_identity()["Account"] == other
    session.client("ssm").put_parameter(Name="/ami-factory/web/latest", Value="ami-0123456789abcdef0", Type="String")
    assert emu.client("ssm", "eu-west-1").get_parameters(Names=["/ami-factory/web/latest"])["Parameters"] == []
    assert ACCOUNT_ID == DEFAULT_ACCOUNT_ID, "the stack's account is moto's default: nothing pins it"


def test_the_resolver_refuses_a_join_delimiter_cloudformation_refuses() -> None:
    from ami_factory_local.template import Resolver

    resolver = Resolver({"Name": "x"}, {}, {})
    assert resolver.resolve({"Fn::Join": [",", ["a", {"Ref": "Name"}]]}) == "a,x"
    with pytest.raises(ValueError, match="delimiter must be a literal string"):
        resolver.resolve({"Fn::Join": [{"Fn::Sub": ":${Name}"}, ["a", "b"]]})


@pytest.mark.parametrize("clients", [("dynamodb", "sns"), ("dynamodb",)])
def test_a_function_calling_a_service_its_init_made_no_client_for_fails_the_emulator(
    tmp_path: Path, clients: tuple[str, ...]
) -> None:
    """Every call a function makes is to a service whose client its handler made at Init: one made in
    the call costs a 256 MB function up to about seven times as much (ami_factory.handler)."""
    (tmp_path / "notify.py").write_text(
        "from ami_factory.clients import client\n"
        "from ami_factory.contracts import EndedRuns\n"
        "from ami_factory.handler import lambda_handler\n"
        "def run(event):\n"
        "    client('sns', 'us-east-1').list_topics()\n"
        "    return EndedRuns()\n"
        f"handler = lambda_handler(run, clients={clients!r})\n"
    )
    with contextlib.ExitStack() as checked:
        if "sns" not in clients:
            checked.enter_context(
                pytest.raises(AssertionError, match=r"notify calls \['sns'\] without making the client at Init")
            )
        with Emulator() as emu:
            janitor = emu.runtime.functions["ami-factory-local-EndRunFunction"]
            notify = FunctionCode("notify", "arn:notify", tmp_path, "notify.handler", {}, [], role=janitor.role)
            emu.runtime.register(notify)
            emu.runtime.invoke("notify", {})


def test_a_refused_call_is_answered_with_its_services_own_code(emu: Emulator) -> None:
    """World.refuse without a code answers as the service answers a call IAM does not allow: EC2's
    UnauthorizedOperation, SSM's AccessDeniedException (EC2's code is no error of SSM's)."""
    emu.world.refuse("DescribeImages", 1, region="us-east-1")
    emu.world.refuse("PutParameter", 1, region="us-east-1")
    with pytest.raises(ClientError) as ec2_refusal:
        emu.client("ec2").describe_images(Owners=["self"])
    with pytest.raises(ClientError) as ssm_refusal:
        emu.client("ssm").put_parameter(Name="/refused", Value="x", Type="String")
    assert ec2_refusal.value.response["Error"]["Code"] == "UnauthorizedOperation"
    assert ssm_refusal.value.response["Error"]["Code"] == "AccessDeniedException"
