"""What AMI Factory runs on instances: only the stack's own SSM documents, never a shell command.

The scripts are files in ``scripts/`` (shellcheck'd and parsed by ``make lint``). ``make documents``
(tools/write_documents.py) turns each into an ``AWS::SSM::Document`` in template.yaml, so what runs
on an instance is fixed when the stack is deployed: a run sends a document's name and, for sysprep,
two parameters that SSM checks against the document's allowedValues and allowedPattern. The
emulator does not run the scripts: tests assert the document, parameters and target sent.
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

from .contracts import Platform
from .errors import DeploymentError
from .request import WindowsOptions
from .settings import Settings

# The emulator's world recognises the generalize command by this comment (it cannot run the script).
GENERALIZE_COMMENT = "ami-factory generalize"
SCRIPTS = resources.files("ami_factory") / "scripts"


class Document(NamedTuple):
    """One of the stack's documents: its key in SSM_DOCUMENTS, its script, how SSM runs it."""

    key: str
    script: str
    platform: Platform
    description: str


DOCUMENTS = {
    "cleanup": {
        "linux": Document(
            "cleanup-linux", "cleanup.sh", "linux", "AMI Factory: temp files and package caches before imaging"
        ),
        "windows": Document(
            "cleanup-windows",
            "cleanup.ps1",
            "windows",
            "AMI Factory: every profile's temp folder, Windows temp and the recycle bins before imaging",
        ),
    },
    "generalize": {
        "linux": Document(
            "sanitize-linux",
            "sanitize.sh",
            "linux",
            "AMI Factory: remove what makes the disk one machine's, then shut down",
        ),
        "windows": Document(
            "sysprep-windows",
            "sysprep.ps1",
            "windows",
            "AMI Factory: set the administrator password choice, sysprep with the launch agent, shut down",
        ),
    },
}


class Command(NamedTuple):
    document: str
    parameters: dict[str, list[str]]


def script_lines(name: str) -> list[str]:
    """The script's lines as the document holds them: without blank lines and comment-only lines."""
    text = (SCRIPTS / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _document_name(document: Document, settings: Settings) -> str:
    name = settings.ssm_documents.get(document.key)
    if not name:
        raise DeploymentError(f"SSM_DOCUMENTS names no {document.key} document: deploy the function with the stack")
    return name


def cleanup_command(platform: Platform, settings: Settings) -> Command:
    """Temp files and caches go before the image is taken (Linux), every user's temp folder, the
    Windows temp folder and the recycle bins (Windows)."""
    return Command(_document_name(DOCUMENTS["cleanup"][platform], settings), {})


def generalize_command(platform: Platform, windows: WindowsOptions, settings: Settings) -> Command:
    """Sysprep (Windows) or sanitize (Linux); either ends with the instance shutting itself down."""
    document = _document_name(DOCUMENTS["generalize"][platform], settings)
    if platform == "linux":
        return Command(document, {})
    # Only the parameter *name* travels: the instance reads the password itself.
    return Command(
        document,
        {"AdminAccount": [windows.admin_password], "AdminSecretParameter": [windows.admin_password_parameter or ""]},
    )
