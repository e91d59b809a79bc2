"""The scripts AMI Factory sends to instances: checked as files and as sent, and each launch agent's
branch of the Windows sysprep read from its parse tree (there is no PowerShell here to run them)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import get_args

import pytest
from tree_sitter import Node

from ami_factory.commands import SCRIPTS, cleanup_command, generalize_command
from ami_factory.request import AdminPassword, WindowsOptions
from check_scripts import parse_powershell, powershell_problems, problems, shell_problems

SCRIPT_FILES = sorted(Path(str(SCRIPTS)).glob("*.*"))
PASSWORD_CHOICES = [
    WindowsOptions(admin_password=choice, admin_password_parameter="/images/admin" if choice == "specify" else None)
    for choice in get_args(AdminPassword)
]


def nodes(node: Node) -> list[Node]:
    return [node, *itertools.chain.from_iterable(nodes(child) for child in node.children)]


def text(node: Node) -> str:
    return " ".join((node.text or b"").decode().split())


def function_body(script: str, name: str) -> Node:
    (function,) = [
        node
        for node in nodes(parse_powershell(script))
        if node.type == "function_statement" and any(text(child) == name for child in node.children)
    ]
    return function


def commands(node: Node) -> list[str]:
    """The commands a piece of PowerShell runs, in order (``& $agent validate``, ``exit 1``, ...)."""
    return [text(n) for n in nodes(node) if n.type in ("command", "flow_control_statement")]


def agent_calls(body: Node, agent: str) -> list[str]:
    return [command for command in commands(body) if command.startswith(f"& {agent}")]


def sysprep_script() -> str:
    return "\n".join(generalize_command("windows", WindowsOptions()).parameters["commands"])


def test_the_script_files_are_the_four_the_code_sends() -> None:
    assert [path.name for path in SCRIPT_FILES] == ["cleanup.ps1", "cleanup.sh", "sanitize.sh", "sysprep.ps1"]


@pytest.mark.parametrize("path", [p for p in SCRIPT_FILES if p.suffix == ".ps1"], ids=lambda p: p.name)
def test_every_powershell_script_parses_with_no_error_node(path: Path) -> None:
    assert problems(path) == []


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in SCRIPT_FILES if p.suffix == ".sh"], ids=lambda p: p.name)
def test_every_shell_script_is_shellcheck_clean(path: Path) -> None:
    assert problems(path) == []


@pytest.mark.parametrize("windows", PASSWORD_CHOICES, ids=lambda w: w.admin_password)
def test_the_powershell_as_sent_parses_with_every_password_choice(windows: WindowsOptions) -> None:
    # What SSM runs is the file's lines behind the settings lines, comments and blank lines dropped.
    for command in (generalize_command("windows", windows), cleanup_command("windows")):
        assert powershell_problems("\n".join(command.parameters["commands"])) == []


@pytest.mark.slow
def test_the_shell_as_sent_is_shellcheck_clean(tmp_path: Path) -> None:
    for name, command in (
        ("sanitize", generalize_command("linux", WindowsOptions())),
        ("cleanup", cleanup_command("linux")),
    ):
        script = tmp_path / f"{name}.sh"
        script.write_text("# shellcheck shell=sh\n" + "\n".join(command.parameters["commands"]) + "\n")
        assert shell_problems(script) == []


@pytest.mark.slow
def test_the_checks_find_a_broken_script(tmp_path: Path) -> None:
    assert powershell_problems("if ($ready { Write-Output 'never closed'\n")
    broken = tmp_path / "broken.sh"
    broken.write_text("# shellcheck shell=sh\nrm -rf $TARGET/*\n")
    assert any("SC2115" in problem or "SC2086" in problem for problem in shell_problems(broken))


def test_ec2launch_v2_sets_the_password_validates_resets_then_syspreps_and_shuts_down() -> None:
    body = function_body(sysprep_script(), "Invoke-Ec2LaunchV2Sysprep")
    assert agent_calls(body, "$agent") == [
        "& $agent get-agent-config --format json",
        "& $agent validate",
        "& $agent reset --block --clean",
        "& $agent sysprep --block --clean --shutdown",
    ]
    source = text(body)
    written = source.index("agent-config.yml")
    assert source.index("setAdminAccount") < written < source.index("& $agent validate"), "the password choice first"
    sequence = commands(body)
    # A rejected configuration or a failed reset stops before sysprep, with a failing exit code.
    assert sequence[sequence.index("& $agent validate") + 1] == "Write-Error 'EC2Launch v2 rejected agent-config.yml'"
    assert sequence[sequence.index("& $agent validate") + 2] == "exit 1"
    assert sequence[sequence.index("& $agent reset --block --clean") + 2] == "exit 1"
    assert sequence[-1] == "exit $LASTEXITCODE"


def test_ec2launch_v1_writes_the_password_type_then_schedules_initialization_and_syspreps() -> None:
    body = function_body(sysprep_script(), "Invoke-Ec2LaunchV1Sysprep")
    sequence = commands(body)
    assert "Set-Content -Encoding UTF8 $launchConfig" in sequence
    initialize = sequence.index("& (Join-Path $launch 'Scripts\\InitializeInstance.ps1') -Schedule")
    sysprep = sequence.index("& (Join-Path $launch 'Scripts\\SysprepInstance.ps1')")
    assert sequence.index("Set-Content -Encoding UTF8 $launchConfig") < initialize < sysprep
    assert "$settings.adminPasswordType = $v1PasswordType" in text(body)
    assert sequence[-1] == "exit $LASTEXITCODE"


def test_ec2config_refuses_a_specified_password_before_touching_anything_then_syspreps() -> None:
    body = function_body(sysprep_script(), "Invoke-Ec2ConfigSysprep")
    sequence = commands(body)
    refusal = sequence.index("exit 1")
    sysprep = sequence.index("& (Join-Path $service 'Ec2Config.exe') -sysprep")
    assert refusal < sequence.index("Get-Content $file") < sysprep
    assert "$xml.Save($file)" in text(body) and "Ec2SetPassword" in text(body)
    assert sequence[-1] == "exit $LASTEXITCODE"


def test_sysprep_uses_the_first_agent_it_finds_and_fails_without_one() -> None:
    script = sysprep_script()
    root = parse_powershell(script)
    top_level = [text(node) for node in root.children[0].children if node.type != "function_statement"]
    branches = [statement for statement in top_level if statement.startswith("if (Test-Path")]
    assert [branch.split("{")[1].split()[0] for branch in branches] == [
        "Invoke-Ec2LaunchV2Sysprep",
        "Invoke-Ec2LaunchV1Sysprep",
        "Invoke-Ec2ConfigSysprep",
    ]
    assert top_level[-1] == "exit 1" and "no EC2 launch agent" in top_level[-2]
    assert top_level[:3] == ["$v2PasswordType = 'random'", "$v1PasswordType = 'Random'", "$passwordParameter = ''"]


def test_windows_cleanup_empties_every_profile_temp_folder_windows_temp_and_the_recycle_bins() -> None:
    script = "\n".join(cleanup_command("windows").parameters["commands"])
    assert powershell_problems(script) == []
    # SSM runs it as SYSTEM: these would reach SYSTEM's own folders only.
    assert "$env:TEMP" not in script and "Clear-RecycleBin" not in script
    assert "Join-Path $env:SystemDrive 'Users'" in script and "'AppData\\Local\\Temp'" in script
    assert "Join-Path $env:SystemRoot 'Temp'" in script
    assert "Get-PSDrive -PSProvider FileSystem" in script and "'$Recycle.Bin'" in script
    assert "Write-Output ('{0}: removed {1} files" in script, "it says what it removed from each folder"
    assert script.rstrip().endswith("exit 0"), "a clean-up never fails the run"
