"""shipcast.client against real databases and the real API: an outbox row
written in a transaction that commits is there, one that rolls back is not,
on PostgreSQL and MariaDB, through SQLAlchemy (sync and async) and the DB-API
drivers (psycopg, PyMySQL, asyncpg, aiomysql); what the relay reads back
validates as ingest validates; the documented Django and SQLAlchemy examples
run; and the HTTP client posts to shipcast's own API.

The fast tier's tests/fast/test_client.py covers validation, SQLite and the
HTTP client's retries against a stand-in."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiomysql
import asyncpg
import orjson
import psycopg
import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from shipcast.client import (
    BUILTIN_TYPES,
    AsyncClient,
    Client,
    Draft,
    event_from,
    new_event,
    write_outbox,
    write_outbox_async,
)
from shipcast.exceptions import ApiRefused, InvalidEvent
from shipcast.model.envelope import Customer, Order, Otp, Rider, parse_events
from shipcast.model.event_types import BUILTIN, EventType, EventTypeRegistry

from .conftest import TOKEN
from .helpers import ShipcastProcess, eventually

pytestmark = pytest.mark.store

#: MariaDB's server; each test session works in a database of its own, dropped at the end.
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
EXAMPLES = Path(__file__).parent / "fixtures" / "oms"

DDL = {
    "postgresql": "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, event_id VARCHAR(100) NOT NULL, "
                  "partner_id VARCHAR(64) NOT NULL, order_id VARCHAR(100) NOT NULL, payload TEXT NOT NULL, "
                  "created_at TIMESTAMPTZ NOT NULL DEFAULT now(), failed_at TIMESTAMPTZ NULL, error TEXT NULL)",
    "mariadb": "CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, event_id VARCHAR(100) NOT NULL, "
               "partner_id VARCHAR(64) NOT NULL, order_id VARCHAR(100) NOT NULL, payload LONGTEXT NOT NULL, "
               "created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), failed_at TIMESTAMP(6) NULL, "
               "error TEXT NULL) CHARACTER SET utf8mb4",
}


def sync_url(dialect: str, database: str) -> str:
    if dialect == "postgresql":
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    return f"mysql+pymysql://root@127.0.0.1:3306/{database}?charset=utf8mb4"


@dataclass
class Oms:
    """An OMS's database, with an outbox table of this test's own."""

    dialect: str
    database: str
    table: str
    reader: sa.Engine

    @property
    def sync_url(self) -> str:
        return sync_url(self.dialect, self.database)

    @property
    def async_url(self) -> str:
        if self.dialect == "postgresql":
            return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.database}"
        return f"mysql+aiomysql://root@127.0.0.1:3306/{self.database}?charset=utf8mb4"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.database}"

    def connect(self) -> Any:
        """A DB-API connection, in a transaction once it writes (autocommit off)."""
        if self.dialect == "postgresql":
            return psycopg.connect(self.dsn)
        return pymysql.connect(**MARIADB, database=self.database, charset="utf8mb4")

    async def connect_async(self) -> Any:
        if self.dialect == "postgresql":
            return await psycopg.AsyncConnection.connect(self.dsn)
        return await aiomysql.connect(host=MARIADB["host"], port=MARIADB["port"], user=MARIADB["user"],
                                      password=MARIADB["password"], db=self.database, charset="utf8mb4",
                                      autocommit=False)

    def rows(self) -> list[dict[str, Any]]:
        """What has committed, read on a connection of its own."""
        with self.reader.connect() as conn:
            result = conn.execute(sa.text(f"SELECT id, event_id, partner_id, order_id, payload FROM {self.table} "
                                          "ORDER BY id"))
            return [dict(row._mapping) for row in result]


DIALECTS = ("postgresql", "mariadb")


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    """A MariaDB database for this test session, so that no table of another
    session's (another helper's ``shipcast_outbox``) is ever touched."""
    name = f"shipcast_test_{uuid.uuid4().hex[:10]}"
    admin = pymysql.connect(**MARIADB, autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        yield name
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        admin.close()


@pytest.fixture
def oms(request: pytest.FixtureRequest, pg_database: str, mariadb_database: str) -> Iterator[Oms]:
    """Parametrized by the tests with the dialect (indirect)."""
    dialect = request.param
    database = pg_database.rsplit("/", 1)[1] if dialect == "postgresql" else mariadb_database
    table = f"outbox_{uuid.uuid4().hex[:10]}"
    reader = sa.create_engine(sync_url(dialect, database))
    with reader.begin() as conn:
        conn.execute(sa.text(DDL[dialect].format(table=table)))
    try:
        yield Oms(dialect, database, table, reader)
    finally:
        with reader.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {table}"))
        reader.dispose()


def drafts() -> list[Draft]:
    """Two events of one order and one of another; a customer's name beyond ASCII and the BMP."""
    order = Order(order_id="ORD-A", customer=Customer(name="प्रिया 🚚 Sharma"))
    rider = Rider(rider_id="RDR-1", name="Ravi")
    return [
        new_event("OFD", partner_id="acme", order=order, rider=rider, otp=Otp(code="4821")),
        new_event("FAIL", partner_id="acme", order=order, rider=rider,
                  failure={"code": "CUSTOMER_UNAVAILABLE", "reason": "door locked"}),
        new_event("RET", partner_id="acme", order=Order(order_id="ORD-B", customer=Customer(name="Asha")),
                  return_={"return_id": "RTN-1", "reason": "refused"}),
    ]


