"""The channel worker: consume a channel's queue, dispatch each event to its
targets, attempt each, and settle.

A plugin only says what happened, by returning or raising a delivery error;
:func:`shipcast.delivery.retry.decide` turns that into an outcome, and the
message is settled once, by :func:`shipcast.delivery.settle.settle`: an ack
after the per-target retry copies and dead letters are confirmed, or a nack.
Attempts are recorded and copies confirmed before the original is acked, so a
crash at any point redelivers rather than loses. While the store is
unreachable, messages are held (unacked) and retried, so consumption pauses at
the prefetch limit instead of spinning or parking good messages.

When tracing is on, each message's handling is a span continuing the trace
its headers carry (its publish's), and each target's attempt a child of it,
current while the channel delivers (a webhook carries its ``traceparent``).
A message that carries none (an outside publisher's) starts a trace, and the
copies made of it carry that: its retries are in the same trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shipcast import metrics, tracing
from shipcast.amqp import headers as h
from shipcast.amqp.acks import Acks
from shipcast.amqp.connection import Consumer
from shipcast.amqp.topology import ChannelTopology
from shipcast.batching import Batcher
from shipcast.delivery.health import EndpointHealth
from shipcast.delivery.isolation import Gates, KeyedLock
from shipcast.delivery.retry import Decision, decide, deferral
from shipcast.delivery.settle import Copy, Settlement, reraise_if_cancelled, requeue, settle
from shipcast.exceptions import (
    BrokerError,
    ClaimedElsewhere,
    ConfigError,
    DeliveryError,
    InvalidEvent,
    PermanentDelivery,
    RetryableDelivery,
    SkipDelivery,
    StoreError,
)
from shipcast.model.envelope import Event, parse_event
from shipcast.model.event_types import EventTypeRegistry
from shipcast.model.outcomes import Outcome
from shipcast.plugin.channel import Channel, Delivered, Target
from shipcast.plugin.context import ChannelContext
from shipcast.store import Attempt

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long stopping waits for deliveries in flight.
STOP_GRACE = 30.0
#: How long stopping then waits for the deliveries it cancelled to end.
CANCEL_GRACE = 5.0
#: Seconds the count of a work queue's consumers may take (see _say_if_order_is_per_process).
LOOK_TIMEOUT = 5.0
#: Seconds a message waits before it goes back, when the channel is misconfigured.
MISCONFIGURED_HOLD = 5.0


class ParsedEvents:
    """The events a process's channel workers parsed last, by body: each
    channel's queue has its own copy of an event, and the workers of one
    process take their copies at about the same time, so the second and
    later find the first's :class:`Event` (immutable) instead of validating
    the same bytes again."""

    #: Bodies kept: enough for every prefetched message of every channel; and
    #: the largest kept (events are about a kilobyte; a larger one is parsed each time).
    SIZE = 2048
    LARGEST = 8192

    def __init__(self, event_types: EventTypeRegistry) -> None:
        self.event_types = event_types
        self._events: dict[bytes, Event] = {}

    def parse(self, body: bytes) -> Event:
        """:raises InvalidEvent: as :func:`parse_event` (a body that is no event is not kept)."""
        if len(body) > self.LARGEST:
            return parse_event(body, self.event_types)
        event = self._events.get(body)
        if event is None:
            event = self._events[body] = parse_event(body, self.event_types)
            if len(self._events) > self.SIZE:
                del self._events[next(iter(self._events))]
        return event


class WorkerContext(ChannelContext, Protocol):
    """What a worker uses besides what its channel does: endpoint health, the
    events its process's workers parsed last, and how many processes share
    each target's limits."""

    @property
    def health(self) -> EndpointHealth: ...

    @property
    def parsed(self) -> ParsedEvents: ...

    @property
    def process_share(self) -> int: ...


@dataclass(frozen=True)
class Result:
    """What one target's delivery came to."""

    target: Target
    attempt: Attempt
    error: DeliveryError | None
    #: The retry tier this target goes to, when it is retried or deferred.
    delay: int | None = None
    #: Nothing (more) to log: ordered targets log before the next event goes,
    #: and an unordered target's deferral is not logged.
    recorded: bool = False
    #: Whether a dead outcome goes to the parking lot (not for a target disabled before).
    parked: bool = True


