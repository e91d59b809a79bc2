"""How long each wait loop waits between checks: the deployment's poll interval for the first 50
minutes (or 50 checks), then half as long again each time, up to two hours. A wait that lasts hours
costs tens of checks, not thousands, so an execution stays far inside Step Functions' 25,000-event
history (each check writes 9 events); ``tests/workflow/test_history_budget.py`` computes the worst
case the template's parameter bounds allow.
"""

from __future__ import annotations

import math

STEADY_SECONDS = 3000  # the typical image (20 min) and copy (45 min) are seen within one interval
STEADY_POLLS = 50
BACKOFF_RATE = 1.5
LONGEST_WAIT_SECONDS = 7200


def wait_after(polls: int, poll_seconds: int) -> int:
    """The wait before check number ``polls + 1`` (``polls`` checks done)."""
    steady = min(STEADY_POLLS, math.ceil(STEADY_SECONDS / poll_seconds))
    if polls < steady:
        return poll_seconds
    return min(max(poll_seconds, LONGEST_WAIT_SECONDS), math.ceil(poll_seconds * BACKOFF_RATE ** (polls - steady + 1)))


def waited(polls: int, poll_seconds: int) -> int:
    """How long ``polls`` checks have waited in all."""
    return sum(wait_after(done, poll_seconds) for done in range(polls))


def polls_within(seconds: int, poll_seconds: int) -> int:
    """The checks a wait of ``seconds`` takes: the bound every loop gives up at (WaitTimeoutError)."""
    polls = 0
    total = 0
    while total < seconds:
        total += wait_after(polls, poll_seconds)
        polls += 1
    return max(1, polls)
