"""The retry policy, table-driven: which tier a failure or a deferral goes
to, what ``Retry-After`` does, and when retrying ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from shipcast.delivery.retry import Decision, decide, defer_delay, deferral, next_delay
from shipcast.exceptions import (
    ClaimedElsewhere,
    DeferDelivery,
    PermanentDelivery,
    RetryableDelivery,
    SentBefore,
    SkipDelivery,
)
from shipcast.model.outcomes import DeliveryStatus, Outcome
from shipcast.retry_after import parse_retry_after

pytestmark = pytest.mark.fast

DELAYS = (5, 300, 1800, 7200)


@pytest.mark.parametrize(("attempt", "retry_after", "expected"), [
    (0, None, 5),           # the first failure waits the first tier
    (1, None, 300),
    (3, None, 7200),        # the last tier
    (4, None, None),        # every tier spent: exhausted
    (0, 60, 300),           # Retry-After: the first tier that waits at least that long
    (1, 300, 300),          # exactly a tier
    (0, 1_000_000, 7200),   # longer than any tier: the longest
    (2, 1, 1800),           # never back to an earlier tier
    (4, 1, None),           # a Retry-After does not add tiers
])
def test_next_delay(attempt: int, retry_after: float | None, expected: int | None) -> None:
    assert next_delay(DELAYS, attempt, retry_after) == expected


def test_no_tiers_means_no_retry() -> None:
    assert next_delay((), 0, None) is None
    assert deferral(()) is None
    assert deferral(DELAYS) == 5


@pytest.mark.parametrize(("wait", "expected"), [
    (None, 5),       # no hint: the shortest tier
    (1, 5),          # shorter than any tier: the shortest
    (400, 300),      # the longest tier that does not overshoot; it defers again for the rest
    (1800, 1800),
    (99_999, 7200),
])
def test_defer_delay(wait: float | None, expected: int) -> None:
    assert defer_delay(DELAYS, wait) == expected


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    later = datetime.now(UTC) + timedelta(seconds=90)
    assert 80 <= (parse_retry_after(format_datetime(later, usegmt=True)) or 0) <= 90
    past = datetime.now(UTC) - timedelta(hours=1)
    assert parse_retry_after(format_datetime(past, usegmt=True)) == 0.0


@pytest.mark.parametrize("junk", [None, "", "soon", "-5", "1.5e3", "Mon, 99 Foo 2026 00:00:00 GMT"])
def test_an_unreadable_retry_after_is_no_hint(junk: str | None) -> None:
    assert parse_retry_after(junk) is None


@pytest.mark.parametrize(("error", "attempt", "expected"), [
    (None, 0, Decision(Outcome.DELIVERED)),
    (SkipDelivery("opted out"), 0, Decision(Outcome.SKIPPED, "opted out")),
    (SentBefore("SM1"), 2, Decision(Outcome.SKIPPED, "SM1: sent by an earlier copy, cut off before it was logged")),
    (DeferDelivery("quiet hours", retry_after=400), 0, Decision(Outcome.WAITING, "quiet hours", 300)),
    (DeferDelivery("quiet hours", retry_after=400), 9, Decision(Outcome.WAITING, "quiet hours", 300)),
    (ClaimedElsewhere("in flight"), 0, Decision(Outcome.WAITING, "in flight", 5)),
    (RetryableDelivery("HTTP 500"), 0, Decision(Outcome.RETRY, "HTTP 500", 5)),
    (RetryableDelivery("HTTP 429", retry_after=1000), 1, Decision(Outcome.RETRY, "HTTP 429", 1800)),
    (RetryableDelivery("HTTP 500"), 4,
     Decision(Outcome.DEAD, "retries exhausted after 5 attempts: HTTP 500")),
    (PermanentDelivery("HTTP 400"), 0, Decision(Outcome.DEAD, "HTTP 400")),
])
def test_decide(error: Exception | None, attempt: int, expected: Decision) -> None:
    assert decide(error, DELAYS, attempt) == expected  # type: ignore[arg-type]


def test_without_tiers_a_deferral_is_a_failure_and_a_failure_is_dead() -> None:
    assert decide(DeferDelivery("busy"), (), 0) == Decision(Outcome.DEAD, "retries exhausted after 1 attempts: busy")
    assert decide(RetryableDelivery("down"), (), 0).outcome is Outcome.DEAD


@pytest.mark.parametrize(("outcome", "status"), [
    (Outcome.DELIVERED, DeliveryStatus.DELIVERED), (Outcome.RETRY, DeliveryStatus.RETRYING),
    (Outcome.WAITING, DeliveryStatus.WAITING), (Outcome.SKIPPED, DeliveryStatus.SKIPPED),
    (Outcome.DEAD, DeliveryStatus.DEAD),
])
def test_one_vocabulary_from_outcome_to_status(outcome: Outcome, status: DeliveryStatus) -> None:
    assert outcome.status is status
    assert outcome == outcome.value and status == status.value  # stored and served as plain strings
