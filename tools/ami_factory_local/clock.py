"""Virtual time for the emulator: Wait states and Retry back-offs advance a clock instead of sleeping.

moto's Step Functions interpreter waits in real time (``WaitFunction._wait_interval`` and the
``time.sleep`` in ``retrier_decl``); both are patched to advance this clock and return at once, so a
run that would take hours on AWS takes milliseconds, and the world model (images pending, instances
stopping) moves on by the same virtual seconds.

Parallel branches wait side by side, not one after the other, and each sees only its own time:

- every thread that waits keeps its own time, and a thread starts at the time of the thread that
  started it (a Map branch or a Task at its parent's time); threads that never wait (the test's, the
  server's, an execution before its first wait) live at the world's time;
- ``now()`` is the calling thread's time, so what the world answers a branch (is the copy available,
  have the status checks passed) depends on that branch's own waits, never on how far the other
  branches have got: a run is the same run however the threads are scheduled;
- the world's time is the furthest any thread has got (``elapsed``): three Map branches that each
  wait 60 s move the world on by 60 s, as on AWS;
- when a Map's branches are done, the thread that waited for them carries on from the latest of
  their times;
- a retry's full jitter is its mean (half the back-off interval).

So a run is the same run every time, whatever the machine's load: counts and times in tests and in
``make bench`` are exact.
"""

from __future__ import annotations

import threading
import types
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

from moto.stepfunctions.parser.asl.component.common.retry import jitter_strategy_decl, retrier_decl
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.job import JobPool
from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import WaitFunction

START_EPOCH = 1_790_000_000.0  # a fixed instant, so runs are reproducible


class VirtualClock:
    def __init__(self, start: float = START_EPOCH) -> None:
        self._start = start
        self._world = start
        self._lock = threading.RLock()
        # Each thread's own time, and the threads it started (its parent reads them when they are done).
        self._times: weakref.WeakKeyDictionary[threading.Thread, float] = weakref.WeakKeyDictionary()
        self._children: weakref.WeakKeyDictionary[threading.Thread, list[threading.Thread]] = (
            weakref.WeakKeyDictionary()
        )
        self.waits = 0

    def now(self) -> float:
        """The calling thread's time (the world's, for a thread that never waits)."""
        with self._lock:
            return self._time_of(threading.current_thread())

    def elapsed(self) -> float:
        """How far the world has got: the furthest any thread has waited."""
        with self._lock:
            return self._world - self._start

    def advance(self, seconds: float) -> None:
        """The calling thread waits ``seconds``."""
        with self._lock:
            thread = threading.current_thread()
            local = self._time_of(thread) + max(0.0, float(seconds))
            self._times[thread] = local
            self._world = max(self._world, local)
            self.waits += 1

    def advance_to(self, at: float) -> None:
        """The calling thread waits until ``at`` (nothing if it is there already)."""
        with self._lock:
            if at > self._time_of(threading.current_thread()):
                self.advance(at - self._time_of(threading.current_thread()))

    @property
    def started_at(self) -> float:
        return self._start

    def catch_up_with_children(self) -> None:
        """The calling thread goes on from the latest time its (finished) child threads reached."""
        with self._lock:
            thread = threading.current_thread()
            self._times[thread] = max(self._time_of(thread), self._latest_below(thread))

    def _time_of(self, thread: threading.Thread) -> float:
        return self._times.get(thread, self._world)

    def _latest_below(self, thread: threading.Thread) -> float:
        children = self._children.get(thread, [])
        return max((max(self._time_of(child), self._latest_below(child)) for child in children), default=0.0)

    def _started(self, child: threading.Thread) -> None:
        """A thread started by one that keeps time starts at its parent's time; one started by a thread
        that never waited (the test's, the server's) lives at the world's time until it waits itself."""
        with self._lock:
            parent = threading.current_thread()
            if parent in self._times:
                self._times[child] = self._times[parent]
                self._children.setdefault(parent, []).append(child)

    @contextmanager
    def installed(self) -> Iterator[VirtualClock]:
        """Make moto's interpreter wait on this clock while the context is open."""
        clock = self

        def wait_interval(_self: WaitFunction, env: Any, wait_seconds: int) -> None:
            clock.advance(wait_seconds)

        virtual_time = types.SimpleNamespace(sleep=self.advance)
        # Full jitter draws a back-off between 0 and the interval; the emulator takes its mean, so a
        # retried run is the same run every time.
        mean_jitter = types.SimpleNamespace(uniform=lambda low, high: (low + high) / 2)
        start_thread = threading.Thread.start
        await_jobs = JobPool.await_jobs

        def start_at_parent_time(thread: threading.Thread) -> None:
            clock._started(thread)
            start_thread(thread)

        def await_jobs_then_catch_up(pool: JobPool) -> None:
            await_jobs(pool)
            clock.catch_up_with_children()

        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(threading.Thread, "start", start_at_parent_time))
            stack.enter_context(mock.patch.object(WaitFunction, "_wait_interval", wait_interval))
            stack.enter_context(mock.patch.object(retrier_decl, "time", virtual_time))
            stack.enter_context(mock.patch.object(jitter_strategy_decl, "random", mean_jitter))
            stack.enter_context(mock.patch.object(JobPool, "await_jobs", await_jobs_then_catch_up))
            yield self
