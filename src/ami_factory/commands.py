"""What AMI Factory runs on instances through SSM Run Command, per platform.

The scripts are files in ``scripts/`` (shellcheck'd and parsed by ``make lint``), read when a
command is sent. Blank and comment-only lines stay home: they are for the people reading the files.
The emulator does not run the scripts: tests assert the document, parameters and target sent.
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

from .contracts import Platform
from .request import WindowsOptions

# The emulator's world recognises the generalize command by this comment (it cannot run the script).
GENERALIZE_COMMENT = "ami-factory generalize"
SCRIPTS = resources.files("ami_factory") / "scripts"
DOCUMENTS: dict[Platform, str] = {"linux": "AWS-RunShellScript", "windows": "AWS-RunPowerShellScript"}
CLEANUP_SCRIPTS: dict[Platform, str] = {"linux": "cleanup.sh", "windows": "cleanup.ps1"}
GENERALIZE_SCRIPTS: dict[Platform, str] = {"linux": "sanitize.sh", "windows": "sysprep.ps1"}

# The launch agents' names for the same three administrator password choices.
EC2LAUNCH_V2_PASSWORD = {"random": "random", "specify": "static", "do-nothing": "doNothing"}
EC2LAUNCH_V1_PASSWORD = {"random": "Random", "specify": "Specify", "do-nothing": "DoNothing"}


class Command(NamedTuple):
    document: str
    parameters: dict[str, list[str]]


def script_lines(name: str) -> list[str]:
    """The script's lines as sent: without blank lines and comment-only lines."""
    text = (SCRIPTS / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def cleanup_command(platform: Platform) -> Command:
    """Temp files and caches go before the image is taken (Linux), every user's temp folder, the
    Windows temp folder and the recycle bins (Windows)."""
    return Command(DOCUMENTS[platform], {"commands": script_lines(CLEANUP_SCRIPTS[platform])})


def generalize_command(platform: Platform, windows: WindowsOptions) -> Command:
    """Sysprep (Windows) or sanitize (Linux); either ends with the instance shutting itself down."""
    lines = script_lines(GENERALIZE_SCRIPTS[platform])
    if platform == "windows":
        # Only the parameter *name* travels: the instance reads the password itself. The name is
        # restricted to [A-Za-z0-9_./-] by the request model, so quoting it is safe.
        lines = [
            f"$v2PasswordType = '{EC2LAUNCH_V2_PASSWORD[windows.admin_password]}'",
            f"$v1PasswordType = '{EC2LAUNCH_V1_PASSWORD[windows.admin_password]}'",
            f"$passwordParameter = '{windows.admin_password_parameter or ''}'",
            *lines,
        ]
    return Command(DOCUMENTS[platform], {"commands": lines})
