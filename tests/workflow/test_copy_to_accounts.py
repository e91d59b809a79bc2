"""copy_to_accounts: each account gets its own copy of each Region's image (it owns the copy),
encrypted with its key, tagged, with its own latest parameter; through the role it deployed
(examples/target-account-role.yaml, evaluated by the emulator's IAM) and only within
AllowedCopyAccounts; a failing account or Region does not stop the others."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.exceptions import ClientError
from moto.ec2.models import ec2_backends
from moto.ssm.models import ssm_backends

from ami_factory.rules import execution_arn
from ami_factory_local import Emulator
from ami_factory_local.authorization import acting_as
from ami_factory_local.emulator import ACCOUNT_ID
from tests.helpers import create_keys, invoke, invoke_error, ledger_items, run_images

TARGET = "111122223333"
OTHER = "444455556666"
EXTERNAL_ID = "ami-factory-0123456789abcdef"
REGIONS = ["eu-west-1"]


def allow_copies(emu: Emulator, *accounts: str) -> None:
    emu.reconfigure(AllowedCopyAccounts=",".join(accounts), CopyAccountExternalId=EXTERNAL_ID)


def account_copies(emu: Emulator) -> list[dict[str, str]]:
    return [item for item in ledger_items(emu) if item["sk"].startswith("account-copy#")]


def request(instance_id: str, *targets: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"instance_id": instance_id, "regions": REGIONS, "copy_to_accounts": list(targets), **more}


def account_key(account: str, region: str) -> str:
    """A customer managed key the account made for its copies."""
    from moto.kms.models import kms_backends

    return str(
        kms_backends[account][region].create_key(None, "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT", "copies", None).arn
    )


def test_each_account_and_region_gets_its_own_copy_encrypted_tagged_and_published(emu: Emulator) -> None:
    allow_copies(emu, TARGET)
    key = account_key(TARGET, "eu-west-1")
    emu.deploy_target_account(TARGET, KmsKeyArns=key)
    instance_id = emu.launch_instance(name="web")

    result = emu.run(request(instance_id, {"account_id": TARGET, "kms_key_ids": {"eu-west-1": key}}), name="acct")

    assert result.output["status"] == "SUCCEEDED", result.cause
    cells = {(cell["account_id"], cell["region"]): cell for cell in result.output["accounts"]}
    assert set(cells) == {(TARGET, "us-east-1"), (TARGET, "eu-west-1")}
    own = {region["region"]: region["image_id"] for region in result.output["regions"]}
    for (account, region), cell in cells.items():
        assert cell["status"] == "DELIVERED"
        copy = ec2_backends[account][region].amis[cell["image_id"]]
        assert copy.owner_id == TARGET and cell["image_id"] != own[region]  # the account's own image
        assert copy.get_tags()  # tagged as the factory's, which is what the role may remove
        tags = {tag["key"]: tag["value"] for tag in copy.get_tags()}
        assert tags["ami-factory:managed"] == "true" and tags["ami-factory:run"] == "acct"
        assert copy.ebs_snapshot.encrypted
        assert copy.ebs_snapshot.kms_key_id == (key if region == "eu-west-1" else None)  # else the account's default
        parameter = ssm_backends[account][region].get_parameter(cell["parameter_name"])
        assert parameter.value == cell["image_id"]
    # The copy was made by the account's role, as the template grants it, and by nobody else.
    assert not emu.authorizer.refusals
    used = {action for role, action, _ in emu.authorizer.used if role == "CopyTargetRole"}
    assert {"ec2:CopyImage", "ec2:CreateTags", "ec2:DescribeImages", "ssm:PutParameter", "kms:CreateGrant"} <= used
    # The source images were shared with the account (it copies what it may launch and read).
    for region, image_id in own.items():
        assert {"UserId": TARGET} in ec2_backends[ACCOUNT_ID][region].amis[image_id].launch_permissions


def test_a_failing_account_does_not_stop_the_others_and_the_run_is_partial(emu: Emulator) -> None:
    allow_copies(emu, TARGET, OTHER)
    emu.deploy_target_account(TARGET)
    emu.deploy_target_account(OTHER, ExternalId="someone-elses-external-id")  # its role does not trust this stack
    instance_id = emu.launch_instance(name="web")

    result = emu.run(request(instance_id, {"account_id": TARGET}, {"account_id": OTHER, "regions": ["eu-west-1"]}))

    assert result.output["status"] == "PARTIAL", result.cause
    by_cell = {(cell["account_id"], cell["region"]): cell for cell in result.output["accounts"]}
    assert by_cell[(TARGET, "us-east-1")]["status"] == by_cell[(TARGET, "eu-west-1")]["status"] == "DELIVERED"
    failed = by_cell[(OTHER, "eu-west-1")]
    assert failed["status"] == "FAILED"
    assert "not authorized to perform: sts:AssumeRole" in failed["error"]["Cause"]
    assert not ec2_backends[OTHER]["eu-west-1"].amis  # nothing was made there
    assert result.output["failed_regions"] == []  # the stack's own images are all delivered
    assert f"{OTHER} eu-west-1" in result.output["cause"]


def test_a_copy_that_fails_in_the_account_is_removed_and_reported(emu: Emulator) -> None:
    allow_copies(emu, TARGET)
    emu.deploy_target_account(TARGET)
    instance_id = emu.launch_instance(name="web")
    # Sharing starts once every image of the stack's own is made: what is made in eu-west-1 after
    # that (the account's copy) ends failed.
    emu.world.after_call("ModifyImageAttribute", lambda: emu.world.images_fail("eu-west-1"))

    result = emu.run(request(instance_id, {"account_id": TARGET}), name="fails")

    assert result.output["status"] == "PARTIAL", result.cause
    by_region = {cell["region"]: cell for cell in result.output["accounts"]}
    assert by_region["us-east-1"]["status"] == "DELIVERED"
    failed = by_region["eu-west-1"]
    assert failed["status"] == "FAILED" and failed["error"]["Error"] == "ImageFailedError"
    (record,) = [item for item in account_copies(emu) if item["sk"].endswith("eu-west-1")]
    assert record["removed"] == "true"
    assert record["image_id"] not in ec2_backends[TARGET]["eu-west-1"].amis  # deregistered by the account's role
    assert [region["status"] for region in result.output["regions"]] == ["AVAILABLE", "AVAILABLE"]


def test_a_copy_its_cell_could_not_remove_is_removed_by_the_runs_ending(emu: Emulator) -> None:
    """The cell's removal is refused once (the cell reports its copy left): Finalize, ending the run,
    removes the undelivered copy the ledger recorded, as the account's role, and leaves nothing behind."""
    allow_copies(emu, TARGET)
    emu.deploy_target_account(TARGET)
    instance_id = emu.launch_instance(name="web")
    emu.world.after_call("ModifyImageAttribute", lambda: emu.world.images_fail("eu-west-1"))
    emu.world.refuse("DeregisterImage", 1, region="eu-west-1")

    result = emu.run(request(instance_id, {"account_id": TARGET}), name="twice")

    assert result.output["status"] == "PARTIAL", result.cause
    assert emu.world.calls("ec2")["DeregisterImage"] == 2, "the cell's removal, refused; then the ending's"
    (failed,) = [cell for cell in result.output["accounts"] if cell["region"] == "eu-west-1"]
    assert failed["status"] == "FAILED" and failed["error"]["Error"] == "ImageFailedError"
    (record,) = [item for item in account_copies(emu) if item["sk"].endswith("eu-west-1")]
    assert record["removed"] == "true"
    assert record["image_id"] not in ec2_backends[TARGET]["eu-west-1"].amis
    assert f"eu-west-1:{record['image_id']} (copy in account {TARGET})" in result.output["cleaned_up"]
    assert result.output["left_over"] == []


