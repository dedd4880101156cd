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
only (never baggage): from the OMS's request, and in each event's message
headers; what a partner receives (a webhook request) carries
``traceparent`` alone. docs/tracing.md lists the spans and
their attributes; their names are here.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span as Span
    from opentelemetry.trace import Tracer
else:  # what annotations name at run time (typing.get_type_hints), with no SDK imported
    Span = Tracer = TracerProvider = Any

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
#: On a webhook channel's span: the endpoints whose filter the event did not pass.
FILTERED = "shipcast.filtered_endpoints"
#: On the span of a message published on purpose to one target (``send shipcast.<channel>``): why.
SENT_AGAIN = "shipcast.sent_again"
#: On the relay's span: the outbox row it published.
OUTBOX_ROW = "shipcast.outbox.row_id"
HTTP_STATUS = "http.response.status_code"

#: The W3C headers (their names, lower case, as the propagator writes them).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

#: The longest ``traceparent`` read (W3C's version 00 is 55 characters; room
#: for a later version's fields), and ``tracestate`` (W3C lets a longer one be
#: dropped): a longer one, from a caller or a message, is ignored.
TRACEPARENT_MAX = 128
TRACESTATE_MAX = 512
#: The ``parent`` of a span that starts a trace of its own.
NEW_TRACE: Mapping[str, str] = MappingProxyType({})

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
_link: Any = None


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
    global _tracer, _provider, _propagator, _kinds, _current, _error, _link
    if _tracer is not None or wanted() is not None:
        return _tracer is not None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import Link, SpanKind, StatusCode, get_current_span
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        log.warning("an OTLP endpoint is set, but OpenTelemetry's SDK is not installed (%s): no traces are sent; "
                    "pip install 'shipcast[otel]'", exc)
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if {name.strip().lower() for name in exporter.split(",") if name.strip()} - {"otlp"}:
        log.warning("OTEL_TRACES_EXPORTER is %r: shipcast sends traces to the OTLP endpoint only (otlp), "
                    "or none (none)", exporter)
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
    _current, _error, _link = get_current_span, StatusCode.ERROR, Link
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
         link: Mapping[str, Any] | None = None, attributes: Mapping[str, Any] | None = None,
         ) -> AbstractContextManager[Span | None]:
    """A span around a block, current within it (children and :func:`inject`
    see it), ended and given an error status if the block raises.

    :param parent: W3C trace context headers to continue (``traceparent``,
        ``tracestate``; see :func:`carried`): an empty mapping
        (:data:`NEW_TRACE`) starts a new trace; ``None`` continues the current span's.
    :param link: W3C trace context headers of a span this one follows from
        without being its child (the original of a replay); one that cannot
        be read is left out.
    :param attributes: the span's first attributes (those that are ``None`` are left out).
    :returns: a context manager giving the span, or ``None`` when tracing is off.
    """
    if _tracer is None:
        return _OFF
    context = _propagator.extract(parent) if parent is not None else None
    links = None
    if link:
        linked = _current(_propagator.extract(link)).get_span_context()
        links = [_link(linked)] if linked.is_valid else None
    given = {key: value for key, value in attributes.items() if value is not None} if attributes else None
    return _tracer.start_as_current_span(name, context=context, kind=_kinds[kind], links=links, attributes=given)


def sent_again(queue: str, why: str, event_id: str | None, attributes: Mapping[str, Any] | None = None,
               link: Mapping[str, Any] | None = None) -> AbstractContextManager[Span | None]:
    """The span of a message published on purpose to a channel's queue (a
    resend, a replay, a test send), outside the trace of the event's
    first publish: a trace of its own, which the message carries on.

    :param why: :data:`SENT_AGAIN`'s value: ``resend``, ``test`` or ``replay``.
    :param link: the trace context of the copy replayed, when it had one.
    """
    if _tracer is None:
        return _OFF
    return span(f"send {queue}", "producer", parent=NEW_TRACE, link=link, attributes={
        "messaging.system": "rabbitmq", "messaging.operation.type": "send", "messaging.destination.name": queue,
        "messaging.message.id": event_id, SENT_AGAIN: why, **(attributes or {})})


def carried(traceparent: str | None, tracestate: str | None = None) -> Mapping[str, str]:
    """The trace context a caller or a message carries, as :func:`span`'s
    ``parent`` takes it: empty (a trace of its own) without a
    ``traceparent`` or with one too long to be one; a ``tracestate`` too long
    is dropped. Malformed values are ignored when read."""
    if not traceparent or len(traceparent) > TRACEPARENT_MAX:
        return NEW_TRACE
    if not tracestate or len(tracestate) > TRACESTATE_MAX:
        return {TRACEPARENT: traceparent}
    return {TRACEPARENT: traceparent, TRACESTATE: tracestate}


def began(span: Span | None, parent: Mapping[str, str]) -> bool:
    """Whether ``span``, told to continue ``parent`` (:func:`carried`),
    started a trace of its own instead: there was no context, or none that
    could be read. (Told by its trace's id, whether it is sampled or not.)"""
    if span is None:
        return False
    traceparent = parent.get(TRACEPARENT)
    return not traceparent or traceparent.split("-")[1:2] != [f"{span.get_span_context().trace_id:032x}"]


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


def inject(carrier: MutableMapping[str, Any], *, within: bool = False) -> None:
    """Write the current span's context into ``carrier`` (a request's or a
    message's headers) as ``traceparent``.

    :param within: the carrier stays within shipcast (an event's message
        between its processes): ``tracestate`` goes too. Never for what a
        partner receives: the OMS's vendors' state is not theirs to read.
    """
    if _tracer is None:
        return
    if within:
        _propagator.inject(carrier)
        return
    context: dict[str, str] = {}
    _propagator.inject(context)
    if TRACEPARENT in context:
        carrier[TRACEPARENT] = context[TRACEPARENT]
