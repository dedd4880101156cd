"""End-to-end traces: real ``shipcast`` processes (the API, a webhook
worker, the relay) sending their spans to a local OTLP/HTTP receiver, and a
partner's endpoint that reads the ``traceparent`` it is sent. With the
``OTEL_*`` variables unset, a process imports nothing of the SDK and sends
nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from shipcast.amqp.parking import list_dead, replay_dead
from shipcast.amqp.topology import EXCHANGE
from shipcast.settings import Settings
from tests.bound import example

from .conftest import AMQP_HOST, TOKEN
from .helpers import Receiver, ShipcastProcess, Subprocess, applied, eventually, partners_doc, settings_env
from .otlp import OtlpReceiver, ReceivedSpan, tracing_to

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def otel_env(otlp: OtlpReceiver, **more: str) -> dict[str, str]:
    """A process's environment sending its traces to ``otlp``, in batches a tenth of a second apart."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", **more}


def without_otel() -> None:
    """The test's own environment must not turn tracing on (or off) in the processes it starts."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        del os.environ[name]


@dataclass
class Pipeline:
    """shipcast's API and a webhook worker as real processes, tracing to ``otlp``."""

    settings: Settings
    partner: Receiver
    otlp: OtlpReceiver
    http: httpx.AsyncClient

    async def post(self, body: Any, **headers: str) -> list[str]:
        response = await self.http.post("/v1/events", json=body, headers=headers)
        assert response.status_code == 202, response.text
        return list(response.json()["ids"])

    async def attempts(self, event_id: str, count: int) -> list[dict[str, Any]] | None:
        """The event's attempts as its partner reads them, oldest first, once there are ``count``."""
        response = await self.http.get("/v1/partners/acme/attempts", params={"event_id": event_id})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found if len(found) == count else None


@contextlib.asynccontextmanager
async def pipeline(settings: Settings, partner: Receiver, otlp: OtlpReceiver,
                   doc: dict[str, Any] | None = None, **env: str) -> AsyncIterator[Pipeline]:
    without_otel()
    async with applied(settings, doc or partners_doc("acme", partner.url)):
        processes = [Subprocess(settings, "api", env=otel_env(otlp, **env)).start(),
                     Subprocess(settings, "worker", "--channel", "webhook", env=otel_env(otlp, **env)).start()]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=30,
                                         headers={"authorization": f"Bearer {TOKEN}"}) as http:
                async def ready() -> bool:
                    with contextlib.suppress(httpx.HTTPError):
                        return (await http.get("/readyz")).status_code == 200
                    return False

                await eventually(ready, timeout=30)
                yield Pipeline(settings, partner, otlp, http)
        finally:
            await stop(processes)


async def stop(processes: list[Subprocess]) -> None:
    """Stop them in threads: what they send as they stop goes to a receiver on this event loop."""
    for output in await asyncio.gather(*(asyncio.to_thread(process.stop) for process in processes)):
        print(output)  # shown when the test fails


def one(spans: list[ReceivedSpan], name: str, **attributes: Any) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, f"{len(found)} spans {name} {attributes} in {[(s.name, s.attributes) for s in spans]}"
    return found[0]


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def joined(header: str) -> tuple[str, str]:
    """The trace and the parent span a ``traceparent`` header names, once checked sampled."""
    version, trace_id, span_id, flags = header.split("-")
    assert version == "00" and int(flags, 16) & 1, header
    return trace_id, span_id


