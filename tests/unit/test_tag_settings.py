"""Instance tags as an ImagingRequest: parsed and held to the same rules, errors naming the tag."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ami_factory.errors import (
    InvalidRequestError,
    PrivilegedSettingError,
    PublicSharingBlockedError,
    ShareTargetNotAllowedError,
)
from ami_factory.triggers import (
    PRIVILEGED_SETTINGS,
    STARTS_WITHIN_SECONDS,
    request_from_tags,
    start_spacing,
    trigger_principal_allowed,
)
from tests.helpers import SETTINGS

INSTANCE = "i-0123456789abcdef0"
# An operator who opened every privileged option to tags (TagPrivilegedSettings).
OPEN = replace(
    SETTINGS,
    tag_privileged_settings=tuple(PRIVILEGED_SETTINGS),
    allowed_clone_instance_profiles=("ImageBuilderProfile",),
)


def test_tags_become_a_request() -> None:
    request = request_from_tags(
        INSTANCE,
        {
            "Name": "web",
            "ami-factory:regions": "eu-west-1, ap-southeast-2  us-west-2",
            "ami-factory:share-accounts": "111122223333",
            "ami-factory:mode": "no-reboot",
            "ami-factory:image-name": "web-server",
            "ami-factory:description": "patched",
            "ami-factory:cleanup": "True",
        },
        OPEN,
    )
    assert request.regions == ["eu-west-1", "ap-southeast-2", "us-west-2"]
    assert request.share.accounts == ["111122223333"]
    assert (request.mode, request.image_name, request.description) == ("no-reboot", "web-server", "patched")
    assert request.cleanup is True


def test_generalize_settings_come_from_tags_too() -> None:
    request = request_from_tags(
        INSTANCE,
        {
            "ami-factory:mode": "generalize",
            "ami-factory:admin-password": "specify",
            "ami-factory:admin-password-parameter": "/images/admin",
            "ami-factory:clone-instance-type": "m6i.large",
            "ami-factory:clone-subnet": "subnet-0123456789abcdef0",
            "ami-factory:clone-security-groups": "sg-0123456789abcdef0, sg-0fedcba9876543210",
            "ami-factory:clone-instance-profile": "ImageBuilderProfile",
        },
        OPEN,
    )
    assert (request.windows.admin_password, request.windows.admin_password_parameter) == ("specify", "/images/admin")
    assert request.clone.security_group_ids == ["sg-0123456789abcdef0", "sg-0fedcba9876543210"]
    assert (request.clone.instance_type, request.clone.subnet_id) == ("m6i.large", "subnet-0123456789abcdef0")
    in_place = {"ami-factory:mode": "generalize-in-place", "ami-factory:confirm-generalize-in-place": "true"}
    assert request_from_tags(INSTANCE, in_place, OPEN).confirm_generalize_in_place is True
    with pytest.raises(InvalidRequestError, match="confirm_generalize_in_place"):
        request_from_tags(INSTANCE, {"ami-factory:mode": "generalize-in-place"}, SETTINGS)


def test_distribution_settings_come_from_tags_too() -> None:
    request = request_from_tags(
        INSTANCE,
        {
            "ami-factory:share-accounts": "111122223333",
            "ami-factory:share-snapshot-permissions": "true",
            "ami-factory:deprecate-after-days": "90",
            "ami-factory:deregistration-protection": "TRUE",
            "ami-factory:protection-cooldown": "true",
            "ami-factory:copy-completion-minutes": "45",
            "ami-factory:encrypt": "true",
            "ami-factory:launch-check": "true",
            "ami-factory:keep-newest": "3",
            "ami-factory:max-age-days": "90",
            "ami-factory:imds-support": "v2.0",
            "ami-factory:approval": "true",
        },
        OPEN,
    )
    assert request.imds_support == "v2.0" and request.approval is True
    assert request.encrypt is True and request.launch_check is True
    assert (request.retention.keep_newest, request.retention.max_age_days) == (3, 90)
    assert request.share.snapshot_permissions is True and request.copy_completion_minutes == 45
    assert (request.protection.deprecate_after_days, request.protection.deregistration_protection) == (90, True)
    assert request.protection.cooldown is True
    with pytest.raises(InvalidRequestError, match="tag ami-factory:copy-completion-minutes"):
        request_from_tags(INSTANCE, {"ami-factory:copy-completion-minutes": "20"}, SETTINGS)
    with pytest.raises(InvalidRequestError, match="tag ami-factory:imds-support"):
        request_from_tags(INSTANCE, {"ami-factory:imds-support": "v1.0"}, SETTINGS)


def test_no_setting_tags_mean_the_defaults() -> None:
    bookkeeping = {"ami-factory:last-status": "SUCCEEDED", "ami-factory:error": "", "ami-factory:schedule": "true"}
    request = request_from_tags(INSTANCE, {"ami-factory:create": "true", **bookkeeping}, SETTINGS)
    assert request.regions is None and request.mode == "stop" and request.share.describe() == []


@pytest.mark.parametrize(
    "tags, error, mentions",
    [
        ({"ami-factory:share-accounts": "12345"}, InvalidRequestError, "tag ami-factory:share-accounts"),
        ({"ami-factory:mode": "reboot"}, InvalidRequestError, "tag ami-factory:mode"),
        ({"ami-factory:share-ous": "ou-1"}, InvalidRequestError, "tag ami-factory:share-ous"),
        ({"ami-factory:share-accounts": "444455556666"}, ShareTargetNotAllowedError, "AllowedShareAccounts"),
        ({"ami-factory:share-public": "TRUE"}, PrivilegedSettingError, "TagPrivilegedSettings"),
        ({"ami-factory:region": "eu-west-1"}, InvalidRequestError, "unknown tag(s) ['ami-factory:region']"),
        # Rules across tags name the tags of the group the instance carries, never an empty field.
        (
            {"ami-factory:admin-password": "specify"},
            InvalidRequestError,
            "tag ami-factory:admin-password: admin_password specify",
        ),
        (
            {"ami-factory:mode": "generalize-in-place"},
            InvalidRequestError,
            "tag ami-factory:confirm-generalize-in-place: mode generalize-in-place",
        ),
    ],
)
def test_bad_tags_name_what_to_fix(tags: dict[str, str], error: type[Exception], mentions: str) -> None:
    with pytest.raises(error) as raised:
        request_from_tags(INSTANCE, tags, SETTINGS)
    assert mentions in str(raised.value)


def test_public_by_tag_only_where_the_deployment_allows_it_and_opened_it_to_tags() -> None:
    allowed = replace(SETTINGS, allow_public=True)
    with pytest.raises(PrivilegedSettingError, match="ami-factory:share-public ask for share-public"):
        request_from_tags(INSTANCE, {"ami-factory:share-public": "true"}, allowed)
    opened = replace(allowed, tag_privileged_settings=("share-public",))
    assert request_from_tags(INSTANCE, {"ami-factory:share-public": "true"}, opened).share.public is True
    with pytest.raises(PublicSharingBlockedError, match="AllowPublicSharing"):
        request_from_tags(INSTANCE, {"ami-factory:share-public": "true"}, replace(opened, allow_public=False))


def test_a_tag_error_says_how_to_try_again() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        request_from_tags(INSTANCE, {"ami-factory:mode": "sideways"}, SETTINGS)
    assert str(raised.value).endswith(". Fix the tag on the instance and set the trigger tag again")


@pytest.mark.parametrize(
    "name, tags",
    [
        (
            "generalize-in-place",
            {"ami-factory:mode": "generalize-in-place", "ami-factory:confirm-generalize-in-place": "true"},
        ),
        ("cleanup", {"ami-factory:cleanup": "true"}),
        ("clone", {"ami-factory:mode": "generalize", "ami-factory:clone-instance-profile": "Admin"}),
        ("clone", {"ami-factory:mode": "generalize", "ami-factory:clone-subnet": "subnet-0123456789abcdef0"}),
        ("retention", {"ami-factory:keep-newest": "1"}),
        ("retention", {"ami-factory:max-age-days": "1"}),
    ],
)
def test_privileged_settings_are_refused_by_tag_unless_the_operator_opened_them(
    name: str, tags: dict[str, str]
) -> None:
    with pytest.raises(PrivilegedSettingError) as raised:
        request_from_tags(INSTANCE, tags, SETTINGS)
    message = str(raised.value)
    assert f"ask for {name}, which only a StartExecution request may" in message
    assert all(key in message for key in tags if key != "ami-factory:mode"), "names the tags to remove"
    assert message.endswith(f"add {name} to TagPrivilegedSettings") and len(message) <= 256
    opened = replace(SETTINGS, tag_privileged_settings=(name,), allowed_clone_instance_profiles=("Admin",))
    request_from_tags(INSTANCE, tags, opened)


def test_asking_for_nothing_privileged_is_not_refused() -> None:
    harmless = {"ami-factory:cleanup": "false", "ami-factory:share-public": "false", "ami-factory:mode": "generalize"}
    assert request_from_tags(INSTANCE, harmless, SETTINGS).cleanup is False


@pytest.mark.parametrize(
    "caller, allowed, expected",
    [
        (
            "arn:aws:sts::123456789012:assumed-role/ImageBuilders/alice",
            ("arn:aws:iam::123456789012:role/ImageBuilders",),
            True,
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/ImageBuilders/alice",
            ("arn:aws:iam::123456789012:role/Image*",),
            True,
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/ImageBuildersX/eve",
            ("arn:aws:iam::123456789012:role/ImageBuilders",),
            False,
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/ImageBuilders/alice",
            ("arn:aws:iam::999999999999:role/ImageBuilders",),
            False,
        ),
        ("arn:aws:iam::123456789012:user/bob", ("arn:aws:iam::123456789012:user/bob",), True),
        ("arn:aws:iam::123456789012:user/bob", (), False),
        ("", ("arn:aws:iam::123456789012:role/*",), False),
    ],
)
def test_who_may_trigger_is_matched_by_arn_and_a_role_covers_its_sessions(
    caller: str, allowed: tuple[str, ...], expected: bool
) -> None:
    assert trigger_principal_allowed(caller, allowed) is expected


def test_a_rule_across_a_group_names_every_tag_of_the_group_the_instance_carries() -> None:
    tags = {"ami-factory:protection-cooldown": "true", "ami-factory:deprecate-after-days": "90"}
    with pytest.raises(InvalidRequestError) as raised:
        request_from_tags(INSTANCE, tags, OPEN)
    assert "tags ami-factory:deprecate-after-days and ami-factory:protection-cooldown: " in str(raised.value)
    retention = {"ami-factory:keep-newest": "3", "ami-factory:max-age-days": "30"}
    with pytest.raises(PrivilegedSettingError) as refused:
        request_from_tags(INSTANCE, retention, SETTINGS)
    assert str(refused.value).startswith("ami-factory:keep-newest and ami-factory:max-age-days ask for retention")


def test_an_error_no_tag_caused_names_the_tags_not_a_field() -> None:
    # Not reachable from a trigger (an id EC2 does not know is skipped before its tags are read), but a
    # field with no tag of its own is never named as if it were one.
    with pytest.raises(InvalidRequestError, match="invalid: the tags: String should match"):
        request_from_tags("i-0123456789", {}, SETTINGS)


def test_a_flag_that_is_not_true_or_false_is_quoted_up_to_40_characters() -> None:
    with pytest.raises(InvalidRequestError, match=f"tag ami-factory:encrypt is '{'y' * 40}': use true or false"):
        request_from_tags(INSTANCE, {"ami-factory:encrypt": "y" * 60}, SETTINGS)


@pytest.mark.parametrize(
    "candidates, per_minute, spacing",
    [
        (0, 60, 1.0),
        (1, 1, 60.0),  # one start never waits: the spacing is unused
        (2, 1, 60.0),
        (601, 60, 1.0),  # 600 s at the operator's rate: still within STARTS_WITHIN_SECONDS
        (602, 60, 600 / 601),  # one more and the firing is spread over 600 s instead
        (21, 1, 30.0),
        (60, 6, 10.0),  # 590 s at the operator's rate
        (100, 60, 1.0),
        # 1,000 instances at 60 a minute would take 16.7 minutes: StartRun's timeout is 15.
        (1001, 60, 0.6),
    ],
)
def test_a_firing_is_paced_at_the_operators_rate_unless_that_takes_over_ten_minutes(
    candidates: int, per_minute: int, spacing: float
) -> None:
    assert STARTS_WITHIN_SECONDS == 600
    assert start_spacing(candidates, per_minute) == pytest.approx(spacing)
