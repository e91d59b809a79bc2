"""Virtual time for the emulator: a conservative discrete-event clock.

moto's Step Functions interpreter waits in real time (``WaitFunction._wait_interval``, the
``time.sleep`` in ``retrier_decl``, the callback wait); all are patched to wait on this clock, so a
run that would take hours on AWS takes milliseconds, and the world model (images pending, instances
stopping) moves on by the same virtual seconds.

There is one time for everyone. The threads that run executions (an execution's thread, and every
thread it starts: its program, its states, its Map branches) are *participants*; each is either
running (a step, a call) or blocked (sleeping until a virtual time, or waiting for another
participant: a Map waiting for its branches, a state waiting for its task's thread). The clock moves
only when no participant is running, and then to the earliest time a sleeper waits for; the sleepers
due then are marked running before they wake, and so is every participant an event or a finishing
thread releases, so the clock never moves while one of them is about to run. A step therefore sees
the world exactly as it is at its own time, whatever the other runs do, and N concurrent runs make
exactly N times the calls of one.

Threads that are not participants (the test's, the server's) live at the clock's time; when one of
them advances the clock (a handler test waiting for an image), the world's time moves with it.
A retry's full jitter is drawn from the retry itself (its execution, state, Map item and attempt),
so runs retrying together spread out as on AWS and a run is the same run every time.
"""

from __future__ import annotations

import hashlib
import json
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
from moto.stepfunctions.parser.asl.component.common.retry.jitter_strategy_decl import (
    JitterStrategy,
    JitterStrategyDecl,
)
from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import WaitFunction
from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

START_EPOCH = 1_790_000_000.0  # a fixed instant, so runs are reproducible


def seeded_jitter(decl: JitterStrategyDecl, env: Any, draws: dict[str, int], lock: threading.Lock) -> None:
    """Full jitter, drawn from the retry itself: a fraction of the interval fixed by the execution, the
    state, the Map item and how many times that state has drawn before (its attempts come one after
    another, so the sequence is the same every time). Runs retrying together spread out as real
    jitter spreads them (a mean for everyone would retry a hundred throttled runs at one instant,
    again and again), and a run is still the same run every time."""
    if decl.jitter_strategy == JitterStrategy.NONE:
        return
    interval = env.stack.pop()
    context = env.states.context_object.context_object_data
    retry = json.dumps(
        [
            context.get("Execution", {}).get("Name"),
            context.get("State", {}).get("Name"),
            context.get("Map", {}).get("Item", {}).get("Index"),
        ]
    )
    with lock:
        attempt = draws[retry] = draws.get(retry, 0) + 1
    fraction = int(hashlib.sha256(f"{retry}#{attempt}".encode()).hexdigest()[:8], 16) / 2**32
    env.stack.append(interval * fraction)