async def test_one_trace_runs_from_the_oms_through_the_api_and_a_worker_to_the_partner(settings: Settings) -> None:
    """The OMS's ``traceparent`` is continued: its span is the parent of the
    API's, whose publish is the parent of the worker's span for the message,
    the parent of the attempt, whose context the partner is sent. The first
    attempt fails (HTTP 500); the retry, a copy from a retry tier, joins the
    same trace under the same publish."""
    oms_trace, oms_span = secrets.token_hex(16), secrets.token_hex(8)
    event = example("OFD", partner_id="acme", order_id="ORD-TRACED")
    async with Receiver(script=[500]) as partner, OtlpReceiver() as otlp, pipeline(settings, partner, otlp) as p:
        [event_id] = await p.post(event.model_dump(mode="json", by_alias=True),
                                  traceparent=traceparent(oms_trace, oms_span), tracestate="oms=ord-traced")
        assert event_id == event.event_id
        await eventually(lambda: partner.delivered, timeout=30)
        # Each span is exported when it ends: a message's span ends after its attempt's, maybe in a later batch.
        spans = await eventually(lambda: len(otlp.named("deliver webhook", otlp.trace(oms_trace))) == 2
                                 and len(otlp.named("process shipcast.webhook", otlp.trace(oms_trace))) == 2
                                 and otlp.trace(oms_trace), timeout=30)
        attempts = await eventually(lambda: p.attempts(event_id, 2), timeout=30)

    post = one(spans, "POST /v1/events")
    assert (post.kind, post.parent_id) == ("server", oms_span)
    assert post.attributes["shipcast.event_ids"] == [event_id]
    assert post.attributes["http.response.status_code"] == 202
    assert post.resource["shipcast.process"] == "api"
    assert post.resource["service.name"] == "shipcast"

    publish = one(spans, "send shipcast.events")
    assert (publish.kind, publish.parent_id, publish.resource) == ("producer", post.span_id, post.resource)
    assert publish.attributes["messaging.rabbitmq.destination.routing_key"] == "acme.OFD"

    event_attributes = {"shipcast.event_id": event_id, "shipcast.event_type": "OFD", "shipcast.partner_id": "acme",
                        "shipcast.order_id": "ORD-TRACED"}
    first = one(spans, "process shipcast.webhook", **{"shipcast.retry_tier": 0})
    retried = one(spans, "process shipcast.webhook", **{"shipcast.retry_tier": 1})
    for process in (first, retried):
        assert (process.kind, process.parent_id) == ("consumer", publish.span_id)
        assert process.attributes.items() >= {**event_attributes, "shipcast.channel": "webhook"}.items()
        assert process.resource["shipcast.process"] == "worker"
        assert process.resource["process.pid"] != post.resource["process.pid"]
    assert retried.attributes["shipcast.target_id"] == "main"  # a retry copy is for one target

    failed = one(spans, "deliver webhook", **{"shipcast.outcome": "retry"})
    delivered = one(spans, "deliver webhook", **{"shipcast.outcome": "delivered"})
    assert (failed.parent_id, delivered.parent_id) == (first.span_id, retried.span_id)
    for attempt, status, number in ((failed, 500, 1), (delivered, 200, 2)):
        assert attempt.kind == "client"
        assert attempt.attributes.items() >= {
            **event_attributes, "shipcast.channel": "webhook", "shipcast.target_id": "main",
            "shipcast.attempt": number, "http.response.status_code": status}.items()
    assert failed.error and "HTTP 500" in failed.status_message
    assert not delivered.error
    assert {span.trace_state for span in spans} == {"oms=ord-traced"}

    # The partner's own tracing joins each attempt's span; the OMS's tracestate (its
    # vendors' state) stays within shipcast's spans: neither the partner's requests
    # nor the attempt log the partner reads carry it.
    sent = [joined(request.headers["traceparent"]) for request in partner.requests]
    assert sent == [(oms_trace, failed.span_id), (oms_trace, delivered.span_id)]
    assert not any("tracestate" in request.headers for request in partner.requests)
    logged = [attempt["request"]["headers"] for attempt in attempts]
    assert [joined(headers["traceparent"]) for headers in logged] == sent
    assert not any("tracestate" in headers for headers in logged)


async def test_a_batch_is_one_span_with_its_event_ids_and_a_publish_each(settings: Settings) -> None:
    """A request with no ``traceparent`` starts a trace; a batch's events
    are published, and delivered, under its one span. An endpoint whose
    filter keeps them out has no attempt, and the trace names it."""
    events = [example("DEL", partner_id="acme", order_id=f"ORD-BATCH-{i}").model_dump(mode="json", by_alias=True)
              for i in range(2)]
    async with Receiver() as partner, OtlpReceiver() as otlp:
        doc = partners_doc("acme", partner.url)
        doc["partners"][0]["channels"]["webhook"]["endpoints"].append(
            {"id": "returns", "url": partner.url, "events": ["*"], "filter": {"event_type": "RET"}})
        async with pipeline(settings, partner, otlp, doc) as p:
            ids = await p.post(events)
            await eventually(lambda: len(partner.delivered) == 2, timeout=30)
            [post] = await eventually(lambda: otlp.named("POST /v1/events"), timeout=30)
            spans = await eventually(lambda: len(otlp.trace(post.trace_id)) == 1 + 3 * 2
                                     and otlp.trace(post.trace_id), timeout=30)

    assert post.parent_id == ""
    assert post.attributes["shipcast.event_ids"] == ids
    assert post.attributes["shipcast.event_count"] == 2
    for event_id in ids:
        publish = one(spans, "send shipcast.events", **{"shipcast.event_id": event_id})
        process = one(spans, "process shipcast.webhook", **{"shipcast.event_id": event_id})
        attempt = one(spans, "deliver webhook", **{"shipcast.event_id": event_id})
        assert (publish.parent_id, process.parent_id, attempt.parent_id) == (
            post.span_id, publish.span_id, process.span_id)
        assert attempt.attributes["shipcast.outcome"] == "delivered"
        assert attempt.attributes["shipcast.target_id"] == "main"
        assert process.attributes["shipcast.filtered_endpoints"] == ["returns"]
        assert process.attributes["shipcast.targets"] == 1
    assert {joined(request.headers["traceparent"])[0] for request in partner.requests} == {post.trace_id}


