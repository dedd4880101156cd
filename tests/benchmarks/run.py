"""shipcast's benchmarks, against the floor and against Celery, in one run.

    make bench            # the full run (about 55 minutes on 2 cores: scenarios 13 and 14 take about 35)
    make bench QUICK=1    # smaller counts, for a quick look

Every figure is printed as one line with its ratio to the baseline measured
in the same run; absolute numbers are context, ratios are what counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from .acks import acks
from .common import BIN, Proc, Receiver, Vhost, answering, broker_cpu, events, mean, percentile
from .default import default
from .filters import filters
from .floor import publish as floor_publish
from .isolation import isolation_many
from .tracing import tracing
from .writepath import writepath

HERE = Path(__file__).resolve().parent
RESULTS: list[str] = []
if __name__ == "__main__":  # scenarios in modules of their own import report() from here: this very module
    sys.modules.setdefault(f"{__package__}.run", sys.modules[__name__])


def report(name: str, value: float, unit: str, baseline: float | None = None, label: str = "",
           target: str = "") -> None:
    ratio = f"  {value / baseline:5.2f}× {label}" if baseline else ""
    line = f"{name:<52} {value:>10.1f} {unit:<8}{ratio}{'  (target ' + target + ')' if target else ''}"
    RESULTS.append(line)
    print(line, flush=True)


# -- running the contenders ---------------------------------------------------------

class Shipcast:
    """shipcast with its own virtual host and SQLite store; workers or the API
    run as real `shipcast` processes, the partners are applied in-process."""

    def __init__(self, vhost: Vhost, tmp: Path, plugins: str = "webhook", extra_path: str = "",
                 database_url: str = "") -> None:
        self.vhost = vhost
        self.env = {
            "SHIPCAST_AMQP_URL": vhost.amqp_url,
            "SHIPCAST_DATABASE_URL": database_url or f"sqlite+aiosqlite:///{tmp / f'{vhost.name}.db'}",
            "SHIPCAST_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            "SHIPCAST_API_TOKEN": "bench",
            "SHIPCAST_PLUGINS": plugins,
            "SHIPCAST_CONFIG": str(tmp / "none.yaml"),
            "SHIPCAST_PORT": "18123",
        }
        if extra_path:
            self.env["PYTHONPATH"] = extra_path
        self.procs: list[Proc] = []
        self.spies: list[subprocess.Popen[bytes]] = []

    def settings(self) -> Any:
        from shipcast.settings import Settings

        for key, value in self.env.items():
            os.environ[key] = value
        return Settings()

    async def apply(self, doc: dict[str, Any]) -> None:
        from shipcast.app.reconcile import apply_partners
        from shipcast.app.services import Services
        from shipcast.model.partners import load_partners

        services = Services.from_settings(self.settings())
        await services.start(wait_for_broker=True)
        try:
            await apply_partners(services, load_partners(doc, "bench", catalog=services.registry.catalog))
        finally:
            await services.close()

    def start(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        command = [str(BIN / "shipcast"), *args]
        proc = Proc(command, env={**self.env, **(env or {})})
        self.procs.append(proc)
        return proc

    async def publisher(self) -> Any:
        from shipcast.app.publisher import Publisher

        publisher = Publisher(settings=self.settings())
        await publisher.__aenter__()
        return publisher

    def profile(self) -> None:
        """With BENCH_PROFILE=FOLDER, sample every shipcast process with py-spy
        from now on (call once they are up); profiles are written at stop()."""
        folder = os.environ.get("BENCH_PROFILE")
        if folder:
            for proc in list(self.procs):
                out = Path(folder) / f"{proc.process.args[1]}-{proc.process.pid}.txt"
                self.spies.append(subprocess.Popen([str(BIN / "py-spy"), "record", "-r", "200", "-f", "raw",
                                                    "-o", str(out), "--pid", str(proc.process.pid)],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        for proc in self.procs:
            proc.stop()


def webhook_doc(partners: Sequence[str], url: Callable[[str], str], channels: Sequence[str] = ()) -> dict[str, Any]:
    return {"partners": [{"id": p, "name": p, "channels": {
        "webhook": {"endpoints": [{"id": "main", "url": url(p), "events": ["*"]}]},
        **{name: {} for name in channels}}} for p in partners]}


async def wait_consuming(vhost: Vhost, queue: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(auth=("guest", "guest")) as http:
        while time.monotonic() < deadline:
            response = await http.get(f"http://127.0.0.1:15672/api/queues/{vhost.name}/{queue}")
            if response.status_code == 200 and response.json().get("consumers", 0) > 0:
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"nobody consumes {queue}")


async def publish_in_windows(publish: Callable[[Sequence[Any]], Awaitable[Any]], items: Sequence[Any],
                             window: int = 100) -> None:
    for start in range(0, len(items), window):
        await publish(items[start:start + window])


CPU_PER_EVENT: dict[str, float] = {}


async def measure_delivery(receiver: Receiver, n: int, send: Callable[[], Awaitable[None]],
                           timeout: float = 600, consumer: Proc | None = None, name: str = "") -> float:
    """Events per second from the first publish to the last arrival; with a
    consumer process, also its CPU time per event (in CPU_PER_EVENT[name])."""
    receiver.expect(n)
    cpu = consumer.cpu() if consumer else 0.0
    started = time.perf_counter()
    await send()
    last = await receiver.wait(timeout)
    if consumer is not None:
        CPU_PER_EVENT[name] = (consumer.cpu() - cpu) / n * 1e6
    return n / (last - started)


# -- contenders for webhook throughput ----------------------------------------------

async def floor_rate(receiver: Receiver, n: int, prefetch: int = 256) -> float:
    with Vhost() as vhost:
        proc = Proc([sys.executable, "-m", "tests.benchmarks.floor", vhost.amqp_url, receiver.url(), str(prefetch)])
        try:
            await wait_consuming(vhost, "floor.webhook")
            bodies = [(e.event_id, e.to_json()) for e in events(n)]
            return await measure_delivery(receiver, n, lambda: floor_publish(vhost.amqp_url, bodies),
                                          consumer=proc, name="floor")
        finally:
            proc.stop()


async def shipcast_rate(receiver: Receiver, n: int, tmp: Path, partners: int = 1, database_url: str = "") -> float:
    with Vhost() as vhost:
        ship = Shipcast(vhost, tmp, database_url=database_url)
        try:
            ids = [f"p{i}" for i in range(partners)] if partners > 1 else ["acme"]
            await ship.apply(webhook_doc(ids, lambda p: receiver.url(f"hook/{p}")))
            worker = ship.start("worker", "--channel", "webhook")
            await wait_consuming(vhost, "shipcast.webhook")
            ship.profile()
            publisher = await ship.publisher()
            batch = events(n, ids)
            try:
                return await measure_delivery(receiver, n, lambda: publish_in_windows(
                    publisher.publish_valid, batch), consumer=worker, name=f"shipcast-{partners}")
            finally:
                await publisher.close()
        finally:
            ship.stop()


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one measurement (BENCH_POSTGRES_URL
    names the server's admin database)."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    admin = os.environ.get("BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    name = f"shipcast_bench_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        async with engine.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await engine.dispose()


async def celery_rate(receiver: Receiver, n: int, pool: str, concurrency: int) -> float:
    with Vhost() as vhost:
        env = {"BENCH_CELERY_BROKER": vhost.amqp_url}
        proc = Proc([str(BIN / "celery"), "-A", "tests.benchmarks.celery_app", "worker", "--pool", pool,
                     "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
                     "--without-heartbeat", "--loglevel", "WARNING"], env=env)
        try:
            from . import celery_app

            await wait_consuming(vhost, "celery")
            batch = [(e.event_id, e.to_json().decode()) for e in events(n)]

            async def send() -> None:
                def enqueue() -> None:
                    with celery_app.app.connection_for_write(vhost.amqp_url) as connection:
                        for event_id, body in batch:
                            celery_app.post_webhook.apply_async((receiver.url(), event_id, body),
                                                                connection=connection)

                await asyncio.to_thread(enqueue)

            return await measure_delivery(receiver, n, send)
        finally:
            proc.stop()


async def throughput(tmp: Path, quick: bool) -> None:
    await throughput_fast(tmp, quick)
    await throughput_slow(tmp, quick)


async def throughput_fast(tmp: Path, quick: bool) -> None:
    await _throughput(tmp, quick, [(0.0, "fast receiver")])


async def throughput_slow(tmp: Path, quick: bool) -> None:
    await _throughput(tmp, quick, [(0.2, "receiver answering in 200 ms")])


async def _throughput(tmp: Path, quick: bool, cases: Sequence[tuple[float, str]]) -> None:
    only_shipcast = bool(os.environ.get("BENCH_SHIPCAST_ONLY"))
    for delay, label in cases:
        n = (2000 if quick else 10000) if delay == 0 else (1000 if quick else 3000)
        scenario = "1" if delay == 0 else "2"
        async with Receiver(delay=delay) as receiver:
            floor = await floor_rate(receiver, n)
            ship = await shipcast_rate(receiver, n, tmp)
            ship_cpu = CPU_PER_EVENT["shipcast-1"]
            async with postgres_database() as database_url:
                ship_pg = await shipcast_rate(receiver, n, tmp, database_url=database_url)
            ship_pg_cpu = CPU_PER_EVENT["shipcast-1"]
            if not only_shipcast:
                celery_threads = await celery_rate(receiver, n // (1 if delay == 0 else 5), "threads", 32)
                celery_prefork = await celery_rate(receiver, n // (2 if delay == 0 else 20), "prefork", 4)
        report(f"{scenario}. floor (aio-pika + aiohttp), {label}", floor, "ev/s")
        report(f"{scenario}. shipcast webhooks, {label}", ship, "ev/s", floor, "floor", "≥ 0.8× floor")
        report(f"{scenario}. shipcast webhooks, PostgreSQL store, {label}", ship_pg, "ev/s", floor, "floor")
        report(f"{scenario}. CPU per event: floor consumer", CPU_PER_EVENT["floor"], "µs")
        report(f"{scenario}. CPU per event: shipcast worker", ship_cpu, "µs", CPU_PER_EVENT["floor"], "floor")
        report(f"{scenario}. CPU per event: shipcast worker, PostgreSQL store", ship_pg_cpu, "µs",
               CPU_PER_EVENT["floor"], "floor")
        if only_shipcast:
            continue
        report(f"{scenario}. Celery + requests, 32 threads, {label}", celery_threads, "ev/s", floor, "floor")
        report(f"{scenario}. Celery + requests, prefork 4, {label}", celery_prefork, "ev/s", floor, "floor")
        report(f"{scenario}. shipcast vs Celery 32 threads, {label}", ship / celery_threads, "×",
               target="≥ 3×" if delay else "")


# -- latency ---------------------------------------------------------------------------

async def latency(tmp: Path, quick: bool) -> None:
    rate, seconds = 100, (15 if quick else 60)
    async with Receiver() as receiver:
        with Vhost() as vhost:
            ship = Shipcast(vhost, tmp)
            try:
                await ship.apply(webhook_doc(["acme"], lambda p: receiver.url()))
                ship.start("worker", "--channel", "webhook")
                await wait_consuming(vhost, "shipcast.webhook")
                publisher = await ship.publisher()
                batch = events(rate * seconds)
                receiver.expect(len(batch))
                sent: dict[str, float] = {}
                started = time.perf_counter()
                try:
                    for i, event in enumerate(batch):
                        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
                        sent[event.event_id] = time.perf_counter()
                        asyncio.ensure_future(publisher.publish_valid([event]))
                    await receiver.wait(60)
                finally:
                    await publisher.close()
            finally:
                ship.stop()
    lat = [(receiver.arrivals[i] - t) * 1000 for i, t in sent.items()]
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        report(f"3. propagation latency at {rate} ev/s for {seconds} s, {name}", percentile(lat, q), "ms",
               target="p99 ≤ 100 ms" if name == "p99" else "")
    report("3. the case this project comes from promised", 90_000, "ms", percentile(lat, 0.99),
           "shipcast p99 (times faster)")


# -- HTTP ingest --------------------------------------------------------------------------

async def ingest(tmp: Path, quick: bool) -> None:
    """Benchmark 4, in rounds (one quick, three full): each round the floor,
    then a fresh `shipcast api`, on virtual hosts of their own; the figures
    are the medians, each round's ratios printed too (single requests swing
    widely from run to run on a shared machine)."""
    n = 3000 if quick else 20000
    bodies = [(e.event_id, e.to_json()) for e in events(n)]
    rounds: list[dict[str, float]] = []
    for turn in range(1 if quick else 3):
        got = {"floor": await _floor_publish_rate(bodies), **await _ingest_rates(tmp, bodies)}
        rounds.append(got)
        print(f"4. round {turn + 1}: floor {got['floor']:.0f} ev/s; one per request {got['single']:.0f} ev/s "
              f"({got['single'] / got['floor']:.2f}x), {got['single_cpu'] * 1e6:.0f} us API CPU each; batches "
              f"{got['batch']:.0f} ev/s ({got['batch'] / got['floor']:.2f}x)", flush=True)

    def median(key: str) -> float:
        return statistics.median(got[key] for got in rounds)

    floor = median("floor")
    report("4. floor: confirmed publishes, windows of 100", floor, "ev/s")
    report("4. POST /v1/events, one event per request (32 clients)", median("single"), "ev/s", floor, "floor")
    report("4. POST /v1/events, batches of 100 (4 clients)", median("batch"), "ev/s", floor, "floor")
    report("4. API CPU per event, one per request", median("single_cpu") * 1e6, "µs")
    report("4. API CPU per event, batches of 100", median("batch_cpu") * 1e6, "µs")


async def _floor_publish_rate(bodies: Sequence[tuple[str, bytes]]) -> float:
    with Vhost() as vhost:
        started = time.perf_counter()
        await floor_publish(vhost.amqp_url, bodies)
        return len(bodies) / (time.perf_counter() - started)


async def _ingest_rates(tmp: Path, bodies: Sequence[tuple[str, bytes]]) -> dict[str, float]:
    """`shipcast api` taking a fifth of ``bodies`` one per request (32
    clients), then all of them in batches of 100 (4 clients): rates, and the
    API's CPU per event."""
    n = len(bodies)
    with Vhost() as vhost:
        ship = Shipcast(vhost, tmp, plugins="webhook,archive")
        try:
            await ship.apply({"partners": [{"id": "acme", "name": "acme"}]})  # the archive takes every event
            api = ship.start("api")
            base = "http://127.0.0.1:18123"
            # The load comes from aiohttp: httpx's client would be the bottleneck (DESIGN.md).
            headers = {"authorization": "Bearer bench", "content-type": "application/json"}
            async with aiohttp.ClientSession(base, headers=headers,
                                             connector=aiohttp.TCPConnector(limit=64)) as http:
                await answering(base, api)
                ship.profile()  # BENCH_PROFILE=FOLDER: the API under py-spy
                singles = [body for _, body in bodies[: n // 5]]
                semaphore = asyncio.Semaphore(32)

                async def post(body: bytes) -> None:
                    async with semaphore, http.post("/v1/events", data=body) as response:
                        assert response.status == 202, await response.text()

                started, cpu = time.perf_counter(), api.cpu()
                await asyncio.gather(*(post(body) for body in singles))
                got = {"single": len(singles) / (time.perf_counter() - started),
                       "single_cpu": (api.cpu() - cpu) / len(singles)}
                batches = [b"[" + b",".join(b for _, b in bodies[i:i + 100]) + b"]" for i in range(0, n, 100)]
                semaphore = asyncio.Semaphore(4)
                started, cpu = time.perf_counter(), api.cpu()
                await asyncio.gather(*(post(batch) for batch in batches))
                got.update(batch=n / (time.perf_counter() - started), batch_cpu=(api.cpu() - cpu) / n)
                return got
        finally:
            ship.stop()


# -- fan-out -----------------------------------------------------------------------------

def install_bench_channels(tmp: Path) -> str:
    target = tmp / "bench-site"
    source = tmp / "plugin_pkg"
    shutil.copytree(HERE / "plugin_pkg", source)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True)
    return str(target)


async def fanout(tmp: Path, quick: bool) -> None:
    n = 2000 if quick else 10000
    site = install_bench_channels(tmp)
    sys.path.insert(0, site)
    rates: dict[int, float] = {}
    worker_cpu: dict[int, float] = {}
    rabbit_cpu: dict[int, float] = {}
    for channels in (["webhook"], ["webhook", "archive"], ["webhook", "archive", "noop1", "noop2", "noop3"]):
        async with Receiver() as receiver:
            with Vhost() as vhost:
                plugins = ",".join(["webhook", *(["archive"] if "archive" in channels else []),
                                    *(["noop1"] if "noop1" in channels else [])])
                ship = Shipcast(vhost, tmp, plugins=plugins, extra_path=site)
                try:
                    extra = [c for c in channels if c.startswith("noop")]
                    await ship.apply(webhook_doc(["acme"], lambda p: receiver.url(), extra))
                    worker = ship.start("worker", *[arg for c in channels for arg in ("--channel", c)])
                    for channel in channels:
                        await wait_consuming(vhost, f"shipcast.{channel}")
                    ship.profile()
                    publisher = await ship.publisher()
                    batch = events(n)
                    try:
                        receiver.expect(n)
                        cpu, broker = worker.cpu(), broker_cpu()
                        started = time.perf_counter()
                        await publish_in_windows(publisher.publish_valid, batch)
                        await receiver.wait(600)
                        await drained(vhost, [f"shipcast.{c}" for c in channels])
                        rates[len(channels)] = n / (time.perf_counter() - started)
                        worker_cpu[len(channels)] = (worker.cpu() - cpu) / n * 1e6
                        rabbit_cpu[len(channels)] = (broker_cpu() - broker) / n * 1e6
                    finally:
                        await publisher.close()
                finally:
                    ship.stop()
    one = rates[1]
    for count, rate in rates.items():
        plural = "s" if count > 1 else ""
        report(f"5. fan-out to {count} channel{plural}, every queue drained", rate, "ev/s", one, "one channel")
        report(f"5. fan-out to {count} channel{plural}: worker CPU per event", worker_cpu[count], "µs",
               worker_cpu[1], "one channel")
        report(f"5. fan-out to {count} channel{plural}: RabbitMQ CPU per event", rabbit_cpu[count], "µs",
               rabbit_cpu[1], "one channel")
    report("5. cost per channel added: wall time per event", (1 / rates[5] - 1 / rates[1]) / 4 * 1e6, "µs")
    report("5. cost per channel added: worker CPU per event", (worker_cpu[5] - worker_cpu[1]) / 4, "µs")
    report("5. cost per channel added: RabbitMQ CPU per event", (rabbit_cpu[5] - rabbit_cpu[1]) / 4, "µs")


async def drained(vhost: Vhost, queues: Sequence[str], timeout: float = 600) -> None:
    import aio_pika

    connection = await aio_pika.connect(vhost.amqp_url)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + timeout
        for name in queues:
            while time.monotonic() < deadline:
                queue = await channel.declare_queue(name, passive=True)
                if not queue.declaration_result.message_count:
                    break
                await asyncio.sleep(0.05)


# -- growth ------------------------------------------------------------------------------

async def growth(tmp: Path, quick: bool) -> None:
    n = 3000 if quick else 10000
    rates = {}
    for partners in (1, 100, 10_000):
        async with Receiver() as receiver:
            rates[partners] = await shipcast_rate(receiver, n, tmp, partners=partners)
    for partners, rate in rates.items():
        report(f"6. throughput with {partners:>6,} partners (own bindings and endpoints)", rate, "ev/s",
               rates[1], "one partner", "drop ≤ 20%" if partners > 1 else "")


# -- memory ------------------------------------------------------------------------------

async def memory(tmp: Path, quick: bool) -> None:
    n = 20_000 if quick else 100_000
    async with Receiver() as receiver:
        with Vhost() as vhost:
            ship = Shipcast(vhost, tmp, plugins="webhook,archive")
            try:
                await ship.apply(webhook_doc(["acme"], lambda p: receiver.url()))
                proc = ship.start("run")
                await wait_consuming(vhost, "shipcast.webhook")
                publisher = await ship.publisher()
                #: (seconds in, every process's RSS) each quarter second.
                samples: list[tuple[float, list[int]]] = []
                receiver.expect(n)
                started = time.perf_counter()

                async def sample() -> None:
                    while True:
                        samples.append((time.perf_counter() - started, proc.rss_each()))
                        await asyncio.sleep(0.25)

                sampler = asyncio.create_task(sample())
                try:
                    for i in range(0, n, 1000):  # keep the queue shallow: a soak, not a flood
                        await publish_in_windows(publisher.publish_valid, events(1000))
                        while len(receiver.arrivals) < i:
                            await asyncio.sleep(0.01)
                    await receiver.wait(600)
                finally:
                    sampler.cancel()
                    await publisher.close()
                elapsed = time.perf_counter() - started
            finally:
                ship.stop()
    # `shipcast run` is a supervisor and a process per CPU, each with its own
    # memory: the bound is per process, and the sum grows with the CPUs.
    largest = max(max(each, default=0) for _, each in samples) / 2**20
    peak = max(sum(each) for _, each in samples) / 2**20
    count = max(len(each) for _, each in samples)
    half = [sum(each) / 2**20 for t, each in samples if t >= elapsed / 2]
    third, fourth = half[: len(half) // 2], half[len(half) // 2:]
    report(f"7. peak RSS of a `shipcast run` process over {n:,} events", largest, "MiB", target="< 300 MiB")
    report(f"7. peak RSS of `shipcast run`, its {count} processes together", peak, "MiB")
    report("7. RSS growth over the second half of the soak", mean(fourth) - mean(third), "MiB",
           target="none")
    report(f"7. soak throughput ({elapsed:.0f} s)", n / elapsed, "ev/s")


# -- isolation: one endpoint hangs -------------------------------------------------------

async def isolation(tmp: Path, quick: bool) -> None:
    """Four healthy partners and a fifth taking a fifth of the events. The
    healthy four's throughput (a burst) and p99 latency (a steady rate, on a
    fresh worker) when the fifth's endpoint hangs until shipcast's timeout,
    against the same runs when it answers like the others."""
    n, rate, seconds = (2000, 100, 15) if quick else (8000, 100, 40)
    healthy = [f"p{i}" for i in range(4)]
    figures: dict[tuple[str, str], float] = {}
    async with Receiver() as good, Receiver(delay=3600) as hung:
        for case in ("baseline", "hanging"):
            fifth = hung if case == "hanging" else good
            for phase in ("burst", "steady"):
                with Vhost() as vhost:
                    ship = Shipcast(vhost, tmp)
                    try:
                        await ship.apply(webhook_doc(healthy + ["bad"], lambda p: (
                            fifth if p == "bad" else good).url(f"hook/{p}")))
                        worker = ship.start("worker", "--channel", "webhook")
                        await wait_consuming(vhost, "shipcast.webhook")
                        ship.profile()
                        publisher = await ship.publisher()
                        cpu = worker.cpu(), broker_cpu()
                        try:
                            if phase == "burst":
                                figures[case, phase] = await _healthy_burst(publisher, good, n, healthy)
                            else:
                                figures[case, phase] = await _healthy_p99(publisher, good, rate, seconds, healthy)
                            figures[case, phase + " cpu"] = worker.cpu() - cpu[0]
                            figures[case, phase + " broker cpu"] = broker_cpu() - cpu[1]
                        finally:
                            await publisher.close()
                    finally:
                        ship.stop()
    base, hanging = figures["baseline", "burst"], figures["hanging", "burst"]
    report("8. healthy endpoints' throughput, fifth healthy", base, "ev/s")
    report("8. healthy endpoints' throughput, fifth hangs", hanging, "ev/s", base, "of fifth healthy", "≥ 0.8×")
    for what in ("cpu", "broker cpu"):
        base, hanging = figures["baseline", f"burst {what}"], figures["hanging", f"burst {what}"]
        report(f"8. {'worker' if what == 'cpu' else 'RabbitMQ'} CPU in the burst, fifth hangs", hanging, "s",
               base, "of fifth healthy")
    base, hanging = figures["baseline", "steady"], figures["hanging", "steady"]
    report(f"8. healthy p99 latency at {rate} ev/s, fifth healthy", base, "ms")
    report(f"8. healthy p99 latency at {rate} ev/s, fifth hangs", hanging, "ms", base, "of fifth healthy", "< 2×")


async def _healthy_burst(publisher: Any, good: Receiver, n: int, healthy: Sequence[str]) -> float:
    """Healthy events per second in a burst of ``n`` with a quarter as many
    for the fifth partner spread through it."""
    mixed = _interleave(events(n, healthy), events(n // 4, ["bad"]))
    wanted = {event.event_id for event in mixed if event.partner_id != "bad"}
    good.expect(len(mixed))
    started = time.perf_counter()
    await publish_in_windows(publisher.publish_valid, mixed)
    await _arrived(good, wanted, 600)
    return n / (max(good.arrivals[i] for i in wanted) - started)


async def _healthy_p99(publisher: Any, good: Receiver, rate: int, seconds: int, healthy: Sequence[str]) -> float:
    """Healthy events' p99 latency at ``rate`` per second, with a quarter as
    many for the fifth partner spread through them."""
    steady = events(rate * seconds, healthy)
    paced = _interleave(steady, events(rate * seconds // 4, ["bad"]))
    wanted = {event.event_id for event in steady}
    good.expect(len(paced))
    sent: dict[str, float] = {}
    interval = 1 / (rate * len(paced) / len(steady))
    begun = time.perf_counter()
    for i, event in enumerate(paced):
        await asyncio.sleep(max(0.0, begun + i * interval - time.perf_counter()))
        if event.event_id in wanted:
            sent[event.event_id] = time.perf_counter()
        asyncio.ensure_future(publisher.publish_valid([event]))
    await _arrived(good, wanted, 120)
    return percentile([(good.arrivals[i] - t) * 1000 for i, t in sent.items()], 0.99)


async def _arrived(receiver: Receiver, wanted: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not wanted <= receiver.arrivals.keys():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted - receiver.arrivals.keys())} healthy events did not arrive")
        await asyncio.sleep(0.01)


def _interleave(main: Sequence[Any], extra: Sequence[Any]) -> list[Any]:
    """``main`` with ``extra`` spread evenly through it."""
    out = list(main)
    step = len(main) / len(extra) if extra else 0
    for k, item in enumerate(extra):
        out.insert(int(k * step) + k, item)
    return out


# -- the tracking page's live viewers --------------------------------------------------

async def live(tmp: Path, quick: bool) -> None:
    """Open tracking pages on one API process, under the same 20 events a
    second over 100 orders: the baseline is ten viewers (one on each of ten
    orders); then 1,000 viewers, ten on each of 100 orders (each event reaches
    ten); then 1,000 viewers on one order, which gets one event a second (each
    of those reaches all 1,000; the other events go to the other 99 orders).
    Latency is from publishing an event to its page reaching a viewer."""
    orders, rate, seconds = 100, 20, (10 if quick else 30)
    cases = {"10": (10, 10, 0), "1000": (1000, orders, 0), "one": (1000, 1, rate)}
    figures: dict[str, tuple[float, float, float, int]] = {}
    for case, (viewers, watched, hot_every) in cases.items():
        with Vhost() as vhost:
            ship = Shipcast(vhost, tmp, plugins="tracking")
            try:
                await ship.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {"tracking": {}}}]})
                ship.start("api")
                ship.start("worker", "--channel", "tracking")
                await wait_consuming(vhost, "shipcast.tracking")
                figures[case] = await _live_fanout(ship, orders, watched, viewers, rate, seconds, hot_every)
            finally:
                ship.stop()
    base, many, one = figures["10"], figures["1000"], figures["one"]
    for index, name in ((0, "p50"), (1, "p99"), (2, "max")):
        report(f"9. live page update, 10 viewers, {name}", base[index], "ms")
        report(f"9. live page update, 1,000 viewers, {name}", many[index], "ms", base[index], "of 10 viewers",
               "p99 < 1,000 ms" if name == "p99" else "")
        report(f"9. live page update, 1,000 on one order, {name}", one[index], "ms", base[index],
               "of 10 viewers", "p99 < 1,000 ms" if name == "p99" else "")
    report("9. 1,000 on one order vs ten on each of 100, p99", one[1], "ms", many[1], "of 10 per order")
    report("9. updates that never reached a viewer, 1,000 viewers", many[3], "")
    report("9. updates that never reached a viewer, one order", one[3], "", target="0")


def _live_stream(n: int, orders: int, hot_every: int) -> list[Any]:
    """``n`` FAIL events over ``orders`` orders in turn, each order's in
    sequence; with ``hot_every``, every ``hot_every``-th is ORD-0's and the
    rest go to the other orders in turn."""
    from tests.bound import example

    sequences: dict[int, int] = {}
    stream = []
    for i in range(n):
        if hot_every:
            order = 0 if i % hot_every == 0 else 1 + i % (orders - 1)
        else:
            order = i % orders
        sequences[order] = sequences.get(order, 1) + 1
        stream.append(example("FAIL", partner_id="acme", order_id=f"ORD-{order}", sequence=sequences[order]))
    return stream


async def _live_fanout(ship: Shipcast, orders: int, watched: int, viewers: int, rate: int,
                       seconds: int, hot_every: int = 0) -> tuple[float, float, float, int]:
    from shipcast.plugins.tracking.links import tracking_token
    from tests.bound import example

    settings = ship.settings()
    publisher = await ship.publisher()
    arrivals: dict[str, list[float]] = {}

    async def watch(session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url) as response:
            if response.status != 200:
                raise RuntimeError(f"a viewer got {response.status}: {await response.text()}")
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):  # "<events>-<event id>": the page now shows that event
                    arrivals.setdefault(line.split("-", 1)[1], []).append(time.perf_counter())

    seed = [example("OFD", partner_id="acme", order_id=f"ORD-{i}", sequence=1) for i in range(orders)]
    await publisher.publish_valid(seed)
    async with httpx.AsyncClient() as client:  # the API is up
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("http://127.0.0.1:18123/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
    base = "http://127.0.0.1:18123/t/"
    urls = [f"{base}{tracking_token(settings, 'acme', f'ORD-{i % watched}', 30)}/live" for i in range(viewers)]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
    tasks = [asyncio.create_task(watch(session, url)) for url in urls]
    try:
        # Every viewer connected and sent its page (the seed event shows on it).
        deadline = time.monotonic() + 120
        while sum(len(arrivals.get(e.event_id, ())) for e in seed) < viewers:
            failed = [task.exception() for task in tasks if task.done() and task.exception()]
            if failed or time.monotonic() > deadline:
                raise TimeoutError(f"not every viewer connected: {failed[:1]}")
            await asyncio.sleep(0.05)
        stream = _live_stream(rate * seconds, orders, hot_every)
        sent: dict[str, float] = {}
        begun = time.perf_counter()
        for i, event in enumerate(stream):  # each order's next event comes after its page has moved on
            await asyncio.sleep(max(0.0, begun + i / rate - time.perf_counter()))
            sent[event.event_id] = time.perf_counter()
            asyncio.ensure_future(publisher.publish_valid([event]))
        each = viewers // watched
        expected = {event.event_id: each for event in stream if int(event.order.order_id[4:]) < watched}
        deadline = time.monotonic() + 30
        while any(len(arrivals.get(i, ())) < n for i, n in expected.items()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        latencies = [(t - sent[i]) * 1000 for i in expected for t in arrivals.get(i, ())]
        lost = sum(max(0, n - len(arrivals.get(i, ()))) for i, n in expected.items())
        return percentile(latencies, 0.5), percentile(latencies, 0.99), max(latencies), lost
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        await publisher.close()


async def paging(tmp: Path, quick: bool) -> None:
    """The portal's delivery log, deep in a large log: a keyset page (what the
    portal does) against the same page by OFFSET, each as a multiple of the
    first page's time, on SQLite and PostgreSQL."""
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    from shipcast.store import Store
    from shipcast.store.deliveries import delivery_key
    from shipcast.store.tables import deliveries

    n = 20_000 if quick else 200_000
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [{"event_id": f"evt_{i:08d}", "channel": "webhook", "target": "main", "partner_id": "acme",
             "event_type": "OFD", "order_id": f"ORD-{i}", "sequence": 1, "address": "https://x.example/h",
             "status": "delivered", "attempts": 1, "updated_at": start + timedelta(milliseconds=i)}
            for i in range(n)]

    async def timed(call: Callable[[], Awaitable[Any]], repeat: int = 15) -> float:
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            await call()
            times.append((time.perf_counter() - began) * 1000)
        return sorted(times)[len(times) // 2]

    async def measure(label: str, url: str) -> None:
        store = await Store(url).open()
        try:
            for chunk in range(0, n, 5000):
                await store._run([(deliveries.insert(), rows[chunk:chunk + 5000])])
            depth = n - 100
            order = (deliveries.c.updated_at.desc(), deliveries.c.event_id.desc(), deliveries.c.channel.desc(),
                     deliveries.c.target.desc())
            query = sa.select(deliveries).where(deliveries.c.partner_id == "acme").order_by(*order)
            [before] = await store._rows(query.offset(depth - 1).limit(1))
            cursor = delivery_key({**before._asdict(), "updated_at": before.updated_at})
            first = await timed(lambda: store.page_deliveries("acme", limit=25))
            keyset = await timed(lambda: store.page_deliveries("acme", after=cursor, limit=25))
            offset = await timed(lambda: store._rows(query.offset(depth).limit(25)))
            report(f"portal log, first page ({label}, {n:,} rows)", first, "ms")
            report(f"portal log, page at row {depth:,}: keyset ({label})", keyset, "ms", first, "the first page")
            report(f"portal log, page at row {depth:,}: OFFSET ({label})", offset, "ms", first, "the first page")
        finally:
            await store.close()

    await measure("SQLite", f"sqlite+aiosqlite:///{tmp / 'paging.db'}")
    async with postgres_database() as url:
        await measure("PostgreSQL", url)


DEFAULT = ["throughput", "latency", "ingest", "fanout", "growth", "memory", "isolation", "isolation_many", "live",
           "paging", "writepath", "default"]
SCENARIOS = {"throughput": throughput, "throughput_fast": throughput_fast, "throughput_slow": throughput_slow,
             "latency": latency, "ingest": ingest, "fanout": fanout, "growth": growth, "memory": memory,
             "isolation": isolation, "isolation_many": isolation_many, "live": live, "paging": paging,
             "writepath": writepath, "default": default,
             # in-process, no services: not in DEFAULT, run it by name
             "filters": filters,
             # one consumer's acks, a frame each against batched: not in DEFAULT, run it by name
             "acks": acks,
             # tracing off against on: not in DEFAULT, run it by name
             "tracing": tracing}


async def main(selected: Sequence[str], quick: bool) -> None:
    print(f"shipcast benchmarks on {os.cpu_count()} cores, {'quick' if quick else 'full'} run", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in selected:
            await SCENARIOS[name](Path(tmp), quick)
    print("\n".join(["", "summary:", *RESULTS]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("QUICK")))
    args = parser.parse_args()
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    import uvloop

    uvloop.run(main(args.scenarios or DEFAULT, args.quick))
