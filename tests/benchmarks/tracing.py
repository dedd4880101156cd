"""Tracing's cost, off and on (scenario 12): the webhook scenario and HTTP
ingest, each run with tracing off (no ``OTEL_*`` variable: the baseline)
and on (spans sent over OTLP/HTTP to a local receiver), the modes taking
turns in rounds on the same machine; medians of the rounds.

* The webhook worker: ``n`` events published in windows of 100 to a
  ``shipcast worker --channel webhook`` process; events a second from the
  first publish to the last arrival, and the worker's CPU per event. On,
  the publisher in this process traces too, so each message carries a
  ``traceparent`` the worker continues, as behind a traced API.
* Ingest: ``POST /v1/events``, one event per request with the OMS's
  ``traceparent``, 32 clients, to a ``shipcast api`` process; requests a
  second, and the API's CPU per event.

The receiver keeps what it is sent and decodes it after the round (its work
is not the measurement's); the spans counted per event show that tracing
was on, and whether any were dropped.

    python -m tests.benchmarks.run tracing [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from .common import Receiver, Vhost, answering, events


def _env(mode: str, endpoint: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint} if mode == "on" else {}


async def _worker_round(mode: str, receiver: Receiver, n: int, tmp: Path) -> tuple[float, float, int]:
    """Events a second, worker CPU µs per event, spans received."""
    from tests.otlp import OtlpReceiver, tracing_to

    from .run import CPU_PER_EVENT, Shipcast, measure_delivery, publish_in_windows, wait_consuming, webhook_doc

    async with OtlpReceiver(lazy=True) as otlp:
        with Vhost() as vhost:
            ship = Shipcast(vhost, tmp)
            try:
                await ship.apply(webhook_doc(["acme"], lambda p: receiver.url()))
                worker = ship.start("worker", "--channel", "webhook", env=_env(mode, otlp.endpoint))
                await wait_consuming(vhost, "shipcast.webhook")
                publisher = await ship.publisher()
                batch = events(n)
                try:
                    async def send() -> None:
                        await publish_in_windows(publisher.publish_valid, batch)

                    if mode == "on":
                        async with tracing_to(otlp, "bench"):
                            rate = await measure_delivery(receiver, n, send, consumer=worker, name="tracing")
                    else:
                        rate = await measure_delivery(receiver, n, send, consumer=worker, name="tracing")
                finally:
                    await publisher.close()
            finally:
                await asyncio.to_thread(ship.stop)  # the worker sends its last spans to this event loop
        return rate, CPU_PER_EVENT["tracing"], otlp.count()


async def _ingest_round(mode: str, n: int, tmp: Path) -> tuple[float, float, int]:
    """Requests a second, API CPU µs per event, spans received."""
    from tests.otlp import OtlpReceiver

    from .run import Shipcast

    async with OtlpReceiver(lazy=True) as otlp:
        with Vhost() as vhost:
            ship = Shipcast(vhost, tmp, plugins="webhook,archive")
            try:
                await ship.apply({"partners": [{"id": "acme", "name": "acme"}]})  # the archive takes every event
                api = ship.start("api", env=_env(mode, otlp.endpoint))
                headers = {"authorization": "Bearer bench", "content-type": "application/json",
                           "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
                async with aiohttp.ClientSession(f"http://127.0.0.1:{ship.env['SHIPCAST_PORT']}", headers=headers,
                                                 connector=aiohttp.TCPConnector(limit=64)) as http:
                    await answering(f"http://127.0.0.1:{ship.env['SHIPCAST_PORT']}", api)
                    bodies = [event.to_json() for event in events(n)]
                    semaphore = asyncio.Semaphore(32)

                    async def post(body: bytes) -> None:
                        async with semaphore, http.post("/v1/events", data=body) as response:
                            assert response.status == 202, await response.text()

                    cpu = api.cpu()
                    started = time.perf_counter()
                    await asyncio.gather(*(post(body) for body in bodies))
                    rate = n / (time.perf_counter() - started)
                    cpu_per_event = (api.cpu() - cpu) / n * 1e6
            finally:
                await asyncio.to_thread(ship.stop)
        return rate, cpu_per_event, otlp.count()


def _off_calls(n: int) -> float:
    """ns per event of the tracing calls one event's path makes while tracing
    is off, in this process: the publish's span and its message's headers,
    the worker's two spans and its read of the message's trace context, and
    the webhook's headers."""
    from shipcast import tracing
    from shipcast.amqp import headers as h

    assert not tracing.enabled()
    message_headers: dict[str, Any] = {"x-shipcast-published-ms": 1}
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(n):
            with tracing.span("send shipcast.events", "producer") as span:
                tracing.inject(message_headers, within=True)
            with tracing.span("process shipcast.webhook", "consumer", parent=h.trace_context(message_headers)) as span:
                with tracing.span("deliver webhook", "client") as span:
                    tracing.inject(message_headers)
            assert span is None
        best = min(best, (time.perf_counter_ns() - started) / n)
    return best


async def tracing(tmp: Path, quick: bool) -> None:
    from .run import report

    n, rounds = (2000, 2) if quick else (10000, 3)
    figures: dict[str, dict[str, list[Any]]] = {name: {"off": [], "on": []} for name in ("worker", "ingest")}
    async with Receiver() as receiver:
        for _ in range(rounds):
            for mode in ("off", "on"):
                figures["worker"][mode].append(await _worker_round(mode, receiver, n, tmp))
                figures["ingest"][mode].append(await _ingest_round(mode, n // 4, tmp))

    def median(name: str, mode: str, index: int) -> float:
        return statistics.median(figure[index] for figure in figures[name][mode])

    cpu_off_worker = median("worker", "off", 1)

    for name, what, count, unit in (("worker", "webhook worker", n, "ev/s"),
                                    ("ingest", "POST /v1/events, one event a request, 32 clients", n // 4, "ev/s")):
        off, on = median(name, "off", 0), median(name, "on", 0)
        report(f"12. {what}, tracing off", off, unit)
        report(f"12. {what}, tracing on", on, unit, off, "off")
        cpu_off, cpu_on = median(name, "off", 1), median(name, "on", 1)
        process = "worker" if name == "worker" else "API"
        report(f"12. {process} CPU per event, tracing off", cpu_off, "µs")
        report(f"12. {process} CPU per event, tracing on", cpu_on, "µs", cpu_off, "off")
        for mode in ("off", "on"):
            spans = sum(figure[2] for figure in figures[name][mode]) / (count * rounds)
            report(f"12. spans received per event, {what}, tracing {mode}", spans, "")
    off_calls = _off_calls(100_000) / 1000
    report("12. tracing off: its calls on one event's path, in-process", off_calls, "µs")
    report("12. tracing off: those calls, in % of the worker's CPU per event", off_calls / cpu_off_worker * 100, "%")
