"""The consumer, driven through the in-memory broker: the real worker, the
real retry policy and settlement, a real SQLite store; only RabbitMQ is
stood in for. Each behaviour here is also proven on the real broker
(tests/test_delivery.py, tests/test_webhooks.py, tests/test_pipeline.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest
from marshmallow import fields

from shipcast import Channel, ChannelConfig, Delivered, Event, Partner, Target, hookimpl, tracing
from shipcast.amqp import headers as h
from shipcast.amqp.memory import MemoryBroker
from shipcast.app.services import Services
from shipcast.delivery import consumer
from shipcast.delivery.consumer import ChannelWorker, ParsedEvents
from shipcast.delivery.replay import matching_deliveries, replay_rows
from shipcast.exceptions import InvalidEvent, PermanentDelivery, RetryableDelivery
from shipcast.model.event_types import EventTypeRegistry
from shipcast.model.examples import example
from shipcast.plugin.registry import Registry
from shipcast.settings import Settings
from shipcast.store import Store

from ..otlp import OtlpReceiver, tracing_to

pytestmark = pytest.mark.fast

WORK, DEAD = "shipcast.scripted", "shipcast.scripted.dead"


class ScriptedConfig(ChannelConfig):
    targets = fields.List(fields.String(), load_default=lambda: ["a"])
    ordered = fields.Boolean(load_default=False)


@dataclass
class Script:
    """What each target answers, in order (``None``: delivered); then delivered."""

    answers: dict[str, list[Exception | None]] = field(default_factory=dict)
    sent: list[tuple[str, str]] = field(default_factory=list)
    #: The trace context each delivery would send (a webhook's headers), when tracing is on.
    contexts: list[dict[str, str]] = field(default_factory=list)


class ScriptedChannel(Channel):
    name = "scripted"
    config_schema = ScriptedConfig

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        if partner is None or self.name not in partner.channels:
            return []
        config = partner.channels[self.name]
        return [Target(t, f"https://{t}.example", ordered=config.get("ordered", False)) for t in config["targets"]]

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered | None:
        script: Script = self.context.extensions["script"]
        script.sent.append((event.event_id, target.id))
        context: dict[str, str] = {}
        tracing.inject(context)
        if context:
            script.contexts.append(context)
        answers = script.answers.get(target.id) or []
        answer = answers.pop(0) if answers else None
        if answer is not None:
            raise answer
        return Delivered(200, "ok")


class ScriptedPlugin:
    @hookimpl
    def shipcast_channels(self) -> list[type[Channel]]:
        return [ScriptedChannel]


@dataclass
class Rig:
    broker: MemoryBroker
    services: Services
    script: Script
    worker: ChannelWorker

    async def publish(self, event: Event) -> None:
        await self.services.publisher.publish_valid([event])
        await self.broker.drain()

    async def outcomes(self, event_id: str) -> list[tuple[str, str]]:
        rows = await self.services.store.list_attempts(event_id)
        return sorted((row["target"], row["outcome"]) for row in rows)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", retry_schedule="5,60",
                        plugins="scripted", config=str(tmp_path / "none.yaml"), secret_key_file=str(tmp_path / "k"))
    registry = Registry(settings, plugins=[ScriptedPlugin()])
    broker = MemoryBroker()
    services = Services(settings, registry, Store(settings.database_url), broker)  # type: ignore[arg-type]
    await services.store.open()
    script = services.extensions["script"] = Script()
    config = {"events": ["*"], "targets": ["a", "b"]}
    await services.store.put_partners([Partner("acme", "Acme", {}, {"scripted": config})])
    worker = ChannelWorker(ScriptedChannel(services), services)
    await worker.start()
    broker.bind(WORK, ScriptedChannel.bindings("acme", config))
    try:
        yield Rig(broker, services, script, worker)
    finally:
        await worker.stop()
        await services.close()


async def test_each_target_is_delivered_once_and_the_message_acked(rig: Rig) -> None:
    event = example("OFD", rig.services.registry.event_types)
    await rig.publish(event)
    assert sorted(rig.script.sent) == [(event.event_id, "a"), (event.event_id, "b")]
    assert await rig.outcomes(event.event_id) == [("a", "delivered"), ("b", "delivered")]
    assert not rig.broker.messages(WORK) and not rig.broker.messages(DEAD)
    # At-least-once meets an idempotent consumer: a redelivered copy sends nothing again.
    await rig.broker.publish(h.event_message(event), WORK, exchange="")
    await rig.broker.drain()
    assert len(rig.script.sent) == 2


@pytest.mark.parametrize("processes", [1, 2])
async def test_an_ordered_target_in_one_of_several_processes_is_warned_about_once(
        rig: Rig, processes: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """One process of several keeps an ordered target's order only within
    itself: it says so once, naming the target and the way to keep it; a
    lone process says nothing. The count of the queue's consumers (slow
    here, as a broker's answer can be) holds no delivery up: the first two
    events of an order, handed over together, still go in order."""
    async def slow_count(queue: str) -> int:
        await asyncio.sleep(0.05)
        return 1

    monkeypatch.setattr(rig.broker, "consumers", slow_count)
    rig.services.process_share = processes
    await rig.services.store.put_partners([Partner("acme", "Acme", {}, {
        "scripted": {"events": ["*"], "targets": ["a"], "ordered": True}})])
    await rig.services.partners.reload()
    first = example("OFD", rig.services.registry.event_types)
    events = [first.model_copy(update={"sequence": 1}),
              example("DEL", rig.services.registry.event_types).model_copy(update={
                  "order": first.order, "sequence": 2})]
    await rig.services.publisher.publish_valid(events)
    await rig.broker.drain()
    assert [event_id for event_id, _ in rig.script.sent] == [event.event_id for event in events]
    for event in events:
        assert await rig.outcomes(event.event_id) == [("a", "delivered")]
    while rig.worker._looking:  # the count, looked at beside the deliveries
        await asyncio.sleep(0.01)
    warned = [record.getMessage() for record in caplog.records if "is ordered" in record.getMessage()]
    if processes == 1:
        assert warned == []
    else:
        [message] = warned
        assert "acme/a" in message and "2 consumers" in message and "--processes 1" in message


async def test_only_the_failing_target_is_retried_through_its_tier(rig: Rig) -> None:
    rig.script.answers["b"] = [RetryableDelivery("HTTP 503", status=503)]
    event = example("DEL", rig.services.registry.event_types)
    await rig.publish(event)
    [waiting] = rig.broker.messages("shipcast.scripted.retry.5")
    assert waiting.headers[h.TARGET] == "b" and waiting.headers[h.ATTEMPT] == 1
    assert waiting.headers[h.LAST_ERROR] == "HTTP 503"
    assert await rig.broker.expire() == 1
    await rig.broker.drain()
    assert sorted(rig.script.sent) == [(event.event_id, "a"), (event.event_id, "b"), (event.event_id, "b")]
    assert await rig.outcomes(event.event_id) == [("a", "delivered"), ("b", "delivered"), ("b", "retry")]


async def test_retry_after_picks_a_later_tier(rig: Rig) -> None:
    rig.script.answers["a"] = [RetryableDelivery("HTTP 429", status=429, retry_after=30)]
    await rig.publish(example("OFD", rig.services.registry.event_types))
    assert [m.headers[h.TARGET] for m in rig.broker.messages("shipcast.scripted.retry.60")] == ["a"]
    assert not rig.broker.messages("shipcast.scripted.retry.5")


async def test_an_open_circuit_sends_its_copies_to_the_first_tier_past_the_cool_down(rig: Rig) -> None:
    """The breaker opens after ten failures of target a (default window) and
    cools down for 30 s: a copy it keeps back waits in the 60 s tier, not the
    5 s one, which would bring it back to the open circuit, and spends one
    attempt, not two."""
    rig.script.answers["a"] = [RetryableDelivery("HTTP 500")] * 10
    for _ in range(10):
        await rig.publish(example("OFD", rig.services.registry.event_types))
    assert len(rig.broker.messages("shipcast.scripted.retry.5")) == 10
    event = example("OFD", rig.services.registry.event_types)
    await rig.publish(event)
    [kept_back] = rig.broker.messages("shipcast.scripted.retry.60")
    assert kept_back.headers[h.TARGET] == "a" and kept_back.headers[h.ATTEMPT] == 1
    assert kept_back.headers[h.LAST_ERROR].startswith("circuit open: 10 of the last 10 requests failed")
    assert (event.event_id, "a") not in rig.script.sent and (event.event_id, "b") in rig.script.sent


async def test_exhausted_retries_and_permanent_failures_are_parked(rig: Rig) -> None:
    rig.script.answers["a"] = [RetryableDelivery("HTTP 500")] * 3
    rig.script.answers["b"] = [PermanentDelivery("HTTP 400", status=400)]
    event = example("FAIL", rig.services.registry.event_types)
    await rig.publish(event)
    while await rig.broker.expire():
        await rig.broker.drain()
    parked = {m.headers[h.TARGET]: m.headers for m in rig.broker.messages(DEAD)}
    assert parked["b"][h.REASON] == "HTTP 400" and parked["b"][h.STATUS] == 400
    assert parked["a"][h.REASON] == "retries exhausted after 3 attempts: HTTP 500"
    assert parked["a"][h.CHANNEL] == "scripted" and parked["a"][h.FIRST_FAILED]
    assert await rig.outcomes(event.event_id) == [
        ("a", "dead"), ("a", "retry"), ("a", "retry"), ("b", "dead")]
    deliveries = {row["target"]: row for row in await rig.services.store.list_deliveries(event_id=event.event_id)}
    assert (deliveries["a"]["status"], deliveries["a"]["attempts"]) == ("dead", 3)


@pytest.mark.parametrize(("body", "content_type", "reason"), [
    (b"not json", "application/json", "unparseable message"),
    (b'{"event_type": "OFD"}', "application/json", "unparseable message"),
    (b"{}", "text/plain", "content type 'text/plain' is not application/json"),
])
async def test_a_poison_message_is_parked_whole(rig: Rig, body: bytes, content_type: str, reason: str) -> None:
    await rig.broker.publish(aio_pika.Message(body, content_type=content_type, message_id="poison"), WORK,
                             exchange="")
    await rig.broker.drain()
    [parked] = rig.broker.messages(DEAD)
    assert parked.body == body and reason in parked.headers[h.REASON]
    assert not rig.script.sent


async def test_a_bug_in_a_channel_is_a_retry_not_a_loss(rig: Rig) -> None:
    rig.script.answers["a"] = [ZeroDivisionError("oops")]
    await rig.publish(example("OFD", rig.services.registry.event_types))
    [waiting] = rig.broker.messages("shipcast.scripted.retry.5")
    assert waiting.headers[h.TARGET] == "a"
    assert "ZeroDivisionError: oops" in waiting.headers[h.LAST_ERROR]


async def test_a_call_cut_short_by_its_channel_closing_is_a_retry_not_a_stuck_message(rig: Rig) -> None:
    # aiormq raises CancelledError in a call whose channel closes under it (a
    # channel's own AMQP client, say), though the delivery's task is not cancelled.
    rig.script.answers["a"] = [asyncio.CancelledError()]
    event = example("OFD", rig.services.registry.event_types)
    await rig.publish(event)  # drained: nothing left unacked
    assert await rig.outcomes(event.event_id) == [("a", "retry"), ("b", "delivered")]
    [waiting] = rig.broker.messages("shipcast.scripted.retry.5")
    assert waiting.headers[h.TARGET] == "a" and "cut short" in waiting.headers[h.LAST_ERROR]


@pytest.mark.parametrize("targets", [["a", "b"], ["a"]], ids=["both targets", "a copy for one"])
async def test_stopping_cancels_a_delivery_past_the_grace_and_its_message_goes_back(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, targets: list[str]) -> None:
    monkeypatch.setattr(consumer, "STOP_GRACE", 0.2)
    started, cancelled = asyncio.Event(), []

    async def hangs(self: ScriptedChannel, event: Event, body: bytes, target: Target) -> Delivered:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(target.id)
            raise
        raise AssertionError("not reached")

    monkeypatch.setattr(ScriptedChannel, "deliver", hangs)
    event = example("OFD", rig.services.registry.event_types)
    if len(targets) == 1:  # a retry tier's copy: delivered without gathering tasks per target
        copy = h.retry_headers({}, "a", 0, waiting=False, error="HTTP 503")
        await rig.broker.publish(h.event_message(event, headers=copy), WORK, exchange="")
    else:
        await rig.services.publisher.publish_valid([event])
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(rig.worker.stop(), 10)  # the 30 s grace, made 0.2 s; not the hang
    assert sorted(cancelled) == targets and not rig.worker._inflight
    assert "still in flight after" in caplog.text
    # Nothing recorded, nothing parked or retried: the message is back in its queue, whole.
    assert await rig.outcomes(event.event_id) == []
    [back] = rig.broker.messages(WORK)
    assert back.message_id == event.event_id and back.redelivered
    assert not rig.broker.messages(DEAD) and not rig.broker.messages("shipcast.scripted.retry.5")


async def test_the_exchange_routes_only_what_the_config_binds(rig: Rig) -> None:
    other = example("OFD", rig.services.registry.event_types, partner_id="globex")
    with pytest.raises(Exception, match="no queue is bound for globex.OFD"):
        await rig.services.publisher.publish_valid([other])
    assert not rig.script.sent


async def test_traced_a_message_is_a_span_under_its_publish_and_each_target_an_attempt_under_it(rig: Rig) -> None:
    """Each target's attempt is a span of its own, current while the channel
    delivers; a retry tier's copy joins the trace under the same publish."""
    rig.script.answers["b"] = [RetryableDelivery("HTTP 503", status=503)]
    event = example("FAIL", rig.services.registry.event_types)
    async with OtlpReceiver() as otlp:
        async with tracing_to(otlp):
            await rig.publish(event)
            assert await rig.broker.expire() == 1
            await rig.broker.drain()
        assert not tracing.enabled()
    [publish] = otlp.named("send shipcast.events")
    assert publish.parent_id == "" and publish.attributes["shipcast.event_id"] == event.event_id
    first, retried = sorted(otlp.named("process shipcast.scripted"), key=lambda s: s.attributes["shipcast.retry_tier"])
    assert {first.parent_id, retried.parent_id} == {publish.span_id}
    assert (first.attributes["shipcast.targets"], retried.attributes["shipcast.targets"]) == (2, 1)
    attempts = {(s.attributes["shipcast.target_id"], s.attributes["shipcast.outcome"]): s
                for s in otlp.named("deliver scripted")}
    assert set(attempts) == {("a", "delivered"), ("b", "retry"), ("b", "delivered")}
    assert attempts["a", "delivered"].parent_id == attempts["b", "retry"].parent_id == first.span_id
    assert attempts["b", "delivered"].parent_id == retried.span_id
    assert attempts["b", "retry"].error and attempts["b", "retry"].attributes["http.response.status_code"] == 503
    assert attempts["b", "retry"].attributes["error.type"] == "RetryableDelivery"
    assert {span.trace_id for span in otlp.spans} == {publish.trace_id}
    # What a channel would send is the context of its attempt's span.
    assert sorted(c["traceparent"].split("-")[2] for c in rig.script.contexts) == sorted(
        span.span_id for span in attempts.values())


