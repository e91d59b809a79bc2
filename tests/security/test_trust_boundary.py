"""The threat model's attacks (../shared/THREAT-MODEL.md), played through the real path: tags set
on instances, the tag rule, the real start function, the state machine, the real handlers. Each
asserts that the victim (instance, image, ``latest``) is untouched and that the refusal is named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ami_factory_local import Emulator
from ami_factory_local.emulator import ACCOUNT_ID
from ami_factory_local.template import load_template
from tests.helpers import (
    ROOT,
    all_instances,
    event,
    images,
    instance,
    instance_tags,
    invoke,
    invoke_error,
    launch_tagged,
    ledger_items,
    run_images,
    sample,
    tag_event,
    wait_all,
    wait_until,
)

EVENT_ID = "5e1f0c2a-0000-4000-8000-00000000a77c"
ALICE = "arn:aws:sts::123456789012:assumed-role/ImageBuilders/alice"


def tag_run_id(instance_id: str) -> str:
    """A tag run's id is predictable: the instance and the tag event's id (readable from image tags)."""
    return f"{instance_id}-tag-{EVENT_ID}"


def touched(emu: Emulator, instance_id: str) -> dict[str, list[Any]]:
    """Every call that acted on ``instance_id``: commands sent to it, images of it, stops, terminations."""
    return {
        "SendCommand": [r for r in emu.world.sent("SendCommand") if instance_id in r.params.get("InstanceIds", [])],
        "CreateImage": [r for r in emu.world.sent("CreateImage") if r.params["InstanceId"] == instance_id],
        "StopInstances": [r for r in emu.world.sent("StopInstances") if instance_id in r.params["InstanceIds"]],
        "TerminateInstances": [
            r
            for region in ("us-east-1", "eu-west-1")
            for r in emu.world.sent("TerminateInstances", region)
            if instance_id in r.params["InstanceIds"]
        ],
    }


def untouched(emu: Emulator, instance_id: str, region: str = "us-east-1") -> None:
    assert touched(emu, instance_id) == {
        "SendCommand": [],
        "CreateImage": [],
        "StopInstances": [],
        "TerminateInstances": [],
    }
    (found,) = [i for i in all_instances(emu, region) if i["InstanceId"] == instance_id]
    assert found["State"]["Name"] == "running"


def latest(emu: Emulator, family: str, region: str = "us-east-1") -> str:
    return str(emu.client("ssm", region).get_parameter(Name=f"/ami-factory/{family}/latest")["Parameter"]["Value"])


# --- adopted scaffolding: a victim tagged as a run's clone or launch check ---------------------


def test_a_victim_tagged_as_the_runs_clone_is_never_generalized_imaged_or_terminated(emu: Emulator) -> None:
    source = launch_tagged(emu, **{"ami-factory:mode": "generalize", "ami-factory:regions": ""})
    emu.world.ssm_manage(source, "Linux")
    victim = emu.launch_instance(
        name="payroll",
        tags={"ami-factory:run": tag_run_id(source), "ami-factory:role": "clone", "ami-factory:managed": "true"},
    )
    emu.world.ssm_manage(victim, "Linux")
    emu.deliver_event(tag_event(emu, source, event_id=EVENT_ID))
    (run,) = wait_all(emu)
    assert run.status == "SUCCEEDED", run.cause
    untouched(emu, victim)
    (clone,) = {i["InstanceId"] for i in all_instances(emu)} - {source, victim}
    assert instance(emu, clone)["State"]["Name"] == "terminated", "the run's own clone, and only it, is gone"
    (sanitized,) = emu.world.sent("SendCommand")
    assert sanitized.params["InstanceIds"] == [clone]


def test_a_victim_tagged_as_the_runs_launch_check_in_another_region_is_never_terminated(emu: Emulator) -> None:
    source = launch_tagged(emu, **{"ami-factory:launch-check": "true", "ami-factory:regions": "eu-west-1"})
    victim = emu.launch_instance(
        name="eu-database",
        region="eu-west-1",
        tags={"ami-factory:run": tag_run_id(source), "ami-factory:role": "launch-check", "ami-factory:managed": "true"},
    )
    emu.deliver_event(tag_event(emu, source, event_id=EVENT_ID))
    (run,) = wait_all(emu)
    assert run.status == "SUCCEEDED", run.cause
    untouched(emu, victim, "eu-west-1")
    assert len(emu.world.sent("TerminateInstances", "eu-west-1")) == 1, "its own launch check only"


def test_a_foreign_image_tagged_with_the_runs_id_is_never_deregistered_when_the_run_fails(emu: Emulator) -> None:
    source = launch_tagged(emu, **{"ami-factory:regions": ""})
    foreign = emu.client("ec2").register_image(Name="someone-elses", RootDeviceName="/dev/xvda")["ImageId"]
    emu.client("ec2").create_tags(
        Resources=[foreign],
        Tags=[{"Key": "ami-factory:run", "Value": tag_run_id(source)}, {"Key": "ami-factory:managed", "Value": "true"}],
    )
    emu.world.images_fail()
    emu.deliver_event(tag_event(emu, source, event_id=EVENT_ID))
    (run,) = wait_all(emu)
    assert run.status == "FAILED" and run.error == "ImageFailedError"
    deregistered = [r.params["ImageId"] for r in emu.world.sent("DeregisterImage")]
    assert foreign not in deregistered and len(deregistered) == 1, "the run's own failed image only"
    assert emu.client("ec2").describe_images(ImageIds=[foreign])["Images"][0]["State"] == "available"


def test_steps_refuse_ids_their_run_did_not_make_whatever_the_state_says(emu: Emulator) -> None:
    """The state is data whoever starts a run shapes; each destructive step checks its ledger."""
    source = emu.launch_instance(name="golden")
    emu.world.ssm_manage(source, "Linux")
    victim = emu.launch_instance(name="payroll")
    emu.world.ssm_manage(victim, "Linux")
    request = {"instance_id": source, "mode": "generalize", "regions": []}
    plan = invoke(
        emu, "ResolveRequest", {"request": request, "run_id": "r", "state_machine_arn": emu.state_machine_arn}
    )
    foreign_image = emu.client("ec2").create_image(InstanceId=victim, Name="victims-image")["ImageId"]
    as_clone = {"instance_id": victim, "region": "us-east-1", "state": "running"}
    refusals = [
        invoke_error(emu, "Generalize", {**plan, "clone": as_clone}),
        invoke_error(emu, "CreateImage", {**plan, "clone": as_clone}),
        invoke_error(emu, "LaunchClone", {**plan, "seed": {"region": "us-east-1", "image_id": foreign_image}}),
        invoke_error(emu, "EndLaunchCheck", {"run_id": "r", "launched": as_clone}),
        invoke_error(
            emu,
            "PublishParameter",
            {**plan, "image": {"region": "us-east-1", "image_id": foreign_image}},
        ),
    ]
    assert {error["errorType"] for error in refusals} == {"NotMadeByRunError"}
    assert all("not recorded in run r's ledger" in error["errorMessage"] for error in refusals)
    assert emu.world.sent("SendCommand") == [] and emu.world.sent("TerminateInstances") == []
    assert emu.world.sent("PutParameter") == [] and len(emu.world.sent("CreateImage")) == 1, "the test's own"
    # With no clone named, mode generalize has nothing to generalize: never the instance itself.
    no_clone = invoke_error(emu, "Generalize", {**plan, "clone": None})
    assert no_clone["errorType"] == "NotMadeByRunError"
    assert "mode generalize has no clone to generalize" in no_clone["errorMessage"]
    assert emu.world.sent("SendCommand") == []


def ami_event(image_id: str, state: str) -> dict[str, Any]:
    """EC2's event about an image (events/ami-state-change.json), as anyone could forge it."""
    forged = event("ami-state-change.json")
    forged["region"] = "us-east-1"
    forged["detail"] |= {"ImageId": image_id, "State": state}
    return forged