async def test_the_api_refusing_a_request_says_so_on_its_span(settings: Settings) -> None:
    """An invalid event is answered 422 and published nowhere, a request
    without the token 401, a partner's token 403: each span has the status,
    and no publish under it. Only a request with the token continues its
    caller's trace: a refused one is a trace of its own, and a route that
    does not exist is traced not at all."""
    async with Receiver() as partner, OtlpReceiver() as otlp, pipeline(settings, partner, otlp) as p:
        response = await p.http.post("/v1/partners/acme/tokens", params={"name": "tracing"})
        assert response.status_code == 201, response.text
        scoped = response.json()["token"]
        for trace_id, token, status in (("ab" * 16, TOKEN, 422), ("ef" * 16, "wrong", 401),
                                        ("12" * 16, scoped, 403)):
            response = await p.http.post("/v1/events", json={"event_type": "OFD"}, headers={
                "traceparent": traceparent(trace_id, "cd" * 8), "authorization": f"Bearer {token}"})
            assert response.status_code == status
        unknown = await p.http.post("/v1/nowhere", json={}, headers={"traceparent": traceparent("34" * 16, "cd" * 8)})
        assert unknown.status_code == 404
        spans = await eventually(lambda: len(otlp.named("POST /v1/events")) == 3 and otlp.spans, timeout=30)
    by_status = {span.attributes["http.response.status_code"]: span for span in spans}
    assert sorted(by_status) == [401, 403, 422] and len(spans) == 3
    assert (by_status[422].trace_id, by_status[422].parent_id) == ("ab" * 16, "cd" * 8)
    for refused in (by_status[401], by_status[403]):
        assert refused.parent_id == "" and refused.trace_id not in ("ef" * 16, "12" * 16)
    assert not any(span.error for span in spans)  # a client's error is not the server's (OpenTelemetry's HTTP rule)


async def test_the_api_reads_one_traceparent_and_every_tracestate_header_within_bounds(settings: Settings) -> None:
    """Several ``tracestate`` headers are one list; a second ``traceparent``,
    or one longer than a trace context, is none: the request starts a trace."""
    event = example("OFD", partner_id="acme").model_dump(mode="json", by_alias=True)
    async with Receiver() as partner, OtlpReceiver() as otlp, pipeline(settings, partner, otlp) as p:
        for headers in ([("traceparent", traceparent("ab" * 16, "cd" * 8)), ("tracestate", "a=1"),
                         ("tracestate", "b=2")],
                        [("traceparent", traceparent("ef" * 16, "cd" * 8)),
                         ("traceparent", traceparent("12" * 16, "cd" * 8))],
                        # A later version may add fields, which the SDK would read past: not this many.
                        [("traceparent", f"01-{'34' * 16}-{'cd' * 8}-01-{'0' * 200}")]):
            response = await p.http.post("/v1/events", json=event, headers=headers)
            assert response.status_code == 202, response.text
        spans = await eventually(lambda: len(otlp.named("POST /v1/events")) == 3
                                 and otlp.named("POST /v1/events"), timeout=30)
    continued = [span for span in spans if span.parent_id]
    assert [(span.trace_id, span.parent_id, span.trace_state) for span in continued] == [
        ("ab" * 16, "cd" * 8, "a=1,b=2")]
    assert not {span.trace_id for span in spans} & {"ef" * 16, "12" * 16, "34" * 16}


