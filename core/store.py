"""The store: events, deliveries, attempts, partners (SQLAlchemy async Core).

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) is used at
scale. Both run the same statements; only upserts differ by dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .envelope import Event
from .exceptions import StoreError
from .partners import Partner

metadata = sa.MetaData()
UtcDateTime = sa.DateTime(timezone=True)

events = sa.Table(
    "events", metadata,
    sa.Column("event_id", sa.String(100), primary_key=True),
    sa.Column("partner_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("order_id", sa.String(100), nullable=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("occurred_at", UtcDateTime, nullable=False),
    sa.Column("stored_at", UtcDateTime, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Index("ix_events_partner_stored", "partner_id", "stored_at"),
    sa.Index("ix_events_order", "partner_id", "order_id", "sequence"),
)

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("event_id", sa.String(100), primary_key=True),
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(200), primary_key=True),
    sa.Column("partner_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(32)),
    sa.Column("order_id", sa.String(100)),
    sa.Column("sequence", sa.BigInteger),
    sa.Column("address", sa.String(2000), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # delivered | retrying | waiting | skipped | dead | sending
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    #: What the provider last reported after accepting it (an SMS's "delivered", "undelivered 30003").
    sa.Column("provider_status", sa.String(64)),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_deliveries_status", "status", "updated_at"),
    sa.Index("ix_deliveries_partner", "partner_id", "updated_at"),
    # Only the rows ordered delivery waits on: the index stays small and most upserts skip it.
    sa.Index("ix_deliveries_order", "channel", "partner_id", "target", "order_id",
             postgresql_where=sa.text("status IN ('retrying', 'waiting')"),
             sqlite_where=sa.text("status IN ('retrying', 'waiting')")),
)

attempts = sa.Table(
    "attempts", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(100), nullable=False),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("partner_id", sa.String(64)),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # delivered | retry | dead
    sa.Column("status", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("response", sa.Text),
    sa.Index("ix_attempts_delivery", "event_id", "channel", "target"),
    sa.Index("ix_attempts_target", "partner_id", "channel", "target", "at"),
)

partners = sa.Table(
    "partners", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

disabled_targets = sa.Table(
    "disabled_targets", metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("partner_id", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(200), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("disabled_at", UtcDateTime, nullable=False),
)

#: Targets failing without a success since ``failing_since`` (auto-disable counts from it).
endpoint_health = sa.Table(
    "endpoint_health", metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("partner_id", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(200), primary_key=True),
    sa.Column("failing_since", UtcDateTime, nullable=False),
    sa.Column("last_error", sa.Text),
)

#: Operator events (endpoint failing, recovered, disabled): an outbox, sent as webhooks.
operator_events = sa.Table(
    "operator_events", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("sent_at", UtcDateTime),
    sa.Index("ix_operator_events_unsent", "sent_at", "at"),
)

#: Partner-scoped API tokens, stored as SHA-256 hashes only.
partner_tokens = sa.Table(
    "partner_tokens", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("partner_id", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

#: Messages a provider accepted, by its id: status callbacks find their delivery here.
provider_messages = sa.Table(
    "provider_messages", metadata,
    sa.Column("provider", sa.String(32), primary_key=True),
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(100), nullable=False),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_provider_messages_delivery", "event_id", "channel", "target"),
)

#: Customers who opted out of a channel for a partner, by a hash of their address.
opt_outs = sa.Table(
    "opt_outs", metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("partner_id", sa.String(64), primary_key=True),
    sa.Column("address_hash", sa.String(64), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
)

#: Ed25519 keys for ``v1a`` signatures; the private half encrypted.
signing_keys = sa.Table(
    "signing_keys", metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("private_key", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

#: How much of a remote answer the attempt log keeps.
RESPONSE_EXCERPT = 1024


def now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """A filter's time in UTC (naive means UTC): SQLite compares the clock
    time and ignores an offset, so every bound is given in UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC: as early (or late) as can be
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


def _filtered(query: Any, when: sa.Column[Any], since: datetime | None, until: datetime | None,
              **equals: str | None) -> Any:
    """``query`` narrowed to rows whose columns equal the values given, and
    whose ``when`` is in ``[since, until)``."""
    table = when.table
    for column, value in equals.items():
        if value:
            query = query.where(table.c[column] == value)
    if since:
        query = query.where(when >= _utc(since))
    if until:
        query = query.where(when < _utc(until))
    return query