def waits(emu: Emulator) -> list[dict[str, Any]]:
    return [item for item in ledger_items(emu) if item["pk"] == "wait"]


def test_a_wait_belongs_to_its_run_and_ends_only_on_what_ec2_says(emu: Emulator) -> None:
    """Whoever can invoke the wait functions directly can neither take over another run's wait (its
    token, its copy slot) nor end it with a forged event: a wait is the run's, recorded only for an
    image the run's ledger holds, and an event is a reason to look, never the answer."""
    emu.world.images_take(600)
    source = emu.launch_instance(name="golden")
    plan = invoke(
        emu,
        "ResolveRequest",
        {"request": {"instance_id": source, "regions": []}, "run_id": "r", "state_machine_arn": emu.state_machine_arn},
    )
    image = invoke(emu, "CreateImage", plan)
    invoke(emu, "WatchImage", {"run_id": "r", "role": "image", "image": image, "task_token": "token-r"})
    (wait,) = waits(emu)
    takeover = invoke_error(
        emu, "WatchImage", {"run_id": "evil", "role": "image", "image": image, "task_token": "token-evil"}
    )
    assert takeover["errorType"] == "NotMadeByRunError"
    assert "not recorded in run evil's ledger" in takeover["errorMessage"]
    assert waits(emu) == [wait], "the run's token is still the one its event ends"
    # Forged events while the image is pending: EC2 is asked, and says pending, so nothing ends.
    for state in ("available", "failed"):
        (settled,) = emu.deliver_event(ami_event(image["image_id"], state))
        assert settled["ended"] is False and settled["state"] == "pending"
    assert emu.world.sent("SendTaskSuccess") == [] and emu.world.sent("SendTaskFailure") == []
    assert waits(emu) == [wait]
    emu.clock.advance(600)
    (settled,) = emu.deliver_event(ami_event(image["image_id"], "available"))
    assert settled["state"] == "available" and waits(emu) == []
    (told,) = emu.world.sent("SendTaskSuccess")
    assert told.params["taskToken"] == "token-r"


