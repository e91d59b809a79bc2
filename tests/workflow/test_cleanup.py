"""Clean-up through SSM Run Command before a specialized image: the commands sent are asserted,
since the emulator does not run them; the world decides how the invocation ends."""

from __future__ import annotations

import pytest

from ami_factory_local import Emulator
from tests.helpers import document_script, sample


def operations(emu: Emulator) -> list[str]:
    return [request.operation for request in emu.world.requests]


@pytest.mark.parametrize(
    "platform, document, must_contain",
    [
        ("Linux", "ami-factory-local-CleanupLinuxDocument", "for dir in /tmp /var/tmp"),
        ("Windows", "ami-factory-local-CleanupWindowsDocument", "'$Recycle.Bin'"),
    ],
)
def test_cleanup_runs_on_the_instance_before_it_is_stopped_and_imaged(
    emu: Emulator, platform: str, document: str, must_contain: str
) -> None:
    instance_id = emu.launch_instance(name="web")
    if platform == "Windows":
        emu.world.set_platform("us-east-1", instance_id, "windows")
    emu.world.ssm_manage(instance_id, platform)
    emu.world.commands_take(150)
    result = emu.run(sample("request-cleanup.json", instance_id=instance_id), name="clean")
    assert result.status == "SUCCEEDED", result.cause
    (command,) = emu.world.sent("SendCommand")
    assert command.params["InstanceIds"] == [instance_id]
    assert command.params["DocumentName"] == document
    assert must_contain in document_script(emu, document) and not command.params.get("Parameters")
    assert "clean-up" in command.params["Comment"]
    sequence = operations(emu)
    assert sequence.index("SendCommand") < sequence.index("StopInstances") < sequence.index("CreateImage")
    waits = [
        e
        for e in result.history
        if e["type"] == "TaskStateEntered" and e["stateEnteredEventDetails"]["name"] == "WaitForCleanup"
    ]
    assert len(waits) == 1, "one wait, ended by Systems Manager's event: no polling"
    settled = [out for name, out in emu.runtime.results if name.endswith("SettleWaitFunction")]
    (sent,) = emu.client("ssm").list_commands()["Commands"]
    assert settled[0] == {"region": "us-east-1", "resource_id": sent["CommandId"], "state": "Success", "ended": True}


def test_a_failing_cleanup_stops_the_run_before_the_instance_is_touched(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.ssm_manage(instance_id, "Linux")
    emu.world.commands_fail()
    result = emu.run(sample("request-cleanup.json", instance_id=instance_id), name="dirty")
    assert result.status == "FAILED" and result.error == "CommandFailedError"
    assert "ended Failed" in result.cause
    assert emu.world.sent("StopInstances") == [] and emu.world.sent("CreateImage") == []
    described = emu.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["State"]["Name"] == "running"


@pytest.mark.parametrize(
    "manage, message",
    [
        (None, "is not registered with SSM: make sure the instance is running, its SSM agent"),
        (("Linux", "ConnectionLost"), "SSM ping status ConnectionLost: make sure the instance is running"),
        (("Windows", "Online"), "clean-up: EC2 says instance {instance_id} runs linux, SSM says Windows; check"),
    ],
    ids=["unmanaged", "agent offline", "platform mismatch"],
)
def test_cleanup_on_an_instance_ssm_cannot_reach_fails_before_anything_is_touched(
    emu: Emulator, manage: tuple[str, str] | None, message: str
) -> None:
    instance_id = emu.launch_instance(name="web")
    if manage:
        emu.world.ssm_manage(instance_id, *manage)
    result = emu.run(sample("request-cleanup.json", instance_id=instance_id), name="unreachable")
    assert result.status == "FAILED" and result.error == "InstanceNotManagedError"
    assert message.format(instance_id=instance_id) in result.cause_message
    mutating = {op for op in emu.world.calls("ec2") if not op.startswith("Describe")} - {
        "RunInstances",
        "RegisterImage",
    }
    assert mutating == set(), f"nothing may change, sent {mutating}"
    assert emu.world.sent("SendCommand") == []
