"""Writing events to the outbox table on the caller's own connection, inside
the caller's own transaction: the row commits or rolls back with the order's
status change, and the relay publishes what committed. Nothing here commits,
rolls back or opens a transaction.

The table (``shipcast relay sql`` prints its DDL) has ``id``, ``event_id``,
``partner_id``, ``order_id``, ``payload``, ``created_at``, ``failed_at`` and
``error``; the OMS writes the four in the middle, the rest are the relay's.

A driver's own errors reach the caller as they are: the transaction is the
caller's, and so is the handling of its database's errors.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Sequence
from typing import Any

from shipcast.client.envelopes import Draft
from shipcast.exceptions import ConfigError

DEFAULT_TABLE = "shipcast_outbox"
#: What the OMS writes; every other column is the relay's.
COLUMNS = ("event_id", "partner_id", "order_id", "payload")

#: A table name goes into the SQL as written, so only a plain (optionally
#: schema-qualified) identifier is taken.
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")

#: PEP 249's placeholder styles; the named ones take a dict of parameters, the others a tuple.
_STYLES = ("qmark", "numeric", "named", "format", "pyformat")
_NAMED = {"named", "pyformat"}
#: Drivers whose module declares no ``paramstyle``: Django's cursors take
#: ``%s`` whatever the database, and the async MySQL drivers PyMySQL's styles.
_KNOWN_STYLES = {"django": "format", "aiomysql": "pyformat", "asyncmy": "format"}


def write_outbox(target: Any, *events: Draft, table: str = DEFAULT_TABLE, paramstyle: str | None = None) -> None:
    """Add ``events`` to the outbox in the transaction ``target`` is in.

    :param target: a SQLAlchemy ``Session`` or ``Connection``, or a DB-API 2.0
        connection or cursor (psycopg, PyMySQL, sqlite3, Django's
        ``connection``: any driver whose module declares its ``paramstyle``).
    :param table: the outbox table, ``shipcast_outbox`` by default.
    :param paramstyle: the DB-API driver's placeholder style, when its module
        does not declare one.
    :raises ConfigError: naming ``table`` or ``paramstyle`` when either is unusable.
    """
    rows = _rows(events)
    if not rows:
        return
    kind = _kind(target)
    if kind in ("sqlalchemy-async", "asyncpg"):
        raise TypeError(f"{type(target).__name__} is asynchronous: await write_outbox_async(...)")
    if kind == "sqlalchemy":
        target.execute(_insert(table), rows)
        return
    sql, params = _dbapi(target, table, rows, paramstyle)
    cursor = target.cursor() if hasattr(target, "cursor") else target
    try:
        cursor.executemany(sql, params)
    finally:
        if cursor is not target:
            cursor.close()


async def write_outbox_async(target: Any, *events: Draft, table: str = DEFAULT_TABLE,
                             paramstyle: str | None = None) -> None:
    """Add ``events`` to the outbox in the transaction ``target`` is in.

    :param target: a SQLAlchemy ``AsyncSession`` or ``AsyncConnection``, an
        asyncpg connection, or an async DB-API connection or cursor
        (psycopg's ``AsyncConnection``, aiomysql).
    :raises ConfigError: naming ``table`` or ``paramstyle`` when either is unusable.
    """
    rows = _rows(events)
    if not rows:
        return
    kind = _kind(target)
    if kind == "sqlalchemy":
        raise TypeError(f"{type(target).__name__} is synchronous: call write_outbox(...)")
    if kind == "sqlalchemy-async":
        await target.execute(_insert(table), rows)
        return
    if kind == "asyncpg":
        placeholders = ", ".join(f"${index}" for index in range(1, len(COLUMNS) + 1))
        await target.executemany(f"INSERT INTO {_table(table)} ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                                 [tuple(row.values()) for row in rows])
        return
    sql, params = _dbapi(target, table, rows, paramstyle)
    cursor = target.cursor() if hasattr(target, "cursor") else target
    if inspect.isawaitable(cursor):  # aiomysql's connection hands its cursor out through a coroutine
        cursor = await cursor
    try:
        await cursor.executemany(sql, params)
    finally:
        if cursor is not target:
            closed = cursor.close()
            if inspect.isawaitable(closed):
                await closed


def _rows(events: Sequence[Draft]) -> list[dict[str, str]]:
    for index, event in enumerate(events):
        if not isinstance(event, Draft):
            raise TypeError(f"events[{index}] is a {type(event).__name__}: build events with "
                            "shipcast.client.new_event or event_from, which validate them")
    return [{"event_id": event.event_id, "partner_id": event.partner_id, "order_id": event.order_id,
             "payload": event.payload} for event in events]


def _table(table: str) -> str:
    if not _TABLE_NAME.match(table):
        raise ConfigError(f"table {table!r}: must be a plain SQL name (letters, digits, _; "
                          "optionally schema.table)", {"table": [f"must match {_TABLE_NAME.pattern}"]})
    return table


def _insert(table: str) -> Any:
    import sqlalchemy as sa

    return sa.text(f"INSERT INTO {_table(table)} ({', '.join(COLUMNS)}) "
                   f"VALUES ({', '.join(':' + column for column in COLUMNS)})")


def _dbapi(target: Any, table: str, rows: list[dict[str, str]],
           paramstyle: str | None) -> tuple[str, list[dict[str, str]] | list[tuple[str, ...]]]:
    """The statement and parameters in the driver's own placeholder style."""
    style = paramstyle or _paramstyle_of(target)
    if style not in _STYLES:
        raise ConfigError(f"paramstyle {style!r}: one of {', '.join(_STYLES)}",
                          {"paramstyle": [f"unknown style {style!r}"]})
    placeholders = ", ".join(_placeholder(style, index, column) for index, column in enumerate(COLUMNS, 1))
    sql = f"INSERT INTO {_table(table)} ({', '.join(COLUMNS)}) VALUES ({placeholders})"
    if style in _NAMED:
        return sql, rows
    return sql, [tuple(row.values()) for row in rows]


def _placeholder(style: str, index: int, column: str) -> str:
    return {"qmark": "?", "numeric": f":{index}", "named": f":{column}", "format": "%s",
            "pyformat": f"%({column})s"}[style]


def _paramstyle_of(target: Any) -> str:
    """The ``paramstyle`` PEP 249 has each driver module declare, found from
    the package of the connection's (or cursor's) class or of a class it
    derives from."""
    for root in _roots(target):
        style = _KNOWN_STYLES.get(root) or getattr(sys.modules.get(root), "paramstyle", None)
        if isinstance(style, str):
            return style
    raise ConfigError(f"paramstyle: {type(target).__module__}.{type(target).__name__} is no DB-API "
                      "connection or cursor whose module declares one; pass paramstyle=",
                      {"paramstyle": ["not found: pass it"]})


def _roots(target: Any) -> list[str]:
    """The top-level packages of ``target``'s class and of those it derives from."""
    return [cls.__module__.partition(".")[0] for cls in type(target).__mro__]


def _kind(target: Any) -> str:
    """``sqlalchemy``, ``sqlalchemy-async``, ``asyncpg`` or ``dbapi``. SQLAlchemy
    and asyncpg are imported only for a target of theirs, so an OMS on Django
    or psycopg does not load them. An engine or a pool is refused: its
    statements would run outside the caller's transaction.

    :raises TypeError: for an engine, a pool or another object of theirs.
    """
    roots = _roots(target)
    if "asyncpg" in roots:
        import asyncpg

        if isinstance(target, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
            return "asyncpg"
    elif "sqlalchemy" in roots:
        from sqlalchemy import Connection, orm
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session

        if isinstance(target, AsyncSession | AsyncConnection | async_scoped_session):
            return "sqlalchemy-async"
        if isinstance(target, orm.Session | orm.scoped_session | Connection):
            return "sqlalchemy"
    else:
        return "dbapi"
    raise TypeError(f"{type(target).__name__}: pass the connection (or session) your transaction is on, "
                    "not an engine or a pool: the row must commit or roll back with your own change")