# --- family takeover: a tag or a name that moves another family's latest -----------------------


@pytest.fixture
def owned_family(emu: Emulator) -> tuple[str, str]:
    """``web-server``, published by its own instance's run: (owner instance, its image)."""
    owner = emu.launch_instance(name="web-server")
    run = emu.run({"instance_id": owner, "regions": ["eu-west-1"]}, name="owner-run")
    assert run.status == "SUCCEEDED", run.cause
    return owner, latest(emu, "web-server")


@pytest.mark.parametrize(
    "attacker_tags",
    [{"ami-factory:image-name": "web-server"}, {"Name": "web-server"}],
    ids=["image-name tag", "Name tag"],
)
def test_another_instance_cannot_move_a_familys_latest_by_tag_or_name(
    emu: Emulator, owned_family: tuple[str, str], attacker_tags: dict[str, str]
) -> None:
    owner, owners_image = owned_family
    eu_image = latest(emu, "web-server", "eu-west-1")
    attacker = launch_tagged(emu, **{"ami-factory:regions": "eu-west-1", **attacker_tags})
    if "Name" in attacker_tags:
        emu.client("ec2").create_tags(Resources=[attacker], Tags=[{"Key": "Name", "Value": "web-server"}])
    (outcome,) = emu.deliver_event(tag_event(emu, attacker, event_id=EVENT_ID))
    assert outcome["started"] == [] and outcome["rejected"][0]["error"] == "FamilyOwnedError"
    refusal = instance_tags(emu, attacker)["ami-factory:error"]
    assert refusal.startswith(f"image family web-server belongs to instance {owner} (us-east-1, account {ACCOUNT_ID})")
    assert "adopt_family" in refusal, "the message says how the owner's operator may move it"
    assert (latest(emu, "web-server"), latest(emu, "web-server", "eu-west-1")) == (owners_image, eu_image)
    assert touched(emu, attacker)["CreateImage"] == [], "refused before anything was made"
    console = emu.run({"instance_id": attacker, "image_name": "web-server", "regions": []}, name="console-attack")
    assert console.status == "FAILED" and console.error == "FamilyOwnedError", "a console run without adopt_family"
    assert latest(emu, "web-server") == owners_image


def test_only_a_start_execution_request_adopts_a_family(emu: Emulator, owned_family: tuple[str, str]) -> None:
    owner, _ = owned_family
    replacement = emu.launch_instance(name="web-server-2")
    by_tag = launch_tagged(emu, **{"ami-factory:image-name": "web-server", "ami-factory:adopt-family": "true"})
    (outcome,) = emu.deliver_event(tag_event(emu, by_tag))
    assert (
        outcome["rejected"][0]["error"] == "InvalidRequestError" and "adopt-family" in outcome["rejected"][0]["message"]
    )
    adopted = emu.run(
        {"instance_id": replacement, "image_name": "web-server", "adopt_family": True, "regions": []}, name="adopt"
    )
    assert adopted.status == "SUCCEEDED", adopted.cause
    assert latest(emu, "web-server") == adopted.output["regions"][0]["image_id"]
    back = emu.run({"instance_id": owner, "regions": []}, name="old-owner")
    assert back.status == "FAILED" and back.error == "FamilyOwnedError", "the family moved with the adoption"
    assert f"belongs to instance {replacement}" in back.cause_message


def test_names_that_normalise_alike_are_two_families_refused_not_merged(emu: Emulator) -> None:
    source = emu.launch_instance(name="wéb")
    assert emu.run({"instance_id": source, "regions": []}, name="first").status == "SUCCEEDED"
    renamed = emu.run({"instance_id": source, "image_name": "wüb", "regions": []}, name="second")
    assert renamed.status == "FAILED" and renamed.error == "FamilyOwnedError"
    assert "first published as 'wéb'" in renamed.cause_message and "'wüb'" in renamed.cause_message
    owner = [item for item in ledger_items(emu) if (item["pk"], item["sk"]) == ("family#w-b", "owner")]
    assert [(item["instance_id"], item["name"], item["account"]) for item in owner] == [(source, "wéb", ACCOUNT_ID)]