class VirtualClock:
    def __init__(self, start: float = START_EPOCH) -> None:
        self._start = start
        self._now = start
        lock = threading.RLock()
        self._cv = threading.Condition(lock)
        self._lock = lock
        # Each sleeper waits on its own alarm: waking one thread must not wake a thousand to look.
        self._alarms: dict[threading.Thread, threading.Condition] = {}
        self._participants: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._running: set[threading.Thread] = set()
        self._sleepers: dict[threading.Thread, float] = {}
        # What a blocked participant waits for (an Event, a Thread): whoever releases it marks it running.
        self._blocked_on: dict[object, set[threading.Thread]] = {}
        self._done: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self.waits = 0

    def now(self) -> float:
        with self._cv:
            return self._now

    def elapsed(self) -> float:
        with self._cv:
            return self._now - self._start

    @property
    def started_at(self) -> float:
        return self._start

    def advance(self, seconds: float) -> None:
        """The calling thread waits ``seconds`` of virtual time."""
        self.advance_to(self.now() + max(0.0, float(seconds)))

    def advance_to(self, at: float, woken: Callable[[], bool] = lambda: False) -> None:
        """The calling thread waits until ``at`` (or until ``woken`` says so: see ``wake``). A participant
        sleeps until the clock gets there; any other thread moves the clock there itself."""
        thread = threading.current_thread()
        with self._cv:
            self.waits += 1
            if thread not in self._participants:
                self._move_to(max(self._now, at))
                return
            if at <= self._now or woken():
                return
            self._sleepers[thread] = at
            alarm = self._alarms[thread] = threading.Condition(self._lock)
            self._running.discard(thread)
            self._step()
            while thread not in self._running:
                alarm.wait()
            self._sleepers.pop(thread, None)
            self._alarms.pop(thread, None)

    def wake(self, thread: threading.Thread) -> None:
        """``thread`` sleeps no longer (what it waited for happened now): it runs from this time."""
        with self._cv:
            if thread in self._sleepers:
                del self._sleepers[thread]
                self._run_again(thread)

    def _move_to(self, at: float) -> None:
        """The world's time becomes ``at``; every sleeper due by then runs again."""
        self._now = at
        for sleeper, wake_at in list(self._sleepers.items()):
            if wake_at <= at:
                del self._sleepers[sleeper]
                self._run_again(sleeper)

    def _run_again(self, sleeper: threading.Thread) -> None:
        self._running.add(sleeper)
        alarm = self._alarms.get(sleeper)
        if alarm is not None:
            alarm.notify()

    def _step(self) -> None:
        """With no participant running, time moves to the earliest sleeper's."""
        if not self._running and self._sleepers:
            self._move_to(max(self._now, min(self._sleepers.values())))

    # --- participants ------------------------------------------------------------------------------

    def _joined(self, thread: threading.Thread) -> None:
        """``thread`` takes part from now (marked running before it starts, so no time passes meanwhile)."""
        with self._cv:
            self._participants.add(thread)
            self._running.add(thread)

    def _left(self, thread: threading.Thread) -> None:
        with self._cv:
            self._done.add(thread)
            self._release(thread)
            self._running.discard(thread)
            self._sleepers.pop(thread, None)
            self._alarms.pop(thread, None)
            self._step()

    def _blocking(self, on: object, ready: Callable[[], bool]) -> bool:
        """The calling participant is about to wait for ``on``: False (do not count it blocked) for a
        thread that is not one, or when ``on`` has happened already (checked under the clock's lock,
        so a release cannot slip between the look and the wait)."""
        thread = threading.current_thread()
        with self._cv:
            if thread not in self._participants or ready():
                return False
            self._blocked_on.setdefault(on, set()).add(thread)
            self._running.discard(thread)
            self._step()
            return True

    def _unblocked(self, on: object) -> None:
        thread = threading.current_thread()
        with self._cv:
            waiting = self._blocked_on.get(on)
            if waiting is not None:
                waiting.discard(thread)
                if not waiting:
                    del self._blocked_on[on]
            self._running.add(thread)

    def _release(self, on: object) -> None:
        """``on`` happened (an Event set, a thread finished): those waiting for it run again, now."""
        with self._cv:
            # They wait for ``on`` itself (the Event, the thread), not for the clock.
            for thread in self._blocked_on.pop(on, set()):
                self._running.add(thread)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Time stands still while the context is open (the calling thread counts as running): what
        starts in it (several executions at once) starts at the same time."""
        holder = threading.current_thread()
        with self._cv:
            already = holder in self._running
            self._running.add(holder)
        try:
            yield
        finally:
            with self._cv:
                if not already:
                    self._running.discard(holder)
                self._step()

    @contextmanager
    def participating(self) -> Iterator[None]:
        """The calling thread takes part while the context is open: what it waits for (a function pacing
        its calls) passes only when every other participant waits too, as a run's steps do."""
        thread = threading.current_thread()
        with self._cv:
            already = thread in self._participants
            was_running = thread in self._running  # inside ``held``, it stays running
            if not already:
                self._participants.add(thread)
                self._running.add(thread)
        try:
            yield
        finally:
            if not already:
                with self._cv:
                    self._participants.discard(thread)
                    if not was_running:
                        self._running.discard(thread)
                    self._sleepers.pop(thread, None)
                    self._alarms.pop(thread, None)
                    self._step()

    def spawn(self, target: Callable[[], None]) -> threading.Thread:
        """A participant thread running ``target`` (what an execution's thread is to the interpreter)."""
        thread = threading.Thread(target=target, daemon=True)
        self._joined(thread)
        thread._ami_factory_participant = True  # type: ignore[attr-defined]
        thread.start()
        return thread

    @contextmanager
    def installed(self) -> Iterator[VirtualClock]:
        """Make moto's interpreter wait on this clock while the context is open."""
        clock = self

        def wait_interval(_self: WaitFunction, env: Any, wait_seconds: int) -> None:
            clock.advance(wait_seconds)

        virtual_time = types.SimpleNamespace(sleep=self.advance)
        start_thread = threading.Thread.start
        run_thread = threading.Thread.run
        join_thread = threading.Thread.join
        event_wait = threading.Event.wait
        event_set = threading.Event.set

        def start(thread: threading.Thread) -> None:
            parent = threading.current_thread()
            target = getattr(thread, "_target", None)
            if getattr(thread, "_ami_factory_participant", False):
                pass  # spawned: joined already
            elif parent in clock._participants or isinstance(getattr(target, "__self__", None), ExecutionWorker):
                clock._joined(thread)
            start_thread(thread)

        def run(thread: threading.Thread) -> None:
            try:
                run_thread(thread)
            finally:
                if thread in clock._participants:
                    clock._left(thread)

        def join(thread: threading.Thread, timeout: float | None = None) -> None:
            # Only a participant's end releases its joiner; joining any other thread counts as running.
            over = lambda: thread in clock._done or thread not in clock._participants  # noqa: E731
            if thread is threading.current_thread() or not clock._blocking(thread, over):
                join_thread(thread, timeout)
                return
            try:
                join_thread(thread)  # virtual time has no real-time limit
            finally:
                clock._unblocked(thread)

        def wait(event: threading.Event, timeout: float | None = None) -> bool:
            if not clock._blocking(event, event.is_set):
                return event_wait(event, timeout)
            try:
                # Set by another participant (a real-time timeout here would be the interpreter's own,
                # in seconds the run does not spend).
                return event_wait(event)
            finally:
                clock._unblocked(event)

        def set_event(event: threading.Event) -> None:
            event_set(event)
            clock._release(event)

        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(threading.Thread, "start", start))
            stack.enter_context(mock.patch.object(threading.Thread, "run", run))
            stack.enter_context(mock.patch.object(threading.Thread, "join", join))
            stack.enter_context(mock.patch.object(threading.Event, "wait", wait))
            stack.enter_context(mock.patch.object(threading.Event, "set", set_event))
            stack.enter_context(mock.patch.object(WaitFunction, "_wait_interval", wait_interval))
            stack.enter_context(mock.patch.object(retrier_decl, "time", virtual_time))
            draws: dict[str, int] = {}  # per emulator: a run of the same name elsewhere draws afresh
            draws_lock = threading.Lock()
            stack.enter_context(
                mock.patch.object(
                    JitterStrategyDecl,
                    "_eval_body",
                    lambda decl, env: seeded_jitter(decl, env, draws, draws_lock),
                )
            )
            yield self
