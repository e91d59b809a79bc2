from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from ami_factory_local import Emulator

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
ALLOWED_ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
ALLOWED_OU = "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-ab12-cdef3456"
ALLOWED_ORG = "arn:aws:organizations::111122223333:organization/o-exampleorgid"
TEST_PARAMETERS = {
    "AllowedShareAccounts": ALLOWED_ACCOUNT,
    "AllowedShareOUs": ALLOWED_OU,
    "AllowedShareOrganizations": ALLOWED_ORG,
    "PollIntervalSeconds": "60",
    "MaxWaitSeconds": "7200",
}


def sample(name: str, **changes: Any) -> dict[str, Any]:
    """A request from events/, as a user would paste it, with the fields a test must change."""
    request = json.loads((EVENTS / name).read_text())
    request.update(changes)
    return request


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    with ExitStack() as stack:

        def make(**parameters: str) -> Emulator:
            return stack.enter_context(Emulator(parameters={**TEST_PARAMETERS, **parameters}))

        yield make


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator()