def event_of(message: AbstractIncomingMessage, events: ParsedEvents) -> Event:
    """The event a message carries.

    :raises InvalidEvent: its body is no event, or its content type says it
        carries something else. shipcast publishes ``application/json``; a
        message without a content type (a bare AMQP client's) is judged by its body.
    """
    content_type = message.content_type
    if content_type and content_type.partition(";")[0].strip().lower() != "application/json":
        raise InvalidEvent([{"loc": [], "msg": f"content type {content_type!r} is not application/json",
                             "type": "content_type"}])
    return events.parse(message.body)


class ChannelWorker:
    """Runs one channel: declares its topology, consumes, delivers, settles."""

    def __init__(self, channel: Channel, services: WorkerContext) -> None:
        self.channel = channel
        self.services = services
        self.name = channel.name
        self.event_types = services.registry.event_types
        self.delays = services.settings.retry_delays
        self.topology: ChannelTopology = type(channel).topology(self.delays)
        self._consumer: Consumer | None = None
        self._acks = Acks()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._stopping = False
        # One query finds which of the events in flight were delivered already.
        self._delivered: Batcher[str, set[str]] = Batcher(
            lambda event_ids: services.store.delivered_for(self.name, event_ids))
        self.gates = Gates(services.settings, services.process_share)
        self._order_locks = KeyedLock()
        self._event_locks = KeyedLock()
        #: Ordered targets looked at for other consumers of the queue, and the looks under way.
        self._ordered_seen: set[tuple[str, str]] = set()
        self._looking: set[asyncio.Task[None]] = set()
        self._span = f"process {self.topology.work.name}"
        self._attempt_span = f"deliver {self.name}"

    async def start(self) -> None:
        self.services.broker.require()
        await self.channel.start()
        self._consumer = await self.services.broker.consume(self.topology, self.channel.prefetch, self._on_message)
        log.info("worker %s consuming %s (prefetch %d)", self.name, self.topology.work.name, self.channel.prefetch)

    async def stop(self) -> None:
        """Stop taking messages, finish those in flight, then close. Messages
        still unacked when the channel closes go back to the queue."""
        self._stopping = True
        for looking in self._looking:
            looking.cancel()
        if self._looking:
            await asyncio.wait(set(self._looking), timeout=CANCEL_GRACE)
        if self._consumer is not None:
            await self._consumer.cancel()
        if self._inflight:  # complete: a message handed over from now on goes straight back (_on_message)
            await asyncio.wait(set(self._inflight), timeout=STOP_GRACE)
        if self._inflight:  # past the grace: cancelled before the clients and the store close under them
            log.warning("%s: %d deliveries still in flight after %.0fs; cancelling them (redelivered)",
                        self.name, len(self._inflight), STOP_GRACE)
            for task in self._inflight:
                task.cancel()
            await asyncio.wait(set(self._inflight), timeout=CANCEL_GRACE)
        if self._consumer is not None:
            await self._consumer.close()
            self._consumer = None
        await self._delivered.close()
        await self.channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            # Prefetched, but handed to us after stop() began: back to the queue unstarted.
            await settle(message, requeue(), self._publish, self._acks)
            return
        # aiormq runs this callback in a task its channel owns, and cancels it
        # when the channel closes (the connection lost, say). A delivery runs in
        # a task of its own instead, to the end: one whose request went out is
        # recorded, its ack then fails, and the copy the broker hands out again
        # finds it delivered rather than sending it twice.
        task = asyncio.get_running_loop().create_task(self._process(message))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: a delivery failed", self.name, exc_info=task.exception())

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            settlement = await self._handle(message)
        except (StoreError, BrokerError) as exc:
            # Not settled: the broker has it back once this channel closes or we nack.
            log.warning("%s: cannot settle %s (%s); it will be redelivered", self.name, message.message_id, exc)
            settlement = requeue()
        except ConfigError as exc:
            # Misconfigured (a secret under another key): hold the message a while
            # rather than park every event; consumption pauses at the prefetch.
            log.error("%s: cannot deliver %s: %s; holding it", self.name, message.message_id, exc)
            settlement = requeue(hold=MISCONFIGURED_HOLD)
        except Exception as exc:  # a bug (in a plugin's targets(), say) must not wedge the consumer
            log.exception("%s: cannot handle %s", self.name, message.message_id)
            settlement = self._parked(dict(message.headers or {}),
                                      f"internal error: {type(exc).__name__}: {exc}"[:1000])
        await settle(message, settlement, self._publish, self._acks)

    async def _publish(self, copy: aio_pika.Message, queue: str) -> None:
        await self.services.broker.publish(copy, queue, exchange="")

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

    async def _handle(self, message: AbstractIncomingMessage) -> Settlement:
        """Deliver the message's event and say how to settle it."""
        try:
            event = event_of(message, self.services.parsed)
        except InvalidEvent as exc:
            log.warning("%s: poison message %s: %s", self.name, message.message_id, exc)
            return self._parked({}, f"unparseable message: {exc}"[:1000])

        headers = message.headers or {}
        parent = h.trace_context(headers)
        with tracing.span(self._span, "consumer", parent=parent) as span:
            if span is not None:
                routing = h.Routing.of(dict(headers))
                tracing.describe(span, event, {
                    "messaging.system": "rabbitmq", "messaging.operation.type": "process",
                    "messaging.destination.name": self.topology.work.name, "messaging.message.id": event.event_id,
                    tracing.CHANNEL: self.name, tracing.TARGET: routing.target, "shipcast.retry_tier": routing.attempt})
            # Copies of one event in this process take turns (a redelivery, an OMS posting
            # again, a retry tier's copy): the second finds the first's delivery logged.
            await self._event_locks.acquire(event.event_id)
            try:
                return await self._handle_event(event, message, span, began=tracing.began(span, parent))
            finally:
                self._event_locks.release(event.event_id)

    async def _handle_event(self, event: Event, message: AbstractIncomingMessage,
                            span: tracing.Span | None, *, began: bool = False) -> Settlement:
        """:param began: ``span`` started a trace (the message carried no
            context that could be read): the copies made here carry its context,
            so each retry of the event joins that one trace."""
        headers = dict(message.headers or {})
        if began:
            headers = h.traced(headers)
        routing = h.Routing.of(headers)
        target_id, attempt = routing.target, routing.attempt
        partners = self.services.partners
        partner = await self._persist(lambda: partners.get(event.partner_id))
        found = self.channel.target(partner, target_id) \
            if target_id is not None and routing.test and partner is not None else None
        if found is not None:  # a test send or resend: whatever the target's event filter
            targets = [found]
        elif target_id is not None:  # a copy for one target: the others were resolved when it was first sent
            again = self.channel.target_for(event, partner, target_id)
            targets = [again] if again is not None else []
        else:
            targets = self.channel.targets(event, partner)
        if target_id is not None:
            if not targets:
                reason = f"target {target_id!r} is no longer configured for {event.partner_id}"
                tracing.failed(span, reason)
                if self.channel.records_deliveries:  # the log must not show it retrying for ever
                    gone = self._attempt_record(event, Target(target_id, target_id), attempt, Outcome.DEAD, 0.0,
                                                reason=reason)
                    await self._persist(lambda: self.services.recorder.submit(gone))
                return self._parked(headers, reason)
        if not targets:
            self._skipped("no_target")
        if self.channel.records_deliveries and targets and not routing.force:
            # At-least-once delivery meets idempotent consumers here: a target
            # already delivered for this event is never sent to again.
            [done] = await self._persist(lambda: self._delivered.submit(event.event_id))
            kept = [target for target in targets if target.id not in (done or ())]
            self._skipped("delivered", len(targets) - len(kept))
            targets = kept
        disabled = [t for t in targets if partners.is_disabled(self.name, event.partner_id, t.id)]
        if disabled:
            self._skipped("disabled", len(disabled))
            targets = [t for t in targets if not partners.is_disabled(self.name, event.partner_id, t.id)]
        if span is not None:
            span.set_attribute(tracing.TARGETS, len(targets))

        # A StoreError from a channel means the store is down, not the target:
        # hold the message and try again rather than spend a retry tier.
        outcomes = await self._persist(lambda: self._deliver_all(event, message.body, targets, attempt))
        # A disabled target is not attempted, but its failure is logged, so
        # "recover what failed since T" finds it once the target is enabled again.
        outcomes += [Result(t, self._attempt_record(event, t, attempt, Outcome.DEAD, 0.0,
                                                    reason="target disabled; not attempted"), None, parked=False)
                     for t in disabled if self.channel.records_deliveries]
        unrecorded = [o.attempt for o in outcomes if not o.recorded]
        if self.channel.records_deliveries and unrecorded:
            await self._persist(lambda: self.services.recorder.submit(*unrecorded))
        copies: list[Copy] = []
        for outcome in outcomes:
            result = outcome.attempt.outcome
            metrics.inc("shipcast_deliveries_total", channel=self.name, event_type=event.event_type, outcome=result)
            published = routing.published_ms if result == Outcome.DELIVERED else None
            if published:
                metrics.observe("shipcast_delivery_latency_seconds", max(0.0, time.time() - published / 1000),
                                channel=self.name, event_type=event.event_type)
            await self._observe(event, outcome)
            record = outcome.attempt
            level = logging.DEBUG if result in (Outcome.DELIVERED, Outcome.SKIPPED, Outcome.WAITING) else logging.INFO
            if log.isEnabledFor(level):  # the hot path logs nothing at INFO: no fields built for nothing
                log.log(level, "%s %s%s", self.name, result, f": {record.error}" if record.error else "",
                        extra={"event_id": event.event_id, "partner": event.partner_id, "channel": self.name,
                               "target": outcome.target.id, "outcome": result, "attempt": record.attempt,
                               "status": record.status, "latency_ms": round(record.latency_ms, 1)})
            failed = result in (Outcome.RETRY, Outcome.DEAD) and outcome.error is not None
            copy_headers = h.retry_headers(headers, outcome.target.id, attempt, waiting=result == Outcome.WAITING,
                                           error=outcome.error.reason if failed and outcome.error else None)
            if outcome.delay is not None:
                copies.append(Copy(self.topology.retry_queue(outcome.delay), copy_headers))
            elif result == Outcome.DEAD and outcome.parked:
                copies.append(self._dead_copy(copy_headers, record.error or "failed", status=record.status))
        return Settlement(tuple(copies))

    async def _observe(self, event: Event, outcome: Result) -> None:
        """Keep the target's health: failing, recovered, disabled."""
        attempt, health = outcome.attempt, self.services.health
        if attempt.outcome in (Outcome.WAITING, Outcome.SKIPPED) or not outcome.parked or not self.channel.records_deliveries:
            return
        if isinstance(outcome.error, PermanentDelivery) and outcome.error.disable_target:
            await self._persist(lambda: health.disable(self.name, event.partner_id, attempt.target,
                                                       attempt.address, attempt.error or "disabled"))
            return
        if isinstance(outcome.error, DeliveryError) and not outcome.error.target_fault:
            return  # quiet hours, another copy in flight, one customer's bad number: not the target's health
        ok = attempt.outcome == Outcome.DELIVERED
        if ok and (self.name, event.partner_id, attempt.target) not in self.services.partners.failing:
            return  # the hot path: a healthy target stays healthy
        await self._persist(lambda: health.observe(self.name, event.partner_id, attempt.target,
                                                   attempt.address, ok, attempt.error))

    def _skipped(self, reason: str, count: int = 1) -> None:
        if count:
            metrics.inc("shipcast_targets_skipped_total", count, channel=self.name, reason=reason)
            tracing.note({tracing.SKIPPED + reason: count})

    async def _deliver_all(self, event: Event, body: bytes, targets: Sequence[Target], attempt: int) -> list[Result]:
        if len(targets) == 1:  # the common case, without a task per target
            return [await self._deliver(event, body, targets[0], attempt)]
        return list(await asyncio.gather(*(self._deliver(event, body, t, attempt) for t in targets)))

    async def _deliver(self, event: Event, body: bytes, target: Target, attempt: int) -> Result:
        """Deliver to one target, in a span of its own when tracing is on."""
        with tracing.span(self._attempt_span, "client") as span:
            result = await self._deliver_in_turn(event, body, target, attempt)
            if span is not None:
                record = result.attempt
                tracing.describe(span, event, {
                    tracing.CHANNEL: self.name, tracing.TARGET: target.id, tracing.ATTEMPT: record.attempt,
                    tracing.OUTCOME: str(record.outcome), tracing.HTTP_STATUS: record.status,
                    "error.type": type(result.error).__name__ if result.error is not None else None})
                if record.outcome in (Outcome.RETRY, Outcome.DEAD):
                    tracing.failed(span, record.error or str(record.outcome))
            return result

    async def _deliver_in_turn(self, event: Event, body: bytes, target: Target, attempt: int) -> Result:
        if not target.ordered:
            return await self._attempt(event, body, target, attempt)
        # Ordered: one event of an order at a time for this target, and none
        # while an earlier one is still retrying or waiting.
        if (event.partner_id, target.id) not in self._ordered_seen:  # looked at beside, holding nothing up
            self._ordered_seen.add((event.partner_id, target.id))
            looking = asyncio.get_running_loop().create_task(self._say_if_order_is_per_process(event.partner_id,
                                                                                           target.id))
            self._looking.add(looking)
            looking.add_done_callback(self._looking.discard)
        key = (event.partner_id, target.id, event.order.order_id)
        await self._order_locks.acquire(key)
        try:
            # A retrying row is rewritten at least once per longest tier; twice that is stale.
            stale_after = 2 * max(self.delays, default=0) + 60
            blocker = await self._persist(lambda: self.services.store.order_blocked(
                self.name, event.partner_id, target.id, event.order.order_id, event.sequence, stale_after))
            if blocker is not None and self.delays:
                outcome = self._waiting(event, target, attempt,
                                        f"ordered: waiting for {blocker}, an earlier event of this order")
            else:
                outcome = await self._attempt(event, body, target, attempt)
            if self.channel.records_deliveries:
                await self._persist(lambda: self.services.recorder.submit(outcome.attempt))
            return replace(outcome, recorded=True)
        finally:
            self._order_locks.release(key)

    async def _say_if_order_is_per_process(self, partner_id: str, target_id: str) -> None:
        """Say when other processes consume this work queue too (the others
        of a ``shipcast run``, other worker replicas): two events of an order
        can then be delivered by two of them, so the ordered target's order
        holds within each process only. A count the broker cannot give now
        is asked for again at the target's next delivery."""
        queue = self.topology.work.name
        try:
            async with asyncio.timeout(LOOK_TIMEOUT):
                counted = await self.services.broker.consumers(queue)
        except (Exception, asyncio.CancelledError) as exc:  # says nothing of the order: asked again later
            reraise_if_cancelled(exc)
            log.debug("cannot count the consumers of %s: %r", queue, exc)
            self._ordered_seen.discard((partner_id, target_id))
            return
        consumers = max(self.services.process_share, counted)
        if consumers > 1:
            log.warning("%s target %s/%s is ordered, but %d consumers deliver from %s (the processes of a shipcast "
                        "run, or other workers): each order's events keep their order within one process, not "
                        "across them; run a single one (shipcast run --processes 1, or one worker) to keep it",
                        self.name, partner_id, target_id, consumers, queue)

    def _waiting(self, event: Event, target: Target, attempt: int, reason: str) -> Result:
        """A deferral: back through the first retry tier, without spending an
        attempt. Only an ordered target logs it (later events wait on the
        row): a hanging endpoint's deferrals must cost as little as possible."""
        self._skipped("deferred")
        return Result(target, self._attempt_record(event, target, attempt, Outcome.WAITING, 0.0, reason=reason),
                      None, deferral(self.delays), recorded=not target.ordered)

    async def _attempt(self, event: Event, body: bytes, target: Target, attempt: int) -> Result:
        gate = self.gates.get(event.partner_id, target)
        verdict = await gate.enter(defer=bool(self.delays))
        if verdict is not None and verdict.reason != "circuit_open":
            return self._waiting(event, target, attempt, verdict.detail)
        started = time.perf_counter()
        error: DeliveryError | None = None
        result: Delivered | None = None
        if verdict is not None:  # the circuit is open: a failed attempt, without a connection
            error = RetryableDelivery(verdict.detail, retry_after=verdict.retry_after)
        else:
            ok: bool | None = None
            metrics.add("shipcast_deliveries_in_flight", 1, channel=self.name)
            try:
                async with asyncio.timeout(self.channel.deliver_timeout):
                    result = await self.channel.deliver(event, body, target)
                ok = True
            except SkipDelivery as exc:
                error, ok = exc, None
            except DeliveryError as exc:
                error, ok = exc, False if exc.target_fault else None
            except StoreError:
                raise
            except TimeoutError:
                error, ok = RetryableDelivery(
                    f"{self.name} delivery took longer than {self.channel.deliver_timeout:g}s"), False
            except asyncio.CancelledError as exc:
                reraise_if_cancelled(exc)  # this delivery is being cancelled (a stop past its grace)
                # An AMQP call the channel made was cut short by its channel closing, which
                # aiormq reports as a CancelledError: a retry, or the message would sit unacked.
                error = RetryableDelivery(f"{self.name} delivery cut short: a connection it used closed",
                                          target_fault=False)
            except Exception as exc:  # a bug in a channel must not lose the event
                log.exception("%s: unexpected error delivering %s to %s", self.name, event.event_id, target.id)
                error = RetryableDelivery(f"{self.name} channel error: {type(exc).__name__}: {exc}")
            finally:
                change = gate.leave(ok)
                metrics.add("shipcast_deliveries_in_flight", -1, channel=self.name)
            if change is not None:
                log.warning("%s: circuit %s for %s/%s (%s)", self.name, change, event.partner_id, target.id,
                            gate.breaker.describe())
                metrics.inc("shipcast_circuit_changes_total", channel=self.name, change=change)
                metrics.put("shipcast_circuit_state", metrics.CIRCUIT.get(gate.breaker.state, 0.0),
                            channel=self.name, partner=event.partner_id, target=target.id)
        latency = (time.perf_counter() - started) * 1000
        decision: Decision = decide(error, self.delays, attempt)
        return Result(target, self._attempt_record(
            event, target, attempt, decision.outcome, latency,
            status=error.status if error is not None else (result.status if result else None),
            reason=decision.reason,
            response=error.response if error is not None else (result.response if result else None),
            request=error.request if error is not None else (result.request if result else None),
        ), error, decision.delay, recorded=isinstance(error, ClaimedElsewhere))

    def _attempt_record(self, event: Event, target: Target, attempt: int, outcome: Outcome, latency: float, *,
                        status: int | None = None, reason: str | None = None,
                        response: str | None = None, request: dict[str, Any] | None = None) -> Attempt:
        return Attempt(
            event_id=event.event_id, channel=self.name, target=target.id, partner_id=event.partner_id,
            address=target.address, outcome=outcome, attempt=attempt + 1, latency_ms=latency,
            status=status, error=reason, response=response, event_type=event.event_type,
            order_id=event.order.order_id, sequence=event.sequence, request=request)

    def _dead_copy(self, headers: dict[str, Any], reason: str, *, status: int | None = None) -> Copy:
        return Copy(self.topology.dead.name, h.dead_headers(headers, self.name, reason, status=status))

    def _parked(self, headers: dict[str, Any], reason: str) -> Settlement:
        """Settle by parking the message whole, as it came."""
        return Settlement((self._dead_copy(headers, reason),))