# --- privileged settings are not for tags ---------------------------------------------------------


@pytest.mark.parametrize(
    "tags, name",
    [
        (
            {"ami-factory:mode": "generalize-in-place", "ami-factory:confirm-generalize-in-place": "true"},
            "generalize-in-place",
        ),
        ({"ami-factory:cleanup": "true"}, "cleanup"),
        ({"ami-factory:mode": "generalize", "ami-factory:clone-instance-profile": "AdminProfile"}, "clone"),
        ({"ami-factory:keep-newest": "1"}, "retention"),
    ],
    ids=["sysprep in place", "clean-up", "clone profile", "retention"],
)
def test_a_tag_asking_for_a_privileged_setting_starts_nothing_and_says_why(
    emu: Emulator, tags: dict[str, str], name: str
) -> None:
    victim = launch_tagged(emu, **{"ami-factory:regions": "", **tags})
    emu.world.ssm_manage(victim, "Linux")
    (outcome,) = emu.deliver_event(tag_event(emu, victim, event_id=EVENT_ID))
    assert outcome["started"] == [] and outcome["rejected"][0]["error"] == "PrivilegedSettingError"
    assert f"ask for {name}, which only a StartExecution request may" in instance_tags(emu, victim)["ami-factory:error"]
    assert wait_all(emu) == []
    untouched(emu, victim)


def test_the_operator_may_open_a_privileged_setting_to_tags_by_name(make_emulator) -> None:
    emu: Emulator = make_emulator(TagPrivilegedSettings="cleanup")
    source = launch_tagged(emu, **{"ami-factory:regions": "", "ami-factory:cleanup": "true"})
    emu.world.ssm_manage(source, "Linux")
    emu.deliver_event(tag_event(emu, source, event_id=EVENT_ID))
    (run,) = wait_all(emu)
    assert run.status == "SUCCEEDED", run.cause
    assert len(touched(emu, source)["SendCommand"]) == 1, "the clean-up the operator allowed"


# --- the clone's identity is the stack's ----------------------------------------------------------


def admin_profile(emu: Emulator, name: str = "AdminProfile", path: str = "/") -> str:
    iam = emu.client("iam")
    iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name


def clone_launch(emu: Emulator) -> dict[str, Any]:
    (launch,) = [r for r in emu.world.sent("RunInstances") if "ami-factory:role" in str(r.params)]
    return launch.params


def test_the_clone_never_gets_the_sources_role_but_the_stacks_ssm_only_profile(emu: Emulator) -> None:
    source = emu.launch_instance(name="golden")
    emu.client("ec2").associate_iam_instance_profile(InstanceId=source, IamInstanceProfile={"Name": admin_profile(emu)})
    emu.world.ssm_manage(source, "Linux")
    run = emu.run({"instance_id": source, "mode": "generalize", "regions": []}, name="clone-identity")
    assert run.status == "SUCCEEDED", run.cause
    assert clone_launch(emu)["IamInstanceProfile"] == {"Name": "ami-factory-local-CloneInstanceProfile"}


def test_a_clone_profile_outside_the_allow_list_is_refused_by_request_and_by_opened_tag(make_emulator) -> None:
    emu: Emulator = make_emulator(AllowedCloneInstanceProfiles="BuildProfile", TagPrivilegedSettings="clone")
    source = launch_tagged(
        emu, **{"ami-factory:mode": "generalize", "ami-factory:clone-instance-profile": admin_profile(emu)}
    )
    emu.world.ssm_manage(source, "Linux")
    (outcome,) = emu.deliver_event(tag_event(emu, source, event_id=EVENT_ID))
    assert outcome["rejected"][0]["error"] == "CloneProfileNotAllowedError"
    request = {"instance_id": source, "mode": "generalize", "clone": {"instance_profile": "AdminProfile"}}
    refused = emu.run(request, name="escalate")
    assert refused.status == "FAILED" and refused.error == "CloneProfileNotAllowedError"
    assert "AllowedCloneInstanceProfiles ['BuildProfile']" in refused.cause_message
    untouched(emu, source)
    # An allowed profile's role must be on the path the functions may pass (docs/security-model.md says so).
    build_profile = admin_profile(emu, "BuildProfile", path="/ami-factory-clone/")
    allowed = emu.run({**request, "clone": {"instance_profile": build_profile}}, name="ok")
    assert allowed.status == "SUCCEEDED", allowed.cause
    assert clone_launch(emu)["IamInstanceProfile"] == {"Name": "BuildProfile"}


