"""``ami_factory_cli doctor``: each check of a deployed stack, passing and failing, on the emulator
(the stack as CloudFormation describes it, its rules in every Region, keys, instances)."""

from __future__ import annotations

import io
import json

from ami_factory_cli import cli
from ami_factory_local import Emulator
from ami_factory_local.emulator import STACK_NAME
from tests.helpers import ALLOWED_ACCOUNT, ALLOWED_OU, create_keys, key_arn, nothing_was_changed


def examine(emu: Emulator) -> tuple[int, list[str]]:
    """The doctor's exit status and its lines, less the heading; it changes nothing."""
    out = io.StringIO()
    args = cli.parser().parse_args(["doctor", "--stack-name", STACK_NAME, "--region", emu.region])
    status = cli.doctor(args, out)
    nothing_was_changed(emu)
    heading, *lines = out.getvalue().splitlines()
    assert heading == f"AMI Factory doctor: stack {STACK_NAME} in us-east-1 (read-only)"
    return status, lines


def fixes(lines: list[str], check: str) -> list[str]:
    return [line.removeprefix(f"  FIX   {check}: ") for line in lines if line.startswith(f"  FIX   {check}: ")]


def test_a_fresh_deployment_is_ready_for_a_first_run(emu: Emulator) -> None:
    status, lines = examine(emu)
    assert status == 0
    assert lines == [
        "  ok    parameters: no settings contradict each other",
        "  ok    public sharing: public sharing is off (AllowPublicSharing=false): nothing to check",
        "  ok    key policies: no customer managed key, or no share target: nothing to check",
        "  ok    event forwarding: 19 Region(s) forward EC2's AMI events to us-east-1",
        "  ok    scheduled instances: 0 scheduled instance(s), 0 needing SSM, all managed",
        "ready for a first run",
    ]


def test_settings_that_contradict_each_other_are_named_with_the_fix(make_emulator) -> None:
    emu = make_emulator(
        AllowedRegions="eu-west-1",
        DefaultRegions="eu-west-1,ap-southeast-2",
        KmsKeyIds=key_arn("us-east-1") + "," + key_arn("sa-east-1"),
        TagPrivilegedSettings="share-public",
        TriggerSource="cloudtrail",
    )
    status, lines = examine(emu)
    redeploy = f"(sam deploy --stack-name {STACK_NAME} --parameter-overrides ...)"
    assert status == 1
    assert fixes(lines, "parameters") == [
        "DefaultRegions names ['ap-southeast-2'], outside AllowedRegions ['eu-west-1'], so a request that names no "
        f"Regions is refused: change AllowedRegions or DefaultRegions {redeploy}",
        "KmsKeyIds has keys for ['sa-east-1'], where AllowedRegions ['eu-west-1'] lets no run copy: change KmsKeyIds "
        f"or AllowedRegions {redeploy}",
        "TagPrivilegedSettings opens share-public to tags, but AllowPublicSharing is false, so every such tag is "
        f"refused: change TagPrivilegedSettings or AllowPublicSharing {redeploy}",
        "TriggerSource is cloudtrail and AllowedTriggerPrincipals is empty, so no tag starts a run: change "
        f"AllowedTriggerPrincipals {redeploy}",
    ]
    assert fixes(lines, "key policies") == [
        f"key {key} cannot be read (NotFoundException: Key '{key}' does not exist): check the ARN in KmsKeyIds, and that you may "
        f"kms:GetKeyPolicy it (aws kms describe-key --key-id {key})"
        for key in (key_arn("us-east-1"), key_arn("sa-east-1"))
    ]
    assert lines[-1] == "2 of 5 checks need attention"


