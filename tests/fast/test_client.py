"""shipcast.client with no service: events validated as ingest validates
them, the outbox written on SQLite (the DB-API's qmark style and SQLAlchemy)
inside the caller's transaction, and the HTTP client against a local
stand-in for the API that answers 503, 422 and 202 as the API does.

PostgreSQL, MariaDB, Django and the real API are in tests/test_client.py."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.orm import Session

from shipcast.client import (
    BUILTIN_TYPES,
    MAX_EVENT_BYTES,
    AsyncClient,
    Client,
    Draft,
    RetryPolicy,
    event_from,
    new_event,
    write_outbox,
    write_outbox_async,
)
from shipcast.exceptions import ApiRefused, ApiUnavailable, ConfigError, InvalidEvent
from shipcast.model.envelope import Customer, Event, Order, Otp, Rider, parse_event
from shipcast.model.event_types import BUILTIN, EventType, EventTypeRegistry
from shipcast.model.examples import example

from ..conftest import free_port
from ..helpers import serve

ORDER = Order(order_id="ORD-1", customer=Customer(name="Priya Sharma", phone="+919876543210"))
RIDER = Rider(rider_id="RDR-1", name="Ravi")


def ofd(**overrides: Any) -> Draft:
    values: dict[str, Any] = {"partner_id": "acme", "order": ORDER, "rider": RIDER, "otp": Otp(code="4821")}
    return new_event("OFD", **{**values, **overrides})


# --- events ----------------------------------------------------------------------------------

def test_an_event_left_to_the_relay_has_a_null_sequence_and_a_fixed_id() -> None:
    draft = ofd()
    assert draft.sequence is None and draft.json()["sequence"] is None
    assert draft.event_id.startswith("evt_") and draft.json()["event_id"] == draft.event_id
    assert (draft.partner_id, draft.order_id, draft.event_type) == ("acme", "ORD-1", "OFD")
    # every group is written out, null where it does not apply, as partners receive it
    assert draft.json()["return"] is None and draft.json()["failure"] is None
    assert ofd().event_id != draft.event_id


def test_the_payload_with_its_sequence_filled_is_what_ingest_validates() -> None:
    draft = ofd()
    envelope = {**draft.json(), "sequence": 41}
    event = parse_event(envelope, BUILTIN_TYPES)
    assert event.event_id == draft.event_id and event.sequence == 41
    assert orjson.loads(event.to_json()) == envelope


def test_an_event_from_a_dict_or_an_event_keeps_what_it_was_given() -> None:
    sample = example("DEL", BUILTIN_TYPES, sequence=7)
    from_event = event_from(sample)
    assert from_event.event_id == sample.event_id and from_event.sequence == 7
    assert orjson.loads(from_event.payload) == orjson.loads(sample.to_json())
    from_dict = event_from({**sample.model_dump(mode="json"), "sequence": None, "event_id": "evt_mine"})
    assert from_dict.event_id == "evt_mine" and from_dict.sequence is None
    generated = event_from({k: v for k, v in sample.model_dump(mode="json").items() if k != "event_id"})
    assert generated.event_id.startswith("evt_") and generated.event_id != sample.event_id


@pytest.mark.parametrize(("make", "locations"), [
    (lambda: ofd(partner_id="Acme!"), [["partner_id"]]),
    (lambda: ofd(rider=None), [["rider"]]),
    (lambda: ofd(return_={"return_id": "R-1", "reason": "refused"}), [["return"]]),
    (lambda: ofd(otp={"code": "12"}), [["otp", "code"]]),
    (lambda: ofd(order={"order_id": "ORD-1", "customer": {"name": "a\x00b"}}), [["order", "customer", "name"]]),
    (lambda: ofd(sequence=-1), [["sequence"]]),
    (lambda: ofd(event_id="spaces are not allowed"), [["event_id"]]),
    (lambda: ofd(colour="red"), [["colour"]]),
    (lambda: new_event("PICKED_UP", partner_id="acme", order=ORDER), [["event_type"]]),
    (lambda: event_from({"event_type": "OFD"}), [["occurred_at"], ["partner_id"], ["order"], ["rider"],
                                                 ["otp"]]),
    (lambda: event_from(["not", "a", "mapping"]), [[]]),  # type: ignore[arg-type]
])
def test_an_invalid_event_is_refused_naming_each_field(make: Any, locations: list[list[Any]]) -> None:
    with pytest.raises(InvalidEvent) as raised:
        make()
    assert sorted(error["loc"] for error in raised.value.errors) == sorted(locations)


def test_a_null_sequence_is_left_to_the_relay_but_an_absent_one_too() -> None:
    """An absent ``sequence`` in a dict means "the relay fills it"; the
    required-field error above is for the groups, not for it."""
    sample = example("RET", BUILTIN_TYPES).model_dump(mode="json")
    del sample["sequence"]
    assert event_from(sample).sequence is None


def test_an_event_type_a_plugin_registers_needs_the_registry_that_has_it() -> None:
    picked = EventType("PICKED_UP", "Picked up from the merchant.", frozenset({"order"}))
    registry = EventTypeRegistry([*BUILTIN, picked])
    draft = new_event("PICKED_UP", partner_id="acme", order=ORDER, registry=registry)
    assert draft.event_type == "PICKED_UP"


def test_an_event_larger_than_the_api_takes_is_refused_before_it_is_written() -> None:
    assert MAX_EVENT_BYTES == 256 * 1024
    big = {"order_id": "ORD-1", "customer": {"name": "P"},
           "address": {"line1": "x" * 500, "line2": "y" * 500, "city": "Bengaluru", "postal_code": "560038"}}
    with pytest.raises(InvalidEvent) as raised:
        ofd(order=big, max_bytes=1024)
    assert raised.value.errors[0]["type"] == "too_large" and "SHIPCAST_MAX_EVENT_BYTES" in str(raised.value)
    # the size is measured with the longest sequence the relay can fill in
    fits = ofd(order=big, max_bytes=4096)
    limit = len(fits.payload) - len("null") + len(str(2**63 - 1))
    ofd(order=big, max_bytes=limit)
    with pytest.raises(InvalidEvent):
        ofd(order=big, max_bytes=limit - 1)


# --- the outbox, on SQLite -------------------------------------------------------------------

DDL = ("CREATE TABLE shipcast_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id VARCHAR(100) NOT NULL, "
       "partner_id VARCHAR(64) NOT NULL, order_id VARCHAR(100) NOT NULL, payload TEXT NOT NULL, "
       "created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, failed_at TIMESTAMP NULL, error TEXT NULL)")


def outbox_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as reader:
        return reader.execute("SELECT id, event_id, partner_id, order_id, payload FROM shipcast_outbox "
                              "ORDER BY id").fetchall()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "oms.db"
    with sqlite3.connect(path) as conn:
        conn.execute(DDL)
    return path


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
@pytest.mark.parametrize("on", ["connection", "cursor"])
def test_dbapi_rows_commit_and_roll_back_with_the_callers_transaction(sqlite_db: Path, commit: bool,
                                                                      on: str) -> None:
    first, second = ofd(), ofd(order=Order(order_id="ORD-2", customer=Customer(name="Asha")))
    conn = sqlite3.connect(sqlite_db)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT 1")
        write_outbox(conn if on == "connection" else cursor, first, second)
        assert conn.in_transaction and outbox_rows(sqlite_db) == []  # written, not committed
        conn.commit() if commit else conn.rollback()
    finally:
        conn.close()
    rows = outbox_rows(sqlite_db)
    if not commit:
        assert rows == []
        return
    assert [row[1:4] for row in rows] == [(first.event_id, "acme", "ORD-1"), (second.event_id, "acme", "ORD-2")]
    assert [row[4] for row in rows] == [first.payload, second.payload]


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
@pytest.mark.parametrize("on", ["connection", "session"])
def test_sqlalchemy_rows_commit_and_roll_back_with_the_callers_transaction(sqlite_db: Path, commit: bool,
                                                                          on: str) -> None:
    engine = sa.create_engine(f"sqlite:///{sqlite_db}")
    draft = ofd()
    try:
        opened = engine.connect() if on == "connection" else Session(engine)
        with opened as conn:
            with conn.begin() as transaction:
                write_outbox(conn, draft)
                assert outbox_rows(sqlite_db) == []
                transaction.commit() if commit else transaction.rollback()
    finally:
        engine.dispose()
    assert [row[1] for row in outbox_rows(sqlite_db)] == ([draft.event_id] if commit else [])


def test_another_table_and_a_named_paramstyle(tmp_path: Path) -> None:
    path = tmp_path / "oms.db"
    with sqlite3.connect(path) as conn:
        conn.execute(DDL.replace("shipcast_outbox", "events_out"))
        write_outbox(conn, ofd(), table="events_out", paramstyle="named")
        assert conn.execute("SELECT count(*) FROM events_out").fetchone() == (1,)


@pytest.mark.parametrize(("call", "error", "names"), [
    (lambda conn: write_outbox(conn, ofd(), table="outbox; DROP TABLE orders"), ConfigError, "table"),
    (lambda conn: write_outbox(conn, ofd(), paramstyle="dollar"), ConfigError, "paramstyle"),
    (lambda conn: write_outbox(object(), ofd()), ConfigError, "paramstyle"),
    (lambda conn: write_outbox(conn, {"event_type": "OFD"}), TypeError, "events[0]"),
])
def test_what_cannot_be_written_is_refused_naming_it(sqlite_db: Path, call: Any, error: type[Exception],
                                                     names: str) -> None:
    with sqlite3.connect(sqlite_db) as conn:
        with pytest.raises(error, match=names.replace("[", r"\[").replace("]", r"\]")):
            call(conn)
    assert outbox_rows(sqlite_db) == []


async def test_an_async_connection_is_refused_by_the_sync_writer_and_taken_by_the_async_one(
        sqlite_db: Path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{sqlite_db}")
    draft = ofd()
    try:
        async with engine.begin() as conn:
            with pytest.raises(TypeError, match="write_outbox_async"):
                write_outbox(conn, draft)
            await write_outbox_async(conn, draft)
    finally:
        await engine.dispose()
    assert [row[1] for row in outbox_rows(sqlite_db)] == [draft.event_id]


class OmsSession(Session):
    """An OMS's own session class: known as SQLAlchemy's by what it derives from."""


class OmsConnection(sqlite3.Connection):
    """An OMS's own DB-API connection class: its driver's paramstyle is found all the same."""


def test_subclasses_of_a_session_or_a_driver_connection_are_recognised(sqlite_db: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{sqlite_db}")
    try:
        with OmsSession(engine) as session, session.begin():
            write_outbox(session, ofd())
    finally:
        engine.dispose()
    with sqlite3.connect(sqlite_db, factory=OmsConnection) as conn:
        write_outbox(conn, ofd())
    assert len(outbox_rows(sqlite_db)) == 2


async def test_an_engine_is_refused_for_its_statements_would_miss_the_transaction(sqlite_db: Path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine, async_engine = sa.create_engine(f"sqlite:///{sqlite_db}"), create_async_engine("sqlite+aiosqlite://")
    try:
        with pytest.raises(TypeError, match="not an engine or a pool"):
            write_outbox(engine, ofd())
        with pytest.raises(TypeError, match="not an engine or a pool"):
            await write_outbox_async(async_engine, ofd())
        with Session(engine) as session:
            with pytest.raises(TypeError, match="call write_outbox"):
                await write_outbox_async(session, ofd())
    finally:
        engine.dispose()
        await async_engine.dispose()
    assert outbox_rows(sqlite_db) == []


# --- the HTTP client, against a stand-in for the API -----------------------------------------

@dataclass
class FakeApi:
    """Answers ``POST /v1/events`` from a script of ``(status, headers, body)``,
    then 202 with the ids of what was posted; records every body."""

    script: list[tuple[int, dict[str, str], Any]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    at: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        self.at.append(time.monotonic())
        self.tokens.append(request.headers.get("authorization", ""))
        if self.script:
            status, headers, answer = self.script.pop(0)
            return web.json_response(answer, status=status, headers=headers)
        posted = orjson.loads(body)
        ids = [event["event_id"] for event in (posted if isinstance(posted, list) else [posted])]
        return web.json_response({"ids": ids}, status=202)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_post("/v1/events", fake.handle)
    runner, fake.port = await serve(app)
    yield fake
    await runner.cleanup()


QUICK = RetryPolicy(attempts=4, backoff=0.01, max_wait=5)
UNAVAILABLE = (503, {"Retry-After": "1"}, {"detail": "broker unreachable"})


def posted(draft: Draft, sequence: int = 1) -> Draft:
    return event_from({**draft.json(), "sequence": sequence})


async def test_503_then_202_sends_the_same_ids_after_the_retry_after(api: FakeApi) -> None:
    api.script = [UNAVAILABLE]
    events = [posted(ofd()), posted(ofd(), 2)]
    async with AsyncClient(api.url, "tok", retry=QUICK) as client:
        ids = await client.send(*events)
    assert ids == [event.event_id for event in events]
    assert len(api.bodies) == 2 and api.bodies[0] == api.bodies[1]  # the same events, the same ids
    assert [event["event_id"] for event in orjson.loads(api.bodies[1])] == ids
    assert api.at[1] - api.at[0] >= 1.0  # Retry-After: 1, not the 10 ms backoff
    assert api.tokens == ["Bearer tok", "Bearer tok"]


async def test_the_sync_client_retries_the_same_way(api: FakeApi) -> None:
    api.script = [(503, {}, {"detail": "x"}), (502, {}, {"detail": "gateway"})]
    event = posted(ofd())

    def send() -> list[str]:
        with Client(api.url, "tok", retry=QUICK) as client:
            return client.send(event)

    assert await asyncio.to_thread(send) == [event.event_id]
    assert len(api.bodies) == 3 and len(set(api.bodies)) == 1
    assert orjson.loads(api.bodies[0]) == event.json()  # one event goes as an object


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_422_is_not_retried_and_its_field_errors_are_raised(api: FakeApi, sync: bool) -> None:
    errors = [{"loc": ["rider", "name"], "msg": "Field required", "type": "missing"}]
    api.script = [(422, {}, {"detail": errors})]
    with pytest.raises(InvalidEvent) as raised:
        await _send(api, sync, posted(ofd()))
    assert raised.value.errors == errors and "rider.name: Field required" in str(raised.value)
    assert len(api.bodies) == 1


@pytest.mark.parametrize("status", [401, 403, 413, 500])
async def test_other_refusals_are_not_retried_and_say_what_the_api_answered(api: FakeApi, status: int) -> None:
    api.script = [(status, {}, {"detail": f"refused with {status}"})]
    with pytest.raises(ApiRefused, match=f"answered {status} .*refused with {status}") as raised:
        await _send(api, False, posted(ofd()))
    assert raised.value.status == status and len(api.bodies) == 1


async def test_every_attempt_unavailable_ends_in_an_error_naming_the_last_answer(api: FakeApi) -> None:
    api.script = [(503, {}, {"detail": f"down {n}"}) for n in range(QUICK.attempts)]
    with pytest.raises(ApiUnavailable, match="after 4 attempt.*answered 503: down 3") as raised:
        await _send(api, True, posted(ofd()))
    assert raised.value.attempts == 4 and len(api.bodies) == 4


async def test_a_retry_after_longer_than_the_client_waits_ends_the_retries(api: FakeApi) -> None:
    api.script = [(503, {"Retry-After": "120"}, {"detail": "maintenance"})]
    with pytest.raises(ApiUnavailable, match="Retry-After 120 s"):
        await _send(api, False, posted(ofd()))
    assert len(api.bodies) == 1


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_no_connection_is_retried_then_reported(sync: bool) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ApiUnavailable, match="after 3 attempt.*unreachable.*ConnectError") as raised:
        await _send_to(url, sync, RetryPolicy(attempts=3, backoff=0.2), posted(ofd()))
    assert raised.value.status is None
    assert time.monotonic() - started >= 0.2 * 0.5 + 0.4 * 0.5  # it backed off between attempts


async def test_an_event_without_a_sequence_is_not_posted(api: FakeApi) -> None:
    with pytest.raises(InvalidEvent) as raised:
        await _send(api, False, posted(ofd()), ofd())
    assert raised.value.errors[0]["loc"] == [1, "sequence"] and "relay" in raised.value.errors[0]["msg"]
    assert api.bodies == []


@pytest.mark.parametrize(("policy", "field"), [
    (lambda: RetryPolicy(attempts=0), "attempts"),
    (lambda: RetryPolicy(backoff=-1), "backoff"),
])
def test_a_retry_policy_that_cannot_work_is_refused(policy: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        policy()


def test_backoff_doubles_up_to_its_bound_and_ends() -> None:
    policy = RetryPolicy(attempts=5, backoff=1, max_wait=3)
    waits = [policy.wait(attempt, None) for attempt in range(1, 6)]
    assert 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2 and 1.5 <= waits[2] <= 3 and 1.5 <= waits[3] <= 3
    assert waits[4] is None
    assert policy.wait(1, 2.5) == 2.5 and policy.wait(1, 3.5) is None


async def _send(api: FakeApi, sync: bool, *events: Draft) -> list[str]:
    return await _send_to(api.url, sync, QUICK, *events)


async def _send_to(url: str, sync: bool, policy: RetryPolicy, *events: Draft) -> list[str]:
    if sync:
        def send() -> list[str]:
            with Client(url, "tok", retry=policy, timeout=5) as client:
                return client.send(*events)
        return await asyncio.to_thread(send)
    async with AsyncClient(url, "tok", retry=policy, timeout=5) as client:
        return await client.send(*events)


def test_event_is_the_envelope_the_api_takes() -> None:
    """The client reuses the API's own model: a Draft's payload is an Event once sequenced."""
    assert isinstance(parse_event(posted(ofd()).payload, BUILTIN_TYPES), Event)


# --- the guide -------------------------------------------------------------------------------

GUIDE = Path(__file__).parents[2] / "docs" / "relay-client.md"
EXAMPLES = Path(__file__).parents[1] / "fixtures" / "oms"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("example", ["django_outbox.py", "sqlalchemy_outbox.py"])
def test_the_guides_examples_are_the_modules_the_tests_run(example: str) -> None:
    """tests/test_client.py runs these modules against PostgreSQL (and MariaDB)."""
    assert (EXAMPLES / example).read_text(encoding="utf-8") in python_blocks(), (
        f"the example in {GUIDE} differs from {EXAMPLES / example}; keep them identical")


def test_every_python_block_of_the_guide_compiles_and_the_first_builds_its_event() -> None:
    blocks = python_blocks()
    for number, block in enumerate(blocks):
        compile(block, f"{GUIDE.name} python block {number}", "exec")
    namespace: dict[str, Any] = {}
    exec(blocks[0], namespace)  # noqa: S102 (the guide's own example)
    assert isinstance(namespace["event"], Draft) and namespace["event"].json()["otp"]["code"] == "4821"
