"""OpenTelemetry traces of each event, from ``POST /v1/events`` to the
partner's endpoint, when the standard ``OTEL_*`` variables ask for them.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and ``OTEL_SDK_DISABLED`` is
not ``true``, nor ``OTEL_TRACES_EXPORTER`` ``none``): then nothing of the
SDK is imported, :func:`span` hands out one shared object that does nothing,
and every other function returns at its first line. On, spans go to the
OTLP/HTTP endpoint in batches (``OTEL_BSP_*``), sampled as
``OTEL_TRACES_SAMPLER`` says, named ``OTEL_SERVICE_NAME`` (``shipcast`` by
default). The SDK is the ``otel`` extra: ``pip install 'shipcast[otel]'``.

Trace context crosses processes as W3C ``traceparent`` / ``tracestate``
only (never baggage): from the OMS's request, in each event's message
headers, and in each webhook request. docs/tracing.md lists the spans and
their attributes; their names are here.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span as Span
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

Kind = Literal["server", "producer", "consumer", "client", "internal"]

# Attributes of shipcast's own, on every span about an event.
EVENT_ID = "shipcast.event_id"
EVENT_TYPE = "shipcast.event_type"
PARTNER = "shipcast.partner_id"
ORDER = "shipcast.order_id"
#: On the span of a ``POST /v1/events``: every event id of the request, and how many.
EVENT_IDS = "shipcast.event_ids"
EVENT_COUNT = "shipcast.event_count"
CHANNEL = "shipcast.channel"
#: The target (a webhook endpoint's id, ``customer``) an attempt, or a copy of a message, is for.
TARGET = "shipcast.target_id"
#: The attempt's number, as the delivery log counts it (1 the first time).
ATTEMPT = "shipcast.attempt"
#: What an attempt came to: delivered, retry, dead (parked), waiting, skipped.
OUTCOME = "shipcast.outcome"
#: On a channel's span: how many targets it delivered to, and why others were not (``shipcast.skipped.<why>``).
TARGETS = "shipcast.targets"
SKIPPED = "shipcast.skipped."
#: On a webhook or AMQP channel's span: the endpoints (destinations) whose filter the event did not pass.
FILTERED = "shipcast.filtered_endpoints"
#: On the relay's span: the outbox row it published.
OUTBOX_ROW = "shipcast.outbox.row_id"
HTTP_STATUS = "http.response.status_code"

#: Seconds a stopping process waits for its last spans to be sent.
STOP_WAIT = 5.0
#: The variables that turn tracing on; unset, it is off.
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class TracedEvent(Protocol):
    """What spans are told of an event (an envelope)."""

    @property
    def event_id(self) -> str: ...

    @property
    def event_type(self) -> str: ...

    @property
    def partner_id(self) -> str: ...

    @property
    def order(self) -> Any: ...


class _Off(AbstractContextManager[None]):
    """The span handed out while tracing is off: one object, doing nothing."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
#: What the hot path needs of the API once on, looked up once: the W3C
#: propagator, the span kinds, the current span, and an error status.
_propagator: Any = None
_kinds: dict[str, Any] = {}
_current: Any = None
_error: Any = None


def enabled() -> bool:
    """Whether this process sends traces."""
    return _tracer is not None


