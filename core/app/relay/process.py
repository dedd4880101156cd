"""``shipcast relay`` as a process: the relay, its operations port, and a
clean stop on SIGINT or SIGTERM (the lock is released as its connection closes)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from shipcast import tracing
from shipcast.app.relay.runner import Relay
from shipcast.app.relay.source import OutboxSource
from shipcast.app.runtime import health_server
from shipcast.app.services import Services

log = logging.getLogger("shipcast.relay")


async def serve_relay(services: Services, source: OutboxSource) -> None:
    """Relay until SIGINT or SIGTERM; ``/readyz`` on ``SHIPCAST_HEALTH_PORT``
    requires the broker and the outbox's database besides the store (where
    the partners are looked up)."""
    tracing.start("relay")
    try:
        await _serve(services, source)
    finally:
        await asyncio.to_thread(tracing.stop)  # the last rows' spans, sent, however relaying ended


async def _serve(services: Services, source: OutboxSource) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    relay = Relay(services, source)
    await services.start()
    server = health_server(services, {"source": lambda: relay.source_up})
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(relay.run(stop), name="shipcast-relay"),
                                      asyncio.create_task(_when_connected(services), name="shipcast-relay-start")]
    if server is not None:
        tasks.append(asyncio.create_task(server.serve(), name="shipcast-relay-health"))
    waiting: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    try:
        pending = set(tasks)
        while not stop.is_set():
            done, pending = await asyncio.wait(pending | {waiting}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {waiting}:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                if task.get_name() != "shipcast-relay-start":
                    stop.set()  # the relay or the operations port ended on its own
    finally:
        stop.set()
        waiting.cancel()
        tasks[1].cancel()  # still waiting for the broker, perhaps for ever
        if server is not None:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await source.close()
        await services.close()


async def _when_connected(services: Services) -> None:
    """Once the broker answers: hear of partners applied anywhere (so a row
    of a new partner is not refused), and count as started."""
    await services.broker.connect()
    try:
        await services.listen_for_changes()
    except Exception as exc:  # the cache is reloaded every 30 s, and on an unknown partner, anyway
        log.warning("cannot hear of partner changes (%s); relying on reloads", exc)
    services.started = True
