"""Per-target isolation: one slow or failing target must not hurt the others.

Each target a worker delivers to has a :class:`Gate`: a cap on deliveries in
flight, a token-bucket rate limit and a circuit breaker. A delivery the gate
cannot admit soon is deferred to a retry tier instead of holding one of the
worker's prefetch slots; while the circuit is open, deliveries go to the retry
tiers without a connection attempt, each to the first tier that outlasts the
cool-down (as a ``Retry-After`` would send it: a shorter one would only bring
it back to the open circuit), until one probe after the cool-down closes it
again. Gates live in the worker process (each process judges the
targets it sees); the processes of one ``shipcast run`` each take an equal
share of a target's concurrency and rate (``Services.process_share``; a
concurrency below the number of processes is one in each).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

from shipcast.plugin.channel import Target
from shipcast.settings import Settings

#: Seconds a delivery may wait for a free slot of its target before it is
#: deferred to a retry tier; and how recently the target must have answered
#: for a delivery to wait at all.
SLOT_WAIT = 1.0
#: Seconds a target not heard from yet is trusted to be answering.
FIRST_ANSWER = 1.0
#: The concurrency a target starts with; each success adds one, up to its cap.
START_LIMIT = 64


class Breaker:
    """A circuit breaker over the last ``window`` results of one target."""

    def __init__(self, window: int, min_requests: int, failure_ratio: float, cooldown: float) -> None:
        self.results: deque[bool] = deque(maxlen=window)
        self.min_requests = min_requests
        self.failure_ratio = failure_ratio
        self.cooldown = cooldown
        self.state = "closed"  # closed | open | half_open
        self.opened_at = 0.0

    def allow(self, now: float) -> bool:
        """Whether a request may go out now; the first after the cool-down is the probe."""
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.cooldown:
            self.state = "half_open"
            return True
        return False

    def cooling(self, now: float) -> float | None:
        """Seconds until the open circuit lets a probe through; ``None`` when
        it is not cooling down (closed, or a probe may go or is out)."""
        if self.state == "open" and now - self.opened_at < self.cooldown:
            return self.opened_at + self.cooldown - now
        return None

    def holding_off(self, now: float) -> float | None:
        """Seconds before a request is worth trying: what is left of the
        cool-down, or, while the probe is out, a whole one (a failed probe
        opens the circuit again); ``None`` when one may go now."""
        return self.cooldown if self.state == "half_open" else self.cooling(now)

    def abandon(self, now: float) -> None:
        """A probe that ended without a verdict on the target (cancelled, a
        store outage, the rate limit): open again, so another probe follows."""
        if self.state == "half_open":
            self.state, self.opened_at = "open", now

    def record(self, ok: bool, now: float) -> str | None:
        """Count a result; returns ``"opened"`` or ``"closed"`` when the state changes."""
        if self.state == "half_open":
            if ok:
                self.state = "closed"
                self.results.clear()
                return "closed"
            self.state, self.opened_at = "open", now
            return None
        if self.state == "open":
            return None  # a request started before the circuit opened
        self.results.append(ok)
        if ok:  # a success never opens the circuit, whatever the window held before it
            return None
        failures = self.results.count(False)
        if len(self.results) >= self.min_requests and failures >= self.failure_ratio * len(self.results):
            self.state, self.opened_at = "open", now
            return "opened"
        return None

    def describe(self) -> str:
        return f"{self.results.count(False)} of the last {len(self.results)} requests failed"


@dataclass
class Verdict:
    """Why a delivery may not go now: ``circuit_open`` (counts as a failed
    attempt), or ``busy`` / ``rate_limited`` (deferred, not an attempt)."""

    reason: str
    detail: str
    #: Seconds before which trying again is pointless: what is left of an open circuit's cool-down.
    retry_after: float | None = None


class Gate:
    """The concurrency limit, rate limit and breaker of one target.

    The concurrency limit adapts, as TCP's window does: it starts at
    :data:`START_LIMIT`, grows by one with each success up to the target's
    ``concurrency``, and halves with each failure. A healthy endpoint, fast or
    slow, soon gets all the concurrency it may have; one that hangs from the
    start never holds more than a few slots.
    """

    def __init__(self, concurrency: int, rate: float, breaker: Breaker) -> None:
        self.concurrency = concurrency
        self.rate = rate
        self.breaker = breaker
        self.limit = float(min(START_LIMIT, concurrency))
        self.inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tokens = float(max(rate, 1.0))
        self._refilled = time.monotonic()
        #: Start times of deliveries in flight, oldest first (near enough: the
        #: oldest is dropped when any finishes), and when the last one finished.
        self._started: deque[float] = deque()
        self._finished = float("-inf")

    def draining(self, now: float) -> bool:
        """Whether the target is answering: one of its deliveries finished
        within the last :data:`SLOT_WAIT` seconds, or the oldest in flight began
        under :data:`FIRST_ANSWER` seconds ago (a burst to a target not heard from yet)."""
        return now - self._finished <= SLOT_WAIT or (
            bool(self._started) and now - self._started[0] <= FIRST_ANSWER)

    async def enter(self, *, defer: bool = True) -> Verdict | None:
        """Take a slot and a token, or say why not. When every slot is taken, a
        delivery waits for one (at most :data:`SLOT_WAIT` seconds) only while
        the target is answering: a fast endpoint's burst queues here, a
        hanging one's is deferred at once and holds no more prefetch slots
        than its limit. Without ``defer`` (no retry tier to defer to) it
        waits for a slot as long as it takes. An open circuit, or one whose
        probe is out, refuses at once either way."""
        breaker = self.breaker
        now = time.monotonic()
        if (wait := breaker.holding_off(now)) is not None:  # open, or its probe is out
            return _circuit_open(breaker, wait)
        if self.inflight < int(self.limit) and not self._waiters:
            self.inflight += 1  # a free slot: no wait, no timer
        else:
            if defer and not self.draining(now):
                return Verdict("busy", f"{self.inflight} deliveries in flight and none answered "
                                       f"in the last {SLOT_WAIT:g}s")
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(SLOT_WAIT if defer else None):
                    await waiter  # resolved by _wake, which counts the slot as taken
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # the slot came just as it gave up: pass it on
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    return Verdict("busy", f"no free slot within {SLOT_WAIT:g}s "
                                           f"({self.inflight} deliveries in flight)")
                raise
        now = time.monotonic()
        if not breaker.allow(now):
            self._release()
            return _circuit_open(breaker, breaker.holding_off(now))
        wait = self._take_token(defer)
        if wait is None:
            self._release()
            breaker.abandon(time.monotonic())
            return Verdict("rate_limited", f"over {self.rate:g} deliveries per second")
        if wait > 0:
            try:
                await asyncio.sleep(wait)
            except BaseException:
                self._release()
                breaker.abandon(time.monotonic())
                raise
        self._started.append(time.monotonic())
        return None

    def leave(self, ok: bool | None) -> str | None:
        """Give the slot back and count the result (``None``: not the target's fault)."""
        now = self._finished = time.monotonic()
        if self._started:
            self._started.popleft()
        if ok:
            self.limit = min(float(self.concurrency), self.limit + 1)
        elif ok is False:
            self.limit = max(1.0, self.limit / 2)
        self._release()
        if ok is None:
            self.breaker.abandon(now)
            return None
        return self.breaker.record(ok, now)

    def _release(self) -> None:
        self.inflight -= 1
        self._wake()

    def _wake(self) -> None:
        """Hand free slots to waiters, oldest first."""
        while self._waiters and self.inflight < int(self.limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.inflight += 1
                waiter.set_result(None)

    def _take_token(self, defer: bool) -> float | None:
        """Seconds to wait for a token (0: one is here), or ``None`` when the
        wait would be over a second. Tokens are reserved, so waiters queue fairly."""
        if not self.rate:
            return 0.0
        now = time.monotonic()
        self._tokens = min(max(self.rate, 1.0), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if defer and self._tokens - 1 < -self.rate:
            return None
        self._tokens -= 1
        return max(0.0, -self._tokens / self.rate)


def _circuit_open(breaker: Breaker, wait: float | None) -> Verdict:
    probing = "; a probe is out" if breaker.state == "half_open" else ""
    return Verdict("circuit_open", f"circuit open: {breaker.describe()}{probing}; not attempted", wait)


class Gates:
    """Every target's gate in one worker, made on first use."""

    def __init__(self, settings: Settings, share: int = 1) -> None:
        """:param share: how many processes of one ``shipcast run`` share each
            target's limits: this one keeps its part of them."""
        self.settings = settings
        self.share = share
        self._gates: dict[tuple[str, str], Gate] = {}

    def get(self, partner_id: str, target: Target) -> Gate:
        key = (partner_id, target.id)
        # Several processes of one `shipcast run` each keep their share of the limits.
        share = self.share
        concurrency = -(-(target.concurrency or self.settings.endpoint_concurrency) // share)
        rate = (self.settings.endpoint_rate_limit if target.rate_limit is None else target.rate_limit) / share
        gate = self._gates.get(key)
        if gate is None:
            s = self.settings
            gate = self._gates[key] = Gate(concurrency, rate, Breaker(
                s.breaker_window, s.breaker_min_requests, s.breaker_failure_ratio, s.breaker_cooldown))
        elif gate.concurrency != concurrency or gate.rate != rate:  # the endpoint was changed
            gate.concurrency, gate.rate = concurrency, rate
            gate.limit = min(gate.limit, float(concurrency))
        return gate


class KeyedLock:
    """One FIFO lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[object, tuple[asyncio.Lock, int]] = {}

    async def acquire(self, key: object) -> None:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._drop(key)
            raise

    def release(self, key: object) -> None:
        self._locks[key][0].release()
        self._drop(key)

    def _drop(self, key: object) -> None:
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)
