"""The store's engine and connections, which every part of it shares.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) is used at
scale. Both run the same statements; only upserts differ by dialect.
"""


from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shipcast.exceptions import ConfigError, StoreError
from shipcast.security.identifiers import Identifiers
from shipcast.store.tables import attempts, deliveries, events, metadata

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



def _no_keys() -> list[bytes]:
    raise ConfigError("this store was opened without keys for customer identifiers: "
                      "open it with Store(url, identifiers=shipcast.security.links.identifiers(settings))")


class StoreBase:
    """Async access to the database named by ``SHIPCAST_DATABASE_URL``: its
    engine, connections and the hot statements."""

    def __init__(self, url: str, identifiers: Identifiers | None = None) -> None:
        self.url = url
        #: How customers' addresses are keyed before they are stored.
        self.identifiers = identifiers or Identifiers(_no_keys)
        self.engine: AsyncEngine | None = None
        self._held: AsyncConnection | None = None
        self._held_lock = asyncio.Lock()
        self._statements: dict[str, Any] = {}
        #: Events this process stored lately, and those being stored now (each
        #: to the insert's future): see :meth:`EventStore.save_events`.
        self._stored_events: OrderedDict[str, float] = OrderedDict()
        self._storing_events: dict[str, asyncio.Future[None]] = {}

    async def open(self) -> Self:
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
                    # A customer channel's claim made the row without them: filled once its attempt is logged.
                    "event_type": sa.func.coalesce(deliveries.c.event_type, upsert.excluded.event_type),
                    "order_id": sa.func.coalesce(deliveries.c.order_id, upsert.excluded.order_id),
                    "sequence": sa.func.coalesce(deliveries.c.sequence, upsert.excluded.sequence),
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

    async def _total(self, table: sa.Table, where: Any) -> int:
        return int((await self._rows(sa.select(sa.func.count()).select_from(table).where(where)))[0][0])

    async def _delete_some(self, table: sa.Table, where: Any, batch: int, *, dry_run: bool) -> int:
        """Delete up to ``batch`` rows of ``table`` (keyed by ``id``) that match
        ``where``; with ``dry_run``, count every one that would go instead."""
        if dry_run:
            return await self._total(table, where)
        found = [row.id for row in await self._rows(sa.select(table.c.id).where(where).limit(batch))]
        if found:
            await self._run([(table.delete().where(table.c.id.in_(found)), None)])
        return len(found)

    async def ping(self) -> None:
        """One round trip to the database. :raises StoreError: it is unreachable."""
        await self._rows(sa.select(sa.literal(1)))

    # -- partners ---------------------------------------------------------
