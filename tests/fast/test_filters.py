"""Payload filters: what each form matches, on realistic events of every
type, and what is refused when a filter is applied (an unknown field, a
value of the wrong kind, an operator that does not apply, too deep, too
large), named by where it is, in a partners file too; and the webhook
channel running them: one compiled filter an endpoint however often its
config reloads, an event kept out counted once, and a stored filter that
does not compile holding back its own endpoint only."""

from __future__ import annotations

import base64
import copy
import logging
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from shipcast import metrics
from shipcast.exceptions import ConfigError, PermanentDelivery
from shipcast.model.envelope import Event
from shipcast.model.filters import (
    MAX_DEPTH,
    MAX_TERMS,
    MAX_VALUES,
    check,
    compile_filter,
    envelope_fields,
    never_matches,
)
from shipcast.model.partners import Partner, read_yaml
from shipcast.plugins.webhook.channel import WebhookChannel, with_secret
from shipcast.security.crypto import secret_box
from shipcast.settings import Settings
from tests.bound import REGISTRY, event_types, example, load_partners

pytestmark = pytest.mark.fast


def event(event_type: str = "OFD", **changes: Any) -> Event:
    """A sample event, its order changed by ``changes`` (``city``, ``method``, ``items``)."""
    sample = example(event_type, partner_id="acme", order_id="ORD-1")
    order = sample.order
    if "city" in changes:
        order = order.model_copy(update={"address": order.address.model_copy(update={"city": changes["city"]})
                                         if order.address else None})
    if "method" in changes:
        assert order.payment is not None
        order = order.model_copy(update={"payment": order.payment.model_copy(update={"method": changes["method"]})})
    if "items" in changes:
        order = order.model_copy(update={"item_count": changes["items"]})
    if "no_address" in changes:
        order = order.model_copy(update={"address": None})
    return sample.model_copy(update={"order": order})


COD_BENGALURU = event(city="Bengaluru", method="cod", items=3)
PREPAID_DELHI = event(city="Delhi", method="prepaid", items=12)
NO_ADDRESS = event(no_address=True, method="prepaid", items=2)
RETURNED = event("RET", city="Pune", method="prepaid", items=2)

#: A filter, and which of the events above it matches.
CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"order.payment.method": "cod"}, {"cod"}),
    ({"event_type": "RET"}, {"ret"}),
    ({"event_type": ["OFD", "DEL"]}, {"cod", "prepaid", "none"}),
    ({"order.address.city": ["Bengaluru", "Mysuru"]}, {"cod"}),
    ({"any": [{"order.address.city": ["Bengaluru", "Mysuru"]}, {"event_type": "RET"}]}, {"cod", "ret"}),
    ({"all": [{"event_type": "OFD"}, {"order.item_count": {"gte": 10}}]}, {"prepaid"}),
    ({"event_type": "OFD", "order.item_count": {"gt": 3}}, {"prepaid"}),  # several keys: all of them
    ({"order.item_count": {"gte": 3, "lt": 12}}, {"cod"}),
    ({"order.item_count": {"lte": 3}}, {"cod", "none", "ret"}),
    ({"order.payment.amount": {"gt": 0}}, {"cod", "prepaid", "none", "ret"}),
    ({"order.address.city": {"ne": "Delhi"}}, {"cod", "none", "ret"}),  # null is not Delhi
    ({"order.address.city": {"nin": ["Delhi", "Bengaluru"]}}, {"none", "ret"}),
    ({"order.address.city": {"in": ["Delhi"]}}, {"prepaid"}),
    ({"order.address.city": {"eq": "Delhi"}}, {"prepaid"}),
    ({"order.address": {"exists": False}}, {"none"}),
    ({"order.address.city": None}, {"none"}),  # a field in a null group is null
    ({"order.address.city": {"exists": True}}, {"cod", "prepaid", "ret"}),
    ({"otp": {"exists": True}}, {"cod", "prepaid", "none"}),
    ({"return.reason": {"exists": True}}, {"ret"}),  # the envelope's "return", the model's return_
    ({"not": {"order.payment.method": "cod"}}, {"prepaid", "none", "ret"}),
    ({"not": {"any": [{"event_type": "RET"}, {"order.item_count": {"gt": 5}}]}}, {"cod", "none"}),
    ({"occurred_at": {"gte": "2000-01-01T00:00:00Z"}}, {"cod", "prepaid", "none", "ret"}),
    ({"occurred_at": {"lt": "2000-01-01T05:30:00+05:30"}}, set()),
    ({"schema_version": "1.0", "partner_id": "acme"}, {"cod", "prepaid", "none", "ret"}),
    ({"order.order_id": "ORD-2"}, set()),
]
EVENTS = {"cod": COD_BENGALURU, "prepaid": PREPAID_DELHI, "none": NO_ADDRESS, "ret": RETURNED}


