"""The retry policy, in one place: which retry tier a failed or deferred
delivery goes to, what a ``Retry-After`` does to that, and when retrying ends
and the delivery is dead-lettered.

The tiers are ``SHIPCAST_RETRY_SCHEDULE`` (seconds; default 5, 300, 1800,
7200, 18000, 36000, 36000): one retry queue per tier per channel, whose TTL
dead-letters back into the work queue. A failure spends one tier; a
deferral (busy, rate limited, quiet hours, an earlier event of an ordered
target still pending) waits in a tier without spending one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shipcast.exceptions import DeferDelivery, DeliveryError, RetryableDelivery, SkipDelivery
from shipcast.model.outcomes import Outcome


def next_delay(delays: Sequence[int], attempt: int, retry_after: float | None) -> int | None:
    """The retry tier for a target that has already been through ``attempt``
    tiers, or ``None`` when retries are exhausted. A ``Retry-After`` moves the
    retry to the first later tier that waits at least that long (the longest
    tier when none does)."""
    if attempt >= len(delays):
        return None
    if retry_after is not None:
        for delay in delays[attempt:]:
            if delay >= retry_after:
                return delay
        return delays[-1]
    return delays[attempt]


def defer_delay(delays: Sequence[int], wait: float | None) -> int:
    """The retry tier for a deferral of ``wait`` seconds: the longest tier
    that does not overshoot it (the message comes back and defers again for
    what is left), else the shortest."""
    if wait is None:
        return min(delays)
    fitting = [delay for delay in delays if delay <= wait]
    return max(fitting) if fitting else min(delays)


@dataclass(frozen=True)
class Decision:
    """What one attempt came to, why, and the retry tier it goes to (if any)."""

    outcome: Outcome
    reason: str | None = None
    #: Seconds of the retry tier, for a retry or a deferral.
    delay: int | None = None


def decide(error: DeliveryError | None, delays: Sequence[int], attempt: int) -> Decision:
    """The policy: turn what a channel said about one attempt (nothing, or
    the delivery error it raised) into an outcome.

    ``attempt`` counts the tiers this target has already been through. With
    no tiers at all (an empty schedule), a deferral is a retryable failure
    and a retryable failure is dead at once.
    """
    if error is None:
        return Decision(Outcome.DELIVERED)
    if isinstance(error, SkipDelivery):
        return Decision(Outcome.SKIPPED, error.reason)
    if isinstance(error, DeferDelivery) and delays:
        return Decision(Outcome.WAITING, error.reason, defer_delay(delays, error.retry_after))
    if isinstance(error, RetryableDelivery):
        delay = next_delay(delays, attempt, error.retry_after)
        if delay is not None:
            return Decision(Outcome.RETRY, error.reason, delay)
        return Decision(Outcome.DEAD, f"retries exhausted after {attempt + 1} attempts: {error.reason}")
    return Decision(Outcome.DEAD, error.reason)


def deferral(delays: Sequence[int]) -> int | None:
    """The tier a deferral waits in (the shortest), or ``None`` when there are
    no tiers and a delivery must wait where it is instead."""
    return delays[0] if delays else None
