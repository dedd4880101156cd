"""A local OpenTelemetry collector, as far as traces go: an OTLP/HTTP
receiver on a free loopback port taking ``POST /v1/traces`` with protobuf
bodies, decoded with opentelemetry-proto, keeping every span it is sent."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from shipcast import tracing

KINDS = {Span.SPAN_KIND_INTERNAL: "internal", Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client",
         Span.SPAN_KIND_PRODUCER: "producer", Span.SPAN_KIND_CONSUMER: "consumer"}


def value(any_value: AnyValue) -> Any:
    """An attribute's value as Python: a string, number, bool, or a list of them."""
    which = any_value.WhichOneof("value")
    if which == "array_value":
        return [value(item) for item in any_value.array_value.values]
    return getattr(any_value, which) if which else None


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    #: ``""`` for a root span.
    parent_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    #: The sending process's resource (``service.name``, ``shipcast.process``, ``process.pid``).
    resource: dict[str, Any]
    error: bool
    status_message: str
    trace_state: str
    #: The spans it links to (it follows from them without being their child): trace and span ids.
    links: tuple[tuple[str, str], ...] = ()


@dataclass
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    #: Export requests received, each answered 200.
    requests: int = 0
    port: int = 0
    #: Keep the bodies as they come, to decode when asked (:meth:`count`): a benchmark's receiver does no work.
    lazy: bool = False
    bodies: list[bytes] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set to (the exporter adds ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"not protobuf: {request.content_type}")
        self.requests += 1
        if self.lazy:
            self.bodies.append(body)
        else:
            self._keep(ExportTraceServiceRequest.FromString(body))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def _keep(self, export: ExportTraceServiceRequest) -> None:
        for resource_spans in export.resource_spans:
            resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(ReceivedSpan(
                        span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name,
                        KINDS.get(span.kind, "unspecified"), {a.key: value(a.value) for a in span.attributes},
                        resource, span.status.code == Status.STATUS_CODE_ERROR, span.status.message,
                        span.trace_state, tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links)))

    def count(self) -> int:
        """How many spans arrived (the kept bodies decoded now)."""
        for body in self.bodies:
            self._keep(ExportTraceServiceRequest.FromString(body))
        self.bodies.clear()
        return len(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    def named(self, name: str, spans: list[ReceivedSpan] | None = None) -> list[ReceivedSpan]:
        return [span for span in (self.spans if spans is None else spans) if span.name == name]

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


@contextlib.asynccontextmanager
async def tracing_to(otlp: OtlpReceiver, process: str = "test") -> AsyncIterator[None]:
    """shipcast's tracing on in this process, sending to ``otlp``; at the
    end, stopped, once every span is sent (in a thread: ``otlp`` answers on
    this event loop)."""
    names = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED",
             "OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME")
    saved = {name: os.environ.pop(name, None) for name in names}
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.endpoint
    try:
        assert tracing.start(process)
        yield
    finally:
        await asyncio.to_thread(tracing.stop)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
