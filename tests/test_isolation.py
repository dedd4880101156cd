"""The per-target gate on its own: the circuit breaker's states, the
concurrency cap with its bounded wait, and the token bucket."""

from __future__ import annotations

import asyncio

import pytest

from shipcast.delivery.isolation import SLOT_WAIT, START_LIMIT, Breaker, Gate, KeyedLock


@pytest.mark.parametrize(("results", "state", "changes"), [
    ([False] * 2, "closed", []),                        # too few requests to judge
    ([False] * 3, "open", ["opened"]),
    ([True, False, True, False], "open", ["opened"]),   # half of the last four failed
    ([True, True, True, False], "closed", []),
    ([False, False, False, True, True, True], "open", ["opened"]),  # once open, later results wait for the probe
    # Failures that were too few to judge, then successes: a success never opens the circuit.
    ([False, False, True], "closed", []),
])
def test_the_breaker_opens_when_enough_of_the_window_failed(results: list[bool], state: str,
                                                            changes: list[str]) -> None:
    breaker = Breaker(window=4, min_requests=3, failure_ratio=0.5, cooldown=10)
    seen = [change for ok in results if (change := breaker.record(ok, now=0.0))]
    assert breaker.state == state and seen == changes


def test_a_success_never_opens_the_circuit() -> None:
    """Six failures while too few to judge, then four successes in a window of
    ten: the successes close nothing and open nothing."""
    breaker = Breaker(window=10, min_requests=10, failure_ratio=0.5, cooldown=30)
    changes = [breaker.record(ok, 0.0) for ok in [False] * 6 + [True] * 4]
    assert changes == [None] * 10 and breaker.state == "closed"
    assert breaker.record(False, 1.0) == "opened"  # the next failure, with six of ten failed, does


def test_an_open_breaker_lets_one_probe_through_after_the_cooldown() -> None:
    breaker = Breaker(window=4, min_requests=2, failure_ratio=0.5, cooldown=10)
    breaker.record(False, 0.0)
    assert breaker.record(False, 1.0) == "opened"
    assert not breaker.allow(5.0)           # cooling down
    assert breaker.cooling(5.0) == 6.0      # for another 6 s
    assert breaker.allow(11.0)              # the probe
    assert not breaker.allow(11.1)          # only one probe at a time
    assert breaker.cooling(11.1) is None    # no cool-down left: the probe's verdict is awaited
    assert breaker.record(False, 12.0) is None and breaker.state == "open"   # the probe failed: open again
    assert not breaker.allow(15.0) and breaker.allow(22.0)
    breaker.abandon(22.5)                   # a probe that ended without a verdict: open again
    assert breaker.state == "open" and not breaker.allow(23.0) and breaker.allow(32.5)
    assert breaker.record(True, 33.0) == "closed" and breaker.allow(33.1)
    assert list(breaker.results) == []      # a closed circuit starts counting afresh


async def test_the_cap_queues_a_burst_while_the_target_answers_and_defers_when_it_hangs() -> None:
    gate = Gate(concurrency=2, rate=0, breaker=Breaker(20, 10, 0.5, 30))
    assert await gate.enter() is None and await gate.enter() is None
    waiter = asyncio.ensure_future(gate.enter())      # a target just started on: it waits
    await asyncio.sleep(0)
    gate.leave(True)
    assert await waiter is None                       # got the freed slot
    verdict = await gate.enter()                      # answering, but nobody leaves: deferred after SLOT_WAIT
    assert verdict is not None and verdict.reason == "busy" and f"within {SLOT_WAIT:g}s" in verdict.detail
    gate._finished -= 5.0                             # nothing answered for 5 s, the oldest began 5 s ago
    gate._started[0] -= 5.0
    verdict = await gate.enter()                      # hanging: deferred at once
    assert verdict is not None and verdict.reason == "busy" and "none answered" in verdict.detail
    assert not gate._waiters and gate.inflight == 2


async def test_the_limit_grows_with_successes_and_halves_with_failures() -> None:
    gate = Gate(concurrency=START_LIMIT * 2, rate=0, breaker=Breaker(100, 100, 0.5, 30))
    assert gate.limit == START_LIMIT
    for _ in range(START_LIMIT):
        assert await gate.enter() is None
    waiter = asyncio.ensure_future(gate.enter())      # one more waits for the limit
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.leave(True)                                  # one success: the limit grows, and a slot frees
    assert await waiter is None and gate.limit == START_LIMIT + 1 and gate.inflight == START_LIMIT
    more = [asyncio.ensure_future(gate.enter()) for _ in range(2)]
    await asyncio.sleep(0)
    assert await more[0] is None and not more[1].done()   # the grown limit let one more in
    gate.leave(False)                                 # a failure halves it
    assert gate.limit == (START_LIMIT + 1) / 2 and not more[1].done()
    for _ in range(gate.inflight):
        gate.leave(True)
    await more[1]                                     # let in once in flight fell under the limit
    assert gate.limit == (START_LIMIT + 1) / 2 + START_LIMIT and gate.inflight == 1


async def test_an_open_circuit_answers_at_once_without_taking_a_slot() -> None:
    gate = Gate(concurrency=1, rate=0, breaker=Breaker(2, 2, 0.5, 30))
    for _ in range(2):
        assert await gate.enter() is None
        gate.leave(False)
    verdict = await gate.enter()
    assert verdict is not None and verdict.reason == "circuit_open" and "2 of the last 2" in verdict.detail
    assert gate.inflight == 0
    assert verdict.retry_after is not None and 29 < verdict.retry_after <= 30  # what is left of the cool-down


async def test_while_the_probe_is_out_the_circuit_stays_open_without_waiting_for_a_slot() -> None:
    gate = Gate(concurrency=1, rate=0, breaker=Breaker(2, 2, 0.5, 30))
    for _ in range(2):
        assert await gate.enter() is None
        gate.leave(False)
    gate.breaker.opened_at -= 30                      # the cool-down is over
    assert await gate.enter() is None and gate.breaker.state == "half_open"   # the probe, in the one slot
    # The target answered under a second ago, so a slot would be waited for; the circuit says no first.
    verdict = await gate.enter()
    assert verdict is not None and verdict.reason == "circuit_open" and "a probe is out" in verdict.detail
    assert verdict.retry_after == 30 and gate.inflight == 1 and not gate._waiters   # a failed probe: 30 s more
    gate.leave(True)                                  # the probe succeeded: closed, and the next goes out
    assert gate.breaker.state == "closed" and await gate.enter() is None


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
