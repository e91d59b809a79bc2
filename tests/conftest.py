from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from ami_factory_local import Emulator
from tests.helpers import TEST_PARAMETERS


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    with ExitStack() as stack:

        def make(**parameters: str) -> Emulator:
            return stack.enter_context(Emulator(parameters={**TEST_PARAMETERS, **parameters}))

        yield make


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator()


@pytest.fixture
def function_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """What the functions log through Powertools (its logger does not propagate to the root)."""
    powertools = logging.getLogger("ami-factory")
    powertools.addHandler(caplog.handler)
    yield caplog
    powertools.removeHandler(caplog.handler)