# --- the ways an OMS holds a transaction ------------------------------------------------------
# Each writes ``events`` inside a transaction, checks that nothing shows
# before the transaction ends (write_outbox never commits), then commits or
# rolls back as told.

def sqlalchemy_connection(oms: Oms, events: list[Draft], commit: bool) -> None:
    engine = sa.create_engine(oms.sync_url)
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            write_outbox(conn, *events, table=oms.table)
            unseen(oms, events)
            transaction.commit() if commit else transaction.rollback()
    finally:
        engine.dispose()


def sqlalchemy_session(oms: Oms, events: list[Draft], commit: bool) -> None:
    engine = sa.create_engine(oms.sync_url)
    try:
        with Session(engine) as session:
            write_outbox(session, *events, table=oms.table)  # the session begins on its own
            unseen(oms, events)
            session.commit() if commit else session.rollback()
    finally:
        engine.dispose()


def dbapi_connection(oms: Oms, events: list[Draft], commit: bool) -> None:
    conn = oms.connect()
    try:
        write_outbox(conn, *events, table=oms.table)
        unseen(oms, events)
        conn.commit() if commit else conn.rollback()
    finally:
        conn.close()


def dbapi_cursor(oms: Oms, events: list[Draft], commit: bool) -> None:
    conn = oms.connect()
    try:
        cursor = conn.cursor()
        write_outbox(cursor, *events, table=oms.table)
        cursor.close()
        unseen(oms, events)
        conn.commit() if commit else conn.rollback()
    finally:
        conn.close()


async def sqlalchemy_async_connection(oms: Oms, events: list[Draft], commit: bool) -> None:
    engine = create_async_engine(oms.async_url)
    try:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            await write_outbox_async(conn, *events, table=oms.table)
            unseen(oms, events)
            await (transaction.commit() if commit else transaction.rollback())
    finally:
        await engine.dispose()


async def sqlalchemy_async_session(oms: Oms, events: list[Draft], commit: bool) -> None:
    engine = create_async_engine(oms.async_url)
    try:
        async with AsyncSession(engine) as session:
            await write_outbox_async(session, *events, table=oms.table)
            unseen(oms, events)
            await (session.commit() if commit else session.rollback())
    finally:
        await engine.dispose()


async def dbapi_async(oms: Oms, events: list[Draft], commit: bool) -> None:
    """psycopg's AsyncConnection on PostgreSQL, aiomysql's on MariaDB."""
    conn = await oms.connect_async()
    try:
        await write_outbox_async(conn, *events, table=oms.table)
        unseen(oms, events)
        await (conn.commit() if commit else conn.rollback())
    finally:
        closed = conn.close()
        if asyncio.iscoroutine(closed):
            await closed


async def asyncpg_connection(oms: Oms, events: list[Draft], commit: bool) -> None:
    conn = await asyncpg.connect(oms.dsn)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await write_outbox_async(conn, *events, table=oms.table)
        unseen(oms, events)
        await (transaction.commit() if commit else transaction.rollback())
    finally:
        await conn.close()


def unseen(oms: Oms, events: list[Draft]) -> None:
    """None of ``events`` shows outside the transaction that wrote them: write_outbox committed nothing."""
    ids = {event.event_id for event in events}
    assert not [row for row in oms.rows() if row["event_id"] in ids]


