"""Running shipcast: the API, channel workers, or both in one process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from shipcast import tracing
from shipcast.app.reconcile import apply_partners, reconcile_bindings
from shipcast.app.services import Services
from shipcast.delivery.consumer import ChannelWorker
from shipcast.exceptions import ConfigError
from shipcast.model.partners import load_partners_file
from shipcast.plugin.registry import Registry

if TYPE_CHECKING:
    from shipcast.app.api.operations import Checks

log = logging.getLogger("shipcast")

#: Seconds a shutdown waits for a start-up that reached the broker to end.
#: Cancelling one of its calls half way closes that AMQP channel, and at
#: times (a channel's close cancelled) the connection under the workers
#: already consuming: their acks fail and everything in flight comes back.
START_GRACE = 10.0


def select_channels(registry: Registry, names: Sequence[str]) -> list[str]:
    known = registry.channels
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown channels {unknown}; installed: {', '.join(sorted(known))}")
    return list(names) or sorted(known)


async def start_workers(services: Services, names: Sequence[str],
                        started: list[ChannelWorker] | None = None, *, prepared: bool = False) -> list[ChannelWorker]:
    """Wait for the broker, apply the partners file (``SHIPCAST_CONFIG``) if
    there is one, then start one worker per named channel (none for the API alone).

    Each worker joins ``started`` as it starts, so a shutdown that cancels
    the start-up half way still stops (and drains) the workers already
    consuming.

    :param prepared: another process of the same ``shipcast run`` applied
        the file and reconciled the bindings already."""
    started = [] if started is None else started
    await services.broker.connect()
    config = Path(services.settings.config)
    if prepared:
        log.debug("partners applied by the first process of this run")
    elif config.is_file():
        partners = load_partners_file(config, catalog=services.registry.catalog)
        # Not a re-assertion by the operator: disabled endpoints stay disabled across restarts.
        await apply_partners(services, partners, source=str(config), reenable=False)
        log.info("applied %d partners from %s", len(partners), config)
    else:
        await reconcile_bindings(services)
    known = services.registry.channels
    workers = [ChannelWorker(known[name](services), services) for name in names]
    if workers:
        await services.listen_for_changes()
        services.start_notifier()
        services.start_pruner()
    for worker in workers:
        started.append(worker)
        await worker.start()
    services.started = True
    return workers


async def stop_workers(workers: Sequence[ChannelWorker]) -> None:
    await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)


class ApiServer(uvicorn.Server):
    """uvicorn, minus its signal handling: shipcast handles SIGINT and SIGTERM
    itself, so workers drain after the API stops, and the process then exits 0.
    On shutdown it sets ``services.stopping`` first, so responses that never
    end by themselves (a tracking page's live stream) end, and uvicorn's wait
    for open connections does not last for ever."""

    def __init__(self, config: uvicorn.Config, services: Services) -> None:
        super().__init__(config)
        self.services = services

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.services.stopping.set()
        await super().shutdown(sockets)


def api_server(services: Services, *, log_level: str = "info") -> ApiServer:
    from shipcast.app.api import create_app

    app = create_app(services, manage_services=False)
    return ApiServer(uvicorn.Config(app, host=services.settings.host, port=services.settings.port,
                                    log_level=log_level, access_log=False, lifespan="on",
                                    timeout_graceful_shutdown=30), services)


def health_server(services: Services, checks: Checks | None = None) -> ApiServer | None:
    """The operations port (health, metrics, the console), on
    ``SHIPCAST_HEALTH_PORT`` when it is set; its ``/readyz`` also requires ``checks``."""
    from shipcast.app.api import operations_app

    settings = services.settings
    if settings.health_port is None:
        return None
    return ApiServer(uvicorn.Config(operations_app(services, checks), host=settings.host, port=settings.health_port,
                                    log_level="warning", access_log=False, lifespan="off"), services)


@dataclass(frozen=True)
class Inherited:
    """What one of several processes of ``shipcast run`` is handed: the
    listening sockets the supervisor bound, and what to call once its workers
    are consuming (and, if ``prepare``, the partners file is applied). Only
    the first process at its first start (``prepare``) serves while it starts;
    any other, a restarted one too, takes connections once it is ready."""

    api: socket.socket | None
    health: socket.socket | None
    prepare: bool
    ready: Callable[[], None]


async def serve(*, api: bool, worker_names: Sequence[str], services: Services | None = None,
                inherited: Inherited | None = None) -> None:
    """Run the API and/or workers until SIGINT or SIGTERM, then stop taking
    requests and messages, finish those in flight, and return."""
    services = services or Services.from_settings()
    tracing.start("run" if api and worker_names else "api" if api else "worker")
    try:
        await _serve(services, api=api, worker_names=worker_names, inherited=inherited)
    finally:
        # The spans of the last deliveries, sent, however serving ended (services that would not start or close).
        await asyncio.to_thread(tracing.stop)


async def _serve(services: Services, *, api: bool, worker_names: Sequence[str],
                 inherited: Inherited | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await services.start()
    workers: list[ChannelWorker] = []

    async def start() -> None:
        await start_workers(services, worker_names, workers,
                            prepared=inherited is not None and not inherited.prepare)
        keep_startup_objects()
        if inherited is not None:
            inherited.ready()

    starting = asyncio.create_task(start())
    tasks: list[asyncio.Task[Any]] = [starting]
    # The operations port (SHIPCAST_HEALTH_PORT) beside the API too, when it is set; several
    # processes of one `shipcast run` listen on the sockets their supervisor bound.
    listening = ((api_server(services) if api else None, inherited.api if inherited else None),
                 (health_server(services), inherited.health if inherited else None))
    servers = [server for server, _ in listening if server is not None]
    # One of several that is not the first to start takes connections only once it is ready: until
    # then the kernel gives them to the others, which can publish, where it would answer 503.
    after_start = inherited is not None and not inherited.prepare

    async def serving_on(server: ApiServer, sock: socket.socket | None) -> None:
        if after_start:
            await starting
            if server.should_exit:  # stopped while it started: it never takes a connection
                return
        await server.serve([sock] if sock is not None else None)

    serving = [asyncio.create_task(serving_on(server, sock)) for server, sock in listening if server is not None]
    tasks += serving
    stopping = asyncio.create_task(stop.wait())
    try:
        pending = set(tasks)
        while not stop.is_set():
            done, pending = await asyncio.wait(pending | {stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopping}:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                if task in serving:
                    stop.set()  # a server stopped on its own
    finally:
        stopping.cancel()
        for server in servers:
            server.should_exit = True
        try:
            if not starting.done() and services.broker.connected:
                await asyncio.wait({starting}, timeout=START_GRACE)
        finally:
            starting.cancel()  # still starting (waiting for the broker, say): give up; those started are stopped
        await asyncio.gather(*tasks, return_exceptions=True)
        await stop_workers(workers)
        await services.close()


def keep_startup_objects() -> None:
    """Leave what start-up made (modules, models, the app, the clients) out of
    the garbage collector's full passes from now on: it lives as long as the
    process. Each full pass over it stalled the event loop for about 0.1 s on
    two busy cores, every few seconds while failing endpoints kept retry
    copies churning, and every delivery in flight waited (docs/benchmarks.md,
    scenario 14, isolation_many)."""
    gc.collect()
    gc.freeze()


def run_async(coro: object) -> None:
    """Run a coroutine on uvloop where available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform but Windows
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        try:
            uvloop.run(coro)  # type: ignore[arg-type]
        finally:
            _blocking_stdio()


def _blocking_stdio() -> None:
    """Put stdout and stderr back in blocking mode. uvloop can leave them
    non-blocking (MagicStack/uvloop#460, #712); a command printing more than a
    pipe holds (``deliveries list --json | jq``) would then lose the rest
    with EAGAIN. (A test on a loaded machine saw that command's output cut at
    64 KiB twice, once after this was in place: JSON output also goes
    through ``cli.echo_json``, which waits on a full pipe.)"""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.set_blocking(stream.fileno(), True)


