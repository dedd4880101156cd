"""``shipcast relay`` against real outboxes: a table in PostgreSQL and one in
MariaDB (each test makes its own), real RabbitMQ (a vhost per test), and
the relay in this process or as real ``shipcast relay`` processes killed
with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from shipcast import metrics
from shipcast.amqp.topology import EXCHANGE
from shipcast.app.reconcile import apply_partners
from shipcast.app.relay.ddl import outbox_ddl, statements
from shipcast.app.relay.runner import Relay
from shipcast.app.relay.source import OutboxSource
from shipcast.app.services import Services
from shipcast.model.partners import load_partners
from shipcast.settings import Settings
from tests.bound import example

from .conftest import AMQP_HOST, free_port, make_settings
from .helpers import Subprocess, applied, eventually, partners_doc, run_cli
from .portal import signed_in, two_partners

pytestmark = [pytest.mark.broker]

MARIADB_ADMIN = os.environ.get("TEST_MARIADB_URL", "mysql+aiomysql://root@127.0.0.1:3306/test")
DOC = partners_doc("acme", "http://127.0.0.1:9/hook")


@dataclass
class Outbox:
    """An outbox table of a test's own, in PostgreSQL or MariaDB."""

    url: str
    table: str
    dialect: str

    async def execute(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        engine = create_async_engine(self.url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(sa.text(statement), params or {})
                return list(result) if result.returns_rows else []
        finally:
            await engine.dispose()

    async def insert(self, *payloads: dict[str, Any] | str, **columns: str) -> list[int]:
        """One row per payload, each committed on its own, as an OMS writes
        them; the columns from the payload unless given. The rows' ids."""
        engine = create_async_engine(self.url, poolclass=NullPool)
        ids = []
        try:
            for payload in payloads:
                data = payload if isinstance(payload, dict) else {}
                values = {"event_id": data.get("event_id", "x"), "partner_id": data.get("partner_id", "acme"),
                          "order_id": (data.get("order") or {}).get("order_id", "ORD-1"),
                          "payload": payload if isinstance(payload, str) else orjson.dumps(payload).decode()}
                values.update(columns)
                async with engine.begin() as conn:
                    result = await conn.execute(sa.text(
                        f"INSERT INTO {self.table} (event_id, partner_id, order_id, payload) "
                        "VALUES (:event_id, :partner_id, :order_id, :payload)"
                        + (" RETURNING id" if self.dialect == "postgresql" else "")), values)
                    ids.append(result.scalar_one() if self.dialect == "postgresql" else result.lastrowid)
        finally:
            await engine.dispose()
        return ids

    async def rows(self) -> list[dict[str, Any]]:
        return [dict(row._mapping) for row in await self.execute(
            f"SELECT id, event_id, failed_at, error FROM {self.table} ORDER BY id")]


async def _mysql(statement: str) -> None:
    engine = create_async_engine(MARIADB_ADMIN, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def made_outbox(dialect: str, pg_database: str) -> AsyncIterator[Outbox]:
    """An outbox made with the DDL ``relay sql`` prints: a table in the
    session's PostgreSQL database, or a MariaDB database of its own."""
    table = f"outbox_{uuid.uuid4().hex[:10]}"
    if dialect == "postgresql":
        outbox = Outbox(pg_database, table, dialect)
    else:
        database = f"shipcast_relay_{uuid.uuid4().hex[:10]}"
        await _mysql(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        outbox = Outbox(MARIADB_ADMIN.rsplit("/", 1)[0] + f"/{database}", table, dialect)
    try:
        for statement in statements(outbox_ddl(dialect, table)):
            await outbox.execute(statement)
        yield outbox
    finally:
        if dialect == "postgresql":
            await outbox.execute(f"DROP TABLE IF EXISTS {table}")
            await outbox.execute(f"DROP FUNCTION IF EXISTS {table}_notify()")
        else:
            await _mysql(f"DROP DATABASE IF EXISTS {outbox.url.rsplit('/', 1)[1]}")


@pytest.fixture(params=["postgresql", "mysql"])
async def outbox(request: pytest.FixtureRequest, pg_database: str) -> AsyncIterator[Outbox]:
    async with made_outbox(request.param, pg_database) as made:
        yield made


@pytest.fixture
async def pg_outbox(pg_database: str) -> AsyncIterator[Outbox]:
    async with made_outbox("postgresql", pg_database) as made:
        yield made


def relay_settings(vhost: str, tmp_path: Path, outbox: Outbox, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"relay_database_url": outbox.url, "relay_table": outbox.table,
                              "relay_poll_interval": 0.2}
    values.update(overrides)
    return make_settings(vhost, f"sqlite+aiosqlite:///{tmp_path / 'shipcast.db'}", **values)


class Wire:
    """Every event published to the events exchange, in the order RabbitMQ
    delivers them (one queue bound to ``#``: the wire's order)."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> Wire:
        self.connection = await aio_pika.connect(f"amqp://guest:guest@{AMQP_HOST}/{self.vhost}")
        channel = await self.connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(EXCHANGE, "#")

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.events.append(orjson.loads(message.body))
            await message.ack()

        await queue.consume(keep)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()

    def ids(self) -> list[str]:
        return [event["event_id"] for event in self.events]


@contextlib.asynccontextmanager
async def relaying(services: Services) -> AsyncIterator[Relay]:
    """A relay running in this process on ``services``' settings."""
    settings = services.settings
    assert settings.relay_database_url
    source = OutboxSource(settings.relay_database_url, settings.relay_table)
    relay = Relay(services, source)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await task
        await source.close()


def event(order_id: str, event_type: str = "OFD", *, sequence: int | None = None,
          partner_id: str = "acme") -> dict[str, Any]:
    data: dict[str, Any] = example(event_type, order_id=order_id, partner_id=partner_id).model_dump(
        mode="json", by_alias=True)
    data["sequence"] = sequence
    return data


async def test_rows_are_published_in_order_per_order_and_deleted(vhost: str, tmp_path: Path,
                                                                 outbox: Outbox) -> None:
    """Small batches, three orders interleaved: each order's events reach the
    wire in the order they were committed, a missing sequence is the row's
    id, a given one is kept, and every row is deleted once confirmed."""
    settings = relay_settings(vhost, tmp_path, outbox, relay_batch_size=2)
    before = metrics.value("shipcast_relay_published_total")
    async with applied(settings, DOC) as services, Wire(vhost) as wire:
        written = [event("A"), event("B"), event("A", "FAIL"), event("C"), event("B", "DEL"),
                   event("A", "RET", sequence=10**6), event("C", "DEL")]
        ids = await outbox.insert(*written)
        async with relaying(services) as relay:
            await eventually(lambda: len(wire.events) >= len(written))
            await eventually(lambda: relay.stats is not None and relay.stats.depth == 0)
            assert relay.active
        assert sorted(wire.ids()) == sorted(data["event_id"] for data in written)
        sequences = {found["event_id"]: found["sequence"] for found in wire.events}
        for data, row_id in zip(written, ids, strict=True):
            assert sequences[data["event_id"]] == (data["sequence"] or row_id)
        for order in "ABC":
            sent = [data["event_id"] for data in written if data["order"]["order_id"] == order]
            assert [found for found in wire.ids() if found in sent] == sent, order
        assert await outbox.rows() == []
        assert metrics.value("shipcast_relay_published_total") - before == len(written)
        assert metrics.value("shipcast_relay_active") == 0  # stopped: no longer active


async def test_a_bad_row_is_moved_aside_with_its_error_and_the_rest_go_on(vhost: str, tmp_path: Path,
                                                                          outbox: Outbox) -> None:
    """Each bad row fails naming why, the good ones around it are published;
    ``relay status`` lists the failed rows and exits 1; ``relay retry`` puts
    one back once its cause is fixed (its partner applied), ``relay delete``
    removes the rest, both audited."""
    settings = relay_settings(vhost, tmp_path, outbox, max_event_bytes=2048)
    big = event("D")
    big["order"]["merchant_order_ref"] = "x" * 3000
    wrong_order = event("E")
    bad: list[tuple[dict[str, Any] | str, dict[str, str], str]] = [
        ("{not json", {"event_id": "bad-json"}, "payload: not JSON"),
        (event("F", partner_id="ghost"), {}, "partner_id: no partner 'ghost'"),
        ({**event("G"), "event_type": "NOPE"}, {}, "event_type"),
        (big, {}, "payload: 3"),
        ({**event("H"), "otp": {"code": "12\u000034"}}, {}, "otp"),
        (wrong_order, {"order_id": "ORD-OTHER"}, "order_id: the row's order_id 'ORD-OTHER'"),
    ]
    first, last = event("A"), event("B")
    async with applied(settings, DOC) as services, Wire(vhost) as wire:
        await outbox.insert(first)
        bad_ids = [(await outbox.insert(payload, **columns))[0] for payload, columns, _ in bad]
        await outbox.insert(last)
        async with relaying(services):
            await eventually(lambda: len(wire.events) >= 2)
            await eventually(lambda: _count(outbox, failed=True, expect=len(bad)), timeout=10)
        assert wire.ids() == [first["event_id"], last["event_id"]]
        rows = {row["id"]: row for row in await outbox.rows()}
        assert set(rows) == set(bad_ids)
        for row_id, (_, _, says) in zip(bad_ids, bad, strict=True):
            assert rows[row_id]["failed_at"] is not None and says in rows[row_id]["error"], rows[row_id]

        shown = run_cli(settings, "relay", "status")
        assert shown.returncode == 1, shown.stderr
        assert "0 pending" in shown.stdout and f"{len(bad)} failed" in shown.stdout
        assert "no partner 'ghost'" in shown.stdout
        as_json = orjson.loads(run_cli(settings, "relay", "status", "--json").stdout)
        assert as_json["failed"] == len(bad) and [row["id"] for row in as_json["failed_rows"]] == bad_ids

        # The ghost partner is applied: its row, retried, is published.
        ghost = bad_ids[1]
        doc = {"partners": [*DOC["partners"], *partners_doc("ghost", "http://127.0.0.1:9/hook")["partners"]]}
        await apply_partners(services, load_partners(doc, "test", catalog=services.registry.catalog))
        retried = run_cli(settings, "relay", "retry", str(ghost))
        assert retried.returncode == 0 and f"retried 1 failed rows: {ghost}" in retried.stdout, retried.stderr
        async with relaying(services):
            await eventually(lambda: len(wire.events) >= 3)
        assert wire.events[-1]["partner_id"] == "ghost"

        assert run_cli(settings, "relay", "retry").returncode == 2  # neither ids nor --all
        rest = [row_id for row_id in bad_ids if row_id != ghost]
        deleted = run_cli(settings, "relay", "delete", *map(str, rest), "999999")
        assert deleted.returncode == 0 and f"deleted {len(rest)} failed rows" in deleted.stdout, deleted.stderr
        assert await outbox.rows() == []
        assert run_cli(settings, "relay", "status").returncode == 0
        audit = {entry["action"]: entry for entry in await services.store.list_audit()}
        assert audit["relay.retry"]["after"] == {"ids": [ghost]}
        assert audit["relay.delete"]["before"] == {"ids": rest}


async def _count(outbox: Outbox, *, failed: bool, expect: int) -> bool:
    rows = await outbox.rows()
    return len([row for row in rows if (row["failed_at"] is not None) == failed]) == expect


async def test_a_commit_wakes_the_relay_at_once_on_postgresql(vhost: str, tmp_path: Path,
                                                            pg_outbox: Outbox) -> None:
    """With polls a minute apart, a committed row is still published at once:
    the trigger's NOTIFY woke the relay (the time it took is printed)."""
    settings = relay_settings(vhost, tmp_path, pg_outbox, relay_poll_interval=60)
    async with applied(settings, DOC) as services, Wire(vhost) as wire:
        async with relaying(services) as relay:
            await eventually(lambda: relay.active and relay.stats is not None)
            await asyncio.sleep(0.5)  # its first poll done: now waiting for a NOTIFY or the next poll, a minute on
            took = []
            for order in ("A", "B", "C"):
                started = time.perf_counter()
                await pg_outbox.insert(event(order))
                await eventually(lambda order=order: any(found["order"]["order_id"] == order  # type: ignore[misc]
                                                         for found in wire.events), timeout=10, interval=0.001)
                took.append(time.perf_counter() - started)
        print(f"commit to RabbitMQ via NOTIFY: {', '.join(f'{t * 1000:.1f} ms' for t in took)}")
        assert len(wire.events) == 3


async def test_the_relays_commits_do_not_wait_for_the_wal_flush_but_the_omss_do(vhost: str, tmp_path: Path,
                                                                                pg_outbox: Outbox) -> None:
    """The relay's own session deletes published rows without waiting for
    the WAL to reach the disk (a crash republishes them, with their ids);
    the setting is its session's alone: another connection to the OMS's
    database keeps the server's."""
    settings = relay_settings(vhost, tmp_path, pg_outbox)
    setting = sa.text("SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'")
    async with applied(settings, DOC) as services:
        assert settings.relay_database_url
        source = OutboxSource(settings.relay_database_url, settings.relay_table)
        try:
            async with Relay(services, source)._connected() as conn:
                assert tuple((await conn.execute(setting)).one()) == ("off", "session")
            async with source.connect() as other:  # the server's own, not the relay's leaked to a role or database
                assert (await other.execute(setting)).one()[1] in ("default", "configuration file", "command line")
        finally:
            await source.close()


async def test_a_database_that_never_answers_is_tried_again_not_waited_on(vhost: str, tmp_path: Path) -> None:
    """A connection to the OMS's database that opens but is never answered (a
    server restarting, a half-open path) fails within the statement timeout
    and is tried again: a relay, standby or active, is never held by it for
    the driver's own minute."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    silent_outbox = Outbox(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test", "shipcast_outbox", "postgresql")
    settings = relay_settings(vhost, tmp_path, silent_outbox, publish_timeout=0.5)
    try:
        async with applied(settings, DOC) as services, relaying(services) as relay:
            await eventually(lambda: len(accepted) >= 3, timeout=10)
            assert not relay.active and not relay.source_up
    finally:
        for writer in accepted:
            writer.close()
        server.close()


async def test_the_ddl_printed_applies_and_a_bad_table_name_is_refused(vhost: str, tmp_path: Path,
                                                                       outbox: Outbox) -> None:
    settings = relay_settings(vhost, tmp_path, outbox)
    table = f"printed_{uuid.uuid4().hex[:8]}"
    printed = run_cli(settings, "relay", "sql", "--dialect", outbox.dialect, "--table", table)
    assert printed.returncode == 0, printed.stderr
    try:
        for statement in statements(printed.stdout):
            await outbox.execute(statement)
        probe = Outbox(outbox.url, table, outbox.dialect)
        [row_id] = await probe.insert(event("A"))
        assert [row["id"] for row in await probe.rows()] == [row_id]
        if outbox.dialect == "postgresql":
            assert await outbox.execute(f"SELECT 1 FROM pg_trigger WHERE tgname = '{table}_notify'")
    finally:
        await outbox.execute(f"DROP TABLE IF EXISTS {table}")
        if outbox.dialect == "postgresql":
            await outbox.execute(f"DROP FUNCTION IF EXISTS {table}_notify()")
    refused = run_cli(settings, "relay", "sql", "--dialect", outbox.dialect, "--table", "Orders-Outbox")
    assert refused.returncode == 2 and "--table" in refused.stderr
    unset = run_cli(settings, "relay", "status", env={"SHIPCAST_RELAY_DATABASE_URL": ""})
    assert unset.returncode == 1 and "SHIPCAST_RELAY_DATABASE_URL" in unset.stderr


async def _relay_state(port: int) -> tuple[float, str] | None:
    """A relay process's ``shipcast_relay_active`` and its metrics, or None before it answers."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("shipcast_relay_active "):
            return float(line.split()[1]), text
    return None


@pytest.mark.slow
async def test_a_standby_takes_over_when_the_active_relay_is_killed(vhost: str, tmp_path: Path,
                                                                    outbox: Outbox) -> None:
    """Two ``shipcast relay`` processes: one active, one standby. The active
    one is killed with SIGKILL while rows keep coming; the standby takes
    over within seconds; every row is published (some perhaps twice, with the
    same event id) and the outbox ends empty."""
    settings = relay_settings(vhost, tmp_path, outbox, relay_batch_size=20)
    ports = [free_port(), free_port()]
    async with applied(settings, DOC) as _, Wire(vhost) as wire:
        relays = [Subprocess(settings, "relay", env={"SHIPCAST_HEALTH_PORT": str(port)}).start() for port in ports]
        try:
            async def states() -> list[float] | None:
                found = [await _relay_state(port) for port in ports]
                return None if None in found else [state[0] for state in found if state]

            await eventually(lambda: _one_active(states), timeout=30)
            active = (await states() or []).index(1.0)
            async with httpx.AsyncClient() as client:
                ready = await client.get(f"http://127.0.0.1:{ports[active]}/readyz")
            assert ready.status_code == 200 and ready.json()["source"] == "up", ready.text

            written = [event(f"O{n % 7}") for n in range(120)]
            await outbox.insert(*written[:40])
            await eventually(lambda: len(wire.events) >= 20)
            relays[active].kill()
            killed_at = time.monotonic()
            writing = asyncio.create_task(outbox.insert(*written[40:]))
            await eventually(lambda: _active_is(ports[1 - active], 1.0), timeout=30)
            print(f"standby active {time.monotonic() - killed_at:.1f} s after the kill")
            await writing
            await eventually(lambda: _count(outbox, failed=False, expect=0), timeout=30)
            await eventually(lambda: set(wire.ids()) >= {data["event_id"] for data in written}, timeout=10)
            async def drained() -> bool:  # the figures are read every second
                state = await _relay_state(ports[1 - active])
                return state is not None and "\nshipcast_relay_outbox_depth 0\n" in state[1]

            await eventually(drained, timeout=5)
            state = await _relay_state(ports[1 - active])
            assert state is not None
            published = [line for line in state[1].splitlines() if line.startswith("shipcast_relay_published_total")]
            assert published and float(published[0].split()[1]) > 0
        finally:
            outputs = [relay.stop() for relay in relays]  # the killed one's output is read and closed too
        duplicates = len(wire.ids()) - len(set(wire.ids()))
        print(f"lost 0 of {len(written)}, published twice: {duplicates}")
        assert "Traceback" not in outputs[1 - active], outputs[1 - active]


async def _one_active(states: Any) -> bool:
    found = await states()
    return found is not None and sorted(found) == [0.0, 1.0]


async def _active_is(port: int, value: float) -> bool:
    state = await _relay_state(port)
    return state is not None and state[0] == value


async def test_the_relay_page_shows_the_outbox_and_retries_or_deletes_failed_rows(
        vhost: str, tmp_path: Path, outbox: Outbox) -> None:
    """The operator's Relay page: the figures and failed rows ``relay status``
    shows, Retry and Delete (audited), a bad id refused naming the field, and
    a 404 to a partner's admin."""
    settings = relay_settings(vhost, tmp_path, outbox)
    [pending] = await outbox.insert(event("A"))
    failed = await outbox.insert(event("B"), event("C"), event("D"))
    await outbox.execute(f"UPDATE {outbox.table} SET failed_at = CURRENT_TIMESTAMP, "
                         "error = 'partner_id: no partner <b>x</b>' WHERE id >= :first", {"first": failed[0]})
    async with two_partners(settings) as portal:
        async with await signed_in(portal, "admin@acme.example.com", "acme") as admin:
            assert (await admin.get("/portal/operator/relay")).status_code == 404
            assert (await admin.post("/portal/operator/relay/delete", {"id": str(failed[0])})).status_code == 404
        async with await signed_in(portal, "ops@example.com") as ops:
            shown = await ops.get("/portal/operator/relay")
            assert shown.status_code == 200, shown.text
            assert f"{outbox.table}" in shown.text and "no partner &lt;b&gt;x&lt;/b&gt;" in shown.text
            assert all(f'value="{row_id}"' in shown.text for row_id in failed)
            for bad in ("abc", "0", "1" * 20, ""):
                refused = await ops.post("/portal/operator/relay/delete", {"id": bad})
                assert refused.status_code == 422 and "id: " in refused.text, bad
            retried = await ops.post("/portal/operator/relay/retry", {"id": str(failed[0])})
            assert retried.status_code == 303
            deleted = await ops.post("/portal/operator/relay/delete", {"id": str(failed[1])})
            assert deleted.status_code == 303
            not_pending = await ops.post("/portal/operator/relay/delete", {"id": str(pending)})
            assert not_pending.status_code == 303  # a pending row is never deleted by hand
            rows = {row["id"]: row for row in await outbox.rows()}
            assert set(rows) == {pending, failed[0], failed[2]}
            assert rows[failed[0]]["failed_at"] is None and rows[failed[2]]["failed_at"] is not None
            everything = await ops.post("/portal/operator/relay/retry", {"id": "all"})
            assert everything.status_code == 303
            assert all(row["failed_at"] is None for row in await outbox.rows())
        actions = [entry["action"] for entry in await portal.services.store.list_audit()]
        assert actions.count("relay.retry") == 2 and actions.count("relay.delete") == 1