SYNC: dict[str, Callable[[Oms, list[Draft], bool], None]] = {
    f.__name__: f for f in (sqlalchemy_connection, sqlalchemy_session, dbapi_connection, dbapi_cursor)}
ASYNC: dict[str, Callable[[Oms, list[Draft], bool], Awaitable[None]]] = {
    f.__name__: f for f in (sqlalchemy_async_connection, sqlalchemy_async_session, dbapi_async,
                            asyncpg_connection)}


def check(oms: Oms, events: list[Draft], commit: bool) -> None:
    rows = oms.rows()
    if not commit:
        assert rows == []
        return
    assert [(row["event_id"], row["partner_id"], row["order_id"]) for row in rows] == [
        (event.event_id, event.partner_id, event.order_id) for event in events]
    assert [row["payload"] for row in rows] == [event.payload for event in events]


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
@pytest.mark.parametrize("way", sorted(SYNC))
@pytest.mark.parametrize("oms", DIALECTS, indirect=True)
def test_a_row_is_there_when_the_transaction_commits_and_not_when_it_rolls_back(
        oms: Oms, way: str, commit: bool) -> None:
    events = drafts()
    SYNC[way](oms, events, commit)
    check(oms, events, commit)


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
@pytest.mark.parametrize(("oms", "way"), [(dialect, way) for dialect in DIALECTS for way in sorted(ASYNC)
                                          if dialect == "postgresql" or way != "asyncpg_connection"],
                         indirect=["oms"])
async def test_async_a_row_is_there_when_the_transaction_commits_and_not_when_it_rolls_back(
        oms: Oms, way: str, commit: bool) -> None:
    events = drafts()
    await ASYNC[way](oms, events, commit)
    check(oms, events, commit)


@pytest.mark.parametrize("oms", DIALECTS, indirect=True)
def test_what_the_relay_reads_back_validates_as_ingest_validates_once_sequenced(oms: Oms) -> None:
    """The relay fills ``sequence`` with the row's id: then each payload is a
    valid envelope, with the OMS's event id and the order's events in commit order."""
    events = drafts()
    dbapi_connection(oms, events[:1], commit=True)
    dbapi_connection(oms, events[1:], commit=True)
    rows = oms.rows()
    payloads = [orjson.loads(row["payload"]) for row in rows]
    assert [payload["sequence"] for payload in payloads] == [None, None, None]
    parsed = parse_events([{**payload, "sequence": row["id"]} for payload, row in zip(payloads, rows)],
                          BUILTIN_TYPES)
    assert [event.event_id for event in parsed] == [event.event_id for event in events]
    assert [event.sequence for event in parsed] == [row["id"] for row in rows]
    order_a = [event.sequence for event in parsed if event.order.order_id == "ORD-A"]
    assert order_a == sorted(order_a) and len(order_a) == 2
    assert parsed[0].order.customer.name == "प्रिया 🚚 Sharma"


@pytest.mark.parametrize("oms", ["postgresql"], indirect=True)
async def test_an_asyncpg_pool_is_refused_and_its_connection_taken(oms: Oms) -> None:
    """A pool would run the insert on a connection of its own, outside the caller's transaction."""
    pool = await asyncpg.create_pool(oms.dsn, min_size=1, max_size=1)
    assert pool is not None
    try:
        with pytest.raises(TypeError, match="not an engine or a pool"):
            await write_outbox_async(pool, *drafts())
        async with pool.acquire() as conn, conn.transaction():
            await write_outbox_async(conn, *drafts()[:1], table=oms.table)
    finally:
        await pool.close()
    assert len(oms.rows()) == 1


# --- the documented examples -----------------------------------------------------------------

def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"oms_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example_tables(oms: Oms) -> Iterator[Oms]:
    """The examples' own tables: ``orders`` and the default ``shipcast_outbox``."""
    with oms.reader.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id VARCHAR(100) PRIMARY KEY, status VARCHAR(20) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO orders (id, status) VALUES ('ORD-7', 'PACKED')"))
        conn.execute(sa.text(DDL[oms.dialect].format(table="shipcast_outbox")))
    try:
        yield Oms(oms.dialect, oms.database, "shipcast_outbox", oms.reader)
    finally:
        with oms.reader.begin() as conn:
            conn.execute(sa.text("DROP TABLE orders"))
            conn.execute(sa.text("DROP TABLE shipcast_outbox"))