@pytest.mark.parametrize(("traceparent", "continued"), [
    (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),  # bytes, as a bare AMQP client sends
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
    ("00-not-a-trace-01", False),
    (b"\xff\xfe", False),
    (12345, False),
])
async def test_traced_a_foreign_publishers_trace_context_is_continued_or_ignored(
        rig: Rig, traceparent: object, continued: bool) -> None:
    """Junk in ``traceparent`` starts a trace of its own; the event is delivered either way."""
    event = example("OFD", rig.services.registry.event_types)
    async with OtlpReceiver() as otlp:
        async with tracing_to(otlp):
            await rig.broker.publish(aio_pika.Message(event.to_json(), content_type="application/json",
                                                      headers={"traceparent": traceparent}), WORK, exchange="")
            await rig.broker.drain()
    assert sorted(rig.script.sent) == [(event.event_id, "a"), (event.event_id, "b")]
    [process] = otlp.named("process shipcast.scripted")
    if continued:
        assert (process.trace_id, process.parent_id) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    else:
        assert process.parent_id == ""


@pytest.mark.parametrize("carried", [
    {},  # an outside publisher's, or one published outside any span
    {"traceparent": "00-not-a-trace-01", "tracestate": "a=1"},
    {"traceparent": b"0" * 100_000},
], ids=["none", "malformed", "too-long"])
async def test_traced_a_message_without_a_trace_context_keeps_its_retries_in_the_trace_it_starts(
        rig: Rig, carried: dict[str, object]) -> None:
    """Its first handling starts a trace; the retry copy carries that
    handling's context in place of what it had, so the retry joins it."""
    rig.script.answers["b"] = [RetryableDelivery("HTTP 503", status=503)]
    event = example("FAIL", rig.services.registry.event_types)
    async with OtlpReceiver() as otlp:
        async with tracing_to(otlp):
            await rig.broker.publish(aio_pika.Message(event.to_json(), content_type="application/json",
                                                      headers=dict(carried)), WORK, exchange="")
            await rig.broker.drain()
            [waiting] = rig.broker.messages("shipcast.scripted.retry.5")
            assert await rig.broker.expire() == 1
            await rig.broker.drain()
    first, retried = sorted(otlp.named("process shipcast.scripted"), key=lambda s: s.attributes["shipcast.retry_tier"])
    assert first.parent_id == ""
    assert str(waiting.headers[h.TRACEPARENT]).split("-")[1:3] == [first.trace_id, first.span_id]
    assert h.TRACESTATE not in waiting.headers
    assert (retried.trace_id, retried.parent_id) == (first.trace_id, first.span_id)
    assert {span.trace_id for span in otlp.spans} == {first.trace_id}
    assert sorted(rig.script.sent) == [(event.event_id, "a"), (event.event_id, "b"), (event.event_id, "b")]


