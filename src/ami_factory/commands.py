"""What AMI Factory runs on instances through SSM Run Command, per platform.

The emulator does not run these: tests assert the document, parameters and target that were sent.
"""

from __future__ import annotations

from typing import NamedTuple

from .models import Platform


class Command(NamedTuple):
    document: str
    parameters: dict[str, list[str]]


CLEANUP = {
    "windows": Command(
        "AWS-RunPowerShellScript",
        {
            "commands": [
                "$ErrorActionPreference = 'Continue'",
                "Remove-Item -Path \"$env:TEMP\\*\", \"$env:windir\\Temp\\*\" -Recurse -Force -ErrorAction SilentlyContinue",
                "Clear-RecycleBin -Force -ErrorAction SilentlyContinue",
                "exit 0",
            ]
        },
    ),
    "linux": Command(
        "AWS-RunShellScript",
        {
            "commands": [
                "find /tmp /var/tmp -mindepth 1 -delete 2>/dev/null || true",
                "if command -v dnf >/dev/null 2>&1; then dnf clean all; elif command -v yum >/dev/null 2>&1; then yum clean all; fi",
                "if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi",
                "if command -v zypper >/dev/null 2>&1; then zypper clean --all; fi",
            ]
        },
    ),
}


def cleanup_command(platform: Platform) -> Command:
    return CLEANUP[platform]