async def test_fastapis_own_telemetry_stays_off_and_no_span_names_a_tracking_link(settings: Settings) -> None:
    """FastAPI configures telemetry of its own from the environment when
    ``FASTAPI_OTEL_AUTO_CONFIGURE`` is true, and would then trace every route,
    secret paths included: shipcast's apps turn it off, so only shipcast's
    spans are sent."""
    link = f"/t/{secrets.token_urlsafe(24)}"
    event = example("OFD", partner_id="acme").model_dump(mode="json", by_alias=True)
    async with Receiver() as partner, OtlpReceiver() as otlp, \
            pipeline(settings, partner, otlp, FASTAPI_OTEL_AUTO_CONFIGURE="true") as p:
        await p.http.get(link)
        await p.http.get("/v1/partners")
        await p.post(event)
        await eventually(lambda: otlp.named("deliver webhook"), timeout=30)
    # Every process has stopped: whatever FastAPI would have sent, it has.
    assert {span.name for span in otlp.spans} == {
        "POST /v1/events", "send shipcast.events", "process shipcast.webhook", "deliver webhook"}
    assert not [span for span in otlp.spans if link in json.dumps(span.attributes)]


async def test_the_relay_starts_a_trace_per_row_that_the_worker_continues(vhost: str, tmp_path: Path,
                                                                           pg_database: str) -> None:
    from .test_relay import event, made_outbox, relay_settings

    without_otel()
    async with made_outbox("postgresql", pg_database) as outbox, Receiver() as partner, OtlpReceiver() as otlp:
        settings = relay_settings(vhost, tmp_path, outbox)
        async with applied(settings, partners_doc("acme", partner.url)):
            [row_id] = await outbox.insert(event("ORD-RELAYED"))
            processes = [Subprocess(settings, "relay", env=otel_env(otlp)).start(),
                         Subprocess(settings, "worker", "--channel", "webhook", env=otel_env(otlp)).start()]
            try:
                await eventually(lambda: partner.delivered, timeout=30)
                [relayed] = await eventually(lambda: otlp.named(f"relay {outbox.table}"), timeout=30)
                spans = await eventually(lambda: len(otlp.trace(relayed.trace_id)) == 4
                                         and otlp.trace(relayed.trace_id), timeout=30)
            finally:
                await stop(processes)
    assert relayed.parent_id == "" and relayed.resource["shipcast.process"] == "relay"
    assert relayed.attributes["shipcast.outbox.row_id"] == row_id
    assert relayed.attributes["shipcast.order_id"] == "ORD-RELAYED"
    publish = one(spans, "send shipcast.events")
    process = one(spans, "process shipcast.webhook")
    attempt = one(spans, "deliver webhook")
    assert (publish.parent_id, process.parent_id, attempt.parent_id) == (
        relayed.span_id, publish.span_id, process.span_id)
    assert joined(partner.requests[0].headers["traceparent"]) == (relayed.trace_id, attempt.span_id)