async def test_traced_a_resend_is_a_trace_of_its_own_that_its_retries_join(rig: Rig) -> None:
    """Sent again from the archive (a partner's resend, ``deliveries
    replay``): a root span of its own, whatever span is current, and the
    resent copy's handling and its retry under it."""
    event = example("OFD", rig.services.registry.event_types)
    await rig.services.store.save_events([event])
    await rig.publish(event)
    rows = await matching_deliveries(rig.services, event_id=event.event_id, target="b")
    rig.script.answers["b"] = [RetryableDelivery("HTTP 503", status=503)]
    async with OtlpReceiver() as otlp:
        async with tracing_to(otlp):
            with tracing.span("a request", parent={}):
                assert await replay_rows(rig.services, rows) == 1
            await rig.broker.drain()
            assert await rig.broker.expire() == 1
            await rig.broker.drain()
    [request] = otlp.named("a request")
    [sent] = otlp.named("send shipcast.scripted")
    assert (sent.kind, sent.parent_id) == ("producer", "")
    assert sent.trace_id != request.trace_id
    assert sent.attributes.items() >= {"shipcast.sent_again": "resend", "shipcast.event_id": event.event_id,
                                       "shipcast.channel": "scripted", "shipcast.target_id": "b",
                                       "messaging.destination.name": WORK}.items()
    first, retried = sorted(otlp.named("process shipcast.scripted"), key=lambda s: s.attributes["shipcast.retry_tier"])
    assert (first.trace_id, first.parent_id) == (sent.trace_id, sent.span_id)
    assert (retried.trace_id, retried.parent_id) == (sent.trace_id, sent.span_id)
    assert sorted(rig.script.sent) == [(event.event_id, "a"), (event.event_id, "b"), (event.event_id, "b"),
                                       (event.event_id, "b")]


