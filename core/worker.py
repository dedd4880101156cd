"""The channel worker: consume a channel's queue, deliver per target, settle.

Messages are settled in one place (:meth:`ChannelWorker._handle`): a plugin
only says what happened, by returning or raising a delivery error, and the
worker turns that into an ack, a per-target retry copy or a dead letter. Copies
are confirmed and attempts recorded before the original is acked, so a crash
at any point redelivers rather than loses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from . import metrics
from .broker import ATTEMPT_HEADER, REASON_HEADER, TARGET_HEADER, Broker
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
from .topology import ChannelTopology, declare, declare_queue

log = logging.getLogger(__name__)

#: Set on a message replayed on purpose: deliver even if delivered before.
FORCE_HEADER = "x-shipcast-force"
#: The longest a channel's deliver() may take before it counts as a timeout.
DELIVER_GUARD = 120.0


@dataclass(frozen=True)
class Outcome:
    target: Target
    attempt: Attempt
    error: DeliveryError | None


def next_delay(delays: Sequence[int], attempt: int, retry_after: float | None) -> int | None:
    """The retry tier for a target that has already been through ``attempt``
    tiers, or ``None`` when retries are exhausted. A ``Retry-After`` moves the
    retry to the first later tier that waits at least that long."""
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
        self._consumer_tag: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        connection = self.services.broker.require()
        await self.channel.start()
        self._amqp = await connection.channel()
        await self._amqp.set_qos(prefetch_count=self.channel.prefetch)
        await declare(self._amqp, self.topology)
        queue = await declare_queue(self._amqp, self.topology.work)
        self._consumer_tag = await queue.consume(self._on_message)
        log.info("worker %s consuming %s (prefetch %d)", self.name, queue.name, self.channel.prefetch)

    async def stop(self) -> None:
        """Stop taking messages, finish those in flight, then close."""
        if self._amqp is not None and self._consumer_tag is not None:
            queue = await declare_queue(self._amqp, self.topology.work)
            try:
                await queue.cancel(self._consumer_tag)
            except Exception:  # the channel may already be gone; unacked messages are redelivered
                log.debug("cancel of %s consumer failed", self.name, exc_info=True)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=DELIVER_GUARD)
        if self._amqp is not None:
            await self._amqp.close()
            self._amqp = None
        await self.channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self._handle(message)
        except (StoreError, BrokerError) as exc:
            # Nothing was acked: the broker redelivers; back off so an outage is not a hot loop.
            log.warning("%s: cannot settle %s (%s); it will be redelivered", self.name, message.message_id, exc)
            await asyncio.sleep(1)
            await _quietly(message.nack(requeue=True))
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            event = parse_event(message.body)
        except InvalidEvent as exc:
            log.warning("%s: poison message %s: %s", self.name, message.message_id, exc)
            await self._dead_letter(message, message.body, {}, f"unparseable message: {exc}"[:1000])
            await message.ack()
            return

        headers = dict(message.headers or {})
        target_id = _text(headers.get(TARGET_HEADER))
        attempt = _int(headers.get(ATTEMPT_HEADER)) or 0
        partners = self.services.partners
        partner = await partners.get(event.partner_id)
        targets = self.channel.targets(event, partner)
        if target_id is not None:
            targets = [target for target in targets if target.id == target_id]
            if not targets:
                await self._dead_letter(message, message.body, headers,
                                        f"target {target_id!r} is no longer configured for {event.partner_id}")
                await message.ack()
                return
        targets = [t for t in targets if not partners.is_disabled(self.name, event.partner_id, t.id)]
        if self.channel.records_deliveries and targets and not headers.get(FORCE_HEADER) and (
            message.redelivered or target_id is not None
        ):
            done = await self.services.store.delivered_targets(event.event_id, self.name)
            targets = [target for target in targets if target.id not in done]

        outcomes = await asyncio.gather(*(self._deliver(event, message.body, t, attempt) for t in targets))
        for outcome in outcomes:
            if outcome.attempt.outcome == "retry":
                delay = next_delay(self.delays, attempt, getattr(outcome.error, "retry_after", None))
                assert delay is not None
                await self._publish_copy(message, {**headers, TARGET_HEADER: outcome.target.id,
                                                   ATTEMPT_HEADER: attempt + 1},
                                         self.topology.retry_queue(delay))
            elif outcome.attempt.outcome == "dead":
                await self._dead_letter(message, message.body, {**headers, TARGET_HEADER: outcome.target.id,
                                                                ATTEMPT_HEADER: attempt + 1,
                                                                "x-shipcast-status": outcome.attempt.status},
                                        outcome.attempt.error or "failed")
            if isinstance(outcome.error, PermanentDelivery) and outcome.error.disable_target:
                await self.services.store.disable_target(self.name, event.partner_id, outcome.target.id,
                                                         outcome.error.reason)
                partners.mark_disabled(self.name, event.partner_id, outcome.target.id)
        for outcome in outcomes:
            metrics.inc("shipcast_deliveries_total", channel=self.name, outcome=outcome.attempt.outcome)
        if self.channel.records_deliveries and outcomes:
            await self.services.recorder.submit(*(outcome.attempt for outcome in outcomes))
        await message.ack()

    async def _deliver(self, event: Event, body: bytes, target: Target, attempt: int) -> Outcome:
        started = time.perf_counter()
        error: DeliveryError | None = None
        result: Delivered | None = None
        try:
            result = await asyncio.wait_for(self.channel.deliver(event, body, target), DELIVER_GUARD)
        except DeliveryError as exc:
            error = exc
        except TimeoutError:
            error = RetryableDelivery(f"{self.name} delivery took longer than {DELIVER_GUARD:.0f}s")
        except Exception as exc:  # a bug in a channel must not lose the event
            log.exception("%s: unexpected error delivering %s to %s", self.name, event.event_id, target.id)
            error = RetryableDelivery(f"{self.name} channel error: {type(exc).__name__}: {exc}")
        latency = (time.perf_counter() - started) * 1000
        if error is None:
            outcome = "delivered"
        elif isinstance(error, RetryableDelivery) and next_delay(self.delays, attempt, error.retry_after) is not None:
            outcome = "retry"
        else:
            outcome = "dead"
        reason = None
        if error is not None:
            reason = error.reason
            if outcome == "dead" and isinstance(error, RetryableDelivery):
                reason = f"retries exhausted after {attempt + 1} attempts: {error.reason}"
        return Outcome(target, Attempt(
            event_id=event.event_id, channel=self.name, target=target.id, partner_id=event.partner_id,
            address=target.address, outcome=outcome, attempt=attempt + 1, latency_ms=latency,
            status=error.status if error is not None else (result.status if result else None),
            error=reason,
            response=error.response if error is not None else (result.response if result else None),
        ), error)

    async def _publish_copy(self, message: AbstractIncomingMessage, headers: dict[str, Any], queue: str) -> None:
        copy = aio_pika.Message(
            message.body, headers=headers, content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message.message_id,
            type=message.type, timestamp=message.timestamp, app_id="shipcast")
        await self.services.broker.publish(copy, queue, exchange="")

    async def _dead_letter(self, message: AbstractIncomingMessage, body: bytes, headers: dict[str, Any],
                           reason: str) -> None:
        headers = {**headers, REASON_HEADER: reason, "x-shipcast-channel": self.name,
                   "x-shipcast-failed-at": datetime.now(UTC).isoformat()}
        await self._publish_copy(message, {k: v for k, v in headers.items() if v is not None},
                                 self.topology.dead.name)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:
        log.debug("ignored error while settling", exc_info=True)


# -- the parking lot -------------------------------------------------------

@dataclass(frozen=True)
class DeadLetter:
    event_id: str | None
    target: str | None
    reason: str | None
    attempts: int | None
    failed_at: str | None
    body: bytes


async def list_dead(broker: Broker, topology: ChannelTopology, limit: int = 100) -> list[DeadLetter]:
    """Peek at the parking lot without removing anything."""
    channel = await broker.require().channel()
    try:
        queue = await declare_queue(channel, topology.dead)
        found: list[DeadLetter] = []
        while len(found) < limit:
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            headers = message.headers or {}
            found.append(DeadLetter(message.message_id, _text(headers.get(TARGET_HEADER)),
                                    _text(headers.get(REASON_HEADER)),
                                    _int(headers.get(ATTEMPT_HEADER)),
                                    _text(headers.get("x-shipcast-failed-at")), message.body))
    finally:
        await channel.close()  # closing without acks puts every message back
    return found


async def replay_dead(broker: Broker, topology: ChannelTopology, *, limit: int | None = None,
                      event_ids: set[str] | None = None) -> int:
    """Move parked messages back into the work queue with a fresh retry count.

    Each copy keeps its target, so only the target that failed is tried again.
    Returns how many were replayed.
    """
    channel = await broker.require().channel(publisher_confirms=True)
    replayed = 0
    try:
        queue = await declare_queue(channel, topology.dead)
        skipped = []
        while limit is None or replayed < limit:
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            if event_ids is not None and message.message_id not in event_ids:
                skipped.append(message)
                continue
            headers = {k: v for k, v in (message.headers or {}).items()
                       if k not in (ATTEMPT_HEADER, REASON_HEADER) and not k.startswith("x-shipcast-failed")
                       and k not in ("x-shipcast-status", "x-shipcast-channel")}
            copy = aio_pika.Message(message.body, headers=headers, content_type=message.content_type,
                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                    message_id=message.message_id, type=message.type, app_id="shipcast")
            await channel.default_exchange.publish(copy, topology.work.name, timeout=10)
            await message.ack()
            replayed += 1
    finally:
        await channel.close()
    return replayed
