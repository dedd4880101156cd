"""Payload filters: what each form matches, on realistic events of every
type, and what is refused when a filter is applied (an unknown field, a
value of the wrong kind, an operator that does not apply, too deep, too
large), named by where it is, in a partners file too."""

from __future__ import annotations

from typing import Any

import pytest

from shipcast.exceptions import ConfigError
from shipcast.model.envelope import Event
from shipcast.model.filters import MAX_DEPTH, MAX_TERMS, MAX_VALUES, check, compile_filter, envelope_fields
from shipcast.model.partners import read_yaml
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
