"""What every benchmark shares: a receiver that records arrival times, fresh
RabbitMQ virtual hosts, sample events, and process helpers."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
from aiohttp import web

from tests.bound import example

ROOT = Path(__file__).resolve().parents[2]
AMQP_HOST = os.environ.get("BENCH_AMQP_HOST", "127.0.0.1:5672")
MANAGEMENT = "http://127.0.0.1:15672"
BIN = Path(sys.executable).parent


@dataclass
class Receiver:
    """The partner's endpoint: answers after ``delay`` seconds and records when
    each event arrived (``webhook-id``, or the floor's and Celery's own header)."""

    delay: float = 0.0
    arrivals: dict[str, float] = field(default_factory=dict)
    count: int = 0
    port: int = 0
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.perf_counter()
        event_id = request.headers.get("webhook-id") or request.headers.get("x-event-id") or ""
        self.arrivals.setdefault(event_id, now)
        self.count += 1
        if self.expected and len(self.arrivals) >= self.expected:
            self._done.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(text="ok")

    def url(self, path: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def expect(self, n: int) -> None:
        self.arrivals.clear()
        self.count = 0
        self.expected = n
        self._done = asyncio.Event()

    async def wait(self, timeout: float) -> float:
        """Wait until every expected event arrived; return the last arrival."""
        await asyncio.wait_for(self._done.wait(), timeout)
        return max(self.arrivals.values())

    async def _arrivals(self, request: web.Request) -> web.Response:
        return web.json_response(self.arrivals)

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response(len(self.arrivals))

    async def _forget(self, request: web.Request) -> web.Response:
        self.arrivals.clear()
        return web.Response(text="ok")

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_get("/arrivals", self._arrivals)
        app.router.add_delete("/arrivals", self._forget)
        app.router.add_get("/arrivals/count", self._count)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


class ReceiverProcess:
    """A :class:`Receiver` in a process of its own, for a measurement whose
    own event loop must not serve the partner too (the OMS's). Arrival times
    are ``time.perf_counter()`` there, the system's monotonic clock, so they
    compare with this process's."""

    def __init__(self) -> None:
        self.port = 0

    def url(self, path: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def arrivals(self) -> dict[str, float]:
        async with httpx.AsyncClient() as http:
            return dict((await http.get(self.url("arrivals"))).json())

    async def forget(self) -> None:
        """Drop the arrivals recorded so far (a measurement's own are fewer to fetch)."""
        async with httpx.AsyncClient() as http:
            (await http.delete(self.url("arrivals"))).raise_for_status()

    async def wait_for(self, ids: set[str], timeout: float) -> dict[str, float]:
        """The arrivals, once every one of ``ids`` arrived. Until as many
        have arrived, only their count is asked for (a burst is not slowed by
        sending the whole record twice a second)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as http:
            while True:
                late = time.monotonic() > deadline
                if late or (await http.get(self.url("arrivals/count"))).json() >= len(ids):
                    arrived = dict((await http.get(self.url("arrivals"))).json())
                    if ids <= arrived.keys():
                        return arrived
                    if late:
                        raise TimeoutError(f"{len(ids - arrived.keys())} events never reached the receiver")
                await asyncio.sleep(0.5)

    async def __aenter__(self) -> ReceiverProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.common", "receiver"], cwd=ROOT,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(await asyncio.to_thread(self.proc.stdout.readline))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def _serve_receiver() -> None:
    async with Receiver() as receiver:
        print(receiver.port, flush=True)
        await asyncio.Event().wait()


class Vhost:
    """A fresh RabbitMQ virtual host per measurement, deleted afterwards."""

    def __init__(self) -> None:
        self.name = f"bench-{uuid.uuid4().hex[:8]}"
        self.http = httpx.Client(base_url=MANAGEMENT, auth=("guest", "guest"), timeout=60)

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{AMQP_HOST}/{self.name}"

    def __enter__(self) -> Vhost:
        self.http.put(f"/api/vhosts/{self.name}").raise_for_status()
        self.http.put(f"/api/permissions/{self.name}/guest",
                      json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.delete(f"/api/vhosts/{self.name}")
        self.http.close()


def events(n: int, partners: Sequence[str] = ("acme",), event_type: str = "OFD") -> list[Any]:
    """``n`` realistic events (about 1 KB each), spread over ``partners``."""
    template = example(event_type, partner_id=partners[0])
    out = []
    for i in range(n):
        out.append(template.model_copy(update={
            "event_id": f"evt_{uuid.uuid4().hex}", "partner_id": partners[i % len(partners)], "sequence": i}))
    return out


class Proc:
    """A benchmark participant in its own process, always stopped. Its output
    goes to a file, not a pipe: a process logging every failed delivery
    would block once a pipe nobody reads until the end had filled."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.output = tempfile.TemporaryFile()
        self.process = subprocess.Popen(list(args), env={**os.environ, **(env or {})}, cwd=cwd,
                                        stdout=self.output, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.process.pid)

    def rss(self) -> int:
        """Resident memory of the process and its children, in bytes."""
        return sum(self.rss_each())

    def rss_each(self) -> list[int]:
        """Resident memory of the process and of each of its children, in bytes."""
        found = []
        for proc in [self.ps, *self.ps.children(recursive=True)]:
            try:
                found.append(proc.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        return found

    def cpu(self) -> float:
        """CPU seconds (user and system) used so far by the process and its children."""
        return cpu_seconds([self.ps, *self.ps.children(recursive=True)])

    def stop(self) -> str:
        if self.process.poll() is None:
            for child in self.ps.children(recursive=True):
                child.terminate()
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for child in self.ps.children(recursive=True):
                child.kill()
            self.process.kill()
            self.process.wait()
        self.output.seek(0)
        return self.output.read().decode(errors="replace")

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.process.args} exited early:\n{self.stop()}")


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    """CPU seconds (user and system) used so far by these processes."""
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def broker_cpu() -> float:
    """CPU seconds used so far by the RabbitMQ node(s) on this machine."""
    return cpu_seconds([p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("beam")])


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


if __name__ == "__main__" and sys.argv[1:] == ["receiver"]:
    asyncio.run(_serve_receiver())


async def answering(base: str, proc: Proc, path: str = "/readyz") -> None:
    """Wait until ``proc``'s HTTP server at ``base`` answers ``path``: a GET of
    ``/readyz`` answers 200, a POST of an empty batch anywhere else 200 or 202."""
    headers = {"authorization": "Bearer bench", "content-type": "application/json"}
    async with aiohttp.ClientSession(base) as http:
        for _ in range(600):
            try:
                async with http.request("GET" if path == "/readyz" else "POST", path,
                                        data=b"[]", headers=headers) as answer:
                    if answer.status in (200, 202):
                        return
            except aiohttp.ClientError:
                pass
            proc.check()
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{base}{path} never answered")
