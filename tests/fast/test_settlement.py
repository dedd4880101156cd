"""Settlement and the header protocol: one ack or nack per message, copies
confirmed before the ack, and headers that survive foreign publishers."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest
from aiormq.exceptions import ChannelInvalidStateError

from shipcast.amqp import headers as h
from shipcast.amqp.memory import MemoryMessage, MemoryQueue
from shipcast.amqp.acks import Acks
from shipcast.delivery.settle import ACK, Copy, Settlement, requeue, settle
from shipcast.exceptions import BrokerUnavailable

pytestmark = pytest.mark.fast


def consumed(headers: dict[str, Any] | None = None) -> tuple[MemoryMessage, MemoryQueue]:
    queue = MemoryQueue("shipcast.test")
    message = MemoryMessage(b'{"x": 1}', dict(headers or {}), "application/json", "evt_1", "OFD", None, "acme.OFD")
    queue.put(message)
    handed = queue.ready.popleft()
    queue.unacked[id(handed)] = handed
    return handed, queue


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.sent: list[tuple[str, aio_pika.Message]] = []
        self.fail_on = fail_on

    async def __call__(self, message: aio_pika.Message, queue: str) -> None:
        if self.fail_on is not None and len(self.sent) == self.fail_on:
            raise BrokerUnavailable("RabbitMQ is unreachable")
        self.sent.append((queue, message))


async def test_copies_are_published_before_the_ack() -> None:
    message, queue = consumed({h.PUBLISHED: 1})
    publish = Recorder()
    settlement = Settlement((Copy("shipcast.test.retry.5", {h.TARGET: "a", h.ATTEMPT: 1}),
                             Copy("shipcast.test.dead", {h.TARGET: "b", h.REASON: "HTTP 400"})))
    assert await settle(message, settlement, publish, Acks()) is True
    assert message._settled == "ack" and not queue.ready
    assert [(name, dict(copy.headers or {})) for name, copy in publish.sent] == [
        ("shipcast.test.retry.5", {h.TARGET: "a", h.ATTEMPT: 1}),
        ("shipcast.test.dead", {h.TARGET: "b", h.REASON: "HTTP 400"})]
    assert all(copy.body == b'{"x": 1}' and copy.message_id == "evt_1" and copy.type == "OFD"
               and copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for _, copy in publish.sent)


async def test_a_copy_that_cannot_be_published_puts_the_original_back() -> None:
    message, queue = consumed()
    publish = Recorder(fail_on=1)
    settlement = Settlement((Copy("q.retry.5", {}), Copy("q.dead", {})))
    assert await settle(message, settlement, publish, Acks()) is False
    assert message._settled == "nack"
    assert [m.message_id for m in queue.ready] == ["evt_1"] and queue.ready[0].redelivered


class ClosingChannel:
    """An AMQP channel closing under its acks, as aiormq reports it: each
    frame it was asked to write ends in a CancelledError."""

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        raise asyncio.CancelledError()


class Delivered:
    def __init__(self, channel: ClosingChannel, tag: int) -> None:
        self.channel, self.delivery_tag, self.message_id = channel, tag, f"evt_{tag}"


async def test_acks_cut_short_by_a_closing_channel_fail_rather_than_hang() -> None:
    """Every ack waiting on a batch the channel cut short is answered with
    an error (its message is redelivered); none waits for ever, holding its
    delivery in flight and a worker's stop for its whole grace."""
    acks, channel = Acks(), ClosingChannel()
    outcomes = await asyncio.wait_for(asyncio.gather(*(acks.ack(Delivered(channel, tag))  # type: ignore[arg-type]
                                                       for tag in (1, 2, 3)), return_exceptions=True), 5)
    assert [type(outcome) for outcome in outcomes] == [ChannelInvalidStateError] * 3, outcomes


async def test_ack_and_requeue_settle_once() -> None:
    message, _ = consumed()
    assert await settle(message, ACK, Recorder(), Acks()) is True
    with pytest.raises(RuntimeError, match="settled twice"):
        await message.ack()
    held, queue = consumed()
    assert await settle(held, requeue(hold=0.01), Recorder(), Acks()) is False
    assert held._settled == "nack" and len(queue.ready) == 1


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, h.Routing(None, 0, False, False, None)),
    ({h.TARGET: b"orders", h.ATTEMPT: "2", h.FORCE: True, h.TEST: 1, h.PUBLISHED: 1700000000000},
     h.Routing("orders", 2, True, True, 1700000000000)),
    ({h.TARGET: "x", h.ATTEMPT: "junk", h.PUBLISHED: "soon"}, h.Routing("x", 0, False, False, None)),
    ({h.ATTEMPT: None, h.FORCE: 0}, h.Routing(None, 0, False, False, None)),
])
def test_routing_headers_tolerate_foreign_publishers(headers: dict[str, Any], expected: h.Routing) -> None:
    assert h.Routing.of(headers) == expected


def test_a_retry_copy_spends_a_tier_and_a_deferral_does_not() -> None:
    original = {h.PUBLISHED: 1, h.FORCE: True, "x-partner-header": "kept"}
    retry = h.retry_headers(original, "orders", 2, waiting=False, error="HTTP 500: " + "x" * 600)
    # A resend's retry stays a resend: the target was delivered before, so unforced it would be skipped.
    assert retry[h.TARGET] == "orders" and retry[h.ATTEMPT] == 3 and retry[h.FORCE] is True
    assert retry[h.LAST_ERROR].startswith("HTTP 500") and len(retry[h.LAST_ERROR]) == 500
    assert retry["x-partner-header"] == "kept" and h.FIRST_FAILED in retry
    again = h.retry_headers(retry, "orders", 3, waiting=False, error="HTTP 502")
    assert again[h.FIRST_FAILED] == retry[h.FIRST_FAILED] and again[h.LAST_ERROR] == "HTTP 502"
    waiting = h.retry_headers(original, "orders", 2, waiting=True, error=None)
    assert waiting[h.ATTEMPT] == 2 and waiting[h.FORCE] is True and h.LAST_ERROR not in waiting


def test_a_dead_letter_says_why_and_a_replay_forgets_it() -> None:
    dead = h.dead_headers({h.TARGET: "orders", h.ATTEMPT: 7, "keep": "me", "none": None}, "webhook",
                          "HTTP 410", status=410)
    failure = h.Failure.of(dead)
    assert (failure.target, failure.reason, failure.attempts, failure.channel) == ("orders", "HTTP 410", 7, "webhook")
    assert failure.failed_at and "none" not in dead and dead[h.STATUS] == 410
    replay = h.replay_headers(dead)
    assert replay == {h.TARGET: "orders", "keep": "me"}


def test_every_header_is_a_shipcast_header_named_once() -> None:
    names = [value for key, value in vars(h).items() if key.isupper() and isinstance(value, str)]
    # but the W3C trace context's, named by the standard for every tracer to read
    assert all(name.startswith("x-shipcast-") for name in names if name not in ("traceparent", "tracestate"))
    assert len(names) == len(set(names))
