"""Virtual time for the emulator: Wait states and Retry back-offs advance a clock instead of sleeping.

moto's Step Functions interpreter waits in real time (``WaitFunction._wait_interval`` and the
``time.sleep`` in ``retrier_decl``); both are patched to advance this clock and return at once, so a
run that would take hours on AWS takes milliseconds, and the world model (images pending, instances
stopping) moves on by the same virtual seconds.

Parallel branches wait side by side, not one after the other: each thread keeps its own time
(starting from the world's time when the thread was started) and the world's time is the furthest
any thread has got. Three Map branches that each wait 60 s move the world on by 60 s, as on AWS.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import WaitFunction

START_EPOCH = 1_790_000_000.0  # a fixed instant, so runs are reproducible
_STARTED_AT = "_ami_factory_virtual_start"


class VirtualClock:
    def __init__(self, start: float = START_EPOCH) -> None:
        self._start = start
        self._now = start
        self._lock = threading.Lock()
        self._thread = threading.local()
        self.waits = 0

    def now(self) -> float:
        with self._lock:
            return self._now

    def elapsed(self) -> float:
        return self.now() - self._start

    def advance(self, seconds: float) -> None:
        """The calling thread waits ``seconds``; the world catches up if that is the furthest so far."""
        with self._lock:
            started = getattr(threading.current_thread(), _STARTED_AT, self._now)
            local = getattr(self._thread, "now", started)
            local += max(0.0, float(seconds))
            self._thread.now = local
            self._now = max(self._now, local)
            self.waits += 1

    @contextmanager
    def installed(self) -> Iterator[VirtualClock]:
        """Make moto's interpreter wait on this clock while the context is open."""
        clock = self

        def wait_interval(_self: WaitFunction, env: Any, wait_seconds: int) -> None:
            clock.advance(wait_seconds)

        virtual_time = types.SimpleNamespace(sleep=self.advance)
        start_thread = threading.Thread.start

        def start_at_virtual_now(thread: threading.Thread) -> None:
            setattr(thread, _STARTED_AT, clock.now())  # a branch starts when its parent is
            start_thread(thread)

        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(threading.Thread, "start", start_at_virtual_now))
            stack.enter_context(mock.patch.object(WaitFunction, "_wait_interval", wait_interval))
            stack.enter_context(mock.patch.object(retrier_decl, "time", virtual_time))
            yield self
