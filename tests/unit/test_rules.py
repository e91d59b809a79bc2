"""The rules, with no AWS: request parsing, allow-lists, Regions, names."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ami_factory.closing import ending_error
from ami_factory.contracts import ExecutionStatusChange
from ami_factory.errors import (
    CloneProfileNotAllowedError,
    InvalidRequestError,
    LaunchTemplateNotAllowedError,
    PublicSharingBlockedError,
    ShareTargetNotAllowedError,
    UnknownRegionError,
)
from ami_factory.request import CloneOptions, ImagingRequest, LaunchTemplateTarget, RetentionOptions, ShareTargets
from ami_factory.rules import (
    MAX_REGIONS,
    account_of,
    check_clone_profile,
    check_launch_templates,
    check_share_targets,
    execution_arn,
    family_name,
    image_name,
    known_regions,
    parameter_name,
    parse_request,
    platform_of,
    principals_without_key_access,
    request_field,
    retention_tags,
    sanitize_image_name,
    tag_value_keeping_advice,
    target_regions,
    utc_instant,
    volume_limits_broken,
)
from ami_factory.settings import load_settings
from ami_factory.steps import client_token
from tests.helpers import ROOT, SETTINGS
from write_schema import schema_text


def request(**fields: object) -> ImagingRequest:
    return parse_request({"instance_id": "i-0123456789abcdef0", **fields})


@pytest.mark.parametrize(
    "fields, mentions",
    [
        ({"instance_id": "web-1"}, "instance_id"),
        ({"share": {"accounts": ["12345"]}}, "share.accounts.0"),
        ({"mode": "reboot"}, "mode"),
        ({"regoins": ["eu-west-1"]}, "regoins"),
        ({"tags": {"ami-factory:run": "x"}}, "reserved"),
        ({"share": {"organizational_units": ["ou-1234"]}}, "organizational_units"),
        ({"mode": "generalize-in-place"}, "confirm_generalize_in_place to true"),
        ({"mode": "stop", "confirm_generalize_in_place": True}, "only applies to mode generalize-in-place"),
        ({"mode": "generalize", "windows": {"admin_password": "specify"}}, "needs admin_password_parameter"),
        (
            {"mode": "generalize", "windows": {"admin_password_parameter": "/p"}},
            "only read with admin_password specify",
        ),
        (
            {"mode": "generalize", "windows": {"admin_password": "specify", "admin_password_parameter": "x'; rm"}},
            "windows.admin_password_parameter",
        ),
        ({"mode": "stop", "clone": {"instance_type": "m6i.large"}}, "clone options only apply to mode generalize"),
        ({"mode": "no-reboot", "windows": {"admin_password": "do-nothing"}}, "only apply to the generalize modes"),
        ({"mode": "generalize", "clone": {"subnet_id": "subnet-1"}}, "clone.subnet_id"),
        ({"share": {"public": True}, "protection": {"deprecate_after_days": 731}}, "at most 730 days"),
        ({"protection": {"cooldown": True}}, "cooldown only applies with deregistration_protection"),
        (
            {
                "share": {
                    "organizational_units": ["arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-ab12-cdef3456"],
                    "snapshot_permissions": True,
                }
            },
            "EBS snapshots have no organization or OU principals",
        ),
        ({"copy_completion_minutes": 20}, "copy_completion_minutes"),
        ({"copy_completion_minutes": 2895}, "copy_completion_minutes"),
    ],
)
def test_malformed_requests_name_the_field_to_fix(fields: dict, mentions: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        parse_request({"instance_id": "i-0123456789abcdef0", **fields})
    assert mentions in str(raised.value)
    assert "schema" in str(raised.value)


def test_share_targets_must_be_in_the_allow_lists() -> None:
    check_share_targets(ShareTargets(accounts=["111122223333"]), SETTINGS)
    said = "account(s) ['444455556666'] are not in the deployment's AllowedShareAccounts ['111122223333']"
    with pytest.raises(ShareTargetNotAllowedError, match=re.escape(said)):
        check_share_targets(ShareTargets(accounts=["111122223333", "444455556666"]), SETTINGS)
    other_ou = "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-zz99-zzzzzzzz"
    said = f"OU(s) ['{other_ou}'] are not in the deployment's AllowedShareOUs ['{SETTINGS.allowed_organizational_units[0]}']"
    with pytest.raises(
        ShareTargetNotAllowedError, match=re.escape(said) + ".*ask the operator to add them to AllowedShareOUs"
    ):
        check_share_targets(ShareTargets(organizational_units=[other_ou]), SETTINGS)


def test_public_is_refused_unless_the_deployment_allows_it() -> None:
    with pytest.raises(PublicSharingBlockedError, match="AllowPublicSharing"):
        check_share_targets(ShareTargets(public=True), SETTINGS)
    check_share_targets(ShareTargets(public=True), replace(SETTINGS, allow_public=True))


def test_regions_source_first_deduplicated_defaults_applied() -> None:
    regions = target_regions(request(regions=["eu-west-1", "us-east-1", "eu-west-1"]), "us-east-1", SETTINGS)
    assert [(r.name, r.is_source) for r in regions] == [("us-east-1", True), ("eu-west-1", False)]
    assert [r.name for r in target_regions(request(), "us-east-1", SETTINGS)] == ["us-east-1", "eu-west-1"]


def test_unknown_and_disallowed_regions_are_refused() -> None:
    with pytest.raises(UnknownRegionError, match="mars-north-1"):
        target_regions(request(regions=["mars-north-1"]), "us-east-1", SETTINGS)
    narrow = replace(SETTINGS, allowed_regions=("eu-west-1",))
    with pytest.raises(UnknownRegionError, match="AllowedRegions"):
        target_regions(request(regions=["ap-southeast-2"]), "us-east-1", narrow)


def test_names_are_deterministic_and_valid() -> None:
    family = family_name(request(), {"Name": "web server #1"})
    assert family == "web-server-1"
    name = image_name("ami-factory", family, "run-1")
    assert name == image_name("ami-factory", family, "run-1") == "ami-factory-web-server-1-run-1"
    assert parameter_name("/ami-factory", family) == "/ami-factory/web-server-1/latest"
    assert family_name(request(image_name="base"), {"Name": "x"}) == "base"
    assert family_name(request(), {}) == "i-0123456789abcdef0"
    assert len(sanitize_image_name("x" * 300)) == 128
    run = "i-0123456789abcdef0-tag-0b1d5f8e-3c2a-4a7e-9f61-2d7c1e9a4b10"
    long_name = image_name("ami-factory", "f" * 80, run)
    assert len(long_name) == 128 and long_name.endswith(run), "a long family never cuts the run id off"
    assert sanitize_image_name("a:b*c") == "a-b-c"


def test_copy_tokens_are_stable_per_run_and_region() -> None:
    assert client_token("run-1", "eu-west-1") == client_token("run-1", "eu-west-1")
    assert client_token("run-1", "eu-west-1") != client_token("run-1", "ap-southeast-2")
    assert client_token("run-1", "eu-west-1") != client_token("run-2", "eu-west-1")
    assert len(client_token("run-1", "eu-west-1")) <= 64


def test_settings_are_read_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_SHARE_ACCOUNTS", " 111122223333, 444455556666 ,")
    monkeypatch.setenv("MAX_WAIT_SECONDS", "3601")
    monkeypatch.setenv("POLL_SECONDS", "60")
    settings = load_settings()
    assert settings.allowed_accounts == ("111122223333", "444455556666")
    assert settings.polls_within(3601) == 54, "50 checks a minute apart (50 min), then 90, 135, 203 and 304 s"
    assert settings.max_wait_seconds == 3601
    assert settings.allow_public is False


def test_every_sample_request_is_valid_and_the_schema_is_current() -> None:
    samples = sorted((ROOT / "events").glob("request-*.json"))
    assert len(samples) >= 3
    for path in samples:
        ImagingRequest.model_validate(json.loads(path.read_text()))
    assert (ROOT / "events" / "imaging-request.schema.json").read_text() == schema_text(), "run `make schema`"


def test_who_may_use_a_key_policy_statements_conditions_and_grants() -> None:
    org = "arn:aws:organizations::111122223333:organization/o-exampleorgid"
    ou = "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-ab12-cdef3456"
    share = ShareTargets(accounts=["111122223333", "444455556666"], organizations=[org], organizational_units=[ou])
    use = ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncrypt*", "kms:GenerateDataKey*"]
    owner_only = {
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*"}]
    }
    assert principals_without_key_access(owner_only, [], share) == ["111122223333", "444455556666", org, ou]
    one_account = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": use}]}
    assert principals_without_key_access(one_account, ["arn:aws:iam::444455556666:root"], share) == [org, ou]
    decrypt_only = {
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:Decrypt"}
        ]
    }
    assert "111122223333" in principals_without_key_access(decrypt_only, [], share), "launching needs more than Decrypt"
    a_role = {
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/x"}, "Action": "kms:*"}]
    }
    assert "111122223333" in principals_without_key_access(a_role, [], share), "a role is not the account"
    by_org = {
        "Statement": {
            "Effect": "Allow",
            "Principal": "*",
            "Action": use,
            "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-exampleorgid"}},
        }
    }
    assert principals_without_key_access(by_org, [], share) == ["111122223333", "444455556666"]
    by_path = {
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": "kms:*",
                "Condition": {
                    "ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": ["o-exampleorgid/r-ab12/ou-ab12-cdef3456/*"]}
                },
            }
        ]
    }
    assert ou not in principals_without_key_access(by_path, [], share) and org in principals_without_key_access(
        by_path, [], share
    )
    denied = {"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "kms:*"}]}
    assert len(principals_without_key_access(denied, [], share)) == 4


KEY_USE = ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncrypt*", "kms:GenerateDataKey*"]
ORG = "arn:aws:organizations::111122223333:organization/o-exampleorgid"
OTHER_ORG = "arn:aws:organizations::444455556666:organization/o-otherorgid1"
OU = "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-ab12-cdef3456"
OTHER_OU = "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-zz99-zzzzzzzz"


def allow(principal: object, condition: dict[str, Any] | None = None, actions: object = KEY_USE) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": principal, "Action": actions}
    if condition is not None:
        statement["Condition"] = condition
    return statement


def org_condition(*org_ids: str) -> dict[str, Any]:
    return {"StringEquals": {"aws:PrincipalOrgID": list(org_ids)}}


def test_a_key_policy_without_statements_or_principals_lets_nobody_in() -> None:
    share = ShareTargets(accounts=["111122223333"], organizations=[ORG])
    assert principals_without_key_access({}, [], share) == ["111122223333", ORG]
    no_principal = {"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}
    assert principals_without_key_access(no_principal, [], share) == ["111122223333", ORG]


def test_every_allowing_statement_counts_not_only_the_first() -> None:
    share = ShareTargets(accounts=["111122223333"], organizations=[ORG, OTHER_ORG])
    policy = {
        "Statement": [
            allow({"AWS": "arn:aws:iam::123456789012:root"}, actions="kms:Decrypt"),  # not enough to launch
            allow({"AWS": "111122223333"}),
            allow("*", org_condition("o-exampleorgid")),
            allow("*", org_condition("o-otherorgid1")),
        ]
    }
    assert principals_without_key_access(policy, [], share) == []


def test_an_unconditioned_star_lets_everyone_in_whatever_comes_after_it() -> None:
    share = ShareTargets(accounts=["444455556666"], organizations=[ORG], organizational_units=[OU])
    assert principals_without_key_access({"Statement": [allow("*")]}, [], share) == []
    then_narrower = {"Statement": [allow("*"), allow("*", org_condition("o-otherorgid1"))]}
    assert principals_without_key_access(then_narrower, [], share) == []


def test_org_paths_from_every_statement_count_and_name_the_ou_itself() -> None:
    share = ShareTargets(organizational_units=[OU, OTHER_OU])
    paths = [
        allow("*", {"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": [f"o-exampleorgid/r-ab12/{ou}/*"]}})
        for ou in ("ou-ab12-cdef3456", "ou-zz99-zzzzzzzz")
    ]
    assert principals_without_key_access({"Statement": paths}, [], share) == []
    assert principals_without_key_access({"Statement": paths[:1]}, [], share) == [OTHER_OU]
    # An organization id is not an OU: the OU is named by its own id in the path.
    whole_org = allow("*", {"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": ["o-exampleorgid/r-ab12/*"]}})
    assert principals_without_key_access({"Statement": [whole_org]}, [], share) == [OU, OTHER_OU]
    # An OU of an allowed organization is allowed with it.
    assert principals_without_key_access({"Statement": [allow("*", org_condition("o-exampleorgid"))]}, [], share) == []


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ([], "an array"),
        (3, "a number"),
        (1.5, "a number"),
        (True, "a boolean"),
        ("i-0123", "a string"),
        (None, "null"),
        (("i-0123",), "tuple"),  # not JSON (a direct call): named by its Python type
    ],
)
def test_an_input_that_is_not_an_object_is_named_as_json_names_it(raw: object, kind: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        parse_request(raw)
    assert str(raised.value) == (
        f'the execution input must be a JSON object (an ImagingRequest), not {kind}: {{"instance_id": '
        f'"i-0123456789abcdef0"}} at least. See events/imaging-request.schema.json for the fields'
    )


@pytest.mark.parametrize(
    ("instance", "platform"),
    [
        ({"Platform": "windows"}, "windows"),
        ({}, "linux"),
        ({"Platform": ""}, "linux"),
        ({"PlatformDetails": "Windows"}, "linux"),
    ],
)
def test_the_platform_is_what_ec2_says_in_platform(instance: dict[str, str], platform: str) -> None:
    assert platform_of(instance) == platform


def test_a_validation_message_names_every_problem_plainly() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        parse_request({"instance_id": "web-1", "share": {"accounts": ["12345"]}})
    message = str(raised.value)
    assert "instance_id: String should match pattern" in message
    assert "; share.accounts.0: String should match pattern" in message, "one problem after another, '; ' apart"
    assert "errors.pydantic.dev" not in message, "no documentation links in a user's error"
    with pytest.raises(InvalidRequestError) as raised:
        parse_request({"instance_id": "i-0123456789abcdef0", "mode": "generalize-in-place"})
    # A rule across fields names the field that fixes it, with no "Value error, " noise.
    assert (
        "is invalid: confirm_generalize_in_place: mode generalize-in-place runs sysprep/sanitize on the instance"
        in str(raised.value)
    )


def test_an_organization_outside_the_allow_list_is_named_with_its_parameter() -> None:
    with pytest.raises(ShareTargetNotAllowedError) as raised:
        check_share_targets(ShareTargets(organizations=[OTHER_ORG]), SETTINGS)
    assert str(raised.value).startswith(
        f"organization(s) ['{OTHER_ORG}'] are not in the deployment's AllowedShareOrganizations"
    )


def test_families_keep_case_and_lose_only_what_names_cannot_hold() -> None:
    assert family_name(request(), {"Name": "Xray box!"}) == "Xray-box", "case kept; edges trimmed of dashes only"
    assert family_name(request(), {"Name": "-WebServer-"}) == "WebServer"
    assert family_name(request(), {"Name": "!!!"}) == "i-0123456789abcdef0", "nothing usable: the instance id"
    assert sanitize_image_name("Web Server (2026) [x]") == "Web Server (2026) [x]"


def test_a_family_retention_travels_as_tags() -> None:
    assert retention_tags(RetentionOptions()) == {}
    assert retention_tags(RetentionOptions(keep_newest=3, max_age_days=30)) == {
        "ami-factory:keep-newest": "3",
        "ami-factory:max-age-days": "30",
    }


def test_who_an_image_is_shared_with_reads_as_people_write_it() -> None:
    assert ShareTargets(accounts=["111122223333"], organizational_units=[OU], public=True).describe() == [
        "111122223333",
        OU,
        "public",
    ]


# --- properties: whatever arrives, a clear refusal or a request EC2 will take -------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_execution_input_is_a_request_or_an_invalid_request_error(payload: object) -> None:
    try:
        parse_request(payload)
    except InvalidRequestError as error:
        assert str(error), "always says what is wrong"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=140), st.text(max_size=270), max_size=45))
def test_request_tags_that_pass_fit_ec2(tags: dict[str, str]) -> None:
    try:
        request = parse_request({"instance_id": "i-0123456789abcdef0", "tags": tags})
    except InvalidRequestError:
        return
    assert len(request.tags) <= 40
    for key, value in request.tags.items():
        assert len(key.strip()) >= 1 and len(key) <= 128 and len(value) <= 256
        assert not key.strip().casefold().startswith(("aws:", "ami-factory:"))
        assert not any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in key + value)


@pytest.mark.parametrize(
    "status, error, named",
    [
        ("ABORTED", None, "ExecutionAborted"),
        ("TIMED_OUT", None, "ExecutionTimedOut"),
        ("FAILED", None, "ExecutionFailed"),
        ("FAILED", "States.Runtime", "States.Runtime"),
        ("ABORTED", "Stopped.ByOperator", "Stopped.ByOperator"),
    ],
)
def test_a_run_the_janitor_ends_is_tagged_with_its_executions_own_error(
    status: str, error: str | None, named: str
) -> None:
    arn = "arn:aws:states:us-east-1:123456789012:execution:m:run"
    change = ExecutionStatusChange(executionArn=arn, stateMachineArn="m", name="run", status=status, error=error)
    assert ending_error(change) == named


@pytest.mark.parametrize(("kind", "role"), [("IMAGE", "image"), ("image", "XXseedXX"), ("volume", "clone")])
def test_the_ledger_never_holds_a_made_record_clean_up_could_not_read(kind: str, role: str) -> None:
    from ami_factory.errors import DeploymentError
    from ami_factory.ledger import Made

    with pytest.raises(DeploymentError, match="unknown kind or role"):
        Made(region="us-east-1", kind=kind, resource_id="ami-1", role=role)  # type: ignore[arg-type]
    assert Made(region="us-east-1", kind="image", resource_id="ami-1", role="seed").role == "seed"


def test_lists_that_name_one_thing_per_entry_refuse_a_repeat() -> None:
    base = {"instance_id": "i-0123456789abcdef0"}
    template = {"region": "eu-west-1", "launch_template_id": "lt-0123456789abcdef0"}
    for field, entries, repeated in [
        (
            "volumes",
            [{"device_name": "/dev/sdf", "exclude": True}, {"device_name": "/dev/sdf", "size_gib": 9}],
            "/dev/sdf",
        ),
        ("fast_launch", [{"region": "eu-west-1"}, {"region": "eu-west-1", "snapshot_count": 2}], "eu-west-1"),
        ("launch_templates", [template, {**template, "set_default": True}], "eu-west-1:lt-0123456789abcdef0"),
    ]:
        with pytest.raises(ValidationError, match=rf"{field} lists \['{repeated}'\] more than once"):
            ImagingRequest.model_validate({**base, field: entries})
        ImagingRequest.model_validate({**base, field: entries[:1]})


@pytest.mark.parametrize(
    "volume, refused",
    [
        # HDD never boots, whatever its size; as a data volume it needs 125 GiB.
        (("st1", 500, None, None, True), "cannot be a boot volume"),
        (("sc1", 500, None, None, True), "cannot be a boot volume"),
        (("st1", 500, None, None, False), None),
        (("st1", 124, None, None, False), "st1 needs at least 125 GiB"),
        (("sc1", 125, None, None, False), None),
        (("io2", 3, None, None, False), "io2 needs at least 4 GiB"),
        (("gp3", 1, None, None, True), None),
        # gp3: 3,000 IOPS at least, 500 per GiB at most, 0.25 MiB/s of throughput per IOPS.
        (("gp3", 8, 2999, None, True), "3000 IOPS at least"),
        (("gp3", 8, 3000, None, True), None),
        (("gp3", 8, 4000, None, True), None),
        (("gp3", 8, 4001, None, True), "grow it to 9 GiB"),
        (("io1", 10, 501, None, False), "more than io1's 50 per GiB: grow it to 11 GiB"),
        (("gp3", 8, None, 750, True), None),
        (("gp3", 8, None, 751, True), "needs at least 3004 IOPS"),
        (("gp3", 20, 4000, 1000, True), None),
    ],
)
def test_ebs_limits_are_refused_at_their_edges_and_say_what_to_change(
    volume: tuple[str, int, int | None, int | None, bool], refused: str | None
) -> None:
    kind, size, iops, throughput, is_root = volume
    said = volume_limits_broken("/dev/xvdb", kind, size, iops, throughput, is_root)
    if refused is None:
        assert said is None
    else:
        assert said is not None and refused in said and "/dev/xvdb" in said


def test_an_error_about_the_whole_request_names_the_request() -> None:
    assert request_field(()) == "request"
    assert request_field(("share", "accounts", 0)) == "share.accounts.0"


def test_an_existing_image_needs_regions_named_to_go_to() -> None:
    settings = replace(SETTINGS, default_regions=("us-east-1",))
    with pytest.raises(InvalidRequestError, match="name the Regions to distribute it to in regions"):
        target_regions(request(source_image_id="ami-0123456789abcdef0"), "us-east-1", settings)


def test_a_runs_execution_arn_is_its_state_machines_with_its_name() -> None:
    machine = "arn:aws:states:eu-west-1:111122223333:stateMachine:ami-factory-Imaging"
    assert execution_arn(machine, "web-20261129") == (
        "arn:aws:states:eu-west-1:111122223333:execution:ami-factory-Imaging:web-20261129"
    )


def test_an_arns_account_is_its_fifth_field() -> None:
    assert account_of("arn:aws:states:eu-west-1:111122223333:stateMachine:ami-factory-Imaging") == "111122223333"


def test_times_become_one_fixed_width_utc_string_that_orders_as_time_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC whatever the machine's own zone
    time.tzset()
    try:
        assert utc_instant("2026-11-29T08:00:00+01:00") == "2026-11-29T07:00:00.000000Z"
    finally:
        monkeypatch.undo()
        time.tzset()
    assert utc_instant("2026-11-29T07:00:00.5Z") == "2026-11-29T07:00:00.500000Z"
    assert utc_instant("2026-11-29T07:00:00") is None, "a time without its zone is not an instant"
    assert utc_instant("yesterday") is None


def test_a_message_fits_a_tag_value_by_shortening_what_it_echoes_then_its_middle_never_its_advice() -> None:
    fits = "'" + "v" * 60 + "' " + "x" * 193  # 256: nothing is shortened, not even what it echoes
    assert len(fits) == 256 and tag_value_keeping_advice(fits) == fits
    echoed = "'" + "v" * 100 + "'"
    message = f"tag ami-factory:regions value {echoed} is not a Region list: " + "a" * 172 + " fix it"
    shortened = tag_value_keeping_advice(message)
    assert shortened == f"tag ami-factory:regions value '{'v' * 19}...' is not a Region list: " + "a" * 172 + " fix it"
    assert len(shortened) == 256, "exactly fits: nothing more is cut"
    long_advice = "b" * 300 + " fix it"
    cut = tag_value_keeping_advice(long_advice)
    assert cut == "b" * 85 + " ... " + ("b" * 300 + " fix it")[-(256 - 85 - 5) :]
    assert len(cut) == 256 and cut.endswith(" fix it")
    assert tag_value_keeping_advice("c" * 20, limit=10) == "c" * 3 + " ... " + "c" * 2


def test_a_clone_profile_is_allowed_by_its_name_whatever_its_path() -> None:
    settings = replace(SETTINGS, allowed_clone_instance_profiles=("ImageBuilderProfile",))
    check_clone_profile(CloneOptions(), settings)
    check_clone_profile(CloneOptions(instance_profile="ImageBuilderProfile"), settings)
    check_clone_profile(
        CloneOptions(instance_profile="arn:aws:iam::111122223333:instance-profile/teams/web/ImageBuilderProfile"),
        settings,
    )
    said = "clone.instance_profile AdminProfile is not in the deployment's AllowedCloneInstanceProfiles ['ImageBuilderProfile']"
    with pytest.raises(CloneProfileNotAllowedError, match=re.escape(said)):
        check_clone_profile(CloneOptions(instance_profile="AdminProfile"), settings)
    with pytest.raises(CloneProfileNotAllowedError):
        check_clone_profile(CloneOptions(instance_profile="ImageBuilderProfile"), SETTINGS)


TEMPLATE = "lt-0123456789abcdef0"


def test_a_launch_template_must_be_allowed_by_its_arn_and_in_a_region_the_run_copies_to() -> None:
    settings = replace(
        SETTINGS, allowed_launch_templates=(f"arn:aws:ec2:eu-west-1:111122223333:launch-template/{TEMPLATE}",)
    )
    allowed = LaunchTemplateTarget(region="eu-west-1", launch_template_id=TEMPLATE)
    check_launch_templates([allowed], ["us-east-1", "eu-west-1"], settings)
    elsewhere = LaunchTemplateTarget(region="us-east-2", launch_template_id=TEMPLATE)
    said = f"launch templates ['us-east-2:{TEMPLATE}'] are not in the deployment's AllowedLaunchTemplates"
    with pytest.raises(LaunchTemplateNotAllowedError, match=re.escape(said)):
        check_launch_templates([allowed, elsewhere], ["us-east-1", "eu-west-1", "us-east-2"], settings)
    said = f"launch templates ['eu-west-1:{TEMPLATE}'] are in Regions this run does not distribute to"
    with pytest.raises(InvalidRequestError, match=re.escape(said)):
        check_launch_templates([allowed], ["us-east-1"], settings)


def test_an_existing_image_goes_only_to_the_regions_named_never_back_home() -> None:
    image = "ami-0123456789abcdef0"
    settings = replace(SETTINGS, default_regions=("us-east-1", "eu-west-1"))
    by_default = target_regions(request(source_image_id=image), "us-east-1", settings)
    assert [t.name for t in by_default] == ["eu-west-1"], "the defaults' stack Region is left out"
    said = f"source_image_id {image} is already in us-east-1, the stack's Region: leave us-east-1 out of regions"
    with pytest.raises(InvalidRequestError, match=re.escape(said)):
        target_regions(request(source_image_id=image, regions=["us-east-1", "eu-west-1"]), "us-east-1", settings)


def test_a_run_reaches_at_most_max_regions_the_stacks_included() -> None:
    others = sorted(known_regions() - {"us-east-1"})
    assert len(target_regions(request(regions=others[: MAX_REGIONS - 1]), "us-east-1", SETTINGS)) == MAX_REGIONS
    said = f"{MAX_REGIONS + 1} Regions (the stack's us-east-1 included): at most {MAX_REGIONS} per run"
    with pytest.raises(InvalidRequestError, match=re.escape(said)):
        target_regions(request(regions=others[:MAX_REGIONS]), "us-east-1", SETTINGS)


def test_copies_into_accounts_are_cells_of_the_runs_regions_and_bounded() -> None:
    from ami_factory.request import AccountCopyTarget
    from ami_factory.rules import MAX_ACCOUNT_CELLS, account_cells

    key = "arn:aws:kms:eu-west-1:111122223333:key/0123abcd"
    targets = [
        AccountCopyTarget(account_id="111122223333", kms_key_ids={"eu-west-1": key}),
        AccountCopyTarget(account_id="444455556666", regions=["eu-west-1"]),
    ]
    cells = account_cells(targets, ["us-east-1", "eu-west-1"])
    assert [(cell.account_id, cell.region, cell.kms_key_id) for cell in cells] == [
        ("111122223333", "us-east-1", None),
        ("111122223333", "eu-west-1", key),
        ("444455556666", "eu-west-1", None),
    ]
    many = [AccountCopyTarget(account_id=f"{n:012d}") for n in range(MAX_ACCOUNT_CELLS // 2 + 1)]
    with pytest.raises(InvalidRequestError, match=f"asks for {MAX_ACCOUNT_CELLS + 2} copies .* at most 30"):
        account_cells(many, ["us-east-1", "eu-west-1"])
    assert len(account_cells(many[:-1], ["us-east-1", "eu-west-1"])) == MAX_ACCOUNT_CELLS