def test_public_sharing_needs_block_public_access_off_where_images_go(make_emulator) -> None:
    emu = make_emulator(AllowPublicSharing="true", AllowedRegions="eu-west-1")
    emu.world.image_block_public_access("us-east-1", "unblocked")
    status, lines = examine(emu)
    assert status == 1
    assert fixes(lines, "public sharing") == [
        "image block public access is block-new-sharing in eu-west-1, so a public run fails there: aws ec2 "
        "disable-image-block-public-access --region eu-west-1 (if public images are intended)"
    ]
    emu.world.image_block_public_access("eu-west-1", "unblocked")
    status, lines = examine(emu)
    assert status == 0
    assert "  ok    public sharing: public images can be made in ['eu-west-1', 'us-east-1']" in lines


def test_a_key_that_an_allowed_share_target_cannot_use_is_named(make_emulator) -> None:
    emu = make_emulator(AllowedShareOrganizations="")
    keys = create_keys(emu, [f"arn:aws:iam::{ALLOWED_ACCOUNT}:root"], ["us-east-1", "eu-west-1"])
    status, lines = examine(emu)
    assert status == 1
    assert fixes(lines, "key policies") == [
        f"key {key} does not let ['{ALLOWED_OU}'] use it, so they would see images encrypted with it but could not "
        f"launch them: allow kms:Decrypt, kms:DescribeKey, kms:CreateGrant, kms:ReEncrypt* and kms:GenerateDataKey* "
        f"to them in the key policy (aws kms put-key-policy --key-id {key} --policy-name default --policy "
        f"file://policy.json), or create grants"
        for key in keys.values()
    ]
    emu.reconfigure(AllowedShareOUs="")
    status, lines = examine(emu)
    assert status == 0
    assert "  ok    key policies: 2 key(s) let every allowed share target use them" in lines


def test_a_region_whose_forwarding_rule_is_gone_or_off_is_named(emu: Emulator) -> None:
    name = f"{STACK_NAME}-us-east-1-ami-events"
    eu, sydney = emu.client("events", "eu-west-1"), emu.client("events", "ap-southeast-2")
    targets = [target["Id"] for target in eu.list_targets_by_rule(Rule=name)["Targets"]]
    eu.remove_targets(Rule=name, Ids=targets)
    eu.delete_rule(Name=name)
    sydney.disable_rule(Name=name)
    status, lines = examine(emu)
    assert status == 1
    home_bus = "arn:aws:events:us-east-1:123456789012:event-bus/default"
    assert fixes(lines, "event forwarding") == [
        f"rule {name} in ap-southeast-2 is DISABLED with targets ['{home_bus}']; it must be ENABLED and send to "
        f"{home_bus}: aws events enable-rule --name {name} --region ap-southeast-2, or update the stack",
        f"eu-west-1 has no rule {name}, so copies there end only at the fallback sweep (EventFallbackMinutes), not on "
        f"EC2's event: update the stack (sam deploy) to make it",
    ]


def test_a_scheduled_instance_whose_tags_need_ssm_must_be_managed(emu: Emulator) -> None:
    plain = emu.launch_instance(name="plain", tags={"ami-factory:schedule": "true"})
    cleaned = emu.launch_instance(name="cleaned", tags={"ami-factory:schedule": "TRUE", "ami-factory:cleanup": "true"})
    emu.launch_instance(name="unscheduled", tags={"ami-factory:schedule": "false", "ami-factory:cleanup": "true"})
    status, lines = examine(emu)
    assert status == 1
    assert fixes(lines, "scheduled instances") == [
        f"instance {cleaned} is tagged for the schedule with a clean-up or generalize, and is not registered with "
        f"SSM, so its scheduled runs fail: install and start the SSM agent and give its instance profile "
        f"AmazonSSMManagedInstanceCore (aws ssm describe-instance-information --filters "
        f"Key=InstanceIds,Values={cleaned} shows it once it is managed)"
    ]
    emu.world.ssm_manage(cleaned)
    status, lines = examine(emu)
    assert status == 0 and plain not in json.dumps(lines)
    assert "  ok    scheduled instances: 2 scheduled instance(s), 1 needing SSM, all managed" in lines
