"""The demo: the ``ami-factory`` CLI drives a real run on the in-process emulator."""

from __future__ import annotations

from typing import TextIO

from ami_factory_cli import cli

from .emulator import Emulator

DEMO_ACCOUNT = "111122223333"
DEMO_REGIONS = ("eu-west-1", "ap-southeast-2")
DEMO_PARAMETERS = {"DefaultRegions": ",".join(DEMO_REGIONS), "AllowedShareAccounts": DEMO_ACCOUNT}


def main(out: TextIO, generalize: bool = False) -> int:
    """Image a demo instance; with ``generalize``, a Windows one, sysprepped on a temporary clone."""
    with Emulator(parameters=DEMO_PARAMETERS) as emu:
        # What a real run meets: the instance takes a while to stop, the image ~20 minutes, copies longer.
        emu.world.instances_take_to_stop(90)
        emu.world.images_take(20 * 60)
        for region in DEMO_REGIONS:
            emu.world.images_take(45 * 60, region=region)
        name = "demo-win" if generalize else "demo-web"
        instance_id = emu.launch_instance(name=name)
        mode: list[str] = []
        if generalize:
            # The clone boots and registers with SSM in ~3 minutes; sysprep shuts it down ~12 minutes later.
            emu.world.set_platform(emu.region, instance_id, "windows")
            emu.world.ssm_manage(instance_id, "Windows")
            emu.world.clones_take_to_register(3 * 60)
            emu.world.generalize_takes(12 * 60)
            mode = ["--mode", "generalize", "--admin-password", "random"]
        what = "generalizing a clone of" if generalize else "imaging"
        print(f"AMI Factory demo on the local emulator: {what} {instance_id} ({name}) from {emu.region}", file=out)
        code = cli.main(
            [
                "run",
                *mode,
                "--instance-id",
                instance_id,
                "--regions",
                ",".join(DEMO_REGIONS),
                "--share-accounts",
                DEMO_ACCOUNT,
                "--state-machine-arn",
                emu.state_machine_arn,
                "--region",
                emu.region,
                "--poll-seconds",
                "0.5",
            ]
        )
        state = emu.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
            "State"
        ]["Name"]
        minutes = emu.clock.elapsed() / 60
        print(
            f"instance {instance_id} is {state}; the run took {minutes:.0f} virtual minutes, "
            f"{len(emu.runtime.invocations)} Lambda invocations",
            file=out,
        )
        if generalize:
            clones = [r.params for r in emu.world.sent("TerminateInstances")]
            print(
                f"sysprep ran on the clone only ({emu.world.sent('SendCommand')[0].params['InstanceIds'][0]}); "
                f"clone terminated: {bool(clones)}; seed image removed: {bool(emu.world.sent('DeregisterImage'))}",
                file=out,
            )
        return code if state == "running" else 1
