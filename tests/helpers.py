"""Test helpers that stand in for the outside world at the network edge:
a partner's webhook receiver, a TCP proxy in front of RabbitMQ that can drop
the connection, and shipcast itself, in-process or as a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web

from shipcast.app.reconcile import apply_partners
from shipcast.app.runtime import api_server, start_workers, stop_workers
from shipcast.app.services import Services
from shipcast.model.partners import load_partners
from shipcast.settings import Settings


async def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until ``check()`` returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s: {check}")
        await asyncio.sleep(interval)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    #: What the receiver answered (0 until it has).
    status: int = 0

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """A partner's HTTP endpoint. ``script`` lists the statuses to answer in
    order (then ``default``); every request is recorded, whatever the answer."""

    default: int = 200
    script: list[int] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    port: int = 0
    #: Requests being answered now, and the most there ever were at once.
    inflight: int = 0
    max_inflight: int = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        received = Received(dict(request.headers), body, time.monotonic())
        self.requests.append(received)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.inflight -= 1
        status = self.script.pop(0) if self.script else self.default
        self.answered.append(status)
        received.status = status
        return web.Response(status=status, text=f"answer {status}", headers=self.headers)

    @property
    def delivered(self) -> list[Received]:
        """The requests answered with a 2xx, in the order they arrived."""
        return [r for r in self.requests if 200 <= r.status < 300]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner, self.port = await serve(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


def settled(shipcast: ShipcastProcess, event_id: str,
            statuses: Sequence[str] = ("delivered", "dead")) -> Callable[[], Any]:
    """For :func:`eventually`: the event's deliveries once they are in one of ``statuses``."""
    async def check() -> list[dict[str, Any]]:
        rows = await shipcast.services.store.list_deliveries(event_id=event_id)
        return [row for row in rows if row["status"] in statuses]
    return check


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on a free loopback port; clean up the runner when done."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def applied(settings: Settings, doc: dict[str, Any]) -> AsyncIterator[Services]:
    """Services connected to the broker, with the partners of ``doc`` applied
    (for tests that run the workers as real processes)."""
    from shipcast.app.reconcile import apply_partners

    services = Services.from_settings(settings)
    await services.start(wait_for_broker=True)
    try:
        await apply_partners(services, load_partners(doc, "test", catalog=services.registry.catalog))
        yield services
    finally:
        await services.close()


def partners_doc(partner_id: str, url: str, events: Sequence[str] = ("*",), **endpoint: Any) -> dict[str, Any]:
    return {"partners": [{
        "id": partner_id, "name": partner_id.title(),
        "channels": {"webhook": {"endpoints": [{"id": "main", "url": url, "events": list(events), **endpoint}]}},
    }]}


class ShipcastProcess:
    """shipcast's API and channel workers in this process, on a real port."""

    def __init__(self, settings: Settings, channels: Sequence[str] | None = None, *, workers: bool = True,
                 plugins: Sequence[object] = ()) -> None:
        self.settings = settings
        self.channels = channels
        self.with_workers = workers
        self.services = Services.from_settings(settings, plugins=plugins)
        self.base_url = f"http://127.0.0.1:{settings.port}"

    async def __aenter__(self) -> ShipcastProcess:
        await self.services.start()
        self.workers = []
        if self.with_workers:
            names = list(self.channels) if self.channels is not None else sorted(self.services.registry.channels)
            self.workers = await start_workers(self.services, names)
        self.server = api_server(self.services, log_level="warning")
        self._serving = asyncio.create_task(self._serve())
        await eventually(lambda: self.server.started or self._serving.done(), timeout=10)
        if self._serving.done():
            await stop_workers(self.workers)
            await self.services.close()
            self._serving.result()
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=30,
                                      headers={"authorization": f"Bearer {self.settings.api_token}"})
        return self

    async def _serve(self) -> None:
        # uvicorn answers a port it cannot bind with SystemExit, which would stop
        # the test session's event loop itself: one test's error, not every test's.
        try:
            await self.server.serve()
        except SystemExit as exit:
            raise RuntimeError(f"the API did not start on {self.base_url} (exit {exit.code})") from None

    async def apply(self, doc: dict[str, Any]) -> None:
        await apply_partners(self.services, load_partners(doc, "test", catalog=self.services.registry.catalog))

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        self.server.should_exit = True
        await self._serving
        await stop_workers(self.workers)
        await self.services.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPCAST_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"SHIPCAST_{name.upper()}"] = str(value)
    return env


class Subprocess:
    """A real ``shipcast`` command in its own process."""

    def __init__(self, settings: Settings, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = [str(Path(sys.executable).with_name("shipcast")), *args]
        self.env = {**settings_env(settings), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Subprocess:
        # A file, not a pipe: a process logging every delivery would fill a pipe nobody reads and block.
        self.output = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.args, env=self.env, stdout=self.output,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def read(self) -> bytes:
        """What it printed so far (read at an offset: the file's position is
        shared with the process writing it, and must not move under it)."""
        size = os.fstat(self.output.fileno()).st_size
        return os.pread(self.output.fileno(), size, 0)

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> str:
        """Stop gracefully (SIGTERM; SIGKILL after 55 s, past shipcast's own
        10 s for a start-up, 30 s drain and 5 s for what it cancels) and
        return the output."""
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=55)
        except subprocess.TimeoutExpired:
            self.kill()
        if not self.output.closed:
            self.output.seek(0)
            self.text = self.output.read().decode(errors="replace")
            self.output.close()
        return self.text


def run_cli(settings: Settings, *args: str, input: str | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``shipcast ARGS`` to completion."""
    return subprocess.run([str(Path(sys.executable).with_name("shipcast")), *args],
                          env={**settings_env(settings), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, input=input)


class TcpProxy:
    """A TCP proxy in front of a real server (RabbitMQ, PostgreSQL).

    ``cut()`` drops every connection and refuses new ones, as an outage does;
    ``freeze()`` keeps connections open but stops passing bytes, as a hung
    server does; ``restore()`` ends either."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.upstream)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._connect_upstream()
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for task in (asyncio.create_task(self._pipe(reader, up_writer)),
                     asyncio.create_task(self._pipe(up_reader, writer))):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @property
    def connections(self) -> int:
        """Connections open through it: each is two pipes, one a way, until either end closes."""
        return len(self._pipes) // 2

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        self._flowing.clear()

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._pipes):
            task.cancel()
        await self._server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        self._flowing.set()
        if self._server is not None:
            await self.cut()
