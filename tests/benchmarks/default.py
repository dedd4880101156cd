"""The default path (scenario 13): ``shipcast run`` as the README runs it,
with every built-in channel and the SQLite store, one process per CPU, and
one partner whose webhook endpoint is a fast receiver in a process of its
own. Events come in over HTTP, in batches of 100 (4 clients) and one per
request (32 clients); throughput is end to end, from the first post to the
last webhook's arrival with the archive's and the tracking channel's queues
drained too.

In the same run, rounds taking turns so that a slow moment of the machine
does not fall on one contender:

* the default path's floor (``floor_default.py``): the same job, as many
  processes, with nothing but aio-pika and aiohttp;
* ``shipcast run`` (one process per CPU), and ``shipcast run --processes 1``,
  which shows what the processes buy;
* scenario 1's floor (one queue, events published straight to RabbitMQ),
  which is what a user compares with.

"Drained" is a queue with no message ready (a passive declare, polled every
20 ms); the last prefetch window may still be in its consumers' hands then,
the floor's as shipcast's. CPU per event is the CPU time of every process of
the contender (the supervisor and its children) divided by the events.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import httpx

from .common import BIN, MANAGEMENT, Proc, Receiver, ReceiverProcess, Vhost, answering, events

#: (label, events per request, concurrent clients) for each way events come in.
MODES = (("batches of 100, 4 clients", 100, 4), ("one per request, 32 clients", 1, 32))
HEADERS = {"authorization": "Bearer bench", "content-type": "application/json"}
FLOOR_PORT = 18124


def cpus() -> int:
    """What ``shipcast run`` starts one process for, by default."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Contender:
    """One side of the comparison, running: its processes, its port, its three queues."""

    proc: Proc
    base: str
    queues: Sequence[str]
    vhost: Vhost


async def consumers_attached(vhost: Vhost, queues: Sequence[str], count: int, proc: Proc,
                             timeout: float = 120) -> None:
    """Wait until each queue has ``count`` consumers (a passive declare's count is current)."""
    connection = await aio_pika.connect(vhost.amqp_url)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + timeout
        for name in queues:
            while True:
                try:
                    queue = await channel.declare_queue(name, passive=True)
                    if (queue.declaration_result.consumer_count or 0) >= count:
                        break
                except aio_pika.exceptions.ChannelClosed:  # not declared yet
                    channel = await connection.channel()
                proc.check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} never had {count} consumers")
                await asyncio.sleep(0.2)


@asynccontextmanager
async def shipcast(tmp: Path, receiver: ReceiverProcess, processes: int | None) -> Any:
    """``shipcast run`` as the README runs it: every installed channel, SQLite,
    the partners file applied at start; ``processes`` None is the default."""
    from .run import Shipcast, webhook_doc

    with Vhost() as vhost:
        ship = Shipcast(vhost, tmp, plugins="")  # empty: every installed channel
        partners = tmp / f"{vhost.name}.yaml"
        partners.write_text(json.dumps(webhook_doc(["acme"], lambda p: receiver.url())))  # JSON is YAML
        ship.env["SHIPCAST_CONFIG"] = str(partners)
        ship.env["SHIPCAST_SECRET_KEY_FILE"] = str(tmp / f"{vhost.name}.key")
        proc = ship.start("run", *([] if processes is None else ["--processes", str(processes)]))
        try:
            queues = ["shipcast.archive", "shipcast.tracking", "shipcast.webhook"]
            await consumers_attached(vhost, queues, processes or cpus(), proc)
            await answering("http://127.0.0.1:18123", proc, "/readyz")
            profile(ship, proc)
            yield Contender(proc, "http://127.0.0.1:18123", queues, vhost)
        finally:
            ship.stop()


