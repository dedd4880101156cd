"""The relay's rules that need no service: a row into an event (or the error
it is moved aside with), and the outbox's DDL split into statements."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shipcast.app.relay.ddl import checked_table, dialect_of, outbox_ddl, statements
from shipcast.app.relay.rows import OutboxRow, error_text, parse_row
from shipcast.exceptions import ConfigError, InvalidEvent
from tests.bound import event_types, example

LIMIT = 4096


def row(payload: Any, row_id: int = 7, **columns: str) -> OutboxRow:
    data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    found = orjson.loads(data) if isinstance(payload, dict) else {}
    values = {"event_id": found.get("event_id", "x"), "partner_id": found.get("partner_id", "acme"),
              "order_id": (found.get("order") or {}).get("order_id", "ORD-1")}
    values.update(columns)
    return OutboxRow(row_id, values["event_id"], values["partner_id"], values["order_id"], data)


def payload(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = example("OFD", order_id="ORD-1").model_dump(mode="json", by_alias=True)
    data.update(changes)
    return data


def test_a_row_left_without_a_sequence_gets_its_id() -> None:
    data = payload()
    del data["sequence"]
    assert parse_row(row(data, 41), event_types(), LIMIT).sequence == 41
    assert parse_row(row(payload(sequence=None), 42), event_types(), LIMIT).sequence == 42
    assert parse_row(row(payload(sequence=3), 43), event_types(), LIMIT).sequence == 3


@pytest.mark.parametrize(("given", "columns", "field", "says"), [
    ("{not json", {}, "payload", "not JSON"),
    ("[1, 2]", {}, "payload", "not a JSON object"),
    ("x" * (LIMIT + 1), {}, "payload", "SHIPCAST_MAX_EVENT_BYTES"),
    (payload(event_type="NOPE"), {}, "event_type", ""),
    (payload(order={"order_id": "ORD-1"}), {}, "order", ""),
    (payload(partner_id="Bad Id"), {"partner_id": "Bad Id"}, "partner_id", ""),
    (payload(otp={"code": "1\u0000"}), {}, "otp", ""),
    # A raw NUL, which a MySQL TEXT column can hold, is no JSON: JSON carries U+0000 only escaped.
    (orjson.dumps(payload()).decode().replace("ORD-1", "ORD-\x001", 1), {}, "payload", "not JSON"),
    (payload(), {"order_id": "ORD-2"}, "order_id", "not the payload's"),
    (payload(), {"event_id": "other"}, "event_id", "not the payload's"),
    (payload(), {"partner_id": "zippy"}, "partner_id", "not the payload's"),
])
def test_a_bad_row_is_refused_naming_the_field(given: Any, columns: dict[str, str], field: str, says: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        parse_row(row(given, **columns), event_types(), LIMIT)
    text = error_text(refused.value)
    assert text.startswith(field) or f"; {field}" in text, text
    assert says in text


def test_an_event_grown_past_the_limit_as_sent_is_refused() -> None:
    """Null groups written out make an event larger than its row: the limit is on what is sent."""
    data = payload()
    data["order"]["customer"]["name"] = "n" * 100
    size = len(parse_row(row(data), event_types(), 10**6).to_json())
    with pytest.raises(InvalidEvent, match="SHIPCAST_MAX_EVENT_BYTES"):
        parse_row(row(data), event_types(), size - 1)


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_the_ddl_splits_into_statements_keeping_the_functions_body(dialect: str) -> None:
    found = statements(outbox_ddl(dialect, "orders_outbox"))
    assert found[0].startswith("CREATE TABLE orders_outbox (")
    assert len(found) == (4 if dialect == "postgresql" else 1)
    if dialect == "postgresql":
        assert "pg_notify('orders_outbox', '')" in found[2] and found[2].rstrip().endswith("$$")


@pytest.mark.parametrize("name", ["", "Outbox", "1outbox", "out-box", "out box; drop", "x" * 52])
def test_a_table_name_that_needs_quoting_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="--table"):
        outbox_ddl("postgresql", name)
    with pytest.raises(ConfigError, match="SHIPCAST_RELAY_TABLE"):
        checked_table(name)


@pytest.mark.parametrize(("url", "dialect"), [
    ("postgresql+asyncpg://u@h/db", "postgresql"), ("mysql+aiomysql://root@h/db", "mysql"),
    ("mariadb+aiomysql://root@h/db", "mysql"), ("sqlite+aiosqlite:///x.db", None)])
def test_the_database_is_known_by_its_url(url: str, dialect: str | None) -> None:
    if dialect is None:
        with pytest.raises(ConfigError, match="SHIPCAST_RELAY_DATABASE_URL"):
            dialect_of(url)
    else:
        assert dialect_of(url) == dialect