async def test_traced_a_channel_is_given_the_traceparent_alone(rig: Rig) -> None:
    """The OMS's ``tracestate`` reaches the worker's spans, never a partner."""
    event = example("OFD", rig.services.registry.event_types)
    async with OtlpReceiver() as otlp:
        async with tracing_to(otlp):
            await rig.broker.publish(aio_pika.Message(event.to_json(), content_type="application/json", headers={
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "tracestate": "omsvendor=tenant-42,dd=s:1"}), WORK, exchange="")
            await rig.broker.drain()
    assert {span.trace_state for span in otlp.spans} == {"omsvendor=tenant-42,dd=s:1"}
    assert len(rig.script.contexts) == 2
    assert all(set(context) == {"traceparent"} for context in rig.script.contexts)


async def test_untraced_junk_in_traceparent_is_no_reason_to_park(rig: Rig) -> None:
    event = example("OFD", rig.services.registry.event_types)
    await rig.broker.publish(aio_pika.Message(event.to_json(), content_type="application/json",
                                              headers={"traceparent": b"\xff\xfe", "tracestate": b"\xff"}),
                             WORK, exchange="")
    await rig.broker.drain()
    assert sorted(rig.script.sent) == [(event.event_id, "a"), (event.event_id, "b")]
    assert not rig.broker.messages(DEAD) and not rig.script.contexts


def test_one_process_parses_an_events_body_once_whichever_channels_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(Settings(api_token="t")).event_types
    parsed = ParsedEvents(registry)
    calls: list[bytes] = []
    real = consumer.parse_event

    def counting(body: bytes, event_types: EventTypeRegistry) -> Event:
        calls.append(body)
        return real(body, event_types)

    monkeypatch.setattr(consumer, "parse_event", counting)
    body = example("OFD", registry).to_json()
    first, second = parsed.parse(body), parsed.parse(bytes(bytearray(body)))  # the next channel's own copy
    assert first is second and len(calls) == 1
    for _ in range(2):  # a body that is no event is not kept: refused again, not served
        with pytest.raises(InvalidEvent):
            parsed.parse(b'{"event_type": "OFD"}')
    assert len(calls) == 3
    for number in range(ParsedEvents.SIZE + 10):  # bounded: the oldest go first
        parsed.parse(example("DEL", registry, order_id=f"ORD-{number}").to_json())
    assert len(parsed._events) == ParsedEvents.SIZE and body not in parsed._events
    monkeypatch.setattr(ParsedEvents, "LARGEST", len(body) - 1)
    assert parsed.parse(body) == first and body not in parsed._events  # a larger event is parsed each time