@pytest.mark.parametrize(("spec", "matched"), CASES, ids=[str(spec) for spec, _ in CASES])
def test_a_filter_matches_what_it_says(spec: dict[str, Any], matched: set[str]) -> None:
    assert check(spec, event_types()) == {}
    predicate = compile_filter(spec)
    assert {name for name, found in EVENTS.items() if predicate(found)} == matched


def test_the_samples_are_what_the_cases_assume() -> None:
    assert COD_BENGALURU.order.address is not None and COD_BENGALURU.order.address.city == "Bengaluru"
    assert PREPAID_DELHI.order.payment is not None and PREPAID_DELHI.order.payment.method == "prepaid"
    assert NO_ADDRESS.order.address is None and RETURNED.return_ is not None and RETURNED.otp is None
    assert RETURNED.order.address is not None and RETURNED.order.address.city == "Pune"


def test_dates_compare_as_dates_and_a_promised_date_from_yaml_is_taken() -> None:
    promised = event().model_copy(update={"order": event().order.model_copy(
        update={"promised_date": __import__("datetime").date(2024, 5, 1)})})
    spec = read_yaml("order.promised_date: {gte: 2024-05-01, lt: 2024-05-02}")  # YAML reads dates itself
    assert check(spec, event_types()) == {}
    assert compile_filter(spec)(promised) and not compile_filter({"order.promised_date": "2024-04-30"})(promised)
    assert not compile_filter(spec)(event())  # no promised date: not compared


def test_a_number_in_exponent_form_is_a_number_as_json_and_yaml_1_2_read_it() -> None:
    # PyYAML's YAML 1.1 rules read 1e5 (no dot) and 1.5e3 (no sign) as text: a partners
    # document posted as JSON had its filter refused ("must be a number").
    read = read_yaml('{"a": 1e5, "b": -5e-324, "c": 1.5e3, "d": 1E+2, "e": .5e3, "f": 10, "g": 1.5, '
                     '"h": "1e5", "i": 1e5x, "j": e5, "k": 1_000}')
    assert read == {"a": 100000.0, "b": -5e-324, "c": 1500.0, "d": 100.0, "e": 500.0, "f": 10, "g": 1.5,
                    "h": "1e5", "i": "1e5x", "j": "e5", "k": 1000}
    assert isinstance(read["f"], int) and isinstance(read["k"], int)
    spec = read_yaml("order.payment.amount: {gte: 1e3, lt: 2.5e3}")
    assert check(spec, event_types()) == {}
    assert compile_filter(spec)(event())  # its amount is 1499
    assert not compile_filter(read_yaml("order.payment.amount: {gte: 1.5e3}"))(event())
    assert yaml.safe_load("a: 1e5") == {"a": "1e5"}  # YAML's own loader is left as it is