def wanted(environ: Mapping[str, str] | None = None) -> str | None:
    """Why the environment asks for no traces (``None`` when it asks for them)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "OTEL_SDK_DISABLED is true"
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return "OTEL_TRACES_EXPORTER is none"
    if not any(env.get(name, "").strip() for name in ENDPOINTS):
        return "no OTLP endpoint is set"
    return None


def start(process: str) -> bool:
    """Start sending traces if the ``OTEL_*`` variables ask for them; say
    whether it did. ``process`` (``api``, ``worker``, ``run``, ``relay``) is
    the ``shipcast.process`` attribute of every span's resource. Once per
    process, before it serves; :func:`stop` sends what is left."""
    global _tracer, _provider, _propagator, _kinds, _current, _error
    if _tracer is not None or wanted() is not None:
        return _tracer is not None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, StatusCode, get_current_span
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        log.warning("an OTLP endpoint is set, but OpenTelemetry's SDK is not installed (%s): no traces are sent; "
                    "pip install 'shipcast[otel]'", exc)
        return False
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol.strip() != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL is %r: shipcast sends traces over OTLP/HTTP (http/protobuf) only",
                    protocol)
    from shipcast import __version__

    resource = Resource.create({"service.version": __version__, "shipcast.process": process,
                                "process.pid": os.getpid()})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "shipcast"}))
    # The sampler is OTEL_TRACES_SAMPLER's (parent-based, always on, by default); a value
    # the SDK cannot read, it logs naming the variable, and goes on with its default.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # Not made the global provider: FastAPI would then trace every route of
    # its own accord, the tracking page's secret links in their URLs among them.
    _provider, _propagator = provider, TraceContextTextMapPropagator()
    _kinds = {kind.name.lower(): kind for kind in SpanKind}
    _current, _error = get_current_span, StatusCode.ERROR
    _tracer = provider.get_tracer("shipcast", __version__)
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    log.info("sending traces to %s", re.sub(r"//[^/@]*@", "//", endpoint))  # never a password it holds
    return True


def stop(wait: float = STOP_WAIT) -> None:
    """Send the spans still waiting, and stop; after ``wait`` seconds, those
    an endpoint has not taken yet are dropped (the SDK alone would retry for
    up to half a minute, past a stopping process's grace)."""
    global _tracer, _provider
    provider, _tracer, _provider = _provider, None, None
    if provider is None:
        return
    stopping = threading.Thread(target=provider.shutdown, name="shipcast-tracing-stop", daemon=True)
    stopping.start()
    stopping.join(wait)
    if stopping.is_alive():
        log.warning("the OTLP endpoint did not take the last spans within %gs: they are dropped", wait)


def span(name: str, kind: Kind = "internal", parent: Mapping[str, Any] | None = None,
         ) -> AbstractContextManager[Span | None]:
    """A span around a block, current within it (children and :func:`inject`
    see it), ended and given an error status if the block raises.

    :param parent: W3C trace context headers to continue (``traceparent``,
        ``tracestate``): an empty mapping starts a new trace; ``None``
        continues the current span's.
    :returns: a context manager giving the span, or ``None`` when tracing is off.
    """
    if _tracer is None:
        return _OFF
    context = _propagator.extract(parent) if parent is not None else None
    return _tracer.start_as_current_span(name, context=context, kind=_kinds[kind])


def describe(span: Span | None, event: TracedEvent | None = None, attributes: Mapping[str, Any] | None = None,
             ) -> None:
    """Give ``span`` an event's attributes (id, type, partner, order) and
    ``attributes`` (those that are ``None`` are left out)."""
    if span is None:
        return
    given = {key: value for key, value in (attributes or {}).items() if value is not None}
    span.set_attributes({**event_attributes(event), **given} if event is not None else given)


def event_attributes(event: TracedEvent) -> dict[str, str]:
    """An event's attributes: its id, type, partner and order."""
    return {EVENT_ID: event.event_id, EVENT_TYPE: event.event_type, PARTNER: event.partner_id,
            ORDER: event.order.order_id}


def note(attributes: Mapping[str, Any]) -> None:
    """Give the current span ``attributes``."""
    if _tracer is None:
        return
    _current().set_attributes(dict(attributes))


def failed(span: Span | None, description: str) -> None:
    """Mark ``span`` as an error that the block did not raise (an attempt the target refused)."""
    if span is None:
        return
    span.set_status(_error, description[:500])


def inject(carrier: MutableMapping[str, Any]) -> None:
    """Write the current span's context into ``carrier`` (a message's or a
    request's headers) as ``traceparent`` and ``tracestate``."""
    if _tracer is None:
        return
    _propagator.inject(carrier)
