"""AMQP destinations as a partners file writes them: the routing-key template
is a substitution of named fields and nothing else, the broker URL names a
broker and nothing the client would read files from, a filter must be able
to match the destination's events, and each refusal names its field; and
the channel running their filters: an event kept out counted once, a stored
filter that does not compile holding back its own destination only."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest

from shipcast import metrics
from shipcast.exceptions import ConfigError, PermanentDelivery
from shipcast.model.partners import Partner
from shipcast.plugins.amqp.channel import AmqpChannel
from shipcast.plugins.amqp.config import broker_url, routing_key, template_problem, url_problem
from shipcast.security.crypto import secret_box
from shipcast.security.endpoint_secrets import with_secret
from shipcast.settings import Settings
from tests.bound import example, load_partners

pytestmark = pytest.mark.fast


def doc(**destination: Any) -> dict[str, Any]:
    return {"partners": [{"id": "acme", "name": "Acme", "channels": {"amqp": {"destinations": [
        {"id": "main", "url": "amqps://broker.acme.example/orders", "exchange": "shipcast", **destination}]}}}]}


@pytest.mark.parametrize(("template", "problem"), [
    ("{partner_id}.{event_type}.{order_id}", None),
    ("orders.{event_type}", None),
    ("", None),  # a fanout exchange needs none
    ("fixed", None),
    ("{customer_phone}", "unknown placeholder {customer_phone}"),
    ("{order.customer.phone}", "unknown placeholder {order.customer.phone}"),
    ("{event_type.__class__}", "unknown placeholder"),
    ("{0}", "unknown placeholder {0}"),
    ("{}", "unknown placeholder {}"),
    ("{event_type", "a brace that opens or closes no placeholder"),
    ("event_type}", "a brace that opens or closes no placeholder"),
    ("{{event_type}}", "a brace that opens or closes no placeholder"),
    ("x" * 256, "at most 255 bytes"),
    ("é" * 128, "at most 255 bytes"),
])
def test_a_routing_key_template_names_only_known_fields(template: str, problem: str | None) -> None:
    found = template_problem(template)
    assert found == problem if problem is None else (found is not None and problem in found)


def test_a_routing_key_is_the_template_with_the_events_values_and_nothing_else() -> None:
    event = example("OFD", partner_id="acme")
    assert routing_key("{partner_id}.{event_type}.{order_id}", event) == f"acme.OFD.{event.order.order_id}"
    assert routing_key("orders", event) == "orders"
    assert routing_key("{event_id}", event) == event.event_id
    # A value that looks like a placeholder is data: substituted once, never read again.
    tricky = event.model_copy(update={"order": event.order.model_copy(update={"order_id": "{partner_id}"})})
    assert routing_key("x.{order_id}", tricky) == "x.{partner_id}"


@pytest.mark.parametrize(("url", "problem"), [
    ("amqp://broker.acme.example", None),
    ("amqps://user:p%40ss@broker.acme.example:5671/orders", None),
    ("amqp://broker.acme.example/%2Forders", None),
    ("http://broker.acme.example/", "must start with amqp:// or amqps://"),
    ("amqp:///orders", "names no host"),
    ("amqps://broker.acme.example/?cafile=/etc/shipcast/key.pem", "may not carry a query"),
    ("amqps://broker.acme.example/#x", "may not carry a query"),
    ("amqp://broker.acme.example/a/b", "the path is the virtual host"),
    ("amqp://broker.acme.example:99999/", "is not a URL"),
    ("amqp://" + "a" * 2000, "at most 2000 characters"),
])
def test_a_broker_url_names_a_broker_and_nothing_else(url: str, problem: str | None) -> None:
    found = url_problem(url)
    assert found == problem if problem is None else (found is not None and problem in found)


def test_the_client_connects_with_the_default_port_and_the_stored_credentials() -> None:
    assert str(broker_url("amqps://broker.acme.example/orders", None)) == "amqps://broker.acme.example:5671/orders"
    url = broker_url("amqp://broker.acme.example/orders", "us%3Aer:p%40ss")
    assert (url.user, url.password, url.port, url.path) == ("us:er", "p@ss", 5672, "/orders")


@pytest.mark.parametrize(("destination", "field", "said"), [
    ({"routing_key": "{customer_phone}"}, "routing_key", "unknown placeholder {customer_phone}"),
    ({"url": "https://broker.acme.example/"}, "url", "amqp://"),
    ({"url": "amqps://broker.acme.example/?keyfile=/etc/passwd"}, "url", "query"),
    ({"exchange": ""}, "exchange", "an exchange name"),
    ({"exchange": "a b"}, "exchange", "an exchange name"),
    ({"events": ["NOPE"]}, "events", "NOPE"),
    ({"secret": "plain"}, "secret", "whsec_"),
    ({"colour": "red"}, "colour", "Unknown field"),
    ({"filter": {"any": [{"event_type": "DEL"}, {"order.foo": 1}]}}, "filter.any.1.order.foo", "no such field"),
    ({"events": ["OFD"], "filter": {"return.reason": "damaged"}}, "filter.return.reason",
     "never matches: OFD events have no return"),
    ({"events": ["DEL"], "filter": {"event_type": "RET"}}, "filter.event_type",
     "never matches: only DEL events come here"),
    ({"id": "main\n"}, "id", "must match [a-z0-9_-]+"),
    ({"exchange": "shipcast\n"}, "exchange", "an exchange name"),
])
def test_a_wrong_destination_is_refused_naming_its_field(destination: dict[str, Any], field: str,
                                                          said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_partners(doc(**destination), "partners.yaml")
    assert f"partner 'acme': channels.amqp.destinations.0.{field}" in str(caught.value)
    assert said in str(caught.value)


def test_destination_ids_are_unique() -> None:
    twice = doc()
    twice["partners"][0]["channels"]["amqp"]["destinations"].append(
        {"id": "main", "url": "amqp://other.acme.example", "exchange": "x"})
    with pytest.raises(ConfigError, match=r"channels\.amqp\.destinations: duplicate destination ids \['main'\]"):
        load_partners(twice, "partners.yaml")


def test_the_routing_key_defaults_to_shipcasts_own() -> None:
    [partner] = load_partners(doc(), "partners.yaml")
    assert partner.channels["amqp"]["destinations"][0]["routing_key"] == "{partner_id}.{event_type}"


SETTINGS = Settings(plugins="amqp", secret_key=base64.urlsafe_b64encode(b"k" * 32).decode(),
                    config="/nonexistent/shipcast.yaml")
BOX = secret_box(SETTINGS)


def amqp_channel() -> AmqpChannel:
    channel = AmqpChannel(SimpleNamespace(settings=SETTINGS))  # type: ignore[arg-type]
    channel._box = BOX  # what start() sets, without its connections
    return channel


def acme(*destinations: dict[str, Any]) -> Partner:
    """acme with these destinations, as they are stored (a filter stored as given, checked or not)."""
    stored = [with_secret(BOX, {"url": "amqps://broker.acme.example/orders", "exchange": "shipcast",
                                "routing_key": "{event_type}", **d}, None, None, 0) for d in destinations]
    return Partner("acme", "Acme", channels={"amqp": {"destinations": stored}})


def filtered(destination: str) -> float:
    return metrics.value("shipcast_amqp_filtered_total", partner="acme", destination=destination) or 0.0


async def test_destination_filters_count_once_and_one_that_does_not_compile_holds_back_its_own() -> None:
    channel = amqp_channel()
    partner = acme({"id": "cod", "filter": {"order.payment.method": "cod"}}, {"id": "every"},
                   {"id": "broken", "filter": {"order.foo": "x"}})
    event = example("OFD", partner_id="acme")
    assert event.order.payment is not None
    prepaid = event.model_copy(update={"order": event.order.model_copy(update={
        "payment": event.order.payment.model_copy(update={"method": "prepaid"})})})
    before = filtered("cod")
    for _ in range(3):  # the config reloaded each time: one compiled filter a destination still
        found = channel.targets(prepaid, acme({"id": "cod", "filter": {"order.payment.method": "cod"}},
                                              {"id": "every"}, {"id": "broken", "filter": {"order.foo": "x"}}))
        assert [t.id for t in found] == ["every", "broken"]
    assert filtered("cod") == before + 3 and len(channel._filters) == 2
    # A retry's copy for one destination resolves it alone: nothing counted again for the others.
    assert channel.target_for(prepaid, partner, "every") is not None
    assert channel.target_for(prepaid, partner, "cod") is None
    assert filtered("cod") == before + 3
    # The broken one's copy is refused, to be parked; not the destination's fault.
    broken = channel.target_for(prepaid, partner, "broken")
    assert broken is not None
    with pytest.raises(PermanentDelivery) as refused:
        await channel.deliver(prepaid, b"{}", broken)
    assert refused.value.target_fault is False
    assert refused.value.reason.startswith("not sent: the destination's stored filter is not valid; apply the "
                                           "destination again (filter.order.foo: no such field")