#: A wrong filter, and the errors by where they are (a word of each message).
WRONG: list[tuple[Any, dict[str, str]]] = [
    ({"order.foo": "x"}, {"order.foo": "no such field; order has order_id, merchant_order_ref"}),
    ({"any": [{"event_type": "OFD"}, {"order.foo": 1}]}, {"any.1.order.foo": "no such field"}),
    ({"nope": 1}, {"nope": "no such field; the event has event_id, event_type"}),
    ({"order.address.city.name": "x"}, {"order.address.city.name": "order.address.city is text, with no fields"}),
    ({"": 1}, {"": "no such field"}),
    ({"event_type": "NOPE"}, {"event_type": "unknown event type 'NOPE'; known: DEL"}),
    ({"event_type": ["OFD", "NOPE"]}, {"event_type.1": "unknown event type 'NOPE'"}),
    ({"order.payment.method": "card"}, {"order.payment.method": "must be one of 'prepaid', 'cod'"}),
    ({"order.item_count": "three"}, {"order.item_count": "must be a whole number, as order.item_count is"}),
    ({"order.item_count": 2.5}, {"order.item_count": "must be a whole number"}),
    ({"order.item_count": True}, {"order.item_count": "must be a whole number"}),
    ({"order.payment.amount": "100"}, {"order.payment.amount": "must be a number"}),
    ({"order.address.city": 5}, {"order.address.city": "must be text"}),
    ({"order.address.city": ["Pune", 5]}, {"order.address.city.1": "must be text"}),
    ({"order.address.city": "x" * 501}, {"order.address.city": "longer than 500 characters"}),
    ({"order.promised_date": "tomorrow"}, {"order.promised_date": "must be a date like 2024-05-01"}),
    ({"occurred_at": "2024-05-01T10:00:00"}, {"occurred_at": "must be a time with its zone"}),
    ({"order.address": "Bengaluru"}, {"order.address": "is a group of fields: compare a field inside it"}),
    ({"order.address.city": {"gt": "A"}}, {"order.address.city.gt": "compares numbers, dates and times"}),
    ({"order.item_count": {"gt": None}}, {"order.item_count.gt": "cannot compare with null: use exists"}),
    ({"order.item_count": {"above": 3}}, {"order.item_count.above": "unknown operator; use eq, ne, in"}),
    ({"order.item_count": {}}, {"order.item_count": "names no operator"}),
    ({"otp": {"exists": "yes"}}, {"otp.exists": "must be true or false"}),
    ({"order.item_count": {"in": 3}}, {"order.item_count.in": "must be a list of one value or more"}),
    ({"order.address.city": []}, {"order.address.city": "must be a list of one value or more"}),
    ({"any": []}, {"any": "must be a list of one filter or more"}),
    ({"all": {"event_type": "OFD"}}, {"all": "must be a list of one filter or more"}),
    ({"not": ["x"]}, {"not": "must be an object"}),
    ({}, {"": "is empty"}),
    ("event_type == 'OFD'", {"": "must be an object"}),
    ({"any": [{}]}, {"any.0": "is empty"}),
    ({1: "x"}, {"1": "a field's path must be text"}),
    ({"order.address.city": list(range(MAX_VALUES + 1))}, {"order.address.city": f"more than {MAX_VALUES} values"}),
    ({"order.item_count": {"gt": 2**64}}, {"order.item_count.gt": "out of range: a whole number fits in 64 bits"}),
    ({"order.payment.amount": -(2**70)}, {"order.payment.amount": "out of range"}),
    ({"order.payment.amount": float("inf")}, {"order.payment.amount": "must be a number"}),
]


@pytest.mark.parametrize(("spec", "expected"), WRONG, ids=[str(spec)[:60] for spec, _ in WRONG])
def test_a_wrong_filter_is_refused_naming_where(spec: Any, expected: dict[str, str]) -> None:
    errors = check(spec, event_types())
    assert set(errors) == set(expected), errors
    for where, words in expected.items():
        assert any(words in message for message in errors[where]), (where, errors[where])
    if all(where.startswith("event_type") for where in expected):  # a type not registered now: it compiles, and matches nothing
        assert not compile_filter(spec)(COD_BENGALURU.model_copy(update={"event_type": "DEL"}))
        return
    with pytest.raises(ConfigError):  # a stored one that is wrong does not compile either
        compile_filter(spec)


