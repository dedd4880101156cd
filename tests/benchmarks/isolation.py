"""Isolation under many bad endpoints (scenario 14): six partners, each with
a sixth of the events, four of them misbehaving as in the reliability
suite's scenario 4: one answers 500, one hangs past shipcast's timeout, one
cuts the connection mid-response, one redirects to a private address.

The two healthy partners' throughput (a burst) and p99 latency (a steady
rate) are measured against the same runs with all six healthy, in rounds
that alternate the two, each on a fresh virtual host and a fresh
`shipcast worker --channel webhook`. The healthy partners' receiver is a
process of its own, and the four bad endpoints are another (they answer
"ok" in the baseline), so neither measures the other's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Self

import httpx
import orjson
from aiohttp import web

from .common import ROOT, ReceiverProcess, Vhost, broker_cpu, events, percentile

HEALTHY = ("good-1", "good-2")
#: The bad partners, each named for how its endpoint misbehaves.
MODES = ("500", "hang", "cut", "redirect")
#: Seconds the hanging endpoint holds a request: past shipcast's timeout, whatever it is here.
HANG = 120.0
#: shipcast's settings for each measurement: its defaults (15 s timeout, retries after 5 s,
#: then 300 s; the circuit cools down for 30 s), and the reliability suite's, which fail
#: faster and retry sooner, so the bad endpoints' events come back three times as often.
SETTINGS = {
    "defaults": {},
    "suite's settings": {"SHIPCAST_WEBHOOK_TIMEOUT": "2", "SHIPCAST_RETRY_SCHEDULE": "1,2",
                         "SHIPCAST_BREAKER_COOLDOWN": "0.5"},
}


async def isolation_many(tmp: Path, quick: bool) -> None:
    from .run import RESULTS, Shipcast, report, wait_consuming, webhook_doc

    n, rate, seconds, rounds = (1500, 150, 15, 1) if quick else (4000, 150, 40, 2)
    partners = [*HEALTHY, *(f"bad-{mode}" for mode in MODES)]
    async with ReceiverProcess() as good, BadEndpoints() as bad:
        for name, env in SETTINGS.items():
            bursts: dict[str, list[float]] = {}
            latencies: dict[str, list[list[float]]] = {}
            cpu: dict[tuple[str, str, str], float] = {}
            for _ in range(rounds):  # the cases alternate, so the machine's drift falls on both
                for case in ("baseline", "misbehaving"):
                    for phase in ("burst", "steady"):
                        doc = webhook_doc(partners, partial(_url, good, bad, case == "misbehaving"))
                        with Vhost() as vhost:
                            ship = Shipcast(vhost, tmp)
                            ship.env.update(env)
                            try:
                                await ship.apply(doc)
                                worker = ship.start("worker", "--channel", "webhook")
                                await wait_consuming(vhost, "shipcast.webhook")
                                ship.profile()
                                publisher = await ship.publisher()
                                before = worker.cpu(), broker_cpu()
                                try:
                                    if phase == "burst":
                                        bursts.setdefault(case, []).append(
                                            await _burst(publisher, good, n, partners))
                                    else:
                                        latencies.setdefault(case, []).append(
                                            await _steady(publisher, good, rate, seconds, partners,
                                                          f"{name}, {case}, round {len(latencies.get(case, [])) + 1}"))
                                except Exception:
                                    print(f"{case} {phase} failed; the worker said:\n{worker.stop()[-5000:]}")
                                    raise
                                finally:
                                    await publisher.close()
                                for key, value in ((("worker", phase), worker.cpu() - before[0]),
                                                   (("RabbitMQ", phase), broker_cpu() - before[1])):
                                    cpu[(case, *key)] = cpu.get((case, *key), 0.0) + value
                            finally:
                                ship.stop()
                        await _quiet_broker()
            _report(name, rate, bursts, latencies, cpu, report, RESULTS)
        report("14. requests that followed the redirect", await bad.trapped(), "", target="0")


async def _quiet_broker(timeout: float = 60) -> None:
    """Wait until RabbitMQ has done with the last measurement: deleting a
    virtual host whose retry and dead queues still hold thousands of
    messages (the bad partners') keeps it busy for seconds after the call
    returns, and the next measurement, always one whose burst came just
    before, would pay for it."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        used = broker_cpu()
        await asyncio.sleep(1.0)
        if broker_cpu() - used < 0.15:
            break
    print(f"RabbitMQ quiet after {time.monotonic() - began:.1f} s", flush=True)


def _url(good: ReceiverProcess, bad: BadEndpoints, misbehaving: bool, partner: str) -> str:
    if partner in HEALTHY:
        return good.url(f"hook/{partner}")
    return bad.url(partner.removeprefix("bad-"), misbehaving)


def _report(name: str, rate: int, bursts: dict[str, list[float]], latencies: dict[str, list[list[float]]],
            cpu: dict[tuple[str, str, str], float], report: Any, results: list[str]) -> None:
    """Each case's figures over its rounds (the p99 of every round's
    latencies together), and each round's ratios, which show the noise."""
    label = "of all six healthy"
    base, worse = _mean(bursts["baseline"]), _mean(bursts["misbehaving"])
    report(f"14. {name}: healthy throughput, all six healthy", base, "ev/s")
    report(f"14. {name}: healthy throughput, four misbehave", worse, "ev/s", base, label, "≥ 0.8×")
    p99s = {case: percentile([ms for one in rounds for ms in one], 0.99) for case, rounds in latencies.items()}
    report(f"14. {name}: healthy p99 at {rate} ev/s, all healthy", p99s["baseline"], "ms")
    report(f"14. {name}: healthy p99 at {rate} ev/s, four bad", p99s["misbehaving"], "ms", p99s["baseline"],
           label, "≤ 2×")
    for who, phase in (("worker", "burst"), ("RabbitMQ", "burst"), ("worker", "steady"), ("RabbitMQ", "steady")):
        report(f"14. {name}: {who} CPU, {phase}, four misbehave", cpu["misbehaving", who, phase], "s",
               cpu["baseline", who, phase], label)
    rounds = zip(bursts["baseline"], bursts["misbehaving"], latencies["baseline"], latencies["misbehaving"],
                 strict=True)
    line = f"14. {name}: each round's ratios, throughput / p99: " + ", ".join(
        f"{worse / base:.2f} / {percentile(bad, 0.99) / percentile(good, 0.99):.2f}"
        for base, worse, good, bad in rounds)
    results.append(line)
    print(line, flush=True)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


async def _burst(publisher: Any, good: ReceiverProcess, n: int, partners: Sequence[str]) -> float:
    """Healthy events per second in a burst of ``n`` healthy events and the
    other partners' share interleaved with them, from the first publish to
    the last healthy arrival."""
    batch = events(n * len(partners) // len(HEALTHY), partners)
    wanted = {event.event_id for event in batch if event.partner_id in HEALTHY}
    await good.forget()
    started = time.perf_counter()
    for at in range(0, len(batch), 100):
        await publisher.publish_valid(batch[at:at + 100])
    arrived = await good.wait_for(wanted, 600)
    return len(wanted) / (max(arrived[i] for i in wanted) - started)


async def _steady(publisher: Any, good: ReceiverProcess, rate: int, seconds: int,
                  partners: Sequence[str], label: str) -> list[float]:
    """The healthy events' latencies (ms), with every partner's events
    published one by one at ``rate`` a second in all. With
    ``BENCH_TIMELINE=FILE``, each is also written there with when it was sent
    (``time.monotonic()``), to set beside what else happened then."""
    batch = events(rate * seconds, partners)
    wanted = {event.event_id for event in batch if event.partner_id in HEALTHY}
    await good.forget()
    sent: dict[str, float] = {}
    begun = time.perf_counter()
    for i, event in enumerate(batch):
        await asyncio.sleep(max(0.0, begun + i / rate - time.perf_counter()))
        if event.event_id in wanted:
            sent[event.event_id] = time.perf_counter()
        asyncio.ensure_future(publisher.publish_valid([event]))
    arrived = await good.wait_for(wanted, 120)
    timeline = os.environ.get("BENCH_TIMELINE")
    if timeline:
        with open(timeline, "a") as out:
            out.writelines(f"{label}\t{t:.3f}\t{(arrived[i] - t) * 1000:.1f}\n" for i, t in sent.items())
    return [(arrived[i] - t) * 1000 for i, t in sent.items()]


# -- the bad partners' endpoints, in a process of their own ----------------------------

class BadEndpoints:
    """The four bad endpoints, one port each, and the private address the
    redirect points at (a trap: shipcast never follows a redirect). Each
    port answers ``/ok`` at once (the baseline) and misbehaves on ``/bad``."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}

    def url(self, mode: str, misbehaving: bool) -> str:
        return f"http://127.0.0.1:{self.ports[mode]}/{'bad' if misbehaving else 'ok'}"

    async def trapped(self) -> int:
        """Requests the trap got."""
        async with httpx.AsyncClient() as http:
            return int((await http.get(f"http://127.0.0.1:{self.ports['trap']}/count")).json())

    async def __aenter__(self) -> Self:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.isolation", "bad-endpoints"],
                                     cwd=ROOT, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.ports = orjson.loads(await asyncio.to_thread(self.proc.stdout.readline))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def _serve_bad_endpoints() -> None:
    trapped = 0

    async def trap(request: web.Request) -> web.Response:
        nonlocal trapped
        trapped += 1
        return web.Response(text="a redirect was followed")

    async def count(request: web.Request) -> web.Response:
        return web.json_response(trapped)

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    def misbehaving(mode: str, location: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            await request.read()
            if mode == "500":
                return web.Response(status=500, text="internal error")
            if mode == "hang":
                await asyncio.sleep(HANG)
                return web.Response(text="too late")
            if mode == "cut":
                response = web.StreamResponse(status=200, headers={"content-length": "1000"})
                await response.prepare(request)
                await response.write(b"partial")
                assert request.transport is not None
                request.transport.abort()
                return response
            return web.Response(status=302, headers={"location": location})
        return handle

    runners: list[web.AppRunner] = []

    async def site(app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        runners.append(runner)
        served = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await served.start()
        return int(served._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    app = web.Application()
    app.router.add_route("*", "/count", count)
    app.router.add_route("*", "/{tail:.*}", trap)
    ports = {"trap": await site(app)}
    for mode in MODES:
        app = web.Application()
        app.router.add_post("/ok", ok)
        app.router.add_post("/bad", misbehaving(mode, f"http://127.0.0.1:{ports['trap']}/trap"))
        ports[mode] = await site(app)
    print(orjson.dumps(ports).decode(), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()


if __name__ == "__main__" and sys.argv[1:] == ["bad-endpoints"]:
    asyncio.run(_serve_bad_endpoints())
