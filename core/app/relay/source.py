"""The outbox table in the OMS's database: the queries the relay, ``shipcast
relay status`` and the portal's Relay page make, and the lock that lets one
relay of several be active."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from shipcast.app.relay.ddl import checked_table, dialect_of
from shipcast.app.relay.rows import ERROR_CHARS, OutboxRow
from shipcast.exceptions import ConfigError

#: What a lost or unreachable outbox database raises through SQLAlchemy.
SOURCE_ERRORS = (sa.exc.SQLAlchemyError, OSError, TimeoutError)


@dataclass(frozen=True)
class OutboxStats:
    """How the outbox stands: rows pending, the oldest pending one's age in
    seconds (``None`` when none is), rows moved aside."""

    depth: int
    oldest_age: float | None
    failed: int


class OutboxSource:
    """The outbox ``table`` at ``url`` (a SQLAlchemy async URL).

    Connections are not pooled: the relay holds one for as long as it is
    active (its lock lives and dies with it), and a command opens one and
    closes it. Every statement commits on its own (autocommit), so a LISTEN
    on the relay's connection is never held back by an open transaction.
    """

    def __init__(self, url: str, table: str) -> None:
        self.dialect = dialect_of(url)
        self.table_name = checked_table(table)
        try:
            self.database = make_url(url).database or ""
            self.engine: AsyncEngine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        except (ArgumentError, ImportError, ValueError) as exc:
            raise ConfigError(f"SHIPCAST_RELAY_DATABASE_URL: {exc}") from None
        self.table = sa.table(
            table, sa.column("id", sa.BigInteger), sa.column("event_id", sa.String),
            sa.column("partner_id", sa.String), sa.column("order_id", sa.String), sa.column("payload", sa.Text),
            sa.column("created_at", sa.DateTime(timezone=True)), sa.column("failed_at", sa.DateTime(timezone=True)),
            sa.column("error", sa.Text))

    def connect(self) -> Any:
        """A new connection (``async with source.connect() as conn``)."""
        return self.engine.connect()

    async def close(self) -> None:
        await self.engine.dispose()

    async def prepare(self, conn: AsyncConnection) -> None:
        """Make ``conn`` the relay's: on PostgreSQL its commits (the deletes of
        published rows, rows moved aside) do not wait for the WAL to reach the
        disk, so the relay adds no flushes of its own to the OMS's database,
        whose commits would wait behind them. A database crash may undo the
        last moment's deletes: those rows are published again, with the same
        event ids, which consumers deduplicate. The OMS's own commits, and the
        rows it writes, keep their durability."""
        if self.dialect == "postgresql":
            await conn.execute(sa.text("SET synchronous_commit TO off"))

    # -- the lock ---------------------------------------------------------------

    @property
    def lock_name(self) -> str:
        """The lock's name: one per database and table (MySQL's are server-wide, at most 64 characters)."""
        return f"shipcast_relay:{self.database}:{self.table_name}"[:64]

    async def try_lock(self, conn: AsyncConnection) -> bool:
        """Take the relay's lock on ``conn`` if no other session holds it. It is
        held until ``conn`` closes, or drops: a relay killed releases it."""
        if self.dialect == "postgresql":
            key = int.from_bytes(hashlib.blake2b(self.lock_name.encode(), digest_size=8).digest(), "big", signed=True)
            taken = await conn.scalar(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
        else:
            taken = await conn.scalar(sa.text("SELECT GET_LOCK(:name, 0)"), {"name": self.lock_name})
        return bool(taken)

    async def listen(self, conn: AsyncConnection, wake: Callable[[], None]) -> bool:
        """On PostgreSQL, call ``wake`` on every NOTIFY of the table's channel
        (the trigger's, at each commit that inserted rows); ``False`` elsewhere."""
        if self.dialect != "postgresql":
            return False
        raw = await conn.get_raw_connection()
        await raw.driver_connection.add_listener(self.table_name, lambda *_: wake())  # type: ignore[union-attr]
        return True

    # -- the rows ---------------------------------------------------------------

    async def pending(self, conn: AsyncConnection, limit: int) -> list[OutboxRow]:
        """The first ``limit`` pending rows, in id order (the OMS's commit order per order)."""
        t = self.table
        result = await conn.execute(sa.select(t.c.id, t.c.event_id, t.c.partner_id, t.c.order_id, t.c.payload)
                                    .where(t.c.failed_at.is_(None)).order_by(t.c.id).limit(limit))
        return [OutboxRow(*row) for row in result]

    async def delete(self, conn: AsyncConnection, ids: Sequence[int]) -> None:
        """Remove published rows."""
        if ids:
            await conn.execute(sa.delete(self.table).where(self.table.c.id.in_(list(ids))))

    async def fail(self, conn: AsyncConnection, row_id: int, error: str) -> None:
        """Move a row aside: pending no more, kept with why for the operator."""
        t = self.table
        await conn.execute(sa.update(t).where(t.c.id == row_id)
                           .values(failed_at=sa.func.current_timestamp(), error=error[:ERROR_CHARS]))

    async def stats(self, conn: AsyncConnection) -> OutboxStats:
        age = ("EXTRACT(EPOCH FROM now() - MIN(CASE WHEN failed_at IS NULL THEN created_at END))"
               if self.dialect == "postgresql" else
               "TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN failed_at IS NULL THEN created_at END), NOW(6)) / 1000000")
        row = (await conn.execute(sa.text(
            f"SELECT SUM(CASE WHEN failed_at IS NULL THEN 1 ELSE 0 END), {age}, COUNT(failed_at) "
            f"FROM {self.table_name}"))).one()
        return OutboxStats(int(row[0] or 0), None if row[1] is None else max(0.0, float(row[1])), int(row[2] or 0))

    async def failed_rows(self, conn: AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
        """Rows moved aside, oldest first: id, event_id, partner_id, order_id, error, failed_at, created_at."""
        t = self.table
        result = await conn.execute(
            sa.select(t.c.id, t.c.event_id, t.c.partner_id, t.c.order_id, t.c.error, t.c.failed_at, t.c.created_at)
            .where(t.c.failed_at.is_not(None)).order_by(t.c.id).limit(limit))
        return [dict(row._mapping) for row in result]

    async def retry(self, conn: AsyncConnection, ids: Sequence[int] | None) -> list[int]:
        """Make failed rows pending again (``ids``, or all when ``None``); the ids retried."""
        return await self._change_failed(conn, ids, lambda where: sa.update(self.table).where(where)
                                         .values(failed_at=None, error=None))

    async def drop(self, conn: AsyncConnection, ids: Sequence[int]) -> list[int]:
        """Delete failed rows (pending rows are never deleted by hand); the ids deleted."""
        return await self._change_failed(conn, ids, lambda where: sa.delete(self.table).where(where))

    async def _change_failed(self, conn: AsyncConnection, ids: Sequence[int] | None,
                             statement: Callable[[Any], Any]) -> list[int]:
        t = self.table
        where: Any = t.c.failed_at.is_not(None)
        if ids is not None:
            where = sa.and_(where, t.c.id.in_(list(ids)))
        found = [row_id for (row_id,) in await conn.execute(sa.select(t.c.id).where(where).order_by(t.c.id))]
        if found:
            await conn.execute(statement(sa.and_(t.c.failed_at.is_not(None), t.c.id.in_(found))))
        return found


def moment(value: datetime | None) -> str | None:
    """A failed row's time as shown: ISO 8601, to the second."""
    return None if value is None else value.replace(microsecond=0).isoformat(sep=" ")