async def test_a_test_send_and_a_replay_from_the_parking_lot_are_each_a_trace_of_their_own(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    """A test send is a root span, under which its message's every handling
    goes, the retries too, till it is parked; its replay from the parking
    lot is a root span too, linked to the test send's, with the replayed
    copy's handling under it."""
    receiver.default = 500
    await shipcast.apply(partners_doc("acme", receiver.url))
    topology = next(worker.topology for worker in shipcast.workers if worker.name == "webhook")
    async with OtlpReceiver() as otlp:
        async with tracing_to(otlp):
            response = await shipcast.http.post("/v1/partners/acme/endpoints/main/test", json={"event_type": "DEL"},
                                                headers={"traceparent": traceparent("ab" * 16, "cd" * 8)})
            assert response.status_code == 202, response.text
            event_id = response.json()["event_id"]
            await eventually(lambda: list_dead(shipcast.services.broker, topology), timeout=30)
            receiver.default = 200
            assert await replay_dead(shipcast.services.broker, topology) == 1
            await eventually(lambda: receiver.answered[-1:] == [200], timeout=30)
            await eventually(lambda: len(otlp.named("deliver webhook")) == 4, timeout=30)
    test_send = one(otlp.spans, "send shipcast.webhook", **{"shipcast.sent_again": "test"})
    assert (test_send.kind, test_send.parent_id, test_send.links) == ("producer", "", ())
    assert test_send.attributes.items() >= {"shipcast.event_id": event_id, "shipcast.target_id": "main",
                                            "shipcast.channel": "webhook"}.items()
    handled = sorted(otlp.named("process shipcast.webhook", otlp.trace(test_send.trace_id)),
                     key=lambda span: span.attributes["shipcast.retry_tier"])
    assert [span.attributes["shipcast.retry_tier"] for span in handled] == [0, 1, 2]
    assert {span.parent_id for span in handled} == {test_send.span_id}

    replayed = one(otlp.spans, "send shipcast.webhook", **{"shipcast.sent_again": "replay"})
    assert (replayed.kind, replayed.parent_id) == ("producer", "")
    assert replayed.trace_id != test_send.trace_id
    assert replayed.links == ((test_send.trace_id, test_send.span_id),)
    assert replayed.attributes.items() >= {"messaging.message.id": event_id, "shipcast.target_id": "main",
                                           "shipcast.channel": "webhook"}.items()
    process = one(otlp.trace(replayed.trace_id), "process shipcast.webhook")
    attempt = one(otlp.trace(replayed.trace_id), "deliver webhook")
    assert (process.parent_id, attempt.parent_id) == (replayed.span_id, process.span_id)
    assert attempt.attributes["shipcast.outcome"] == "delivered"
    assert joined(receiver.requests[-1].headers["traceparent"]) == (replayed.trace_id, attempt.span_id)
    assert "ab" * 16 not in {span.trace_id for span in otlp.spans}  # the API's routes but ingest are not traced


#: ``shipcast run`` in a Python process of its own that, once the event is
#: delivered, prints which modules of OpenTelemetry's SDK and exporters it imported.
WORKER = """
import asyncio, json, os, signal, sys
from shipcast.app.runtime import serve
from shipcast.app.services import Services

async def main():
    services = Services.from_settings()
    running = asyncio.ensure_future(serve(api=True, worker_names=["webhook"], services=services))
    while not services.started:
        await asyncio.sleep(0.05)
    print("started", flush=True)
    while not await services.store.list_deliveries(status="delivered"):
        await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
    await running
    print(json.dumps(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))))

asyncio.run(main())
"""


@contextlib.contextmanager
def python(settings: Settings, script: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", script], env={**settings_env(settings), **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(10)


@pytest.mark.parametrize("otel", [
    {},
    {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "{otlp}"},
    {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "{otlp}/v1/traces"},
    {"OTEL_SERVICE_NAME": "shipcast", "OTEL_BSP_SCHEDULE_DELAY": "100"},
], ids=["unset", "sdk-disabled", "exporter-none", "no-endpoint"])
async def test_without_an_endpoint_nothing_of_the_sdk_is_imported_and_nothing_is_sent(
        settings: Settings, otel: dict[str, str]) -> None:
    """Even the OMS's ``traceparent`` goes nowhere: not into the message, not to the partner."""
    without_otel()
    async with Receiver() as partner, OtlpReceiver() as otlp, applied(settings, partners_doc("acme", partner.url)):
        env = {name: text.format(otlp=otlp.endpoint) for name, text in otel.items()}
        connection = await aio_pika.connect(f"amqp://guest:guest@{AMQP_HOST}/{settings.amqp_url.rsplit('/', 1)[1]}")
        try:
            channel = await connection.channel()
            wire = await channel.declare_queue(exclusive=True)
            await wire.bind(EXCHANGE, "#")
            with python(settings, WORKER, env) as process:
                assert process.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
                assert line == "started\n", process.communicate()[1]
                event = example("OFD", partner_id="acme").model_dump(mode="json", by_alias=True)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}") as http:
                    response = await http.post("/v1/events", json=event, headers={
                        "authorization": f"Bearer {TOKEN}",
                        "traceparent": traceparent(secrets.token_hex(16), secrets.token_hex(8))})
                assert response.status_code == 202, response.text
                out, err = await asyncio.to_thread(process.communicate, timeout=60)
            assert process.returncode == 0, err
            message = await wire.get(timeout=5)
        finally:
            await connection.close()
    assert json.loads(out.strip().splitlines()[-1]) == []
    assert "traceparent" not in (message.headers or {})
    [request] = partner.requests
    assert "traceparent" not in request.headers
    assert otlp.requests == 0 and otlp.spans == []
