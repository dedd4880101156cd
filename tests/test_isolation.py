"""The per-target gate on its own: the circuit breaker's states, the
concurrency cap with its bounded wait, and the token bucket."""

from __future__ import annotations

import asyncio

import pytest

from shipcast.isolation import SLOT_WAIT, Breaker, Gate, KeyedLock


@pytest.mark.parametrize(("results", "state", "changes"), [
    ([False] * 2, "closed", []),                        # too few requests to judge
    ([False] * 3, "open", ["opened"]),
    ([True, False, True, False], "open", ["opened"]),   # half of the last four failed
    ([True, True, True, False], "closed", []),
    ([False, False, True, True, True, True], "open", ["opened"]),  # once open, later results wait for the probe
])
def test_the_breaker_opens_when_enough_of_the_window_failed(results: list[bool], state: str,
                                                            changes: list[str]) -> None:
    breaker = Breaker(window=4, min_requests=3, failure_ratio=0.5, cooldown=10)
    seen = [change for ok in results if (change := breaker.record(ok, now=0.0))]
    assert breaker.state == state and seen == changes


def test_an_open_breaker_lets_one_probe_through_after_the_cooldown() -> None:
    breaker = Breaker(window=4, min_requests=2, failure_ratio=0.5, cooldown=10)
    breaker.record(False, 0.0)
    assert breaker.record(False, 1.0) == "opened"
    assert not breaker.allow(5.0)           # cooling down
    assert breaker.allow(11.0)              # the probe
    assert not breaker.allow(11.1)          # only one probe at a time
    assert breaker.record(False, 12.0) is None and breaker.state == "open"   # the probe failed: open again
    assert not breaker.allow(15.0) and breaker.allow(22.0)
    breaker.abandon(22.5)                   # a probe that ended without a verdict: open again
    assert breaker.state == "open" and not breaker.allow(23.0) and breaker.allow(32.5)
    assert breaker.record(True, 33.0) == "closed" and breaker.allow(33.1)
    assert list(breaker.results) == []      # a closed circuit starts counting afresh


async def test_the_cap_queues_a_fast_burst_and_defers_behind_a_slow_endpoint() -> None:
    gate = Gate(concurrency=2, rate=0, breaker=Breaker(20, 10, 0.5, 30))
    assert await gate.enter() is None and await gate.enter() is None
    waiter = asyncio.ensure_future(gate.enter())      # its turn comes soon: it waits
    await asyncio.sleep(0)
    gate.leave(True)
    assert await waiter is None                       # got the freed slot
    gate._started[0] -= 5.0                           # the oldest in flight has taken 5 s already
    verdict = await gate.enter()                      # a turn ~2.5 s away: deferred at once
    assert verdict is not None and verdict.reason == "busy" and "takes 5.0s" in verdict.detail
    gate._started[0] += 5.0
    verdict = await gate.enter()                      # looked quick, but nobody leaves: deferred after SLOT_WAIT
    assert verdict is not None and verdict.reason == "busy" and f"within {SLOT_WAIT:g}s" in verdict.detail
    assert gate._waiting == 0


async def test_an_open_circuit_answers_at_once_without_taking_a_slot() -> None:
    gate = Gate(concurrency=1, rate=0, breaker=Breaker(2, 2, 0.5, 30))
    for _ in range(2):
        assert await gate.enter() is None
        gate.leave(False)
    verdict = await gate.enter()
    assert verdict is not None and verdict.reason == "circuit_open" and "2 of the last 2" in verdict.detail
    assert not gate._slots.locked()


async def test_the_rate_limit_spends_a_second_of_tokens_then_defers() -> None:
    gate = Gate(concurrency=100, rate=5, breaker=Breaker(20, 10, 0.5, 30))
    waits = [gate._take_token(defer=True) for _ in range(11)]
    assert waits[:5] == [0.0] * 5                     # a full bucket
    assert all(0 < w <= 1.0 for w in waits[5:10])     # reserved: each waits its turn
    assert waits[10] is None                          # more than a second away: deferred
    assert gate._take_token(defer=False) is not None  # with nowhere to defer, it waits


async def test_keyed_locks_serialize_one_key_and_are_dropped_when_idle() -> None:
    locks = KeyedLock()
    order: list[str] = []

    async def hold(key: str, name: str) -> None:
        await locks.acquire(key)
        try:
            order.append(f"{name}+")
            await asyncio.sleep(0.01)
            order.append(f"{name}-")
        finally:
            locks.release(key)

    await asyncio.gather(hold("a", "1"), hold("a", "2"), hold("b", "3"))
    assert order.index("1-") < order.index("2+")      # one key: one at a time, in arrival order
    assert order.index("3+") < order.index("1-")      # another key is not held up
    assert locks._locks == {}