def test_an_allowed_profile_whose_role_is_off_the_clone_path_is_refused_by_iam_and_nothing_is_left(
    make_emulator,
) -> None:
    """The operator allows a profile by name, but its role is not on /ami-factory-clone/: the template
    lets the functions pass only those roles, so IAM refuses the PassRole (as on AWS), the run fails
    saying so, and the source and the run's seed image are as they were before."""
    emu: Emulator = make_emulator(AllowedCloneInstanceProfiles="AdminProfile")
    source = emu.launch_instance(name="golden")
    emu.world.ssm_manage(source, "Linux")
    request = {"instance_id": source, "mode": "generalize", "clone": {"instance_profile": admin_profile(emu)}}
    refused = emu.run(request, name="off-path")
    assert refused.status == "FAILED" and refused.error == "CloneLaunchError", refused.cause
    assert "iam:PassRole" in refused.cause_message and "role/AdminProfile" in refused.cause_message
    (refusal,) = emu.authorizer.refusals
    assert (refusal.role, refusal.decision.action) == ("LaunchCloneFunctionRole", "iam:PassRole")
    calls = touched(emu, source)
    assert calls["StopInstances"] == calls["TerminateInstances"] == calls["SendCommand"] == []
    assert [i["State"]["Name"] for i in all_instances(emu) if i["InstanceId"] == source] == ["running"]
    assert run_images(emu, "us-east-1", "off-path") == [], "the seed image is removed"


# --- who may trigger by tag is the operator's choice ------------------------------------------------


def cloudtrail_event(instance_id: str, caller: str, error_code: str | None = None) -> dict[str, Any]:
    body = event("cloudtrail-create-tags.json")
    body["detail"]["userIdentity"]["arn"] = caller
    body["detail"]["requestParameters"]["resourcesSet"]["items"] = [{"resourceId": instance_id}]
    if error_code:
        body["detail"]["errorCode"] = error_code
    return body


def test_with_the_cloudtrail_trigger_only_allowed_principals_start_runs(make_emulator, function_logs) -> None:
    emu: Emulator = make_emulator(
        TriggerSource="cloudtrail", AllowedTriggerPrincipals="arn:aws:iam::123456789012:role/ImageBuilders"
    )
    source = launch_tagged(emu, **{"ami-factory:regions": ""})
    assert emu.deliver_event(tag_event(emu, source)) == [], "no tag rule: tagging alone starts nothing"
    other_tag = cloudtrail_event(source, ALICE)
    other_tag["detail"]["requestParameters"]["tagSet"]["items"] = [{"key": "Name", "value": "web"}]
    assert emu.deliver_event(other_tag) == [], "the rule matches only a call that sets the trigger tag"
    intruder = "arn:aws:sts::123456789012:assumed-role/Developers/mallory"
    assert emu.deliver_event(cloudtrail_event(source, intruder)) == [{"started": [], "skipped": [], "rejected": []}]
    assert f"{intruder} set ami-factory:create on ['{source}'] and is not in AllowedTriggerPrincipals" in (
        function_logs.text
    )
    refused_call = cloudtrail_event(source, ALICE, error_code="Client.UnauthorizedOperation")
    assert emu.deliver_event(refused_call)[0]["started"] == [], "a CreateTags that failed set nothing"
    assert wait_all(emu) == []
    (outcome,) = emu.deliver_event(cloudtrail_event(source, ALICE))
    assert outcome["started"] == [f"{source}-ct-3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"]
    (run,) = wait_all(emu)
    assert run.status == "SUCCEEDED", run.cause
    assert run.output["regions"][0]["shared_with"] == ["111122223333"], "the instance's tags are its settings"


