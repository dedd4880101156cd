"""The envelope: every group always present, each type's row enforced, errors
that name the field, and a JSON Schema that agrees with the models."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import orjson
import pytest

from shipcast.model.envelope import json_schema, parse_event, parse_events
from shipcast.model.event_types import BUILTIN, GROUPS, EventType, EventTypeRegistry
from shipcast.model.examples import example
from shipcast.exceptions import ConfigError, InvalidEvent

pytestmark = pytest.mark.fast

REGISTRY = EventTypeRegistry(BUILTIN)

# The table of DESIGN.md: which groups each type carries (✓) and which are null.
TABLE = {
    "OFD": {"order", "rider", "otp"},
    "DEL": {"order", "rider", "delivery_confirmation"},
    "FAIL": {"order", "rider", "failure"},
    "RET": {"order", "return"},
}


def sample(event_type: str) -> dict[str, Any]:
    return orjson.loads(example(event_type, REGISTRY).to_json())


def locs(exc: pytest.ExceptionInfo[InvalidEvent]) -> set[tuple[Any, ...]]:
    return {tuple(error["loc"]) for error in exc.value.errors}


@pytest.mark.parametrize("event_type", sorted(TABLE))
def test_every_group_is_serialised_with_the_nulls_of_the_table(event_type: str) -> None:
    body = sample(event_type)
    assert list(body) == ["event_id", "event_type", "schema_version", "occurred_at", "partner_id",
                          "sequence", *GROUPS]
    present = {group for group in GROUPS if body[group] is not None}
    assert present == TABLE[event_type]


@pytest.mark.parametrize(("event_type", "group"), [
    (event_type, group) for event_type, groups in TABLE.items() for group in GROUPS if group not in groups
])
def test_a_group_the_row_forbids_is_refused_by_name(event_type: str, group: str) -> None:
    body = sample(event_type)
    if group == "customer_input":  # carried by the customer's own event types, from the tracking page
        body[group] = {"rating": 4, "submitted_via": "tracking_page"}
    else:
        body[group] = sample(next(t for t, groups in TABLE.items() if group in groups))[group]
    with pytest.raises(InvalidEvent) as exc:
        parse_event(body, REGISTRY)
    assert locs(exc) == {(group,)}
    assert f"must be null for {event_type}" in exc.value.errors[0]["msg"]


@pytest.mark.parametrize(("event_type", "group"), [
    (event_type, group) for event_type, groups in TABLE.items() for group in sorted(groups)
])
def test_a_group_the_row_requires_is_refused_when_missing_or_null(event_type: str, group: str) -> None:
    body = sample(event_type)
    body[group] = None
    with pytest.raises(InvalidEvent) as exc:
        parse_event(body, REGISTRY)
    assert (group,) in locs(exc)


def test_a_return_group_under_its_python_name_meets_the_row_too() -> None:
    """``return_`` (the model's name for ``return``, a Python keyword) is taken
    as ``return`` is: on an OFD it is refused, on a RET it counts as present."""
    body = sample("OFD")
    del body["return"]  # a group that does not apply may be left out
    body["return_"] = sample("RET")["return"]
    with pytest.raises(InvalidEvent) as exc:
        parse_event(body, REGISTRY)
    assert locs(exc) == {("return",)}
    returned = sample("RET")
    returned["return_"] = returned.pop("return")
    assert parse_event(returned, REGISTRY).return_ is not None


def test_an_otp_on_a_delivered_event_is_an_error_not_a_leak() -> None:
    body = sample("DEL")
    body["otp"] = {"code": "4821"}
    with pytest.raises(InvalidEvent) as exc:
        parse_event(body, REGISTRY)
    assert exc.value.errors == [{"loc": ["otp"], "msg": "must be null for DEL events", "type": "event_type_row"}]


@pytest.mark.parametrize(("change", "loc", "words"), [
    ({"event_type": "TELEPORTED"}, ("event_type",), "unknown event type 'TELEPORTED'"),
    ({"occurred_at": "2026-11-29T10:00:00"}, ("occurred_at",), "timezone"),
    ({"partner_id": "Acme Retail"}, ("partner_id",), "pattern"),
    ({"partner_id": "acme.in"}, ("partner_id",), "pattern"),
    ({"sequence": -1}, ("sequence",), "greater than or equal"),
    ({"otp": {"code": "12"}}, ("otp", "code"), "pattern"),
    ({"rider": {"rider_id": "R1", "name": "Ravi", "shoe_size": 9}}, ("rider", "shoe_size"), "Extra inputs"),
    ({"surprise": True}, ("surprise",), "Extra inputs"),
])
def test_bad_fields_are_named(change: dict[str, Any], loc: tuple[str, ...], words: str) -> None:
    body = sample("OFD")
    body.update(change)
    with pytest.raises(InvalidEvent) as exc:
        parse_event(body, REGISTRY)
    matching = [e for e in exc.value.errors if tuple(e["loc"]) == loc]
    assert matching, exc.value.errors
    assert words in matching[0]["msg"]


def test_timestamps_are_normalised_to_utc_rfc3339() -> None:
    body = sample("OFD")
    body["occurred_at"] = "2026-11-29T15:30:00+05:30"
    event = parse_event(body, REGISTRY)
    assert orjson.loads(event.to_json())["occurred_at"] == "2026-11-29T10:00:00Z"


def test_a_batch_names_the_index_of_each_bad_event_and_returns_nothing() -> None:
    good, bad = sample("OFD"), sample("DEL")
    bad["otp"] = {"code": "1234"}
    with pytest.raises(InvalidEvent) as exc:
        parse_events([good, bad, "not an event"], REGISTRY)
    assert locs(exc) == {(1, "otp"), (2,)}


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="empty"):
        parse_events([], REGISTRY)


def test_new_event_types_are_rows_and_the_envelope_does_not_change() -> None:
    picked = EventType("PICKED_UP", "Picked up from the merchant", frozenset({"order", "rider"}),
                       frozenset({"otp", "failure", "return", "delivery_confirmation"}))
    registry = EventTypeRegistry([*BUILTIN, picked])
    body = example("PICKED_UP", registry).model_dump(mode="json", by_alias=True)
    assert set(body) == set(sample("OFD"))
    assert body["otp"] is None and body["rider"] is not None
    with pytest.raises(InvalidEvent):
        parse_event(body, REGISTRY)  # unknown where the row is not registered


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"name": "lower"}, "name must match"),
    ({"required": frozenset({"order", "weather"})}, "unknown groups"),
    ({"required": frozenset({"rider"})}, "requires 'order'"),
    ({"required": frozenset({"order", "otp"}), "forbidden": frozenset({"otp"})}, "both required and null"),
])
def test_a_malformed_row_is_refused(kwargs: dict[str, Any], words: str) -> None:
    values: dict[str, Any] = {"name": "X", "description": "x", "required": frozenset({"order"})}
    values.update(kwargs)
    with pytest.raises(ConfigError, match=words):
        EventType(**values)


def test_two_different_rows_under_one_name_conflict() -> None:
    other = EventType("OFD", "different", frozenset({"order"}))
    with pytest.raises(ConfigError, match="registered twice"):
        EventTypeRegistry([*BUILTIN, other])


class TestJsonSchema:
    schema = json_schema(REGISTRY)

    @pytest.mark.parametrize("event_type", sorted(TABLE))
    def test_every_example_is_valid(self, event_type: str) -> None:
        jsonschema.Draft202012Validator(self.schema).validate(sample(event_type))

    def test_every_group_is_required_and_nullable(self) -> None:
        assert set(GROUPS) <= set(self.schema["required"])
        assert self.schema["properties"]["order"] == {"$ref": "#/$defs/Order"}  # every row requires it
        for group in GROUPS[1:]:
            prop = self.schema["properties"][group]
            assert {"type": "null"} in prop["anyOf"]

    @pytest.mark.parametrize(("event_type", "group"), [("DEL", "otp"), ("OFD", "failure"), ("RET", "rider")])
    def test_the_rows_are_in_the_schema(self, event_type: str, group: str) -> None:
        body = sample(event_type)
        donor = next(t for t, groups in TABLE.items() if group in groups)
        body[group] = sample(donor)[group]
        errors = list(jsonschema.Draft202012Validator(self.schema).iter_errors(body))
        assert errors, f"schema accepted {group} on {event_type}"

    def test_unknown_types_are_outside_the_schema(self) -> None:
        body = copy.deepcopy(sample("OFD"))
        body["event_type"] = "TELEPORTED"
        assert list(jsonschema.Draft202012Validator(self.schema).iter_errors(body))


def test_the_published_schema_is_the_generated_one() -> None:
    """docs/event.schema.json is what `shipcast schema` prints; regenerate it
    with `shipcast schema > docs/event.schema.json` when the models change."""
    from pathlib import Path

    from tests.bound import REGISTRY as DEFAULT

    published = Path(__file__).resolve().parents[1] / "docs" / "event.schema.json"
    assert orjson.loads(published.read_bytes()) == json_schema(DEFAULT.event_types)