def profile(ship: Any, proc: Proc) -> None:
    """With BENCH_PROFILE=FOLDER, sample each of the run's processes with py-spy
    (the supervisor only waits); the profiles are written when it stops."""
    folder = os.environ.get("BENCH_PROFILE")
    if not folder:
        return
    for child in proc.ps.children():
        out = Path(folder) / f"run-{proc.ps.pid}-{child.pid}.txt"
        ship.spies.append(subprocess.Popen([str(BIN / "py-spy"), "record", "-r", "100", "-f", "raw", "-o", str(out),
                                            "--pid", str(child.pid)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


@asynccontextmanager
async def floor(receiver: ReceiverProcess, processes: int) -> Any:
    from .floor_default import QUEUES

    with Vhost() as vhost:
        proc = Proc([sys.executable, "-m", "tests.benchmarks.floor_default", vhost.amqp_url, receiver.url(),
                     str(FLOOR_PORT), str(processes)])
        try:
            await consumers_attached(vhost, list(QUEUES), processes, proc)
            base = f"http://127.0.0.1:{FLOOR_PORT}"
            await answering(base, proc, "/v1/events")
            yield Contender(proc, base, list(QUEUES), vhost)
        finally:
            proc.stop()


async def emptied(vhost: Vhost, queues: Sequence[str]) -> dict[str, float]:
    """When each queue was first seen with no message ready (call it once nothing more is published)."""
    seen: dict[str, float] = {}
    connection = await aio_pika.connect(vhost.amqp_url)
    async with connection:
        channel = await connection.channel()
        while len(seen) < len(queues):
            for name in queues:
                if name not in seen:
                    queue = await channel.declare_queue(name, passive=True)
                    if not queue.declaration_result.message_count:
                        seen[name] = time.perf_counter()
            await asyncio.sleep(0.02)
    return seen


async def settled(vhost: Vhost, queues: Sequence[str], timeout: float = 120) -> None:
    """Wait until no message is ready or unacknowledged in any of ``queues``
    (the management API's figures, up to five seconds old)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=MANAGEMENT, auth=("guest", "guest")) as http:
        for name in queues:
            while time.monotonic() < deadline:
                stats = (await http.get(f"/api/queues/{vhost.name}/{name}")).json()
                if stats.get("messages", 1) == 0:
                    break
                await asyncio.sleep(0.5)


async def end_to_end(contender: Contender, receiver: ReceiverProcess, n: int, per_request: int, clients: int,
                     ) -> dict[str, float]:
    """Post ``n`` events, ``per_request`` a request from ``clients`` clients;
    return the throughput, the ingest rate, CPU per event and when each part finished."""
    batch = events(n)
    ids = {event.event_id for event in batch}
    bodies = [event.to_json() for event in batch] if per_request == 1 else [
        b"[" + b",".join(event.to_json() for event in batch[i:i + per_request]) + b"]"
        for i in range(0, n, per_request)]
    await receiver.forget()
    async with aiohttp.ClientSession(contender.base, headers=HEADERS,
                                     connector=aiohttp.TCPConnector(limit=clients)) as http:
        semaphore = asyncio.Semaphore(clients)

        async def post(body: bytes) -> None:
            async with semaphore, http.post("/v1/events", data=body) as response:
                assert response.status == 202, await response.text()

        cpu = contender.proc.cpu()
        started = time.perf_counter()
        await asyncio.gather(*(post(body) for body in bodies))
        posted = time.perf_counter()
    stores = [name for name in contender.queues if not name.endswith("webhook")]
    drained, arrivals = await asyncio.gather(emptied(contender.vhost, stores), receiver.wait_for(ids, 600))
    last = max(arrivals[i] for i in ids)
    end = max([last, *drained.values()])
    await settled(contender.vhost, contender.queues)
    return {"rate": n / (end - started), "ingest": n / (posted - started),
            "cpu": (contender.proc.cpu() - cpu) / n * 1e6, "posted": posted - started,
            "webhooks": last - started, **{name.split(".")[-1]: t - started for name, t in drained.items()}}


async def default(tmp: Path, quick: bool) -> None:
    from .run import floor_rate, report

    sizes = {MODES[0][0]: 2000 if quick else 10000, MODES[1][0]: 1000 if quick else 4000}
    rounds = 2 if quick else 3
    processes = cpus()
    names = ("floor", "shipcast", "shipcast1")
    figures: dict[tuple[str, str], list[dict[str, float]]] = {(c, m[0]): [] for c in names for m in MODES}
    one_queue: list[float] = []
    async with ReceiverProcess() as receiver:
        for turn in range(rounds):
            async with Receiver() as local:  # scenario 1, as it runs there
                one_queue.append(await floor_rate(local, sizes[MODES[0][0]]))
            print(f"13. round {turn + 1}: one-queue floor {one_queue[-1]:.0f} ev/s", flush=True)
            for name in names[turn % 3:] + names[:turn % 3]:
                if name == "floor":
                    running = floor(receiver, processes)
                else:
                    running = shipcast(tmp, receiver, None if name == "shipcast" else 1)
                async with running as contender:
                    for label, per_request, clients in MODES:
                        got = await end_to_end(contender, receiver, sizes[label], per_request, clients)
                        figures[name, label].append(got)
                        print(f"13. round {turn + 1}: {name}, {label}: " + ", ".join(
                            f"{k} {v:.2f}" if v < 100 else f"{k} {v:.0f}" for k, v in got.items()), flush=True)

    def median(name: str, label: str, key: str) -> float:
        return statistics.median(got[key] for got in figures[name, label])

    one = statistics.median(one_queue)
    report(f"13. one-queue floor (scenario 1), {sizes[MODES[0][0]]:,} events", one, "ev/s")
    for label, _, _ in MODES:
        base = median("floor", label, "rate")
        report(f"13. default-path floor, {processes} processes, {label}", base, "ev/s", one, "one-queue floor")
        report(f"13. shipcast run ({processes} processes), {label}", median("shipcast", label, "rate"), "ev/s",
               base, "floor", "≥ 0.8× floor")
        report(f"13. shipcast run ({processes} processes), {label}", median("shipcast", label, "rate"), "ev/s",
               one, "one-queue floor")
        report(f"13. shipcast run --processes 1, {label}", median("shipcast1", label, "rate"), "ev/s",
               base, "floor")
        report(f"13. shipcast run ({processes} processes) over --processes 1, {label}",
               median("shipcast", label, "rate") / median("shipcast1", label, "rate"), "×")
        report(f"13. ingest alone (to the last 202), floor, {label}", median("floor", label, "ingest"), "ev/s")
        for name, what in (("shipcast", f"shipcast run ({processes} processes)"),
                           ("shipcast1", "shipcast run --processes 1")):
            report(f"13. ingest alone, {what}, {label}", median(name, label, "ingest"), "ev/s",
                   median("floor", label, "ingest"), "floor")
        cpu = median("floor", label, "cpu")
        report(f"13. CPU per event, floor's processes, {label}", cpu, "µs")
        for name, what in (("shipcast", f"shipcast run ({processes} processes)"),
                           ("shipcast1", "shipcast run --processes 1")):
            report(f"13. CPU per event, {what}, {label}", median(name, label, "cpu"), "µs", cpu, "floor")
