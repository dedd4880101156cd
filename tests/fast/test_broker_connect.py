"""Connecting to a broker that is not there: every failed attempt's
connection is closed, none left for a finalizer to close.

aio-pika's ``connect_robust`` leaves a connection whose first connect failed
unclosed, in a reference cycle. A collection that happens to run on another
thread (a store's, say) then finalizes it there, where its close cannot be
scheduled: "coroutine 'RobustConnection.close' was never awaited", one per
retry for as long as the broker is down."""

from __future__ import annotations

import gc
import logging
import socket
import weakref
from typing import Any

import aio_pika
import pytest

from shipcast.amqp.connection import Broker

from ..conftest import make_settings
from ..helpers import eventually

pytestmark = pytest.mark.fast


def refused_port() -> int:
    """A port nothing listens on (bound, never listened: connects are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_each_refused_attempt_closes_its_connection(caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[weakref.ref[aio_pika.RobustConnection]] = []
    init = aio_pika.RobustConnection.__init__

    def recorded(self: aio_pika.RobustConnection, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(aio_pika.RobustConnection, "__init__", recorded)
    settings = make_settings("", "sqlite+aiosqlite://", amqp_url=f"amqp://guest:guest@127.0.0.1:{refused_port()}/")
    broker = Broker(settings)
    gc.disable()  # a collection here would close a leaked connection by its finalizer, and hide it
    try:
        with caplog.at_level(logging.WARNING, logger="shipcast.amqp.connection"):
            await broker.start()
            try:
                await eventually(lambda: sum("unreachable" in r.getMessage() for r in caplog.records) >= 2,
                                 timeout=10)
            finally:
                await broker.close()
        connections = [c for ref in made if (c := ref()) is not None]
        assert len(connections) >= 2, "each attempt makes a connection"
        assert all(c.is_closed for c in connections), "a refused attempt left its connection open"
    finally:
        gc.enable()