def test_a_cloudtrail_call_starts_only_instances_it_set_the_trigger_tag_true_on_and_counts_refusals(
    make_emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emu: Emulator = make_emulator(
        TriggerSource="cloudtrail", AllowedTriggerPrincipals="arn:aws:iam::123456789012:role/ImageBuilders"
    )
    source, other = (launch_tagged(emu, **{"ami-factory:regions": ""}) for _ in range(2))
    intruder = cloudtrail_event(source, "arn:aws:sts::123456789012:assumed-role/Developers/mallory")
    intruder["detail"]["requestParameters"]["resourcesSet"]["items"].append({"resourceId": other})
    assert emu.deliver_event(intruder)[0]["started"] == []
    refused = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"TriggersRefused"' in line]
    assert [
        (document["TriggersRefused"], document["_aws"]["CloudWatchMetrics"][0]["Metrics"]) for document in refused
    ] == [([2.0], [{"Name": "TriggersRefused", "Unit": "Count"}])]
    # The rule matches the key; a false trigger tag beside another tag set true starts nothing.
    not_true = cloudtrail_event(source, ALICE)
    not_true["detail"]["requestParameters"]["tagSet"]["items"] = [
        {"key": "ami-factory:create", "value": "false"},
        {"key": "Backup", "value": "true"},
    ]
    assert emu.deliver_event(not_true) == [{"started": [], "skipped": [], "rejected": []}]
    # One call over an instance that is gone and one that is not starts the one that is.
    both = cloudtrail_event("i-0000000000000dead", ALICE)
    both["detail"]["requestParameters"]["resourcesSet"]["items"].append({"resourceId": source})
    assert emu.deliver_event(both)[0]["started"] == [f"{source}-ct-3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"]
    assert [run.status for run in wait_all(emu)] == ["SUCCEEDED"]


def test_a_cloudtrail_record_without_a_caller_or_tags_reads_as_nobody_setting_nothing() -> None:
    from ami_factory.triggers import CloudTrailCreateTags

    call = CloudTrailCreateTags.from_detail({"eventName": "CreateTags", "eventID": "e"})
    assert (call.caller, call.resources, call.tags) == ("", [], [])


def test_the_tag_guard_policy_denies_every_ami_factory_tag_key() -> None:
    template = load_template(ROOT / "template.yaml")
    (statement,) = template["Resources"]["TagGuardPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Action"] == ["ec2:CreateTags", "ec2:DeleteTags"]
    keys = statement["Condition"]["ForAnyValue:StringLike"]["aws:TagKeys"]
    assert keys == ["ami-factory:*", {"Ref": "TriggerTagKey"}, {"Ref": "ScheduleTagKey"}]
    assert template["Outputs"]["TagGuardPolicyArn"]["Value"] == {"Ref": "TagGuardPolicy"}


# --- retention trusts only the ledger ----------------------------------------------------------------


def test_retention_never_deletes_or_reads_settings_from_an_image_tags_call_the_familys(make_emulator) -> None:
    emu: Emulator = make_emulator(RetentionKeepNewest="3")
    owner = emu.launch_instance(name="web")
    made = []
    for run in range(4):
        result = emu.run({"instance_id": owner, "regions": []}, name=f"r{run}")
        assert result.status == "SUCCEEDED", result.cause
        made.append(result.output["regions"][0]["image_id"])
    ec2 = emu.client("ec2")
    foreign = ec2.register_image(Name="someone-elses", RootDeviceName="/dev/xvda")["ImageId"]
    labels = {"ami-factory:managed": "true", "ami-factory:family": "web", "ami-factory:keep-newest": "two"}
    for image_id in (foreign, made[-1]):  # a foreign image, and the family's newest with a malformed rule
        ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in labels.items()])
    report = emu.runtime.invoke_checked("ami-factory-local-ApplyRetentionFunction", {})
    assert [(d["image_id"], d["action"]) for d in report["decisions"]] == [(made[0], "deleted")]
    assert report["kept"] == 3, "the deployment's 3: no tag decides, and a malformed one crashes nothing"
    assert ec2.describe_images(ImageIds=[foreign])["Images"][0]["State"] == "available"


def test_the_janitor_removes_what_a_stopped_run_left_and_nothing_a_tag_names(emu: Emulator) -> None:
    source = emu.launch_instance(name="golden")
    emu.world.ssm_manage(source, "Linux")
    emu.world.generalize_never_stops()
    decoy = emu.launch_instance(tags={"ami-factory:run": "stopped", "ami-factory:role": "clone"})
    arn = f"{emu.state_machine_arn.replace(':stateMachine:', ':execution:')}:stopped"
    # Stopped right after sysprep is sent to the clone: deterministic, whatever the machine's speed.
    emu.world.after_call("SendCommand", lambda: emu.client("stepfunctions").stop_execution(executionArn=arn))
    emu.start_run({"instance_id": source, "mode": "generalize", "regions": []}, name="stopped")
    # ABORTED; or FAILED with States.Runtime when the stop lands inside a task (moto's interpreter):
    # either way no Catch ran, and the janitor ends the run on its status change.
    assert emu.wait(arn).status in ("ABORTED", "FAILED")
    (change,) = emu.status_changes
    assert "error" not in change, change
    (ended,) = change["results"][0]["ended"]
    assert ended["error"] in ("ExecutionAborted", "ExecutionFailed") and len(ended["cleaned_up"]) == 2
    roles = {item["role"]: item["removed"] for item in ledger_items(emu) if item["sk"].startswith("made#")}
    assert roles == {"seed": "true", "clone": "true"}
    untouched(emu, decoy)


