"""The AWS boundary's small pieces: how AWS errors become the workflow's, and how shapes are read."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from ami_factory.aws import (
    error_code,
    error_text,
    launch_permissions,
    snapshots_of,
    tag_specifications,
    tags_of,
    translated_errors,
    volume_gib,
)
from ami_factory.clients import client
from ami_factory.errors import ImageNotVisibleYetError, InstanceStateConflictError, ThrottledError
from ami_factory.request import ShareTargets


def refusal(code: str, message: str = "why not") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "AnOperation")


def test_a_refusal_is_quoted_as_aws_gave_it() -> None:
    assert error_code(refusal("InvalidSubnetID.NotFound")) == "InvalidSubnetID.NotFound"
    assert error_text(refusal("InvalidSubnetID.NotFound", "The subnet does not exist")) == (
        "InvalidSubnetID.NotFound: The subnet does not exist"
    )
    assert error_text(ClientError({}, "AnOperation")) == ": ", "a refusal without details still reads"


@pytest.mark.parametrize(
    "code, becomes",
    [
        ("RequestLimitExceeded", ThrottledError),
        ("ThrottlingException", ThrottledError),
        ("ResourceLimitExceeded", ThrottledError),
        ("InvalidAMIID.NotFound", ImageNotVisibleYetError),
        ("IncorrectInstanceState", InstanceStateConflictError),
    ],
)
def test_what_a_retry_can_fix_becomes_a_retryable_error_naming_the_operation(code: str, becomes: type) -> None:
    with pytest.raises(becomes, match=r"^DescribeImages") as raised, translated_errors("DescribeImages"):
        raise refusal(code)
    assert isinstance(raised.value.__cause__, ClientError)


def test_anything_else_stays_aws_own_error() -> None:
    with pytest.raises(ClientError, match="UnauthorizedOperation"), translated_errors("DescribeImages"):
        raise refusal("UnauthorizedOperation")


def test_a_client_always_names_its_region() -> None:
    with pytest.raises(ValueError, match="needs its Region"):
        client("ec2", "")


IMAGE: Any = {
    "ImageId": "ami-1",
    "Tags": [{"Key": "ami-factory:run", "Value": "run-1"}, {"Key": "Name", "Value": "web"}],
    "BlockDeviceMappings": [
        {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-1", "VolumeSize": 8}},
        {"DeviceName": "/dev/xvdb", "Ebs": {"SnapshotId": "snap-2", "VolumeSize": 100}},
        {"DeviceName": "/dev/sdc", "VirtualName": "ephemeral0"},
        {"DeviceName": "/dev/sdd", "Ebs": {"VolumeSize": 4}},
    ],
}


def test_shapes_are_read_the_way_ec2_writes_them() -> None:
    assert tags_of(IMAGE) == {"ami-factory:run": "run-1", "Name": "web"}
    assert tags_of({"ImageId": "ami-2"}) == {}
    assert snapshots_of(IMAGE) == ["snap-1", "snap-2"], "instance-store and snapshot-less volumes have none"
    assert volume_gib(IMAGE) == 112
    assert tag_specifications({"k": "v"}) == [
        {"ResourceType": "image", "Tags": [{"Key": "k", "Value": "v"}]},
        {"ResourceType": "snapshot", "Tags": [{"Key": "k", "Value": "v"}]},
    ]


def test_launch_permissions_name_each_kind_of_target_as_ec2_expects() -> None:
    org = "arn:aws:organizations::111122223333:organization/o-exampleorgid"
    ou = "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-ab12-cdef3456"
    share = ShareTargets(accounts=["111122223333"], organizations=[org], organizational_units=[ou], public=True)
    assert launch_permissions(share) == [
        {"UserId": "111122223333"},
        {"OrganizationArn": org},
        {"OrganizationalUnitArn": ou},
        {"Group": "all"},
    ]
    assert launch_permissions(ShareTargets()) == []


def test_keys_are_judged_by_who_manages_them_and_who_holds_grants() -> None:
    from ami_factory.aws import Kms
    from ami_factory_local import Emulator

    with Emulator() as emu:
        emu.launch_instance(encrypted=True)  # its volume uses the Region's aws/ebs key
        kms = Kms("us-east-1")
        assert kms.is_aws_managed(""), "an encrypted volume without a key id uses aws/ebs"
        key = emu.client("kms").create_key()["KeyMetadata"]["Arn"]
        assert not kms.is_aws_managed(key)
        emu.client("kms").create_grant(
            KeyId=key, GranteePrincipal="arn:aws:iam::444455556666:root", Operations=["Decrypt", "CreateGrant"]
        )
        assert kms.grantees(key) == ["arn:aws:iam::444455556666:root"]


def _stubbed(service: str) -> Any:
    """The adapters' client of ``service`` with botocore's Stubber: each request is checked against what
    is expected, the answer is the one given (shapes validated against the service's model)."""
    import boto3
    from botocore.stub import Stubber

    from ami_factory.clients import use_client_factory

    made = boto3.client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(made) as stubber:
        use_client_factory(lambda asked, region: made)
        try:
            yield stubber
            stubber.assert_no_pending_responses()
        finally:
            use_client_factory(None)


@pytest.fixture
def stubbed_ec2() -> Any:
    yield from _stubbed("ec2")


@pytest.fixture
def stubbed_ssm() -> Any:
    yield from _stubbed("ssm")


def test_deregistering_asks_ec2_to_delete_the_snapshots_and_returns_those_it_did_not(stubbed_ec2: Any) -> None:
    from ami_factory.aws import Ec2

    results = [
        {"SnapshotId": "snap-a", "ReturnCode": "success"},
        {"SnapshotId": "snap-b", "ReturnCode": "missing-permissions"},
    ]
    stubbed_ec2.add_response(
        "deregister_image",
        {"Return": True, "DeleteSnapshotResults": results},
        {"ImageId": "ami-1", "DeleteAssociatedSnapshots": True},
    )
    assert Ec2("us-east-1").deregister_image("ami-1", ["snap-a", "snap-b", "snap-c"]) == ["snap-b", "snap-c"]


@pytest.mark.parametrize(
    ("profile", "sent"),
    [
        ("arn:aws:iam::123456789012:instance-profile/p", {"Arn": "arn:aws:iam::123456789012:instance-profile/p"}),
        ("p", {"Name": "p"}),
    ],
)
def test_a_launch_is_one_instance_with_its_profile_by_arn_or_name_and_answers_its_state(
    stubbed_ec2: Any, profile: str, sent: dict[str, str]
) -> None:
    from ami_factory.aws import Ec2

    expected = {
        "ImageId": "ami-1",
        "InstanceType": "t3.micro",
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": "token",
        "TagSpecifications": tag_specifications({"ami-factory:role": "clone"}, ("instance", "volume")),
        "IamInstanceProfile": sent,
    }
    stubbed_ec2.add_response(
        "run_instances", {"Instances": [{"InstanceId": "i-1", "State": {"Name": "pending", "Code": 0}}]}, expected
    )
    launched = Ec2("us-east-1").launch_instance(
        image_id="ami-1",
        instance_type="t3.micro",
        subnet_id=None,
        security_group_ids=[],
        instance_profile=profile,
        client_token="token",
        tags={"ami-factory:role": "clone"},
    )
    assert launched == ("i-1", "pending")


def test_own_images_are_asked_for_in_batches_of_100_of_the_accounts_own(stubbed_ec2: Any) -> None:
    from ami_factory.aws import Ec2

    ids = [f"ami-{n:017x}" for n in range(150)]
    for batch in (ids[:100], ids[100:]):
        stubbed_ec2.add_response(
            "describe_images",
            {"Images": [{"ImageId": batch[0]}]},
            {"Owners": ["self"], "Filters": [{"Name": "image-id", "Values": batch}]},
        )
    assert sorted(Ec2("us-east-1").own_images(ids)) == [ids[0], ids[100]]


def test_an_image_that_is_gone_is_none_and_any_other_refusal_is_raised(stubbed_ec2: Any) -> None:
    from ami_factory.aws import Ec2

    stubbed_ec2.add_client_error("describe_images", "InvalidAMIID.NotFound", expected_params={"ImageIds": ["ami-1"]})
    stubbed_ec2.add_client_error("describe_images", "UnauthorizedOperation", expected_params={"ImageIds": ["ami-1"]})
    ec2 = Ec2("us-east-1")
    assert ec2.image("ami-1") is None
    with pytest.raises(ClientError, match="UnauthorizedOperation"):
        ec2.image("ami-1")


def test_a_command_ssm_does_not_know_yet_is_pending_and_other_refusals_are_raised(stubbed_ssm: Any) -> None:
    from ami_factory.aws import Ssm

    asked = {"CommandId": "11111111-2222-3333-4444-555555555555", "InstanceId": "i-1"}
    stubbed_ssm.add_client_error("get_command_invocation", "InvocationDoesNotExist", expected_params=asked)
    stubbed_ssm.add_client_error("get_command_invocation", "AccessDeniedException", expected_params=asked)
    ssm = Ssm("us-east-1")
    assert ssm.command_status("11111111-2222-3333-4444-555555555555", "i-1") == "Pending"
    with pytest.raises(ClientError, match="AccessDeniedException"):
        ssm.command_status("11111111-2222-3333-4444-555555555555", "i-1")


def test_latest_is_a_string_parameter_of_type_aws_ec2_image_with_a_description_ssm_accepts(stubbed_ssm: Any) -> None:
    from ami_factory.aws import Ssm

    expected = {
        "Name": "/ami-factory/web/latest",
        "Value": "ami-1",
        "Type": "String",
        "DataType": "aws:ec2:image",
        "Description": "d" * 1024,
        "Overwrite": True,
    }
    stubbed_ssm.add_response("put_parameter", {"Version": 3}, expected)
    assert Ssm("us-east-1").put_image_parameter("/ami-factory/web/latest", "ami-1", "d" * 2000) == 3


@pytest.fixture
def stubbed_kms() -> Any:
    yield from _stubbed("kms")


def test_an_image_or_mapping_without_volumes_has_no_snapshots_and_no_size() -> None:
    assert snapshots_of({}) == [] and volume_gib({}) == 0
    # A mapping EC2 answers without a size (an instance-store or an unfinished one) adds nothing.
    assert volume_gib({"BlockDeviceMappings": [{"Ebs": {"SnapshotId": "snap-1"}}, {"Ebs": {"VolumeSize": 8}}]}) == 8


@pytest.mark.parametrize("method", ["terminate_instance", "delete_snapshots"])
def test_a_resource_already_gone_is_fine_and_any_other_refusal_is_raised(stubbed_ec2: Any, method: str) -> None:
    from ami_factory.aws import Ec2

    operation, gone, argument, asked = {
        "terminate_instance": ("terminate_instances", "InvalidInstanceID.NotFound", "i-1", {"InstanceIds": ["i-1"]}),
        "delete_snapshots": ("delete_snapshot", "InvalidSnapshot.NotFound", ["snap-1"], {"SnapshotId": "snap-1"}),
    }[method]
    stubbed_ec2.add_client_error(operation, gone, expected_params=asked)
    stubbed_ec2.add_client_error(operation, "UnauthorizedOperation", expected_params=asked)
    ec2 = Ec2("us-east-1")
    getattr(ec2, method)(argument)
    with pytest.raises(ClientError, match="UnauthorizedOperation"):
        getattr(ec2, method)(argument)


def test_a_parameter_already_gone_is_fine_and_any_other_refusal_is_raised(stubbed_ssm: Any) -> None:
    from ami_factory.aws import Ssm

    stubbed_ssm.add_client_error("delete_parameter", "ParameterNotFound", expected_params={"Name": "/p"})
    stubbed_ssm.add_client_error("delete_parameter", "AccessDeniedException", expected_params={"Name": "/p"})
    ssm = Ssm("us-east-1")
    ssm.delete_parameter("/p")
    with pytest.raises(ClientError, match="AccessDeniedException"):
        ssm.delete_parameter("/p")


def test_image_references_are_asked_for_ten_images_at_a_time_of_every_resource_type(stubbed_ec2: Any) -> None:
    from ami_factory.aws import Ec2

    ids = [f"ami-{n:017x}" for n in range(12)]
    reference = {"ImageId": ids[0], "ResourceType": "ssm:Parameter", "Arn": "arn:aws:ssm:us-east-1:1:parameter/p"}
    stubbed_ec2.add_response(
        "describe_image_references",
        {"ImageReferences": [reference]},
        {"ImageIds": ids[:10], "IncludeAllResourceTypes": True},
    )
    stubbed_ec2.add_response("describe_image_references", {}, {"ImageIds": ids[10:], "IncludeAllResourceTypes": True})
    assert Ec2("us-east-1").image_references(ids) == {ids[0]: ["ssm:Parameter arn:aws:ssm:us-east-1:1:parameter/p"]}


@pytest.mark.parametrize(("public", "groups"), [(True, ["all"]), (False, [])])
def test_snapshot_permissions_name_the_accounts_and_all_only_when_public(
    stubbed_ec2: Any, public: bool, groups: list[str]
) -> None:
    from ami_factory.aws import Ec2

    asked = {
        "SnapshotId": "snap-1",
        "Attribute": "createVolumePermission",
        "OperationType": "add",
        "UserIds": ["111122223333"],
        "GroupNames": groups,
    }
    stubbed_ec2.add_response("modify_snapshot_attribute", {}, asked)
    Ec2("us-east-1").add_snapshot_permissions(["snap-1"], ["111122223333"], public)


def test_encrypted_volumes_are_read_with_their_keys_and_an_instance_without_volumes_asks_nothing(
    stubbed_ec2: Any,
) -> None:
    from ami_factory.aws import Ec2, encrypted_keys

    ec2 = Ec2("us-east-1")
    assert encrypted_keys(ec2.volumes_by_device({"InstanceId": "i-1"})) == {}
    stubbed_ec2.add_response(
        "describe_volumes",
        {
            "Volumes": [
                {"VolumeId": "vol-1", "Encrypted": True, "KmsKeyId": "arn:aws:kms:us-east-1:1:key/k"},
                {"VolumeId": "vol-2", "Encrypted": True},
                {"VolumeId": "vol-3", "Encrypted": False},
            ]
        },
        {"VolumeIds": ["vol-1", "vol-2", "vol-3"]},
    )
    mappings = [{"DeviceName": f"/dev/xvd{n}", "Ebs": {"VolumeId": f"vol-{n}"}} for n in (1, 2, 3)]
    instance: Any = {"InstanceId": "i-1", "BlockDeviceMappings": [*mappings, {"DeviceName": "/dev/sdb"}]}
    # An encrypted volume EC2 names no key for uses the Region's default key: the empty id says so.
    assert encrypted_keys(ec2.volumes_by_device(instance)) == {"vol-1": "arn:aws:kms:us-east-1:1:key/k", "vol-2": ""}


COMMAND_ID = "11111111-2222-3333-4444-555555555555"


def test_a_command_comment_is_cut_to_the_100_characters_ssm_accepts(stubbed_ssm: Any) -> None:
    from ami_factory.aws import Ssm

    asked = {
        "InstanceIds": ["i-1"],
        "DocumentName": "AWS-RunShellScript",
        "Parameters": {"commands": ["true"]},
        "Comment": "c" * 100,
    }
    stubbed_ssm.add_response("send_command", {"Command": {"CommandId": COMMAND_ID}}, asked)
    assert Ssm("us-east-1").send_command("i-1", "AWS-RunShellScript", {"commands": ["true"]}, "c" * 150) == COMMAND_ID


def test_a_grant_without_a_grantee_names_no_one(stubbed_kms: Any) -> None:
    from ami_factory.aws import Kms

    arn = "arn:aws:kms:us-east-1:111122223333:key/k"
    stubbed_kms.add_response("describe_key", {"KeyMetadata": {"KeyId": "k", "Arn": arn}}, {"KeyId": "k"})
    stubbed_kms.add_response(
        "list_grants", {"Grants": [{"GranteePrincipal": "ec2.amazonaws.com"}, {"GrantId": "g"}]}, {"KeyId": arn}
    )
    assert Kms("us-east-1").grantees("k") == ["ec2.amazonaws.com", ""]
