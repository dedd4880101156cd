"""shipcast's tracing switch: off unless an OTLP endpoint is set, and then
nothing but one shared object that does nothing; on, what it sends."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
import typing
from pathlib import Path

import pytest

from shipcast import tracing
from shipcast.amqp import headers as h
from shipcast.app.relay.process import serve_relay
from shipcast.app.relay.source import OutboxSource
from shipcast.app.runtime import serve
from shipcast.app.services import Services
from shipcast.delivery.consumer import ChannelWorker
from shipcast.exceptions import StoreError
from shipcast.settings import Settings
from tests.bound import example

from ..conftest import free_port
from ..otlp import OtlpReceiver, tracing_to

pytestmark = pytest.mark.fast

ENDPOINT = "http://127.0.0.1:4318"


@pytest.mark.parametrize(("environ", "reason"), [
    ({}, "no OTLP endpoint is set"),
    ({"OTEL_SERVICE_NAME": "shipcast", "OTEL_TRACES_SAMPLER": "always_on"}, "no OTLP endpoint is set"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, "no OTLP endpoint is set"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, None),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{ENDPOINT}/v1/traces"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "TRUE"}, "OTEL_SDK_DISABLED is true"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "false"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, "OTEL_TRACES_EXPORTER is none"),
])
def test_only_an_otlp_endpoint_turns_tracing_on(environ: dict[str, str], reason: str | None) -> None:
    assert tracing.wanted(environ) == reason


def test_off_every_span_is_one_object_that_does_nothing() -> None:
    assert not tracing.enabled()
    assert tracing.span("a", "server", parent={"traceparent": "x"}) is tracing.span("b")
    with tracing.span("a") as span:
        assert span is None
        tracing.note({"x": 1})
        tracing.describe(span, None, {"x": 1})
        tracing.failed(span, "no")
        headers: dict[str, object] = {"webhook-id": "evt_1"}
        tracing.inject(headers)
        assert headers == {"webhook-id": "evt_1"}
    assert h.TRACEPARENT not in h.event_message(example("OFD")).headers


def test_an_endpoint_without_the_sdk_is_said_and_leaves_tracing_off(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with caplog.at_level(logging.WARNING, "shipcast.tracing"):
        assert tracing.start("worker") is False
    assert not tracing.enabled()
    assert "pip install 'shipcast[otel]'" in caplog.text


def test_stopping_does_not_wait_long_for_an_endpoint_that_is_down(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # its retries over soon after the test
    assert tracing.start("worker")
    with tracing.span("lost"):
        pass
    with caplog.at_level(logging.WARNING, "shipcast.tracing"):
        tracing.stop(wait=0.5)
    assert not tracing.enabled()
    assert "did not take the last spans within 0.5s" in caplog.text


def test_a_message_reads_its_trace_context_whatever_a_publisher_sent() -> None:
    assert h.trace_context({}) == {}
    assert h.trace_context({"x-shipcast-target": "main"}) == {}
    assert h.trace_context({"traceparent": b"00-ab-cd-01", "tracestate": b"a=1"}) == {
        "traceparent": "00-ab-cd-01", "tracestate": "a=1"}
    assert h.trace_context({"traceparent": None}) == {}
    # Junk, and more than a trace context holds, is not read (nor decoded, nor made text).
    valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for junk in (7, {"x": [1, b"\xff"]}, [b"a", 1], "0" * (tracing.TRACEPARENT_MAX + 1),
                 b"0" * (tracing.TRACEPARENT_MAX + 1)):
        assert h.trace_context({"traceparent": junk, "tracestate": "a=1"}) == {}
    for junk in ({"a": 1}, "a=1," * 200, "\u00e9" * (tracing.TRACESTATE_MAX + 1), b"a" * (tracing.TRACESTATE_MAX + 1)):
        assert h.trace_context({"traceparent": valid, "tracestate": junk}) == {"traceparent": valid}
    assert h.trace_context({"traceparent": valid, "tracestate": "a" * tracing.TRACESTATE_MAX}) == {
        "traceparent": valid, "tracestate": "a" * tracing.TRACESTATE_MAX}


async def test_on_an_event_message_carries_its_span_and_its_resource_names_the_process() -> None:
    async with OtlpReceiver() as otlp:
        async with tracing_to(otlp, "worker"):
            assert tracing.start("worker")  # once started, starting again changes nothing
            with tracing.span("outer", "producer", parent={}) as span:
                assert span is not None
                message = h.event_message(example("OFD"))
            with pytest.raises(ValueError), tracing.span("broken"):
                raise ValueError("it broke")
    outer, broken = otlp.named("outer") + otlp.named("broken")
    assert str(message.headers[h.TRACEPARENT]).split("-")[1:3] == [outer.trace_id, outer.span_id]
    assert outer.kind == "producer" and outer.resource["shipcast.process"] == "worker"
    assert outer.resource["service.name"] == "shipcast"
    assert broken.error and "it broke" in broken.status_message and broken.trace_id != outer.trace_id


@pytest.mark.parametrize("owner", [tracing, ChannelWorker], ids=["tracing", "ChannelWorker"])
def test_annotations_naming_the_sdks_types_resolve_at_run_time(owner: object) -> None:
    """``Span`` and the like are the SDK's to a type checker, and stand-ins at
    run time: a tool reading the hints (``typing.get_type_hints``) gets them."""
    home = tracing.__name__ if owner is tracing else ChannelWorker.__module__
    functions = [f for _, f in inspect.getmembers(owner, inspect.isfunction) if f.__module__ == home]
    assert len(functions) > 5
    for function in functions:
        typing.get_type_hints(function)


async def test_tracestate_stays_within_shipcast_and_a_partner_gets_the_traceparent_alone() -> None:
    """An event's message carries the OMS's ``tracestate`` between shipcast's
    processes; what a channel writes into a partner's request does not."""
    oms = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
           "tracestate": "omsvendor=tenant-42,dd=s:1"}
    async with OtlpReceiver() as otlp:
        async with tracing_to(otlp):
            with tracing.span("inside", parent=oms):
                message = h.event_message(example("OFD"))
                request: dict[str, str] = {"webhook-id": "evt_1"}
                tracing.inject(request)
    [inside] = otlp.named("inside")
    assert message.headers[h.TRACESTATE] == "omsvendor=tenant-42,dd=s:1"
    assert inside.trace_state == "omsvendor=tenant-42,dd=s:1"
    assert set(request) == {"webhook-id", "traceparent"}
    assert request["traceparent"].split("-")[1:3] == [inside.trace_id, inside.span_id]