def status_change(emu: Emulator, name: str, status: str = "ABORTED", machine: str | None = None) -> dict[str, Any]:
    """The sample status-change event, for run ``name`` of this deployment's state machine (or ``machine``)."""
    body = event("execution-status-change.json")
    machine = machine or emu.state_machine_arn
    body["detail"].update(
        stateMachineArn=machine,
        name=name,
        status=status,
        executionArn=f"{machine.replace(':stateMachine:', ':execution:')}:{name}",
    )
    return body


def test_the_janitor_ends_nothing_that_is_still_running_or_not_this_deployments(emu: Emulator) -> None:
    """Whoever can invoke the janitor, or send it an event, can only make it end a run that is over:
    the event's claim is checked against Step Functions, and the run against the ledger."""
    emu.world.images_take(600)
    source = emu.launch_instance(name="golden")
    arn = emu.start_run({"instance_id": source, "regions": []}, name="busy")
    wait_until(lambda: any(item.get("role") == "image" for item in ledger_items(emu)))
    janitor = "ami-factory-local-EndRunFunction"
    assert emu.runtime.invoke_checked(janitor, status_change(emu, "busy")) == {"ended": []}, "still running"
    other = emu.state_machine_arn.replace("ImagingStateMachine", "SomeoneElses")
    assert emu.runtime.invoke_checked(janitor, status_change(emu, "busy", machine=other)) == {"ended": []}
    assert emu.deliver_event(status_change(emu, "busy", machine=other)) == [], "the rule is this machine's only"
    assert emu.runtime.invoke_checked(janitor, status_change(emu, "never-ran")) == {"ended": []}, "no ledger"
    assert emu.world.sent("DeregisterImage") == [] and emu.world.sent("TerminateInstances") == []
    result = emu.wait(arn)
    assert result.status == "SUCCEEDED", result.cause
    assert [change["results"] for change in emu.status_changes] == [[]], "SUCCEEDED does not match the janitor's rule"


# --- one run per instance, however runs are started and named ----------------------------------


def test_a_tag_trigger_during_a_console_run_of_another_name_is_skipped_naming_the_holder(emu: Emulator) -> None:
    emu.world.images_take(600)
    source = launch_tagged(emu, **{"ami-factory:regions": ""})
    console = emu.start_run({"instance_id": source, "regions": []}, name="nightly-golden")
    wait_until(lambda: any(item["pk"] == f"instance#us-east-1#{source}" for item in ledger_items(emu)))
    (outcome,) = emu.deliver_event(tag_event(emu, source, event_id=EVENT_ID))
    assert outcome["started"] == [] and outcome["skipped"][0]["held_by"] == "nightly-golden"
    assert emu.wait(console).status == "SUCCEEDED"
    assert len(emu.world.sent("CreateImage")) == 1
    assert not [item for item in ledger_items(emu) if item["sk"] == "lock"], "released when the run ended"


def test_a_lock_left_by_a_run_that_is_no_longer_running_is_taken_over(emu: Emulator) -> None:
    source = emu.launch_instance(name="web")
    emu.client("dynamodb").put_item(
        TableName="ami-factory-local-LedgerTable",
        Item={
            "pk": {"S": f"instance#us-east-1#{source}"},
            "sk": {"S": "lock"},
            "run_id": {"S": "crashed"},
            "execution_arn": {"S": emu.state_machine_arn.replace(":stateMachine:", ":execution:") + ":crashed"},
        },
    )
    run = emu.run({"instance_id": source, "regions": []}, name="after-the-crash")
    assert run.status == "SUCCEEDED", run.cause


# --- the ledger under retries and lost answers ---------------------------------------------------


def test_the_ledger_records_each_thing_once_from_awss_answers_even_when_answers_are_lost(emu: Emulator) -> None:
    source = emu.launch_instance(name="golden")
    emu.world.ssm_manage(source, "Linux")
    emu.world.lose_responses("CreateImage", times=2)
    emu.world.lose_responses("RunInstances", times=1)
    emu.world.lose_responses("CopyImage", times=1, region="eu-west-1")
    run = emu.run({"instance_id": source, "mode": "generalize", "regions": ["eu-west-1"]}, name="lossy")
    assert run.status == "SUCCEEDED", run.cause
    made = {
        (item["region"], item["role"], item["removed"])
        for item in ledger_items(emu)
        if item["pk"] == "run#lossy" and item["sk"].startswith("made#")
    }
    made_by_role = sorted(made)
    assert made_by_role == [
        ("eu-west-1", "image", "false"),
        ("us-east-1", "clone", "true"),
        ("us-east-1", "image", "false"),
        ("us-east-1", "seed", "true"),
    ]
    assert len(images(emu)) == 1 and len(images(emu, "eu-west-1")) == 1, "no second image for a lost answer"
    assert len([i for i in all_instances(emu) if i["InstanceId"] != source]) == 1, "one clone"


