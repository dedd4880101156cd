"""Live updates for open tracking pages, over server-sent events.

The tracking worker, once a batch of events is stored, pings the fanout
exchange ``shipcast.tracking.live`` once, naming each order of the batch. Every API process that has pages open
binds its own exclusive queue to it (``shipcast.tracking.live.<host>.<pid>...``,
gone with the process), renders the order's page once per language its
viewers read, and pushes it to each of them. A ping is tiny and transient:
losing one costs a viewer nothing that a reconnect (which sends the page
afresh) does not give back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shipcast.app.services import Services

log = logging.getLogger(__name__)

LIVE_EXCHANGE = "shipcast.tracking.live"
#: Updates a slow viewer may have waiting; older ones are dropped (the newest page says it all).
BACKLOG = 4

#: Renders one order's page body for each language asked: its version, and ``{language: html}``.
Render = Callable[[str, str, set[str]], Awaitable[tuple[str, dict[str, str]]]]
#: What a viewer is sent: the page's version and body.
Update = tuple[str, str]


@dataclass(eq=False)
class Viewer:
    partner_id: str
    order_id: str
    language: str
    #: Pages to send; ``None`` ends the stream (the process is stopping).
    updates: asyncio.Queue[Update | None] = field(default_factory=lambda: asyncio.Queue(BACKLOG))

    def push(self, page: Update | None) -> None:
        if self.updates.full():
            self.updates.get_nowait()
        self.updates.put_nowait(page)


async def declare_live_exchange(channel: AbstractChannel) -> aio_pika.abc.AbstractExchange:
    return await channel.declare_exchange(LIVE_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)


class LiveHub:
    """This process's open pages, by order."""

    def __init__(self, services: Services, render: Render) -> None:
        self.services = services
        self.render = render
        self.viewers: dict[tuple[str, str], set[Viewer]] = {}
        self._started: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None
        #: The newest version pushed per order: a slower render of an older state never follows it.
        self._pushed: dict[tuple[str, str], int] = {}
        self._rendering: dict[tuple[str, str], asyncio.Lock] = {}

    @classmethod
    def of(cls, services: Services, render: Render) -> LiveHub:
        """The process's hub, made on first use."""
        hub = services.extensions.get("tracking.live")
        if hub is None:
            hub = services.extensions["tracking.live"] = cls(services, render)
        assert isinstance(hub, LiveHub)
        return hub

    async def start(self) -> None:
        """Listen for pings (once; again after a failed try, say the broker
        was not connected yet). :raises BrokerError: not listening."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end_streams())
        if self._started is None or (self._started.done() and self._started.exception() is not None):
            self._started = asyncio.ensure_future(self._listen())
        await asyncio.shield(self._started)

    async def _end_streams(self) -> None:
        """When the API stops, every open stream ends (browsers reconnect elsewhere)."""
        await self.services.stopping.wait()
        for viewers in list(self.viewers.values()):
            for viewer in list(viewers):
                viewer.push(None)

    async def _listen(self) -> None:
        connection = self.services.broker.require()
        # Kept: a robust connection holds its channels weakly.
        self._channel = await connection.channel()
        exchange = await declare_live_exchange(self._channel)
        name = f"{LIVE_EXCHANGE}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        # Not restored by name after a reconnect (the broker may still hold the old, exclusive
        # one until it notices the old connection is gone): a new queue is made instead.
        self._queue = await self._channel.declare_queue(name, exclusive=True, auto_delete=True, robust=False,
                                                        arguments={"x-queue-type": "classic"})
        await self._queue.bind(exchange, robust=False)
        await self._queue.consume(self._on_ping, no_ack=True, robust=False)
        if not getattr(self, "_watching_reconnects", False):
            connection.reconnect_callbacks.add(self._relisten)
            self._watching_reconnects = True

    async def _relisten(self, *_: object) -> None:
        try:
            await self._listen()
        except Exception:  # the next reconnect tries again; pages meanwhile keep what they show
            log.warning("tracking: could not listen for live updates after a reconnect", exc_info=True)

    def subscribe(self, partner_id: str, order_id: str, language: str) -> Viewer:
        viewer = Viewer(partner_id, order_id, language)
        self.viewers.setdefault((partner_id, order_id), set()).add(viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        key = (viewer.partner_id, viewer.order_id)
        watching = self.viewers.get(key)
        if watching is not None:
            watching.discard(viewer)
            if not watching:
                del self.viewers[key]
                self._pushed.pop(key, None)
                self._rendering.pop(key, None)

    @property
    def watching(self) -> int:
        return sum(len(viewers) for viewers in self.viewers.values())

    async def _on_ping(self, message: AbstractIncomingMessage) -> None:
        try:
            keys = pinged(message.body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("tracking: ignored a malformed live ping")
            return
        watched = [key for key in keys if key in self.viewers]
        if len(watched) == 1:
            await self._refresh(watched[0])
        elif watched:
            await asyncio.gather(*(self._refresh(key) for key in watched))

    async def _refresh(self, key: tuple[str, str]) -> None:
        # One render per order at a time (pings are handled concurrently), and never an older state
        # after a newer one.
        async with self._rendering.setdefault(key, asyncio.Lock()):
            viewers = list(self.viewers.get(key, ()))
            if not viewers:
                self._rendering.pop(key, None)
                return
            try:
                version, pages = await self.render(*key, {viewer.language for viewer in viewers})
            except Exception:  # a store outage: the viewers keep their page until the next ping
                log.warning("tracking: could not render %s/%s for its viewers", *key, exc_info=True)
                return
            if order_of_version(version) < self._pushed.get(key, 0):
                return
            self._pushed[key] = order_of_version(version)
            for viewer in viewers:
                if viewer.language in pages:
                    viewer.push((version, pages[viewer.language]))


def order_of_version(version: str) -> int:
    """How many events a page's version shows (``"<count>-<last event id>"``): it only grows."""
    count = version.split("-", 1)[0]
    return int(count) if count.isdigit() else 0


#: Orders one ping names at most: a batch of the tracking channel's, with room to spare.
MAX_PINGED = 1000


def ping(*orders: tuple[str, str]) -> aio_pika.Message:
    """One ping for the pages open on any of ``orders`` (``(partner_id, order_id)`` each)."""
    return aio_pika.Message(orjson.dumps({"orders": orders}),
                            content_type="application/json", delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)


def pinged(body: bytes) -> list[tuple[str, str]]:
    """The orders a ping names: ``{"orders": [[partner_id, order_id], ...]}``, or
    one order as ``{"partner_id": ..., "order_id": ...}`` (an earlier worker's, in a rolling upgrade).

    :raises ValueError: (or a ``KeyError``, ``TypeError``, a JSON error) not a ping.
    """
    ping = orjson.loads(body)
    if "orders" not in ping:
        return [(str(ping["partner_id"]), str(ping["order_id"]))]
    orders = ping["orders"]
    if not isinstance(orders, list) or len(orders) > MAX_PINGED:
        raise ValueError("orders: not a list of at most MAX_PINGED")
    return [(str(partner_id), str(order_id)) for partner_id, order_id in orders]
