"""The deployment and the account every sample request in ``events/`` runs in as written: ``make serve``
starts with them, so ``--input file://events/request-….json`` works unchanged.

The samples name ``i-0123456789abcdef0`` (and ``ami-0123456789abcdef0``, ``lt-…``): here those are
real. The instance is a Windows server (fast launch and the Windows options need one; every other
sample images it as well), managed by SSM, with two data volumes (``request-volumes.json``); each
Region the samples copy to has a customer managed key the share targets may use
(``request-encrypted.json``); the launch templates exist and are allowed; the share account has
deployed the role copies into it need (``request-copy-to-accounts.json``); and an earlier run has
delivered ``ami-0123456789abcdef0`` for the instance's family (``request-redistribute.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ami_factory.rules import KEY_USE_ACTIONS

from .emulator import ACCOUNT_ID, PROJECT_ROOT, Emulator

INSTANCE_ID = "i-0123456789abcdef0"
DELIVERED_IMAGE_ID = "ami-0123456789abcdef0"
LAUNCH_TEMPLATES = {"us-east-1": "lt-0123456789abcdef0", "eu-west-1": "lt-0fedcba9876543210"}
SHARE_ACCOUNT = "111122223333"
ORGANIZATION = "arn:aws:organizations::111122223333:organization/o-exampleorgid"
OU = "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-ab12-cdef3456"
KEY_REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")

# The allow-lists hold exactly the samples' targets (DefaultRegions: the demo's).
PARAMETERS = {
    "AllowedShareAccounts": SHARE_ACCOUNT,
    "AllowedShareOrganizations": ORGANIZATION,
    "AllowedShareOUs": OU,
    "AllowedCopyAccounts": SHARE_ACCOUNT,
    "CopyAccountExternalId": "ami-factory-samples-external-id",
    "AllowedLaunchTemplates": ",".join(
        f"arn:aws:ec2:{region}:{ACCOUNT_ID}:launch-template/{template}" for region, template in LAUNCH_TEMPLATES.items()
    ),
}


def sample_requests(root: Path = PROJECT_ROOT) -> list[Path]:
    return sorted((root / "events").glob("request-*.json"))


def provision(emu: Emulator) -> None:
    """Make what the samples name, in a started emulator deployed with ``PARAMETERS``."""
    emu.reconfigure(KmsKeyIds=",".join(_shared_key(emu, region) for region in KEY_REGIONS))
    emu.deploy_target_account(SHARE_ACCOUNT)
    with emu.world.chosen_ids(instance=INSTANCE_ID):
        emu.launch_instance(name="web", data_volumes={"/dev/sdf": 100, "/dev/sdg": 50})
    emu.world.set_platform(emu.region, INSTANCE_ID, "windows")
    emu.world.ssm_manage(INSTANCE_ID, "Windows")
    for region, template in LAUNCH_TEMPLATES.items():
        with emu.world.chosen_ids(launch_template=template):
            emu.client("ec2", region).create_launch_template(
                LaunchTemplateName=f"web-{region}",
                LaunchTemplateData={"ImageId": "ami-00000000000000000", "InstanceType": "t3.small"},
            )
    # The run that delivered the image request-redistribute.json distributes again.
    with emu.world.chosen_ids(image=DELIVERED_IMAGE_ID):
        delivered = emu.run({"instance_id": INSTANCE_ID, "regions": []}, name=f"{INSTANCE_ID}-delivered")
    if delivered.status != "SUCCEEDED" or (delivered.output or {}).get("status") != "SUCCEEDED":
        raise RuntimeError(f"the run that delivers {DELIVERED_IMAGE_ID} ended {delivered.status}: {delivered.cause}")


def _shared_key(emu: Emulator, region: str) -> str:
    """A customer managed key the share targets may use: the account, and the organization's principals."""
    statements = [
        {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{SHARE_ACCOUNT}:root"},
            "Action": list(KEY_USE_ACTIONS),
            "Resource": "*",
        },
        {
            "Effect": "Allow",
            "Principal": "*",
            "Action": list(KEY_USE_ACTIONS),
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-exampleorgid"}},
        },
    ]
    created = emu.client("kms", region).create_key(
        Description="AMI Factory sample images", Policy=json.dumps({"Version": "2012-10-17", "Statement": statements})
    )
    return str(created["KeyMetadata"]["Arn"])