def test_an_image_of_the_runs_name_in_a_copy_region_is_never_taken_for_the_runs_copy(emu: Emulator) -> None:
    """Someone registers an image under the name the run's copy will have, in a destination Region,
    before the run: the copy is refused there by name (EC2 allows one image of a name per Region), that
    Region fails saying so, and the other image is neither recorded, shared nor removed."""
    emu.world.images_take(120)
    instance_id = emu.launch_instance(name="web")
    planted = emu.client("ec2", "eu-west-1").register_image(Name="ami-factory-web-planted", RootDeviceName="/dev/xvda")[
        "ImageId"
    ]
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="planted")
    assert result.output["status"] == "PARTIAL" and result.output["failed_regions"] == ["eu-west-1"]
    (failed,) = [region for region in result.output["regions"] if region["region"] == "eu-west-1"]
    assert "NotMadeByRunError" in failed["error"]["Cause"], failed["error"]
    assert "ami-factory-web-planted" in failed["error"]["Cause"] and "not taken" in failed["error"]["Cause"]
    (image,) = emu.client("ec2", "eu-west-1").describe_images(ImageIds=[planted])["Images"]
    assert "LaunchPermissions" not in image or not image.get("Public")
    assert not emu.client("ec2", "eu-west-1").describe_image_attribute(ImageId=planted, Attribute="launchPermission")[
        "LaunchPermissions"
    ], "the planted image is not shared"
    assert planted not in {item.get("resource_id") for item in ledger_items(emu)}


def test_an_image_of_the_runs_name_made_during_the_run_is_never_taken_for_the_runs_image(emu: Emulator) -> None:
    """Someone who may create images registers one under the run's image name while the run stops the
    instance: EC2 refuses the run's image by name, and the image of that name lacks the run's create
    token, so the run fails saying so; the other image is neither recorded, shared nor removed, and
    the instance is put back. (The name lookup before CreateImage took it for the run's: it was made
    after the run began.)"""
    instance_id = emu.launch_instance(name="web")
    planted: list[str] = []
    emu.world.after_call(
        "StopInstances",
        lambda: planted.append(
            emu.client("ec2").register_image(Name="ami-factory-web-during", RootDeviceName="/dev/xvda")["ImageId"]
        ),
    )
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="during")
    assert result.status == "FAILED" and result.error == "NotMadeByRunError", result.cause
    assert "ami-factory-web-during" in result.cause and "not taken" in result.cause
    (image,) = emu.client("ec2").describe_images(ImageIds=planted)["Images"]
    assert image["State"] == "available", "not deregistered by the run's ending"
    assert not emu.client("ec2").describe_image_attribute(ImageId=planted[0], Attribute="launchPermission")[
        "LaunchPermissions"
    ]
    assert planted[0] not in {item.get("resource_id") for item in ledger_items(emu)}
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert emu.world.sent("CopyImage") == []


def test_an_image_carrying_the_runs_create_token_but_not_made_from_its_instance_is_never_taken(
    emu: Emulator,
) -> None:
    """The create token is in CloudTrail once CreateImage is called (a throttled call too): someone who
    read it and may create images registers the run's name with the token before the run's image
    exists. It was not made from the run's instance, so it is refused like any other."""
    instance_id = emu.launch_instance(name="web")
    planted: list[str] = []

    def plant_with_the_token() -> None:
        tokens = [item["token"] for item in ledger_items(emu) if item["sk"].startswith("attempt#create#")]
        if not tokens or planted:
            emu.world.after_call("PutItem", plant_with_the_token)
            return
        ec2 = emu.client("ec2")
        planted.append(ec2.register_image(Name="ami-factory-web-stolen", RootDeviceName="/dev/xvda")["ImageId"])
        ec2.create_tags(Resources=planted, Tags=[{"Key": "ami-factory:create-token", "Value": tokens[0]}])

    emu.world.after_call("PutItem", plant_with_the_token)
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="stolen")
    assert planted, "planted before the run's CreateImage"
    assert result.status == "FAILED" and result.error == "NotMadeByRunError", result.cause
    assert planted[0] in result.cause and "not taken" in result.cause
    assert planted[0] not in {item.get("resource_id") for item in ledger_items(emu)}
    assert instance(emu, instance_id)["State"]["Name"] == "running"