def order_status(oms: Oms) -> str:
    with oms.reader.connect() as conn:
        return str(conn.execute(sa.text("SELECT status FROM orders WHERE id = 'ORD-7'")).scalar_one())


@pytest.mark.parametrize("oms", DIALECTS, indirect=True)
def test_the_sqlalchemy_example(example_tables: Oms) -> None:
    example = load_example("sqlalchemy_outbox")
    engine = sa.create_engine(example_tables.sync_url)
    try:
        event_id = example.delivered(engine, "ORD-7", "Priya", "RDR-1", "Ravi")
        with pytest.raises(LookupError):
            example.delivered(engine, "ORD-404", "Nobody", "RDR-1", "Ravi")
    finally:
        engine.dispose()
    assert order_status(example_tables) == "DEL"
    assert [(row["event_id"], row["order_id"]) for row in example_tables.rows()] == [(event_id, "ORD-7")]


@pytest.mark.parametrize("oms", ["postgresql"], indirect=True)
def test_the_django_example(example_tables: Oms) -> None:
    """Django's own ``transaction.atomic()`` and connection, on PostgreSQL."""
    import django
    from django.conf import settings
    from django.db import connections

    if not settings.configured:
        settings.configure(USE_TZ=True, DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": example_tables.database,
            "USER": "postgres", "HOST": "127.0.0.1", "PORT": "5432"}})
        django.setup()
    try:
        example = load_example("django_outbox")
        event_id = example.out_for_delivery("ORD-7", "Priya", "RDR-1", "Ravi", "4821")
        with pytest.raises(LookupError):
            example.out_for_delivery("ORD-404", "Nobody", "RDR-1", "Ravi", "4821")
    finally:
        connections.close_all()
    assert order_status(example_tables) == "OFD"
    rows = example_tables.rows()
    assert [(row["event_id"], row["order_id"]) for row in rows] == [(event_id, "ORD-7")]


# --- the HTTP client against shipcast's API --------------------------------------------------

def sequenced(event: Draft, sequence: int) -> Draft:
    return event_from({**event.json(), "sequence": sequence})


@pytest.mark.broker
async def test_events_posted_to_the_api_are_taken_under_their_ids(shipcast: ShipcastProcess) -> None:
    events = [sequenced(event, n) for n, event in enumerate(drafts(), 1)]
    async with AsyncClient(shipcast.base_url, TOKEN) as client:
        assert await client.send(*events) == [event.event_id for event in events]

    def send_one() -> list[str]:
        with Client(shipcast.base_url, TOKEN) as client:
            return client.send(sequenced(drafts()[0], 9))

    (sent,) = await asyncio.to_thread(send_one)

    async def archived() -> bool:
        answers = [await shipcast.http.get(f"/v1/events/{event_id}") for event_id in (events[0].event_id, sent)]
        return all(answer.status_code == 200 for answer in answers)

    await eventually(archived)
    answer = (await shipcast.http.get(f"/v1/events/{events[0].event_id}")).json()
    assert answer["event"]["sequence"] == 1 and answer["event"]["order"]["customer"]["name"] == "प्रिया 🚚 Sharma"


@pytest.mark.broker
async def test_the_apis_422_reaches_the_caller_with_its_field_errors(shipcast: ShipcastProcess) -> None:
    """An event type the OMS's registry knows and the server does not."""
    registry = EventTypeRegistry([*BUILTIN, EventType("PICKED_UP", "Picked up.", frozenset({"order"}))])
    event = new_event("PICKED_UP", partner_id="acme", sequence=1, registry=registry,
                      order=Order(order_id="ORD-9", customer=Customer(name="Asha")))
    async with AsyncClient(shipcast.base_url, TOKEN) as client:
        with pytest.raises(InvalidEvent) as raised:
            await client.send(event)
    assert raised.value.errors[0]["loc"] == ["event_type"]
    assert "unknown event type 'PICKED_UP'" in raised.value.errors[0]["msg"]


@pytest.mark.broker
async def test_a_wrong_token_is_refused_once(shipcast: ShipcastProcess) -> None:
    async with AsyncClient(shipcast.base_url, "wrong") as client:
        with pytest.raises(ApiRefused, match="401.*bearer token"):
            await client.send(sequenced(drafts()[0], 1))