def _add_missing_columns(connection: sa.Connection) -> None:
    """Bring a store made by an earlier version up to date: add the nullable
    columns and the indexes it lacks (tables it lacks ``create_all`` has just made)."""
    inspector = sa.inspect(connection)
    for table in metadata.sorted_tables:
        have = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=connection.dialect)
                connection.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        for index in table.indexes:
            index.create(connection, checkfirst=True)


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@dataclass(frozen=True)
class Attempt:
    """One try at delivering an event to one target, as the worker saw it."""

    event_id: str
    channel: str
    target: str
    partner_id: str
    address: str
    outcome: str  # delivered | retry | dead, or waiting (deferred, not attempted)
    attempt: int
    latency_ms: float
    status: int | None = None
    error: str | None = None
    response: str | None = None
    at: datetime | None = None
    event_type: str | None = None
    order_id: str | None = None
    sequence: int | None = None


class Store:
    """Async access to the database named by ``SHIPCAST_DATABASE_URL``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine | None = None
        self._held: AsyncConnection | None = None
        self._held_lock = asyncio.Lock()
        self._statements: dict[str, Any] = {}

    async def open(self) -> Store:
        if self.engine is not None:
            return self
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
        engine = create_async_engine(self.url, **kwargs)
        if engine.dialect.name == "sqlite":
            @sa.event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_connection: Any, _: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.close()
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
                await conn.run_sync(_add_missing_columns)
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise StoreError(f"cannot open the store at {self._safe_url}: {exc}") from exc
        self.engine = engine
        self._statements = self._hot_statements()
        return self

    def _hot_statements(self) -> dict[str, Any]:
        """The workers' statements, built once: building one costs about as
        much as running it on SQLite."""
        upsert = self._insert(deliveries)
        greatest = sa.func.max if self.dialect == "sqlite" else sa.func.greatest
        return {
            "insert_events": self._insert(events).on_conflict_do_nothing(),
            "insert_attempts": attempts.insert(),
            "upsert_deliveries": upsert.on_conflict_do_update(
                index_elements=[deliveries.c.event_id, deliveries.c.channel, deliveries.c.target],
                set_={
                    "status": sa.case((deliveries.c.status == "delivered", deliveries.c.status),
                                      else_=upsert.excluded.status),
                    "attempts": greatest(deliveries.c.attempts, upsert.excluded.attempts),
                    "last_status": upsert.excluded.last_status,
                    "last_error": upsert.excluded.last_error,
                    "updated_at": upsert.excluded.updated_at,
                }),
            "order_blocked": sa.select(deliveries.c.event_id).where(
                deliveries.c.channel == sa.bindparam("channel"), deliveries.c.partner_id == sa.bindparam("partner_id"),
                deliveries.c.target == sa.bindparam("target"), deliveries.c.order_id == sa.bindparam("order_id"),
                deliveries.c.sequence < sa.bindparam("sequence"), deliveries.c.updated_at > sa.bindparam("fresh"),
                deliveries.c.status.in_(("retrying", "waiting"))).order_by(deliveries.c.sequence).limit(1),
            "delivered_for": sa.select(deliveries.c.event_id, deliveries.c.target).where(
                deliveries.c.channel == sa.bindparam("channel"), deliveries.c.status == "delivered",
                deliveries.c.event_id.in_(sa.bindparam("ids", expanding=True))),
        }

    @property
    def dialect(self) -> str:
        assert self.engine is not None, "Store.open() first"
        return self.engine.dialect.name

    @property
    def _safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    async def close(self) -> None:
        if self._held is not None:
            with contextlib.suppress(Exception):
                await self._held.close()
            self._held = None
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    @asynccontextmanager
    async def _connection(self, hot: bool) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction. The hot path (the workers' batched
        lookups and writes) reuses one held connection: checking one out of
        the pool costs more than the query it runs."""
        assert self.engine is not None, "Store.open() first"
        if not hot:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._held_lock:
            if self._held is None or self._held.closed or self._held.invalidated:
                self._held = await self.engine.connect()
            conn = self._held
            try:
                async with conn.begin():
                    yield conn
            except BaseException:
                self._held = None  # a broken connection is not reused
                with contextlib.suppress(Exception):
                    await conn.close()
                raise

    async def _run(self, statements: Iterable[tuple[Any, Any]], *, hot: bool = False) -> None:
        try:
            async with self._connection(hot) as conn:
                for statement, params in statements:
                    if params is None:
                        await conn.execute(statement)
                    elif not params:
                        continue
                    else:
                        await conn.execute(statement, params)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def _rows(self, query: Any, *, hot: bool = False) -> list[sa.Row[Any]]:
        try:
            async with self._connection(hot) as conn:
                return list((await conn.execute(query)).all())
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    async def ping(self) -> None:
        """One round trip to the database. :raises StoreError: it is unreachable."""
        await self._rows(sa.select(sa.literal(1)))

    # -- partners ---------------------------------------------------------

    async def put_partners(self, items: Sequence[Partner], *, reenable: bool = True) -> None:
        """Upsert partners and, with ``reenable``, re-enable their disabled
        targets (the operator has just re-asserted their config)."""
        stamp = now()
        rows = [{"id": p.id, "name": p.name, "config": orjson.dumps(p.to_dict()).decode(),
                 "updated_at": stamp} for p in items]
        upsert = self._insert(partners)
        upsert = upsert.on_conflict_do_update(
            index_elements=[partners.c.id],
            set_={"name": upsert.excluded.name, "config": upsert.excluded.config,
                  "updated_at": upsert.excluded.updated_at})
        ids = [p.id for p in items]
        statements: list[tuple[Any, Any]] = [(upsert, rows)]
        if reenable:
            statements += [(table.delete().where(table.c.partner_id.in_(ids)), None)
                           for table in (disabled_targets, endpoint_health)]
        await self._run(statements)

    async def get_partners(self) -> list[Partner]:
        rows = await self._rows(sa.select(partners.c.config).order_by(partners.c.id))
        return [_partner(row.config) for row in rows]

    async def get_partner(self, partner_id: str) -> Partner | None:
        rows = await self._rows(sa.select(partners.c.config).where(partners.c.id == partner_id))
        return _partner(rows[0].config) if rows else None

    async def delete_partner(self, partner_id: str) -> bool:
        rows = await self._rows(sa.select(partners.c.id).where(partners.c.id == partner_id))
        await self._run([(table.delete().where(table.c.partner_id == partner_id), None)
                         for table in (disabled_targets, endpoint_health, partner_tokens)]
                        + [(partners.delete().where(partners.c.id == partner_id), None)])
        return bool(rows)

    # -- disabled targets -------------------------------------------------

    async def disable_target(self, channel: str, partner_id: str, target: str, reason: str) -> None:
        insert = self._insert(disabled_targets).on_conflict_do_nothing()
        await self._run([(insert, [{"channel": channel, "partner_id": partner_id, "target": target,
                                    "reason": reason, "disabled_at": now()}])])

    async def enable_target(self, channel: str, partner_id: str, target: str) -> None:
        """Re-enable a target and forget its failures."""
        await self._run([(table.delete().where((table.c.channel == channel) & (table.c.partner_id == partner_id)
                                               & (table.c.target == target)), None)
                         for table in (disabled_targets, endpoint_health)])

    async def get_disabled_targets(self) -> set[tuple[str, str, str]]:
        rows = await self._rows(sa.select(disabled_targets.c.channel, disabled_targets.c.partner_id,
                                          disabled_targets.c.target))
        return {(row.channel, row.partner_id, row.target) for row in rows}

    # -- events -----------------------------------------------------------

    async def save_events(self, items: Sequence[Event]) -> None:
        """Store events; an event already stored is left as it is."""
        stamp = now()
        rows = [{"event_id": e.event_id, "partner_id": e.partner_id, "event_type": e.event_type,
                 "order_id": e.order.order_id, "sequence": e.sequence, "occurred_at": e.occurred_at,
                 "stored_at": stamp, "body": e.model_dump_json()} for e in items]
        await self._run([(self._statements["insert_events"], rows)], hot=True)

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        rows = await self._rows(sa.select(events.c.body).where(events.c.event_id == event_id))
        return orjson.loads(rows[0].body) if rows else None

    async def order_events(self, partner_id: str, order_id: str, limit: int = 500) -> list[dict[str, Any]]:
        """One order's archived events, oldest first (by sequence): its timeline."""
        rows = await self._rows(sa.select(events.c.body).where(
            events.c.partner_id == partner_id, events.c.order_id == order_id
        ).order_by(events.c.sequence.desc(), events.c.occurred_at.desc()).limit(limit))
        return [orjson.loads(row.body) for row in reversed(rows)]

    async def list_events(self, *, partner_id: str | None = None, since: datetime | None = None,
                          limit: int = 1000) -> list[dict[str, Any]]:
        query = sa.select(events.c.body).order_by(events.c.stored_at, events.c.event_id).limit(limit)
        if partner_id:
            query = query.where(events.c.partner_id == partner_id)
        if since:
            query = query.where(events.c.stored_at >= _utc(since))
        return [orjson.loads(row.body) for row in await self._rows(query)]

    # -- deliveries -------------------------------------------------------

    async def delivered_targets(self, event_id: str, channel: str) -> set[str]:
        return (await self.delivered_for(channel, [event_id]))[0]

    async def delivered_for(self, channel: str, event_ids: Sequence[str]) -> list[set[str]]:
        """For each event id, the targets of ``channel`` it was delivered to."""
        rows = await self._rows(self._statements["delivered_for"].params(channel=channel, ids=list(set(event_ids))),
                                hot=True)
        found: dict[str, set[str]] = {event_id: set() for event_id in event_ids}
        for row in rows:
            found[row.event_id].add(row.target)
        return [found[event_id] for event_id in event_ids]

    async def record(self, items: Sequence[Attempt]) -> None:
        """Log attempts and upsert the deliveries they belong to, in one
        transaction. A delivered row is never turned back into a failure; a
        deferral (``waiting``) updates the delivery but is not an attempt."""
        if not items:
            return
        stamp = now()
        attempt_rows = [{"event_id": a.event_id, "channel": a.channel, "target": a.target,
                         "partner_id": a.partner_id, "at": a.at or stamp, "outcome": a.outcome,
                         "status": a.status, "error": a.error, "latency_ms": a.latency_ms,
                         "response": a.response[:RESPONSE_EXCERPT] if a.response else None}
                        for a in items if a.outcome != "waiting"]
        state = {"delivered": "delivered", "retry": "retrying", "dead": "dead", "waiting": "waiting",
                 "skipped": "skipped"}
        latest: dict[tuple[str, str, str], dict[str, Any]] = {}
        for a in items:
            latest[(a.event_id, a.channel, a.target)] = {
                "event_id": a.event_id, "channel": a.channel, "target": a.target,
                "partner_id": a.partner_id, "event_type": a.event_type, "order_id": a.order_id,
                "sequence": a.sequence, "address": a.address, "status": state[a.outcome],
                "attempts": a.attempt if a.outcome != "waiting" else a.attempt - 1,
                "last_status": a.status, "last_error": a.error, "updated_at": a.at or stamp}
        # Rows in key order: two workers upserting overlapping rows take locks in one order.
        await self._run([(self._statements["insert_attempts"], attempt_rows),
                         (self._statements["upsert_deliveries"], [latest[key] for key in sorted(latest)])],
                        hot=True)

    async def order_blocked(self, channel: str, partner_id: str, target: str, order_id: str,
                            sequence: int, stale_after: float) -> str | None:
        """The id of an earlier event of the same order still retrying or
        waiting for this target, if any: ordered delivery waits for it. A row
        not updated for ``stale_after`` seconds belongs to a message that is
        gone (a purged queue) and no longer holds anything up."""
        fresh = now() - timedelta(seconds=stale_after)
        rows = await self._rows(self._statements["order_blocked"].params(
            channel=channel, partner_id=partner_id, target=target, order_id=order_id, sequence=sequence,
            fresh=fresh), hot=True)
        return rows[0].event_id if rows else None

    async def list_deliveries(self, *, event_id: str | None = None, partner_id: str | None = None,
                              channel: str | None = None, status: str | None = None,
                              target: str | None = None, event_type: str | None = None,
                              order_id: str | None = None, since: datetime | None = None,
                              until: datetime | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Deliveries, newest first; ``since``/``until`` bound when each last changed."""
        query = _filtered(sa.select(deliveries).order_by(deliveries.c.updated_at.desc()).limit(limit),
                          deliveries.c.updated_at, since, until, event_id=event_id, partner_id=partner_id,
                          channel=channel, status=status, target=target, event_type=event_type, order_id=order_id)
        return [{**row._asdict(), "updated_at": _aware(row.updated_at)} for row in await self._rows(query)]

    async def list_attempts(self, event_id: str | None = None, channel: str | None = None, *,
                            partner_id: str | None = None, target: str | None = None,
                            outcome: str | None = None, since: datetime | None = None,
                            until: datetime | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Attempts, oldest first for one event, newest first otherwise."""
        query = _filtered(sa.select(attempts).order_by(attempts.c.id if event_id else attempts.c.id.desc())
                          .limit(limit), attempts.c.at, since, until, event_id=event_id, channel=channel,
                          partner_id=partner_id, target=target, outcome=outcome)
        return [{**row._asdict(), "at": _aware(row.at)} for row in await self._rows(query)]

    # -- endpoint health and operator events -----------------------------------

    async def get_failing(self) -> dict[tuple[str, str, str], datetime]:
        rows = await self._rows(sa.select(endpoint_health))
        return {(r.channel, r.partner_id, r.target): _aware(r.failing_since) or now() for r in rows}

    async def mark_failing(self, channel: str, partner_id: str, target: str, since: datetime,
                           error: str) -> datetime | None:
        """Note that a target is failing. Returns when its failing began if it
        was failing already (another process may have noted it first)."""
        key = (endpoint_health.c.channel == channel) & (endpoint_health.c.partner_id == partner_id) \
            & (endpoint_health.c.target == target)
        try:
            async with self._connection(False) as conn:
                inserted = await conn.execute(self._insert(endpoint_health).on_conflict_do_nothing(), {
                    "channel": channel, "partner_id": partner_id, "target": target,
                    "failing_since": since, "last_error": error})
                if inserted.rowcount == 1:
                    return None
                await conn.execute(endpoint_health.update().where(key).values(last_error=error))
                found = (await conn.execute(sa.select(endpoint_health.c.failing_since).where(key))).first()
                return _aware(found.failing_since) if found is not None else since
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def clear_failing(self, channel: str, partner_id: str, target: str) -> datetime | None:
        """Forget that a target was failing; returns since when, if it was."""
        key = (endpoint_health.c.channel == channel) & (endpoint_health.c.partner_id == partner_id) \
            & (endpoint_health.c.target == target)
        try:
            async with self._connection(False) as conn:
                found = (await conn.execute(sa.select(endpoint_health.c.failing_since).where(key))).first()
                deleted = await conn.execute(endpoint_health.delete().where(key))
                # Only the caller that deleted the row reports the recovery.
                return _aware(found.failing_since) if found is not None and deleted.rowcount == 1 else None
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def add_operator_event(self, event_id: str, type_: str, body: dict[str, Any]) -> None:
        await self._run([(operator_events.insert(), [{"id": event_id, "at": now(), "type": type_,
                                                      "body": orjson.dumps(body).decode()}])])

    async def list_operator_events(self, *, unsent: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        """Operator events, oldest first when ``unsent`` (to send), else newest first."""
        query = sa.select(operator_events).limit(limit)
        if unsent:
            query = query.where(operator_events.c.sent_at.is_(None)).order_by(operator_events.c.at)
        else:
            query = query.order_by(operator_events.c.at.desc())
        return [{"id": r.id, "type": r.type, "at": _aware(r.at), "sent_at": _aware(r.sent_at),
                 "body": orjson.loads(r.body)} for r in await self._rows(query)]

    async def mark_operator_event_sent(self, event_id: str) -> None:
        await self._run([(operator_events.update().where(operator_events.c.id == event_id)
                          .values(sent_at=now()), None)])

    async def claim(self, event_id: str, channel: str, target: str, partner_id: str, address: str,
                    stale_after: float) -> str | None:
        """Claim the right to send one message, so concurrent or redelivered
        copies of an event never send it twice. Returns ``None`` when claimed,
        else the delivery's status (``delivered``, or ``sending`` while another
        copy is in flight). A ``sending`` claim older than ``stale_after``
        seconds belongs to a worker that died: it is taken over."""
        stamp = now()
        key = (deliveries.c.event_id == event_id) & (deliveries.c.channel == channel) \
            & (deliveries.c.target == target)
        try:
            async with self._connection(False) as conn:
                inserted = await conn.execute(self._insert(deliveries).on_conflict_do_nothing(), {
                    "event_id": event_id, "channel": channel, "target": target, "partner_id": partner_id,
                    "address": address, "status": "sending", "attempts": 0, "updated_at": stamp})
                if inserted.rowcount == 1:
                    return None
                taken = await conn.execute(deliveries.update().where(key & (
                    deliveries.c.status.not_in(("delivered", "sending"))
                    | ((deliveries.c.status == "sending")
                       & (deliveries.c.updated_at < stamp - timedelta(seconds=stale_after))))
                ).values(status="sending", updated_at=stamp))
                if taken.rowcount == 1:
                    return None
                found = (await conn.execute(sa.select(deliveries.c.status).where(key))).first()
                return str(found.status) if found is not None else "sending"
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def add_provider_message(self, provider: str, message_id: str, event_id: str, channel: str,
                                   target: str) -> None:
        await self._run([(self._insert(provider_messages).on_conflict_do_nothing(), [
            {"provider": provider, "message_id": message_id, "event_id": event_id, "channel": channel,
             "target": target, "rank": 0, "at": now()}])])

    async def sent_message(self, event_id: str, channel: str, target: str) -> str | None:
        """The id a provider gave a message sent under this delivery's current
        ``sending`` claim (noted since it was taken), if any: a message from an
        earlier claim, which may have failed since, does not count."""
        found = await self._rows(sa.select(provider_messages.c.message_id).join(deliveries, (
            (deliveries.c.event_id == provider_messages.c.event_id)
            & (deliveries.c.channel == provider_messages.c.channel)
            & (deliveries.c.target == provider_messages.c.target))).where(
            (provider_messages.c.event_id == event_id) & (provider_messages.c.channel == channel)
            & (provider_messages.c.target == target) & (deliveries.c.status == "sending")
            & (provider_messages.c.at >= deliveries.c.updated_at)).limit(1))
        return str(found[0].message_id) if found else None

    async def provider_status(self, provider: str, message_id: str, status: str,
                              rank: int) -> dict[str, Any] | None:
        """Record a provider's status for a message it accepted, unless a later
        one (a higher ``rank``) is recorded already: callbacks come duplicated
        and out of order. Returns the message's delivery (``event_id``,
        ``channel``, ``target``, ``partner_id``) when it was recorded."""
        key = (provider_messages.c.provider == provider) & (provider_messages.c.message_id == message_id)
        try:
            async with self._connection(False) as conn:
                moved = await conn.execute(provider_messages.update().where(
                    key & (provider_messages.c.rank < rank)).values(rank=rank, at=now()))
                if moved.rowcount != 1:
                    return None
                found = (await conn.execute(sa.select(provider_messages).where(key))).one()
                delivery = (deliveries.c.event_id == found.event_id) & (deliveries.c.channel == found.channel) \
                    & (deliveries.c.target == found.target)
                await conn.execute(deliveries.update().where(delivery).values(provider_status=status[:64]))
                partner = (await conn.execute(sa.select(deliveries.c.partner_id).where(delivery))).first()
                return {"event_id": found.event_id, "channel": found.channel, "target": found.target,
                        "partner_id": partner.partner_id if partner is not None else None}
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    # -- customers: opt-outs and the order's later events ---------------------

    async def undelivered(self, event_id: str, channel: str, target: str, reason: str) -> bool:
        """A delivery the provider accepted and later failed (an SMS the
        carrier refused): logged as dead with the provider's reason, so a
        replay, or another copy of the event, may send it again. Returns
        whether it was logged as delivered until now."""
        try:
            async with self._connection(False) as conn:
                changed = await conn.execute(deliveries.update().where(
                    (deliveries.c.event_id == event_id) & (deliveries.c.channel == channel)
                    & (deliveries.c.target == target) & (deliveries.c.status == "delivered")
                ).values(status="dead", last_error=reason, updated_at=now()))
                return bool(changed.rowcount)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def add_opt_out(self, channel: str, partner_id: str, address: str, reason: str, *,
                          hashed: bool = False) -> None:
        """Record that a customer opted out (``address`` may be given already hashed)."""
        await self._run([(self._insert(opt_outs).on_conflict_do_nothing(), [
            {"channel": channel, "partner_id": partner_id,
             "address_hash": address if hashed else address_hash(address), "reason": reason, "at": now()}])])

    async def opted_out(self, channel: str, partner_id: str, address: str) -> str | None:
        """Why this address opted out of this partner's messages on this channel, if it did."""
        rows = await self._rows(sa.select(opt_outs.c.reason).where(
            opt_outs.c.channel == channel, opt_outs.c.partner_id == partner_id,
            opt_outs.c.address_hash == address_hash(address)))
        return str(rows[0].reason) if rows else None

    async def later_event(self, partner_id: str, order_id: str, sequence: int,
                          event_types: Sequence[str]) -> str | None:
        """An archived event of the order, of one of ``event_types``, later in
        sequence: the DEL that makes an OFD stale."""
        rows = await self._rows(sa.select(events.c.event_id).where(
            events.c.partner_id == partner_id, events.c.order_id == order_id, events.c.sequence > sequence,
            events.c.event_type.in_(list(event_types))).limit(1))
        return str(rows[0].event_id) if rows else None

    # -- partner tokens and signing keys ---------------------------------------

    async def add_partner_token(self, token_hash: str, partner_id: str, name: str) -> None:
        await self._run([(partner_tokens.insert(), [{"token_hash": token_hash, "partner_id": partner_id,
                                                     "name": name, "created_at": now()}])])

    async def list_partner_tokens(self, partner_id: str) -> list[dict[str, Any]]:
        rows = await self._rows(sa.select(partner_tokens).where(partner_tokens.c.partner_id == partner_id)
                                .order_by(partner_tokens.c.created_at))
        return [{"id": r.token_hash[:16], "name": r.name, "created_at": _aware(r.created_at)} for r in rows]

    async def delete_partner_token(self, partner_id: str, token_id: str) -> bool:
        """Revoke the partner's token whose hash starts with ``token_id`` (16 hex digits)."""
        if len(token_id) != 16:
            return False
        found = (partner_tokens.c.partner_id == partner_id) & partner_tokens.c.token_hash.startswith(
            token_id, autoescape=True)
        rows = await self._rows(sa.select(partner_tokens.c.token_hash).where(found))
        await self._run([(partner_tokens.delete().where(found), None)])
        return bool(rows)

    async def partner_for_token(self, token_hash: str) -> str | None:
        rows = await self._rows(sa.select(partner_tokens.c.partner_id)
                                .where(partner_tokens.c.token_hash == token_hash))
        return str(rows[0].partner_id) if rows else None

    async def get_signing_keys(self) -> list[tuple[str, str]]:
        """``(kid, encrypted private key)``, newest first."""
        rows = await self._rows(sa.select(signing_keys).order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid))
        return [(r.kid, r.private_key) for r in rows]

    async def add_signing_key(self, kid: str, private_key: str) -> None:
        await self._run([(self._insert(signing_keys).on_conflict_do_nothing(),
                          [{"kid": kid, "private_key": private_key, "created_at": now()}])])


def attempt_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, success rate, latency percentiles (of attempts that connected)
    and the newest error, from attempts newest first."""
    rows = [row for row in rows if row["outcome"] != "skipped"]  # nothing was sent: not the endpoint's doing
    delivered = sum(1 for row in rows if row["outcome"] == "delivered")
    latencies = sorted(row["latency_ms"] for row in rows if row["latency_ms"] > 0)

    def percentile(p: float) -> float | None:
        if not latencies:
            return None
        return round(float(latencies[min(len(latencies) - 1, math.ceil(p / 100 * len(latencies)) - 1)]), 2)

    last_error = next((row for row in rows if row["outcome"] != "delivered"), None)
    return {
        "attempts": len(rows), "delivered": delivered, "failed": len(rows) - delivered,
        "success_rate": round(delivered / len(rows), 4) if rows else None,
        "latency_ms": {"p50": percentile(50), "p90": percentile(90), "p99": percentile(99)},
        "last_error": {"at": last_error["at"].isoformat(), "error": last_error["error"],
                       "status": last_error["status"]} if last_error else None,
    }


def address_hash(address: str) -> str:
    """A phone number or email address, as the store keeps it: hashed, never in clear."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def _partner(config: str) -> Partner:
    data = orjson.loads(config)
    return Partner(data["id"], data["name"], data.get("branding", {}), data.get("channels", {}))
