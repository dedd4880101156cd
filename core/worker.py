"""The channel worker: consume a channel's queue, deliver per target, settle.

Messages are settled in one place (:meth:`ChannelWorker._handle`): a plugin
only says what happened, by returning or raising a delivery error, and the
worker turns that into an ack, a per-target retry copy or a dead letter.
Attempts are recorded and copies confirmed before the original is acked, so a
crash at any point redelivers rather than loses. While the store is
unreachable, messages are held (unacked) and retried, so consumption pauses at
the prefetch limit instead of spinning or parking good messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from . import metrics
from .batching import Batcher
from .broker import ATTEMPT_HEADER, REASON_HEADER, TARGET_HEADER, copy_message, header_int, header_text
from .channel import Channel, Delivered, Target
from .envelope import Event, parse_event
from .exceptions import (
    BrokerError,
    DeliveryError,
    InvalidEvent,
    PermanentDelivery,
    RetryableDelivery,
    StoreError,
)
from .services import Services
from .store import Attempt
from .topology import ChannelTopology, declare

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Set on a message replayed on purpose: deliver even if delivered before.
FORCE_HEADER = "x-shipcast-force"
#: How long stopping waits for deliveries in flight.
STOP_GRACE = 30.0


@dataclass(frozen=True)
class Outcome:
    target: Target
    attempt: Attempt
    error: DeliveryError | None
    #: The retry tier this target goes to, when it is retried.
    delay: int | None = None


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


class ChannelWorker:
    """Runs one channel: declares its topology, consumes, delivers, settles."""

    def __init__(self, channel: Channel, services: Services) -> None:
        self.channel = channel
        self.services = services
        self.name = channel.name
        self.delays = services.settings.retry_delays
        self.topology: ChannelTopology = type(channel).topology(self.delays)
        self._amqp: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._stopping = False
        # One query finds which of the events in flight were delivered already.
        self._delivered: Batcher[str, set[str]] = Batcher(
            lambda event_ids: services.store.delivered_for(self.name, event_ids))

    async def start(self) -> None:
        connection = self.services.broker.require()
        await self.channel.start()
        self._amqp = await connection.channel()
        await self._amqp.set_qos(prefetch_count=self.channel.prefetch)
        self._queue = await declare(self._amqp, self.topology)
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("worker %s consuming %s (prefetch %d)", self.name, self._queue.name, self.channel.prefetch)

    async def stop(self) -> None:
        """Stop taking messages, finish those in flight, then close. Messages
        still unacked when the channel closes go back to the queue."""
        self._stopping = True
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await asyncio.wait_for(self._queue.cancel(self._consumer_tag), 5)
            except Exception:  # the broker may be gone; unacked messages are redelivered
                log.debug("cancel of %s consumer failed", self.name, exc_info=True)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=STOP_GRACE)
        if self._amqp is not None:
            try:
                await asyncio.wait_for(self._amqp.close(), 5)
            except Exception:
                log.debug("close of %s channel failed", self.name, exc_info=True)
            self._amqp = None
        await self._delivered.close()
        await self.channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self._handle(message)
        except (StoreError, BrokerError) as exc:
            # Not settled: the broker has it back once this channel closes or we nack.
            log.warning("%s: cannot settle %s (%s); it will be redelivered", self.name, message.message_id, exc)
            await _quietly(message.nack(requeue=True))
        except Exception as exc:  # a bug (in a plugin's targets(), say) must not wedge the consumer
            log.exception("%s: cannot handle %s", self.name, message.message_id)
            try:
                await self._dead_letter(message, dict(message.headers or {}),
                                        f"internal error: {type(exc).__name__}: {exc}"[:1000])
                await message.ack()
            except Exception:
                await _quietly(message.nack(requeue=True))
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _persist(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run a store operation, waiting out an outage with the message held."""
        delay = 0.25
        while True:
            try:
                return await action()
            except StoreError as exc:
                if self._stopping:
                    raise
                log.warning("%s: store unavailable (%s); holding messages, retrying in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            event = parse_event(message.body)
        except InvalidEvent as exc:
            log.warning("%s: poison message %s: %s", self.name, message.message_id, exc)
            await self._dead_letter(message, {}, f"unparseable message: {exc}"[:1000])
            await message.ack()
            return

        headers = dict(message.headers or {})
        target_id = header_text(headers.get(TARGET_HEADER))
        attempt = header_int(headers.get(ATTEMPT_HEADER)) or 0
        partners = self.services.partners
        partner = await self._persist(lambda: partners.get(event.partner_id))
        targets = self.channel.targets(event, partner)
        if target_id is not None:
            targets = [target for target in targets if target.id == target_id]
            if not targets:
                await self._dead_letter(message, headers,
                                        f"target {target_id!r} is no longer configured for {event.partner_id}")
                await message.ack()
                return
        if not targets:
            self._skipped("no_target")
        kept = [t for t in targets if not partners.is_disabled(self.name, event.partner_id, t.id)]
        self._skipped("disabled", len(targets) - len(kept))
        targets = kept
        if self.channel.records_deliveries and targets and not headers.get(FORCE_HEADER):
            # At-least-once delivery meets idempotent consumers here: a target
            # already delivered for this event is never sent to again.
            [done] = await self._persist(lambda: self._delivered.submit(event.event_id))
            kept = [target for target in targets if target.id not in (done or ())]
            self._skipped("delivered", len(targets) - len(kept))
            targets = kept

        # A StoreError from a channel means the store is down, not the target:
        # hold the message and try again rather than spend a retry tier.
        outcomes = await self._persist(lambda: self._deliver_all(event, message.body, targets, attempt))
        if self.channel.records_deliveries and outcomes:
            await self._persist(lambda: self.services.recorder.submit(*(o.attempt for o in outcomes)))
        for outcome in outcomes:
            metrics.inc("shipcast_deliveries_total", channel=self.name, outcome=outcome.attempt.outcome)
            if isinstance(outcome.error, PermanentDelivery) and outcome.error.disable_target:
                await self._persist(lambda: self.services.store.disable_target(
                    self.name, event.partner_id, outcome.target.id, outcome.attempt.error or ""))
                partners.mark_disabled(self.name, event.partner_id, outcome.target.id)
            copy_headers = {**headers, TARGET_HEADER: outcome.target.id, ATTEMPT_HEADER: attempt + 1}
            copy_headers.pop(FORCE_HEADER, None)
            if outcome.delay is not None:
                await self.services.broker.publish(copy_message(message, copy_headers),
                                                   self.topology.retry_queue(outcome.delay), exchange="")
            elif outcome.attempt.outcome == "dead":
                await self._dead_letter(message, {**copy_headers, "x-shipcast-status": outcome.attempt.status},
                                        outcome.attempt.error or "failed")
        await message.ack()

    def _skipped(self, reason: str, count: int = 1) -> None:
        if count:
            metrics.inc("shipcast_targets_skipped_total", count, channel=self.name, reason=reason)

    async def _deliver_all(self, event: Event, body: bytes, targets: Sequence[Target], attempt: int) -> list[Outcome]:
        if len(targets) == 1:  # the common case, without a task per target
            return [await self._deliver(event, body, targets[0], attempt)]
        return list(await asyncio.gather(*(self._deliver(event, body, t, attempt) for t in targets)))

    async def _deliver(self, event: Event, body: bytes, target: Target, attempt: int) -> Outcome:
        started = time.perf_counter()
        error: DeliveryError | None = None
        result: Delivered | None = None
        try:
            async with asyncio.timeout(self.channel.deliver_timeout):
                result = await self.channel.deliver(event, body, target)
        except DeliveryError as exc:
            error = exc
        except StoreError:
            raise
        except TimeoutError:
            error = RetryableDelivery(f"{self.name} delivery took longer than {self.channel.deliver_timeout:g}s")
        except Exception as exc:  # a bug in a channel must not lose the event
            log.exception("%s: unexpected error delivering %s to %s", self.name, event.event_id, target.id)
            error = RetryableDelivery(f"{self.name} channel error: {type(exc).__name__}: {exc}")
        latency = (time.perf_counter() - started) * 1000
        delay = None
        if error is None:
            outcome, reason = "delivered", None
        elif isinstance(error, RetryableDelivery) and (
                delay := next_delay(self.delays, attempt, error.retry_after)) is not None:
            outcome, reason = "retry", error.reason
        elif isinstance(error, RetryableDelivery):
            outcome, reason = "dead", f"retries exhausted after {attempt + 1} attempts: {error.reason}"
        else:
            outcome, reason = "dead", error.reason
        return Outcome(target, Attempt(
            event_id=event.event_id, channel=self.name, target=target.id, partner_id=event.partner_id,
            address=target.address, outcome=outcome, attempt=attempt + 1, latency_ms=latency,
            status=error.status if error is not None else (result.status if result else None),
            error=reason,
            response=error.response if error is not None else (result.response if result else None),
        ), error, delay)

    async def _dead_letter(self, message: AbstractIncomingMessage, headers: dict[str, Any], reason: str) -> None:
        headers = {**headers, REASON_HEADER: reason, "x-shipcast-channel": self.name,
                   "x-shipcast-failed-at": datetime.now(UTC).isoformat()}
        await self.services.broker.publish(copy_message(message, {k: v for k, v in headers.items() if v is not None}),
                                           self.topology.dead.name, exchange="")


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        log.debug("ignored error while settling", exc_info=True)
