"""The demo: the ``ami-factory`` CLI drives a real run on the in-process emulator."""

from __future__ import annotations

from typing import TextIO

from ami_factory_cli import cli

from .emulator import Emulator

DEMO_ACCOUNT = "111122223333"
DEMO_REGIONS = ("eu-west-1", "ap-southeast-2")
DEMO_PARAMETERS = {"DefaultRegions": ",".join(DEMO_REGIONS), "AllowedShareAccounts": DEMO_ACCOUNT}


def main(out: TextIO) -> int:
    with Emulator(parameters=DEMO_PARAMETERS) as emu:
        # What a real run meets: the instance takes a while to stop, the image ~20 minutes, copies longer.
        emu.world.instances_take_to_stop(90)
        emu.world.images_take(20 * 60)
        for region in DEMO_REGIONS:
            emu.world.images_take(45 * 60, region=region)
        instance_id = emu.launch_instance(name="demo-web")
        print(f"AMI Factory demo on the local emulator: imaging {instance_id} (demo-web) from {emu.region}", file=out)
        code = cli.main(
            [
                "run",
                "--instance-id", instance_id,
                "--regions", ",".join(DEMO_REGIONS),
                "--share-accounts", DEMO_ACCOUNT,
                "--state-machine-arn", emu.state_machine_arn,
                "--region", emu.region,
                "--poll-seconds", "0.5",
            ]
        )
        state = emu.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]
        minutes = emu.clock.elapsed() / 60
        print(f"instance {instance_id} is {state}; the run took {minutes:.0f} virtual minutes, "
              f"{len(emu.runtime.invocations)} Lambda invocations", file=out)
        return code if state == "running" else 1
