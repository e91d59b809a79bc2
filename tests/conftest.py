from __future__ import annotations

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