@pytest.mark.parametrize("process", ["serve", "relay"])
async def test_a_process_whose_services_do_not_start_still_stops_tracing(
        process: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracing started, the store cannot be opened: the process ends with
    the error, its last spans sent and tracing stopped all the same."""
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'store.db'}",
                        config=str(tmp_path / "none.yaml"), secret_key_file=str(tmp_path / "k"))
    services = Services.from_settings(settings)
    loop = asyncio.get_running_loop()
    async with OtlpReceiver() as otlp:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
        try:
            with pytest.raises(StoreError, match="cannot open the store"):
                if process == "serve":
                    await serve(api=False, worker_names=[], services=services)
                else:
                    await serve_relay(services, OutboxSource("postgresql+asyncpg://127.0.0.1:1/none", "outbox"))
            assert not tracing.enabled()
        finally:
            await asyncio.to_thread(tracing.stop)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await services.close()


@pytest.mark.parametrize(("exporter", "warned"), [
    ("", False), ("otlp", False), (" OTLP ", False), ("console", True), ("otlp,console", True), ("zipkin", True),
])
async def test_an_exporter_other_than_otlp_is_said_and_otlp_is_sent_all_the_same(
        exporter: str, warned: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async with OtlpReceiver() as otlp:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", exporter)
        try:
            with caplog.at_level(logging.WARNING, "shipcast.tracing"):
                assert tracing.start("worker")
            with tracing.span("sent"):
                pass
        finally:
            await asyncio.to_thread(tracing.stop)
    assert [span.name for span in otlp.spans] == ["sent"]
    assert ("shipcast sends traces to the OTLP endpoint only" in caplog.text) is warned
    if warned:
        assert repr(exporter) in caplog.text
