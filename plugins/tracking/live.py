"""Live updates for open tracking pages, over server-sent events.

The tracking worker, once an event of an order is stored, pings the fanout
exchange ``shipcast.tracking.live``. Every API process that has pages open
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

from shipcast.services import Services

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

    @classmethod
    def of(cls, services: Services, render: Render) -> LiveHub:
        """The process's hub, made on first use."""
        hub = services.extensions.get("tracking.live")
        if hub is None:
            hub = services.extensions["tracking.live"] = cls(services, render)
        assert isinstance(hub, LiveHub)
        return hub

    async def start(self) -> None:
        if self._started is None:
            self._started = asyncio.ensure_future(self._listen())
            self._ending = asyncio.ensure_future(self._end_streams())
        await asyncio.shield(self._started)

    async def _end_streams(self) -> None:
        """When the API stops, every open stream ends (browsers reconnect elsewhere)."""
        await self.services.stopping.wait()
        for viewers in list(self.viewers.values()):
            for viewer in list(viewers):
                viewer.push(None)

    async def _listen(self) -> None:
        channel = await self.services.broker.require().channel()
        exchange = await declare_live_exchange(channel)
        name = f"{LIVE_EXCHANGE}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True,
                                            arguments={"x-queue-type": "classic"})
        await queue.bind(exchange)
        await queue.consume(self._on_ping, no_ack=True)

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

    @property
    def watching(self) -> int:
        return sum(len(viewers) for viewers in self.viewers.values())

    async def _on_ping(self, message: AbstractIncomingMessage) -> None:
        try:
            ping = orjson.loads(message.body)
            key = (str(ping["partner_id"]), str(ping["order_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("tracking: ignored a malformed live ping")
            return
        viewers = list(self.viewers.get(key, ()))
        if not viewers:
            return
        try:
            version, pages = await self.render(*key, {viewer.language for viewer in viewers})
        except Exception:  # a store outage: the viewers keep their page until the next ping
            log.warning("tracking: could not render %s/%s for its viewers", *key, exc_info=True)
            return
        for viewer in viewers:
            if viewer.language in pages:
                viewer.push((version, pages[viewer.language]))


def ping(partner_id: str, order_id: str) -> aio_pika.Message:
    return aio_pika.Message(orjson.dumps({"partner_id": partner_id, "order_id": order_id}),
                            content_type="application/json", delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)
