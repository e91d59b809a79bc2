"""The scripts AMI Factory runs on instances: checked as files and as the stack's SSM documents hold
them, and each launch agent's branch of the Windows sysprep read from its parse tree (there is no
PowerShell here to run them)."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest
from tree_sitter import Node

from ami_factory.commands import DOCUMENTS, SCRIPTS, generalize_command
from ami_factory.request import AdminPassword, WindowsOptions
from check_scripts import parse_powershell, powershell_problems, problems, shell_problems
from tests.helpers import ROOT, SETTINGS
from write_documents import SYSPREP_PARAMETERS, TEMPLATE, content, rendered

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


def document_script(purpose: str, platform: str) -> str:
    """What the stack's document runs, as SSM holds it (parameters still as ``{{ Name }}``)."""
    (step,) = content(DOCUMENTS[purpose][platform])["mainSteps"]
    return "\n".join(step["inputs"]["runCommand"])


def as_ssm_runs_it(script: str, parameters: dict[str, list[str]]) -> str:
    """SSM puts each parameter's value in place of ``{{ Name }}`` before it runs the script."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: parameters[match.group(1)][0], script)


def sysprep_script() -> str:
    return document_script("generalize", "windows")


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
def test_the_powershell_as_ssm_runs_it_parses_with_every_password_choice(windows: WindowsOptions) -> None:
    documents = {"sysprep-windows": "sysprep", "cleanup-windows": "cleanup"}
    command = generalize_command("windows", windows, replace(SETTINGS, ssm_documents=documents))
    assert powershell_problems(as_ssm_runs_it(sysprep_script(), command.parameters)) == []
    assert powershell_problems(document_script("cleanup", "windows")) == []


@pytest.mark.parametrize("windows", PASSWORD_CHOICES, ids=lambda w: w.admin_password)
def test_every_parameter_value_the_code_sends_is_one_the_document_allows(windows: WindowsOptions) -> None:
    command = generalize_command("windows", windows, replace(SETTINGS, ssm_documents={"sysprep-windows": "sysprep"}))
    assert command.parameters.keys() == SYSPREP_PARAMETERS.keys()
    (choice,) = command.parameters["AdminAccount"]
    assert choice in SYSPREP_PARAMETERS["AdminAccount"]["allowedValues"]
    (parameter,) = command.parameters["AdminSecretParameter"]
    assert re.fullmatch(SYSPREP_PARAMETERS["AdminSecretParameter"]["allowedPattern"], parameter)


@pytest.mark.parametrize("value", ["x'; Remove-Item C:\\ -Recurse; '", "$(whoami)", "a b", "/ok/../../x;"])
def test_a_password_parameter_that_could_carry_code_is_refused_by_the_documents_pattern(value: str) -> None:
    assert not re.fullmatch(SYSPREP_PARAMETERS["AdminSecretParameter"]["allowedPattern"], value)


@pytest.mark.slow
def test_the_shell_as_ssm_runs_it_is_shellcheck_clean(tmp_path: Path) -> None:
    for purpose in ("generalize", "cleanup"):
        script = tmp_path / f"{purpose}.sh"
        script.write_text("# shellcheck shell=sh\n" + document_script(purpose, "linux") + "\n")
        assert shell_problems(script) == []


def test_the_templates_documents_are_what_the_builder_writes_from_the_scripts() -> None:
    text = TEMPLATE.read_text()
    assert text == rendered(text), "run `make documents`"
    assert "AWS-RunShellScript" not in text and "AWS-RunPowerShellScript" not in text
    assert TEMPLATE == ROOT / "template.yaml"


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
    assert top_level[:2] == ["$choice = '{{ AdminAccount }}'", "$passwordParameter = '{{ AdminSecretParameter }}'"]
    assert top_level[2].startswith("$v2PasswordType = @{ 'random' = 'random'; 'specify' = 'static'")


def test_windows_cleanup_empties_every_profile_temp_folder_windows_temp_and_the_recycle_bins() -> None:
    script = document_script("cleanup", "windows")
    assert powershell_problems(script) == []
    # SSM runs it as SYSTEM: these would reach SYSTEM's own folders only.
    assert "$env:TEMP" not in script and "Clear-RecycleBin" not in script
    assert "Join-Path $env:SystemDrive 'Users'" in script and "'AppData\\Local\\Temp'" in script
    assert "Join-Path $env:SystemRoot 'Temp'" in script
    assert "Get-PSDrive -PSProvider FileSystem" in script and "'$Recycle.Bin'" in script
    assert "Write-Output ('{0}: removed {1} files" in script, "it says what it removed from each folder"
    assert script.rstrip().endswith("exit 0"), "a clean-up never fails the run"