def test_depth_and_size_are_bounded() -> None:
    deep: dict[str, Any] = {"event_type": "OFD"}
    for _ in range(MAX_DEPTH - 1):
        deep = {"not": deep}
    assert check(deep, event_types()) == {}
    errors = check({"not": deep}, event_types())
    assert list(errors) == [".".join(["not"] * MAX_DEPTH)] and "nested too deeply" in errors[".".join(["not"] * MAX_DEPTH)][0]

    wide = {"any": [{"order.address.city": [f"city {n}" for n in range(MAX_VALUES)]}] * 3}
    errors = check(wide, event_types())
    assert errors == {"": [f"too large: at most {MAX_TERMS} conditions and listed values"]}
    assert check({"any": [{"event_type": "OFD"}] * (MAX_TERMS + 1)}, event_types()) == {
        "any": [f"lists more than {MAX_TERMS} filters"]}


def test_a_filter_built_of_shared_parts_is_walked_no_further_than_the_bound() -> None:
    """A YAML alias repeats one part without copying it: eight levels of ten
    would be 10⁸ conditions; the walk stops at the bound."""
    part: Any = {"event_type": "OFD"}
    for _ in range(MAX_DEPTH - 1):
        part = {"any": [part] * 10}
    errors = check(part, event_types())
    assert errors == {"": [f"too large: at most {MAX_TERMS} conditions and listed values"]}


def test_every_leaf_of_the_envelope_schema_can_be_named() -> None:
    fields = envelope_fields()
    assert fields["order.payment.method"].choices == ("prepaid", "cod")
    assert fields["return.reason"].attrs == "return_.reason"
    assert fields["occurred_at"].kind == "date-time" and fields["order.promised_date"].kind == "date"
    assert set(fields["order"].children) >= {"order_id", "customer", "address", "payment"}
    # Every field path resolves on a real event of every type without error.
    for name in event_types():
        sample = example(name, partner_id="acme")
        for path, field in fields.items():
            if path and field.kind != "group":
                compile_filter({path: {"exists": True}})(sample)


def doc(spec: Any) -> dict[str, Any]:
    return {"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
        {"id": "main", "url": "https://hooks.acme.example/x", "filter": spec}]}}}]}


def test_a_partners_file_names_the_filter_error_by_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        load_partners(doc({"any": [{"event_type": "RET"}, {"order.foo": 1}]}))
    where = "partner 'acme': channels.webhook.endpoints.0.filter.any.1.order.foo"
    assert caught.value.errors[where][0].startswith("no such field")
    with pytest.raises(ConfigError) as caught:
        load_partners(doc("cod only"))
    assert "must be an object" in caught.value.errors["partner 'acme': channels.webhook.endpoints.0.filter"][0]


def test_a_partners_file_filter_is_stored_as_json_gives_it_back() -> None:
    [partner] = load_partners(read_yaml("""
partners:
  - id: acme
    name: Acme
    channels:
      webhook:
        endpoints:
          - id: main
            url: https://hooks.acme.example/x
            filter:
              any:
                - order.address.city: [Bengaluru, Mysuru]
                - order.promised_date: {gte: 2024-05-01}
"""))
    stored = partner.channels["webhook"]["endpoints"][0]["filter"]
    assert stored == {"any": [{"order.address.city": ["Bengaluru", "Mysuru"]},
                              {"order.promised_date": {"gte": "2024-05-01"}}]}


def test_event_types_a_plugin_registers_are_taken_and_others_are_not() -> None:
    assert check({"event_type": "RATED"}, REGISTRY.event_types) == {}
    assert "event_type" in check({"event_type": "PICKED_UP"}, REGISTRY.event_types)
    assert check({"event_type": "PICKED_UP"}, None) == {}  # compiling a stored filter needs no registry


