"""What the tests share: the deployment they test against, the samples users copy, and small
readers of the emulator's end state. Fixtures live in conftest.py; everything else lives here."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ami_factory.settings import Settings
from ami_factory_local import Emulator

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
ALLOWED_ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
ALLOWED_OU = "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-ab12-cdef3456"
ALLOWED_ORG = "arn:aws:organizations::111122223333:organization/o-exampleorgid"
TEST_PARAMETERS = {
    "AllowedShareAccounts": ALLOWED_ACCOUNT,
    "AllowedShareOUs": ALLOWED_OU,
    "AllowedShareOrganizations": ALLOWED_ORG,
    "PollIntervalSeconds": "60",
    "MaxWaitSeconds": "7200",
}
# The same deployment as settings, for the rules that take them directly.
SETTINGS = Settings(
    region="us-east-1",
    default_regions=("eu-west-1",),
    allowed_regions=(),
    allowed_accounts=(ALLOWED_ACCOUNT,),
    allowed_organizations=(),
    allowed_organizational_units=(ALLOWED_OU,),
    allow_public=False,
    image_name_prefix="ami-factory",
    parameter_prefix="/ami-factory",
    poll_seconds=60,
    max_wait_seconds=3600,
    generalize_max_wait_seconds=1800,
    sdk_max_attempts=5,
    sdk_retry_mode="adaptive",
    trigger_tag_key="ami-factory:create",
    schedule_tag_key="ami-factory:schedule",
    state_machine_arn="",
)


def sample(name: str, **changes: Any) -> dict[str, Any]:
    """A request from events/, as a user would paste it, with the fields a test must change."""
    request: dict[str, Any] = json.loads((EVENTS / name).read_text())
    request.update(changes)
    return request


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def instance(emu: Emulator, instance_id: str) -> dict[str, Any]:
    described: dict[str, Any] = emu.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"
    ][0]
    return described


def all_instances(emu: Emulator, region: str | None = None) -> list[dict[str, Any]]:
    """Every instance EC2 holds in the Region (the test's own launches included)."""
    reservations = emu.client("ec2", region).describe_instances()["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def run_images(emu: Emulator, region: str, run_id: str) -> list[dict[str, Any]]:
    """The images a run made in a Region, found by its tag."""
    found: list[dict[str, Any]] = emu.client("ec2", region).describe_images(
        Owners=["self"], Filters=[{"Name": "tag:ami-factory:run", "Values": [run_id]}]
    )["Images"]
    return found


def nothing_was_changed(emu: Emulator) -> None:
    """No call that changes anything reached EC2, but the test's own launch."""
    mutating = {op for op in emu.world.calls("ec2") if not op.startswith(("Describe", "Get"))} - {
        "RunInstances",
        "RegisterImage",
    }
    assert mutating == set(), f"nothing may change, sent {mutating}"


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def tag_event(
    emu: Emulator, instance_id: str, name: str = "tag-set-true.json", event_id: str | None = None
) -> dict[str, Any]:
    """A sample tag event as EventBridge would send it for a real instance of the emulator: its ARN,
    and the instance's tags after the change (the sample's trigger-tag value applied to them)."""
    body = event(name)
    body["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]
    tags = instance_tags(emu, instance_id)
    for key in body["detail"]["changed-tag-keys"]:
        tags.pop(key, None)
        if key in body["detail"]["tags"]:
            tags[key] = body["detail"]["tags"][key]
    body["detail"]["tags"] = tags
    if event_id:
        body["id"] = event_id
    return body


def instance_tags(emu: Emulator, instance_id: str) -> dict[str, str]:
    described = emu.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {tag["Key"]: tag["Value"] for tag in described.get("Tags", [])}


def executions(emu: Emulator) -> list[dict[str, Any]]:
    return emu.client("stepfunctions").list_executions(stateMachineArn=emu.state_machine_arn)["executions"]


def wait_all(emu: Emulator) -> list[Any]:
    return [emu.wait(execution["executionArn"]) for execution in executions(emu)]


def images(emu: Emulator, region: str = "us-east-1") -> list[dict[str, Any]]:
    return emu.client("ec2", region).describe_images(
        Owners=["self"], Filters=[{"Name": "tag:ami-factory:managed", "Values": ["true"]}]
    )["Images"]


def launch_tagged(emu: Emulator, **extra: str) -> str:
    tags = json.loads((EVENTS / "tag-set-true.json").read_text())["detail"]["tags"]
    return emu.launch_instance(tags={**{k: v for k, v in tags.items() if k != "Name"}, **extra}, name="web")


def ledger_items(emu: Emulator) -> list[dict[str, str]]:
    """Every item of the run ledger, its attributes as strings (a string set joined by commas)."""
    pages = emu.client("dynamodb").get_paginator("scan").paginate(TableName="ami-factory-local-LedgerTable")
    return [
        {key: value["S"] if "S" in value else ",".join(sorted(value["SS"])) for key, value in item.items()}
        for page in pages
        for item in page["Items"]
    ]


def emitted(out: str) -> list[dict[str, Any]]:
    """Every EMF document a handler printed: its metric values by name."""
    documents = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]

    def value(raw: Any) -> float:
        return raw[0] if isinstance(raw, list) and len(raw) == 1 else raw

    return [
        {
            name: value(document[name])
            for d in document["_aws"]["CloudWatchMetrics"]
            for name in (m["Name"] for m in d["Metrics"])
        }
        for document in documents
    ]


def units(out: str) -> dict[str, str]:
    """The unit each metric was declared with, by name."""
    documents = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]
    return {
        metric["Name"]: metric["Unit"]
        for document in documents
        for declared in document["_aws"]["CloudWatchMetrics"]
        for metric in declared["Metrics"]
    }


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait (real time, bounded) for another thread, such as a running execution, to get somewhere."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {timeout}s of real time"
        time.sleep(0.01)


def document_script(emu: Emulator, name: str) -> str:
    """What the stack's SSM document ``name`` runs: its runCommand lines, as SSM holds them."""
    content = json.loads(emu.client("ssm").get_document(Name=name)["Content"])
    return "\n".join(line for step in content["mainSteps"] for line in step["inputs"]["runCommand"])


def published_in_ledger(
    emu: Emulator, family: str, image_id: str, region: str = "us-east-1", keep_newest: int = 0, max_age_days: int = 0
) -> None:
    """Record ``image_id`` as a published image of ``family``, as Finalize does for a run's images."""
    item = {
        "pk": f"family#{family}",
        "sk": f"image#{region}#{image_id}",
        "family": family,
        "region": region,
        "image_id": image_id,
        "run_id": "test",
        "keep_newest": str(keep_newest),
        "max_age_days": str(max_age_days),
        "removed": "false",
    }
    emu.client("dynamodb").put_item(
        TableName="ami-factory-local-LedgerTable", Item={key: {"S": value} for key, value in item.items()}
    )


def invoke(emu: Emulator, function: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A deployed function's handler, invoked the way Lambda invokes it, expected to succeed."""
    errored, result = emu.runtime.invoke(f"ami-factory-local-{function}Function", payload)
    assert not errored, result
    return dict(result)


def invoke_error(emu: Emulator, function: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The same, expected to fail: Lambda's error body (errorType, errorMessage)."""
    errored, result = emu.runtime.invoke(f"ami-factory-local-{function}Function", payload)
    assert errored, f"{function} should have failed, returned {result}"
    return dict(result)


# --- customer managed keys (encrypt) ---------------------------------------------------------

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]  # request-basic.json's, with the stack's
KEY_ALIAS = "alias/ami-factory-images"
KEY_USERS = ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncrypt*", "kms:GenerateDataKey*"]


def key_arn(region: str) -> str:
    """A key ARN of the Region, for deployments whose runs are refused before any key is used."""
    return f"arn:aws:kms:{region}:123456789012:key/0000aaaa-1111-2222-3333-{region.replace('-', '')[:12]:0>12}"


def encrypting_emulator(make_emulator, regions: list[str] = REGIONS) -> Emulator:
    return make_emulator(KmsKeyIds=",".join(key_arn(region) for region in regions))


def deploy_keys(emu: Emulator, keys: dict[str, str]) -> None:
    """The deployer lists the keys once they exist (a stack update of KmsKeyIds)."""
    emu.reconfigure(KmsKeyIds=",".join(keys.values()))


def create_keys(emu: Emulator, users: list[str], regions: list[str] = REGIONS) -> dict[str, str]:
    """A customer managed key per Region behind the alias the deployment names, usable by ``users``."""
    created = {}
    for region in regions:
        statements = [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ]
        if users:
            statements.append({"Effect": "Allow", "Principal": {"AWS": users}, "Action": KEY_USERS, "Resource": "*"})
        kms = emu.client("kms", region)
        key = kms.create_key(
            Description="AMI Factory images", Policy=json.dumps({"Version": "2012-10-17", "Statement": statements})
        )
        kms.create_alias(AliasName=KEY_ALIAS, TargetKeyId=key["KeyMetadata"]["KeyId"])
        created[region] = key["KeyMetadata"]["Arn"]
    deploy_keys(emu, created)
    return created
