"""What a partner writes for its AMQP destinations, and how it is checked:
the broker's URL, the exchange, and the routing-key template, a plain
substitution of a few named fields of the event (never code)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import yarl
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shipcast.model.catalog import current
from shipcast.model.envelope import Event
from shipcast.model.filters import FilterField, unmatched_filter
from shipcast.model.partners import EventList
from shipcast.security.signing import SECRET_PATTERN

#: The fields a routing-key template may name, and where each comes from.
PLACEHOLDERS: dict[str, str] = {
    "partner_id": "the partner's id",
    "event_type": "the event type, like OFD",
    "event_id": "the event's id (the webhook-id header)",
    "order_id": "the order's id",
}
DEFAULT_ROUTING_KEY = "{partner_id}.{event_type}"
#: AMQP's limit on an exchange name and on a routing key (a short string), in bytes.
SHORT_STRING = 255
SCHEMES = ("amqp", "amqps")
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
#: An exchange name: RabbitMQ's own rule for names, without the empty default exchange.
EXCHANGE = re.compile(r"[A-Za-z0-9_.:-]{1,255}\Z")  # \Z: $ would match before a final line break
_PART = re.compile(r"(\{[^{}]*\})")


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a routing-key template, or ``None``: text with
    ``{name}`` placeholders, each one of :data:`PLACEHOLDERS`."""
    if len(template.encode()) > SHORT_STRING:
        return f"at most {SHORT_STRING} bytes"
    for part in _PART.split(template):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if name not in PLACEHOLDERS:
                return f"unknown placeholder {part}; known: {', '.join('{' + n + '}' for n in PLACEHOLDERS)}"
        elif "{" in part or "}" in part:
            return "a brace that opens or closes no placeholder; placeholders are written {name}"
    return None


def routing_key(template: str, event: Event) -> str:
    """The routing key ``template`` gives for ``event``: each placeholder
    replaced by the event's value, nothing else interpreted."""
    values = {"partner_id": event.partner_id, "event_type": event.event_type, "event_id": event.event_id,
              "order_id": event.order.order_id}
    return "".join(values[part[1:-1]] if part.startswith("{") and part.endswith("}") else part
                   for part in _PART.split(template))


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a broker URL shipcast publishes to, or ``None``:
    ``amqp://`` or ``amqps://``, a host, a port, a virtual host at most, and
    nothing in a query (the client would read TLS key files from it)."""
    if len(url) > 2000:
        return "at most 2000 characters"
    try:
        parsed = yarl.URL(url)
        port = parsed.port
    except ValueError as exc:
        return f"is not a URL: {exc}"
    if parsed.scheme not in SCHEMES:
        return "must start with amqp:// or amqps://"
    if not parsed.host:
        return "names no host"
    if port is not None and not 0 < port < 65536:
        return "has no valid port"
    if parsed.raw_query_string or parsed.raw_fragment:
        return "may not carry a query or a fragment: give the host, port, virtual host and credentials only"
    if parsed.raw_path.count("/") > 1:
        return "the path is the virtual host, one segment (write a / inside it as %2F)"
    return None


def broker_url(url: str, credentials: str | None) -> yarl.URL:
    """What the client connects with: the stored URL (no credentials, no
    query), its default port made explicit, and ``credentials``
    (``user:password`` as written in a URL) put back."""
    parsed = yarl.URL(url)
    if parsed.explicit_port is None:
        parsed = parsed.with_port(DEFAULT_PORTS[parsed.scheme])
    if credentials:
        # Put back through the URL's own setters, which quote them again and keep an IPv6 host's brackets.
        user, _, password = credentials.partition(":")
        parsed = parsed.with_user(unquote(user)).with_password(unquote(password) if password else None)
    return parsed


def host_port(url: yarl.URL) -> str:
    """Where ``url`` points, as people write it: ``host:port``, an IPv6 host in brackets."""
    host = url.host or ""
    return f"[{host}]:{url.port}" if ":" in host else f"{host}:{url.port}"


def virtual_host(url: yarl.URL) -> str:
    """The virtual host a URL names (``/`` when it names none)."""
    return url.path[1:] if url.path not in ("", "/") else "/"


def _url(url: str) -> None:
    problem = url_problem(url)
    if problem:
        raise ValidationError(problem)


def _template(template: str) -> None:
    problem = template_problem(template)
    if problem:
        raise ValidationError(problem)


class DestinationSchema(Schema):
    class Meta:
        unknown = RAISE

    id = fields.String(required=True, validate=validate.Regexp(r"[a-z0-9_-]{1,64}\Z", error="must match [a-z0-9_-]+"))
    #: ``amqp(s)://user:password@host:port/vhost``; the credentials leave the URL and are stored encrypted.
    url = fields.String(required=True, validate=_url, metadata={"json_schema": {
        "format": "uri", "maxLength": 2000,
        "pattern": r"^amqps?://([A-Za-z0-9._~%!$&'()*+,;=-]+(:[A-Za-z0-9._~%!$&'()*+,;=-]*)?@)?"
                   r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~%-]*)?$"}})
    exchange = fields.String(required=True, validate=validate.Regexp(
        EXCHANGE, error="an exchange name: 1 to 255 letters, digits, '-', '_', '.' or ':'"))
    routing_key = fields.String(load_default=DEFAULT_ROUTING_KEY, validate=_template, metadata={"json_schema": {
        "maxLength": SHORT_STRING,
        "pattern": rf"^([\x20-\x7a|~]|\{{({'|'.join(PLACEHOLDERS)})\}})*$"}})
    events = EventList()
    #: Only events this condition on their fields holds for are published (shipcast.model.filters).
    filter = FilterField()
    secret = fields.String(validate=validate.Regexp(SECRET_PATTERN, error="must look like whsec_<base64>"))
    description = fields.String(validate=validate.Length(max=500))
    #: Publishes per second at most (per worker process); default SHIPCAST_ENDPOINT_RATE_LIMIT.
    rate_limit = fields.Float(validate=validate.Range(min=0.1, max=100000))
    #: Publishes awaiting the broker's confirm at once (per worker process).
    max_concurrency = fields.Integer(validate=validate.Range(min=1, max=256))

    @validates_schema
    def _filter_can_match(self, data: dict[str, Any], **_: Any) -> None:
        errors = unmatched_filter(data, current().event_types)
        if errors:
            raise ValidationError(errors)


class AmqpConfig(Schema):
    class Meta:
        unknown = RAISE

    destinations = fields.List(
        fields.Nested(DestinationSchema), required=True,
        validate=validate.Length(min=1, max=20, error="list from 1 to 20 destinations"),
        metadata={"description": (
            'Your RabbitMQ brokers: [{"id": "main", "url": "amqps://user:password@broker.example.com/vhost", '
            '"exchange": "orders", "routing_key": "{partner_id}.{event_type}.{order_id}", "events": ["*"]}]. '
            "The credentials and the secret are kept when a URL is given again without them.")})

    @validates_schema
    def _unique_ids(self, data: dict[str, Any], **_: Any) -> None:
        ids = [destination["id"] for destination in data.get("destinations", [])]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValidationError(f"duplicate destination ids {duplicates}", "destinations")