def test_a_run_that_fails_before_its_copies_into_accounts_puts_latest_back(emu: Emulator) -> None:
    """KeepDelivered fails for good after Publish moved latest: HandleFailure undoes the run as any
    failed run is undone (latest back on the previous image in every Region, the run's images gone)
    and no account was asked for anything."""
    allow_copies(emu, TARGET)
    emu.deploy_target_account(TARGET)
    instance_id = emu.launch_instance(name="web")
    before = emu.run({"instance_id": instance_id, "regions": REGIONS}, name="before")
    assert before.output["status"] == "SUCCEEDED", before.cause
    previous = {region["region"]: region["image_id"] for region in before.output["regions"]}
    emu.runtime.crash("KeepDeliveredFunction", times=10)

    result = emu.run(request(instance_id, {"account_id": TARGET}), name="undone")

    assert result.status == "FAILED", result.output
    for region, image_id in previous.items():
        parameter = ssm_backends[ACCOUNT_ID][region].get_parameter("/ami-factory/web/latest")
        assert parameter.value == image_id, f"latest in {region} is the previous image again"
    for region in previous:
        assert run_images(emu, region, "undone") == [], f"the run's image in {region} is gone"
    assert account_copies(emu) == [], "no account was asked for a copy"


def test_an_encrypted_image_is_copied_with_the_stacks_keys_listed_in_the_accounts_role(emu: Emulator) -> None:
    """The account reads the shared snapshots with the stack's keys (their policies let it, and its
    role's FactoryKmsKeyArns lets it ask EC2 to); without them listed, IAM refuses the copy there."""
    users = [f"arn:aws:iam::{account}:root" for account in (TARGET, OTHER)]
    keys = create_keys(emu, users, regions=["us-east-1", "eu-west-1"])
    allow_copies(emu, TARGET, OTHER)
    emu.deploy_target_account(TARGET, FactoryKmsKeyArns=",".join(keys.values()))
    emu.deploy_target_account(OTHER)  # lists none of the stack's keys
    instance_id = emu.launch_instance(name="web")

    result = emu.run(
        request(
            instance_id,
            {"account_id": TARGET, "regions": ["eu-west-1"]},
            {"account_id": OTHER, "regions": ["eu-west-1"]},
            encrypt=True,
        )
    )

    assert result.output["status"] == "PARTIAL", result.cause
    by_account = {cell["account_id"]: cell for cell in result.output["accounts"]}
    assert by_account[TARGET]["status"] == "DELIVERED"
    used = {(action, statement) for role, action, statement in emu.authorizer.used if role == "CopyTargetRole"}
    assert {action for action, statement in used if "(ReadTheFactorysSnapshots)" in statement} == {
        "kms:Decrypt",
        "kms:DescribeKey",
        "kms:ReEncryptFrom",
    }
    assert {action for action, statement in used if "(FactoryKeyGrantsOnlyForEc2)" in statement} == {"kms:CreateGrant"}
    refused = by_account[OTHER]
    assert refused["status"] == "FAILED"
    assert f"arn:aws:sts::{OTHER}:assumed-role/AmiFactoryCopyTarget/" in refused["error"]["Cause"]
    assert f"kms:CreateGrant on resource: {keys['eu-west-1']}" in refused["error"]["Cause"]