#: A filter, the endpoint's events, and where it never matches (words of why); ``{}``: it may match.
UNMATCHED: list[tuple[dict[str, Any], list[str], dict[str, str]]] = [
    ({"event_type": "RET"}, ["OFD"], {"event_type": "never matches: only OFD events come here"}),
    ({"event_type": ["RET", "FAIL"]}, ["OFD", "DEL"],
     {"event_type": "never matches: only OFD and DEL events come here"}),
    ({"return.reason": "damaged"}, ["OFD"], {"return.reason": "never matches: OFD events have no return"}),
    ({"return": {"exists": True}}, ["OFD", "DEL"], {"return": "never matches: OFD and DEL events have no return"}),
    ({"otp.code": {"ne": "1234"}, "failure.code": {"in": ["NO_ONE_HOME"]}}, ["DEL"],
     {"failure.code": "never matches: DEL events have no failure"}),
    ({"not": {"otp": None}}, ["RET"], {"not.otp": "never matches: RET events have no otp"}),
    ({"any": [{"event_type": "RET"}, {"return.reason": "x"}]}, ["OFD"],
     {"any.0.event_type": "only OFD events come here", "any.1.return.reason": "OFD events have no return"}),
    # Each type ruled out in its own place: both said.
    ({"event_type": "RET", "otp.code": "1234"}, ["OFD", "RET"],
     {"event_type": "never matches OFD events, by their type", "otp.code": "RET events have no otp"}),
    ({"all": [{"event_type": "OFD"}, {"event_type": "DEL"}]}, ["*"],
     {"all.0.event_type": "never matches DEL,", "all.1.event_type": "never matches FAIL,"}),
    # What some event may match is taken.
    ({"event_type": "RET"}, ["*"], {}),
    ({"event_type": "RET", "otp.code": "1234"}, ["OFD"], {"event_type": "only OFD events come here"}),
    ({"event_type": "OFD", "otp.code": "1234"}, ["OFD"], {}),
    ({"return.reason": None}, ["OFD"], {}),  # null: every OFD event matches
    ({"return": {"exists": False}}, ["OFD"], {}),
    ({"any": [{"event_type": "RET"}, {"order.address.city": "Pune"}]}, ["OFD"], {}),
    ({"return.reason": "damaged"}, ["OFD", "RET"], {}),
    ({"order.address.city": "Pune", "order.payment.method": "cod"}, ["OFD"], {}),  # not the types' to settle
]


@pytest.mark.parametrize(("spec", "events", "expected"), UNMATCHED, ids=[f"{s} {e}"[:70] for s, e, _ in UNMATCHED])
def test_a_filter_that_never_matches_the_endpoint_s_events_is_found(spec: dict[str, Any], events: list[str],
                                                                     expected: dict[str, str]) -> None:
    found = never_matches(spec, event_types(), events)
    assert set(found) == set(expected), found
    for where, words in expected.items():
        assert any(words in message for message in found[where]), (where, found[where])


def test_a_partners_file_refuses_a_filter_that_never_matches_naming_its_path() -> None:
    endpoint = {"id": "main", "url": "https://hooks.acme.example/x", "events": ["OFD"],
                "filter": {"any": [{"return.reason": "damaged"}, {"event_type": "RET"}]}}
    with pytest.raises(ConfigError) as caught:
        load_partners({"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
            endpoint]}}}]})
    where = "partner 'acme': channels.webhook.endpoints.0.filter"
    assert caught.value.errors == {f"{where}.any.0.return.reason": ["never matches: OFD events have no return"],
                                   f"{where}.any.1.event_type": ["never matches: only OFD events come here"]}
    [partner] = load_partners({"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
        {**endpoint, "events": ["OFD", "RET"]}]}}}]})
    assert partner.channels["webhook"]["endpoints"][0]["filter"] == endpoint["filter"]


# -- the webhook channel running them ----------------------------------------------

SETTINGS = Settings(plugins="webhook", secret_key=base64.urlsafe_b64encode(b"k" * 32).decode(),
                    config="/nonexistent/shipcast.yaml")
BOX = secret_box(SETTINGS)


