"""Running shipcast: the API, channel workers, or both in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from .exceptions import ConfigError, ShipcastError
from .partners import load_partners_file
from .plugin_manager import channels
from .reconcile import apply_partners, reconcile_bindings
from .services import Services
from .worker import ChannelWorker

log = logging.getLogger("shipcast")


def select_channels(names: Sequence[str]) -> list[str]:
    known = channels()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown channels {unknown}; installed: {', '.join(sorted(known))}")
    return list(names) or sorted(known)


async def start_workers(services: Services, names: Sequence[str]) -> list[ChannelWorker]:
    """Wait for the broker, apply the config file, then start one worker per channel."""
    await services.broker.connect()
    config = Path(services.settings.config)
    if config.is_file():
        partners = load_partners_file(config)
        await apply_partners(services, partners)
        log.info("applied %d partners from %s", len(partners), config)
    else:
        await reconcile_bindings(services)
    await services.listen_for_changes()
    known = channels()
    workers = [ChannelWorker(known[name](services), services) for name in names]
    for worker in workers:
        await worker.start()
    return workers


async def stop_workers(workers: Sequence[ChannelWorker]) -> None:
    await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(*, api: bool, worker_names: Sequence[str], services: Services | None = None) -> None:
    """Run the API and/or workers until SIGINT or SIGTERM, then drain and stop."""
    services = services or Services.from_settings()
    await services.start()
    workers: list[ChannelWorker] = []
    starting = asyncio.create_task(start_workers(services, worker_names)) if worker_names else None
    try:
        if api:
            from .api import create_app

            app = create_app(services, manage_services=False)
            config = uvicorn.Config(app, host=services.settings.host, port=services.settings.port,
                                    log_level="info", access_log=False, lifespan="on")
            server = uvicorn.Server(config)
            serving = asyncio.create_task(server.serve())
            waiters = {serving} | ({starting} if starting else set())
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_EXCEPTION)
            if starting in done and starting.exception():
                server.should_exit = True
                await serving
                raise starting.exception()  # type: ignore[misc]
            if not serving.done():
                await serving
        else:
            if starting is not None:
                workers = await starting
            await _until_signalled()
    finally:
        if starting is not None:
            if not starting.done():
                starting.cancel()
            with contextlib.suppress(BaseException):
                workers = workers or starting.result()
        await stop_workers(workers)
        await services.close()


def run_async(coro: object) -> None:
    """Run a coroutine on uvloop where available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform but Windows
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


__all__ = ["ShipcastError", "run_async", "select_channels", "serve"]
