"""Callback tasks (``.waitForTaskToken``) on the virtual clock, ended by the world's events.

moto's interpreter waits for SendTaskSuccess/SendTaskFailure on a threading Event for the task's
TimeoutSeconds in real time. Here the wait is virtual: the waiting task's thread looks up which
resource its token waits for (the run ledger's ``wait`` item, as the event handler does), sleeps on
the clock until the next event the world has scheduled about that resource, and delivers it through the
Region's rules, so the deployed handler ends the task as on AWS. When no event will come (it was
lost), the scheduled rules (the fallback sweep) fire on the same clock, each firing once, whichever
waiting thread reaches it first; with nothing due before the timeout, the clock moves to the
timeout and the task times out (``States.Timeout``). Scheduled rules fire only then: on AWS the
sweep also runs while every event arrives, and finds nothing to do (the bench counts its cost per
deployment); here it would make a run's counts depend on how the threads are scheduled.

Two of Step Functions' rules that moto leaves out are kept: a task that is over refuses its token
(SendTaskSuccess answers TaskTimedOut; moto would take a second outcome), and SendTaskFailure's
``cause`` reaches the execution (moto's response handler drops it). A task ended by another thread
(a sweep) wakes at that thread's time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

from moto.core.responses import EmptyResult
from moto.stepfunctions.parser import api as sfn_api
from moto.stepfunctions.parser import models as sfn_models
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
    StateTaskServiceCallback,
)
from moto.stepfunctions.parser.asl.eval.callback.callback import (
    CallbackConsumerTimeout,
    CallbackEndpoint,
    CallbackOutcome,
)
from moto.stepfunctions.responses import StepFunctionResponse

from .clock import VirtualClock
from .events import EventSchedule, ScheduledEvent

Watched = Callable[[str], list[str]]  # task token -> the ids of the resources it waits for
Deliver = Callable[[ScheduledEvent], None]
# The next firing of a scheduled rule (its virtual time, and what fires it once), if any.
NextFiring = Callable[[], tuple[float, Callable[[], None]] | None]


def _with_message(name: str, message: str) -> Callable[..., None]:
    def init(error: Any, *args: Any) -> None:
        super(type(error), error).__init__(message, name)

    return init


@contextmanager
def event_driven_waits(
    clock: VirtualClock, events: EventSchedule, watched: Watched, deliver: Deliver, next_firing: NextFiring
) -> Iterator[None]:
    def wait_for_token(_task: Any, timeout_seconds: int, endpoint: CallbackEndpoint) -> CallbackOutcome | None:
        """Until the task has its outcome or times out: the clock moves to the next event about the
        resource the token waits for and delivers it; with none to come, to the scheduled rules'
        firings (the fallback sweep), then to the timeout."""
        began = clock.now()
        deadline = began + timeout_seconds
        endpoint.waiting_thread = threading.current_thread()  # type: ignore[attr-defined]

        def ended() -> bool:
            return endpoint.get_outcome() is not None

        while not ended():
            resources = watched(endpoint.callback_id)
            scheduled = events.next_for(resources, began, deadline) if resources else None
            if scheduled is not None:
                clock.advance_to(scheduled.at, woken=ended)
                for _ in range(scheduled.copies if events.take(scheduled) else 0):
                    deliver(scheduled)
                continue
            # No event will come (lost, or none by the deadline): the schedule's firings run until the
            # fallback sweep ends the wait or the timeout does.
            firing = next_firing()
            if firing is None or firing[0] > deadline:
                clock.advance_to(deadline, woken=ended)
                break
            clock.advance_to(firing[0], woken=ended)
            if not ended():
                firing[1]()
        return endpoint.get_outcome()

    original_notify = CallbackEndpoint.notify

    def notify_and_wake(endpoint: Any, outcome: CallbackOutcome) -> None:
        """Ended by another thread (its sweep, another wait's event): the waiting task goes on now."""
        original_notify(endpoint, outcome)
        if (waiting := getattr(endpoint, "waiting_thread", None)) is not None:
            clock.wake(waiting)

    original_pattern = StateTaskServiceCallback._eval_integration_pattern

    def closing_the_token(task: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        token = env.states.context_object.context_object_data.get("Task", {}).get("Token")
        endpoint = env.callback_pool_manager.get(token) if token else None
        try:
            original_pattern(task, env, *args, **kwargs)
        finally:
            if endpoint is not None:
                endpoint.report(CallbackConsumerTimeout())  # SendTask* for it now answers TaskTimedOut

    def send_task_failure(response: Any) -> Any:
        response.stepfunction_backend.send_task_failure(
            response._get_param("taskToken"), error=response._get_param("error"), cause=response._get_param("cause")
        )
        return EmptyResult()

    with ExitStack() as stack:
        # moto raises these without the message its own error class requires (a TypeError instead of
        # the answer): a task ended twice (an event and a sweep at once) must hear TaskDoesNotExist.
        for name, message in (
            ("TaskTimedOut", "Task Timed Out"),
            ("TaskDoesNotExist", "Task Does Not Exist"),
        ):
            error_class = getattr(sfn_api, name)
            stack.enter_context(
                mock.patch.object(
                    sfn_models, name, type(name, (error_class,), {"__init__": _with_message(name, message)})
                )
            )
        stack.enter_context(mock.patch.object(StateTaskServiceCallback, "_wait_for_task_token_timeout", wait_for_token))
        stack.enter_context(mock.patch.object(StateTaskServiceCallback, "_eval_integration_pattern", closing_the_token))
        stack.enter_context(mock.patch.object(StepFunctionResponse, "send_task_failure", send_task_failure))
        stack.enter_context(mock.patch.object(CallbackEndpoint, "notify", notify_and_wake))
        yield