def test_a_key_the_accounts_may_not_use_is_refused_before_the_run_starts(emu: Emulator) -> None:
    create_keys(emu, [], regions=["us-east-1", "eu-west-1"])  # only the stack's account may use them
    allow_copies(emu, TARGET)
    instance_id = emu.launch_instance(name="web")

    result = emu.run(request(instance_id, {"account_id": TARGET}, encrypt=True))

    assert result.status == "FAILED"
    assert f"does not let ['{TARGET}'] use it" in result.cause_message
    assert emu.world.sent("CopyImage") == [] and emu.world.sent("StopInstances") == []


def test_copies_only_into_allowed_accounts_never_the_stacks_own(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    allow_copies(emu, TARGET)

    outside = emu.run(request(instance_id, {"account_id": OTHER}))
    own = emu.run(request(instance_id, {"account_id": ACCOUNT_ID}))
    stray = emu.run(request(instance_id, {"account_id": TARGET, "regions": ["ap-southeast-2"]}))

    assert outside.status == own.status == stray.status == "FAILED"
    assert f"copy_to_accounts ['{OTHER}'] are not in the deployment's AllowedCopyAccounts" in outside.cause_message
    assert "the stack's own account" in own.cause_message
    assert "['ap-southeast-2'] are not Regions of this run" in stray.cause_message
    assert not account_copies(emu)


def test_a_key_must_be_the_accounts_own_in_its_region(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    allow_copies(emu, TARGET)
    wrong = f"arn:aws:kms:eu-west-1:{OTHER}:key/0123abcd-0000-0000-0000-000000000000"

    result = emu.run(request(instance_id, {"account_id": TARGET, "kms_key_ids": {"eu-west-1": wrong}}))

    assert result.status == "FAILED"
    assert f"kms_key_ids[eu-west-1] is a key of account {OTHER} in eu-west-1" in result.cause_message


def test_without_the_external_id_no_account_is_asked(emu: Emulator) -> None:
    """The template's rule refuses such a deployment; the functions refuse it too."""
    emu.reconfigure(AllowedCopyAccounts=TARGET)
    emu.deploy_target_account(TARGET, ExternalId="ami-factory-0123456789abcdef")
    instance_id = emu.launch_instance(name="web")

    result = emu.run(request(instance_id, {"account_id": TARGET, "regions": ["eu-west-1"]}))

    assert result.output["status"] == "PARTIAL", result.cause
    (cell,) = result.output["accounts"]
    assert cell["error"]["Error"] == "DeploymentError"
    assert "needs the deployment's CopyAccountExternalId" in cell["error"]["Cause"]
    assert not emu.world.sent("AssumeRole")


def test_a_forged_cell_for_an_account_outside_the_allow_list_assumes_nothing(emu: Emulator) -> None:
    """The state is data anyone with StartExecution (or lambda:InvokeFunction) can shape: the function
    checks the allow-list again before it asks any account for anything."""
    allow_copies(emu, TARGET)
    emu.deploy_target_account(OTHER)  # even a role that would let the stack in
    cell = {"account_id": OTHER, "region": "us-east-1", "kms_key_id": None}
    delivered = [{"region": "us-east-1", "status": "AVAILABLE", "image_id": "ami-0123456789abcdef0"}]
    forged = {
        "run_id": "forged",
        "image_name": "x",
        "description": "x",
        "tags": {},
        "parameter_name": "/ami-factory/x/latest",
        "max_wait_seconds": 3600,
        "cell": cell,
        "distribution": delivered,
    }

    error = invoke_error(emu, "DeliverToAccount", forged)
    # Nothing recorded for the run: nothing to remove, and no account is asked.
    removal = invoke(
        emu, "RemoveAccountCopy", {"run_id": "forged", "cell": cell, "error": {"Error": "x", "Cause": "x"}}
    )

    assert error["errorType"] == "RunEndedError"
    assert "run forged is not delivering" in error["errorMessage"]
    assert removal == {
        "account_id": OTHER,
        "region": "us-east-1",
        "status": "FAILED",
        "image_id": None,
        "parameter_name": None,
        "parameter_note": None,
        "error": {"Error": "x", "Cause": "x"},
    }
    assert not emu.world.sent("AssumeRole")


def test_a_run_stopped_mid_copy_leaves_no_copy_in_the_account(emu: Emulator) -> None:
    """The janitor ends a run from its ledger: the account's copy, recorded from CopyImage's answer
    and not delivered, is removed by the account's role; what the Regions delivered stays."""
    allow_copies(emu, TARGET)
    emu.deploy_target_account(TARGET)
    emu.world.images_take(900)
    instance_id = emu.launch_instance(name="web")

    def stop() -> None:
        emu.client("stepfunctions").stop_execution(executionArn=execution_arn(emu.state_machine_arn, "stopped"))

    # The stack's own copy to eu-west-1 is the first CopyImage; the account's is the second.
    emu.world.after_call("CopyImage", lambda: emu.world.after_call("CopyImage", stop))

    result = emu.run(request(instance_id, {"account_id": TARGET, "regions": ["eu-west-1"]}), name="stopped")

    assert result.status in ("ABORTED", "FAILED")  # moto's interpreter may fail a Map it stops
    (record,) = account_copies(emu)
    assert record["removed"] == "true" and record["settled"] == "true"
    assert record["image_id"] not in ec2_backends[TARGET]["eu-west-1"].amis
    assert not ssm_backends[TARGET]["eu-west-1"].get_parameters_by_path("/", recursive=True)[0]  # latest never moved
    # What every Region delivered and published before the copies began is kept (KeepDelivered).
    for region in ("us-east-1", "eu-west-1"):
        (image,) = run_images(emu, region, "stopped")
        parameter = emu.client("ssm", region).get_parameter(Name="/ami-factory/web/latest")["Parameter"]
        assert parameter["Value"] == image["ImageId"], region


def test_a_delivered_copy_is_never_removed_by_a_forged_removal(emu: Emulator) -> None:
    allow_copies(emu, TARGET)
    emu.deploy_target_account(TARGET)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(request(instance_id, {"account_id": TARGET, "regions": ["eu-west-1"]}), name="done")
    (cell,) = result.output["accounts"]
    assert cell["status"] == "DELIVERED", result.cause

    removal = invoke(
        emu,
        "RemoveAccountCopy",
        {"run_id": "done", "cell": {"account_id": TARGET, "region": "eu-west-1"}, "error": {"Error": "x"}},
    )

    assert removal["status"] == "DELIVERED" and removal["image_id"] == cell["image_id"]
    assert cell["image_id"] in ec2_backends[TARGET]["eu-west-1"].amis


def test_forged_looks_and_names_during_a_run_publish_nothing(emu: Emulator) -> None:
    """While a cell waits for its copy, a caller of DeliverToAccount names another image of the account,
    or another parameter: the run's ledger says neither is the run's, and the account's latest stays."""
    allow_copies(emu, TARGET)
    emu.deploy_target_account(TARGET)
    emu.world.images_take(900)
    instance_id = emu.launch_instance(name="web")
    foreign = ec2_backends[TARGET]["eu-west-1"].register_image(name="theirs")
    answers: list[dict[str, Any]] = []

    def forge() -> None:
        (record,) = account_copies(emu)
        cell = {"account_id": TARGET, "region": "eu-west-1"}
        base = {
            "run_id": "live",
            "image_name": "x",
            "description": "x",
            "tags": {},
            "parameter_name": "/ami-factory/web/latest",
            "max_wait_seconds": 3600,
            "cell": cell,
            "distribution": [],
        }
        looked = {**base, "account_copy": {**cell, "source_image_id": "x", "image_id": foreign.id, "polls": 1}}
        answers.append(invoke_error(emu, "DeliverToAccount", looked))
        renamed = {**base, "parameter_name": "/ami-factory/other-family/latest"}
        renamed["account_copy"] = {**cell, "source_image_id": "x", "image_id": record["image_id"], "polls": 1}
        answers.append(invoke_error(emu, "DeliverToAccount", renamed))

    # The stack's own copy to eu-west-1 is the first CopyImage; the account's is the second; the cell's
    # first look at it (its ledger record written) is the next DescribeImages.
    emu.world.after_call(
        "CopyImage", lambda: emu.world.after_call("CopyImage", lambda: emu.world.after_call("DescribeImages", forge))
    )
    result = emu.run(request(instance_id, {"account_id": TARGET, "regions": ["eu-west-1"]}), name="live")

    assert result.output["status"] == "SUCCEEDED", result.cause
    assert [answer["errorType"] for answer in answers] == ["NotMadeByRunError", "NotMadeByRunError"]
    assert f"image {foreign.id} is not the copy run live made" in answers[0]["errorMessage"]
    assert "published as /ami-factory/other-family/latest" in answers[1]["errorMessage"]
    names = [p.name for p in ssm_backends[TARGET]["eu-west-1"].get_parameters_by_path("/", recursive=True)[0]]
    assert names == ["/ami-factory/web/latest"]  # only the run's own, moved by the run itself


def test_an_execution_name_sts_would_refuse_as_a_session_name_still_copies(emu: Emulator) -> None:
    allow_copies(emu, TARGET)
    emu.deploy_target_account(TARGET)
    instance_id = emu.launch_instance(name="web")

    result = emu.run(request(instance_id, {"account_id": TARGET, "regions": ["eu-west-1"]}), name="web(1)")

    assert result.output["status"] == "SUCCEEDED", result.cause
    (assume,) = {request.params["RoleSessionName"] for request in emu.world.sent("AssumeRole")}
    assert assume == "ami-factory-web-1-"


def test_an_older_image_distributed_again_never_moves_the_accounts_latest_back(emu: Emulator) -> None:
    allow_copies(emu, TARGET)
    emu.deploy_target_account(TARGET)
    instance_id = emu.launch_instance(name="web")
    to_target = {"account_id": TARGET, "regions": ["eu-west-1"]}
    older = emu.run(request(instance_id, to_target), name="older")
    newer = emu.run(request(instance_id, to_target), name="newer")
    (newest_copy,) = [cell["image_id"] for cell in newer.output["accounts"]]
    (source,) = [r["image_id"] for r in older.output["regions"] if r["region"] == "us-east-1"]

    again = emu.run(request(instance_id, to_target, source_image_id=source), name="older-again")

    assert again.output["status"] == "SUCCEEDED", again.cause
    (cell,) = again.output["accounts"]
    assert cell["status"] == "DELIVERED" and cell["parameter_note"].startswith("latest not moved")
    latest = ssm_backends[TARGET]["eu-west-1"].get_parameter("/ami-factory/web/latest")
    assert latest.value == newest_copy


def test_a_cell_that_fails_after_moving_the_accounts_latest_keeps_its_copy(emu: Emulator) -> None:
    """The account's latest names the copy, but the step fails before it records that: the removal
    reads the parameter first, and the copy is delivered, not removed from under latest."""
    allow_copies(emu, TARGET)
    emu.deploy_target_account(TARGET)
    instance_id = emu.launch_instance(name="web")

    def answer_lost() -> None:
        raise RuntimeError("the answer to PutParameter is lost")

    # The stack's own copy, then the account's; the account's PutParameter is the next one.
    emu.world.after_call(
        "CopyImage",
        lambda: emu.world.after_call("CopyImage", lambda: emu.world.after_call("PutParameter", answer_lost)),
    )
    result = emu.run(request(instance_id, {"account_id": TARGET, "regions": ["eu-west-1"]}), name="lost")

    assert result.output["status"] == "SUCCEEDED", result.cause
    (cell,) = result.output["accounts"]
    assert cell["status"] == "DELIVERED"
    assert cell["image_id"] in ec2_backends[TARGET]["eu-west-1"].amis
    assert ssm_backends[TARGET]["eu-west-1"].get_parameter("/ami-factory/web/latest").value == cell["image_id"]
    (record,) = account_copies(emu)
    assert record["delivered"] == "true" and record["publishing"] == "true"
    used = {action for role, action, _ in emu.authorizer.used if role == "CopyTargetRole"}
    assert "ssm:GetParameter" in used


def test_the_accounts_role_removes_only_copies_of_the_run_its_session_names(emu: Emulator) -> None:
    """Below the ledger, IAM fences removal too: the session is tagged with its run, and the role may
    deregister only a copy tagged with that run (a tag the factory set at CopyImage, as the ledger
    records the copy)."""
    allow_copies(emu, TARGET)
    role_arn = emu.deploy_target_account(TARGET)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(request(instance_id, {"account_id": TARGET, "regions": ["eu-west-1"]}), name="kept")
    (cell,) = result.output["accounts"]

    def deregister_as_run(run: str) -> str:
        with acting_as(
            "ami-factory-local-RemoveAccountCopyFunctionRole", "ami-factory-local-RemoveAccountCopyFunction"
        ):
            answer = boto3.client("sts", region_name="us-east-1").assume_role(
                RoleArn=role_arn,
                RoleSessionName=f"ami-factory-{run}",
                ExternalId=EXTERNAL_ID,
                Tags=[{"Key": "ami-factory:run", "Value": run}],
            )["Credentials"]
            ec2 = boto3.client(
                "ec2",
                region_name="eu-west-1",
                aws_access_key_id=answer["AccessKeyId"],
                aws_secret_access_key=answer["SecretAccessKey"],
                aws_session_token=answer["SessionToken"],
            )
            try:
                ec2.deregister_image(ImageId=cell["image_id"])
            except ClientError as refused:
                return str(refused.response["Error"]["Code"])
            return "deregistered"

    assert deregister_as_run("another-run") == "UnauthorizedOperation"
    assert cell["image_id"] in ec2_backends[TARGET]["eu-west-1"].amis
    assert deregister_as_run("kept") == "deregistered"


def test_a_forged_share_step_shares_with_no_copy_account_the_run_did_not_ask_for(emu: Emulator) -> None:
    """ShareImage shares with the copy accounts ResolveRequest recorded for the run, whatever its input
    says: a run without copy_to_accounts, invoked again with a cell, shares with nobody more."""
    allow_copies(emu, TARGET)
    instance_id = emu.launch_instance(name="web")
    result = emu.run({"instance_id": instance_id, "regions": []}, name="plain")
    (image,) = result.output["regions"]
    forged = {
        "run_id": "plain",
        "image": {"region": "us-east-1", "image_id": image["image_id"]},
        "share": {},
        "account_cells": [{"account_id": TARGET, "region": "us-east-1"}],
    }

    shared = invoke(emu, "ShareImage", forged)

    assert shared == {"shared_with": []}
    assert {"UserId": TARGET} not in ec2_backends[ACCOUNT_ID]["us-east-1"].amis[image["image_id"]].launch_permissions