def webhook_channel() -> WebhookChannel:
    channel = WebhookChannel(SimpleNamespace(settings=SETTINGS))  # type: ignore[arg-type]
    channel._box = BOX  # what start() sets, without its HTTP session and signing keys
    return channel


def acme(*endpoints: dict[str, Any]) -> Partner:
    """acme with these endpoints, as they are stored (a filter stored as given, checked or not)."""
    stored = [with_secret(BOX, {"url": f"https://hooks.acme.example/{e['id']}", **e}, None, None, 0)
              for e in endpoints]
    return Partner("acme", "Acme", channels={"webhook": {"endpoints": stored}})


def test_one_compiled_filter_an_endpoint_however_often_the_config_reloads() -> None:
    channel = webhook_channel()
    spec = {"order.payment.method": "cod"}
    for _ in range(5):  # each reload builds the partner anew: an equal filter, another object
        partner = acme({"id": "main", "filter": copy.deepcopy(spec)}, {"id": "every"})
        assert [t.id for t in channel.targets(COD_BENGALURU, partner)] == ["main", "every"]
        assert [t.id for t in channel.targets(PREPAID_DELHI, partner)] == ["every"]
    assert len(channel._filters) == 1
    # Changed: the endpoint's one entry is replaced, and the new filter applies at once.
    changed = acme({"id": "main", "filter": {"order.payment.method": "prepaid"}}, {"id": "every"})
    assert [t.id for t in channel.targets(COD_BENGALURU, changed)] == ["every"]
    assert [t.id for t in channel.targets(PREPAID_DELHI, changed)] == ["main", "every"]
    assert len(channel._filters) == 1


def filtered(endpoint: str) -> float:
    return metrics.value("shipcast_webhook_filtered_total", partner="acme", endpoint=endpoint) or 0.0


def test_an_event_kept_out_is_counted_at_its_first_delivery_only() -> None:
    channel = webhook_channel()
    partner = acme({"id": "main", "filter": {"order.payment.method": "cod"}}, {"id": "every"})
    before = filtered("main")
    assert [t.id for t in channel.targets(PREPAID_DELHI, partner)] == ["every"]
    assert filtered("main") == before + 1
    # A retry of the event for another endpoint resolves that one alone: nothing counted again.
    for _ in range(3):
        every = channel.target_for(PREPAID_DELHI, partner, "every")
        assert every is not None and every.id == "every"
    assert channel.target_for(PREPAID_DELHI, partner, "main") is None  # kept out still: parked, not sent
    assert channel.target_for(RETURNED, acme({"id": "main", "events": ["OFD"]}), "main") is None
    assert channel.target_for(PREPAID_DELHI, partner, "gone") is None
    assert filtered("main") == before + 1


async def test_a_stored_filter_that_does_not_compile_holds_back_its_own_endpoint_only(
        caplog: pytest.LogCaptureFixture) -> None:
    channel = webhook_channel()
    partner = acme({"id": "broken", "filter": {"order.foo": "x"}}, {"id": "every"},
                   {"id": "cod", "filter": {"order.payment.method": "cod"}})
    with caplog.at_level(logging.ERROR, "shipcast.model.filters"):
        for _ in range(3):
            found = channel.targets(COD_BENGALURU, partner)
            assert [t.id for t in found] == ["broken", "every", "cod"]  # the others get the event
        again = channel.target_for(COD_BENGALURU, partner, "broken")
    assert len(caplog.records) == 1 and "order.foo" in caplog.records[0].getMessage()  # said once
    # Nothing is sent to it: its delivery is refused, to park the event for it, not the endpoint's fault.
    assert again is not None and "secrets" not in again.options
    with pytest.raises(PermanentDelivery) as refused:
        await channel.deliver(COD_BENGALURU, b"{}", found[0])
    assert refused.value.target_fault is False
    assert refused.value.reason.startswith("not sent: the endpoint's stored filter is not valid; apply the "
                                           "endpoint again (filter.order.foo: no such field")
