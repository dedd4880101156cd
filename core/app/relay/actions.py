"""What an operator does with the outbox, from the command line or the
portal's Relay page alike: look at it, retry or delete failed rows (audited)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shipcast.app.audit import Actor, record
from shipcast.app.relay.source import OutboxSource, OutboxStats
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError
from shipcast.settings import Settings

#: Failed rows shown at most (``relay status``, the Relay page).
SHOWN = 100


def relay_source(settings: Settings) -> OutboxSource:
    """The outbox ``SHIPCAST_RELAY_*`` name.

    :raises ConfigError: ``SHIPCAST_RELAY_DATABASE_URL`` is unset or not one the relay reads.
    """
    if not settings.relay_database_url:
        raise ConfigError("SHIPCAST_RELAY_DATABASE_URL is not set: it names the OMS database holding the outbox")
    return OutboxSource(settings.relay_database_url, settings.relay_table)


async def overview(source: OutboxSource, limit: int = SHOWN) -> tuple[OutboxStats, list[dict[str, Any]]]:
    """The outbox's depth, oldest age and failed count, and its failed rows (at most ``limit``)."""
    async with source.connect() as conn:
        return await source.stats(conn), await source.failed_rows(conn, limit)


async def retry_failed(services: Services, source: OutboxSource, actor: Actor,
                       ids: Sequence[int] | None) -> list[int]:
    """Make failed rows (``ids``, or all) pending again: the relay publishes
    them next, after the rows before them. Audited; the ids retried."""
    async with source.connect() as conn:
        done = await source.retry(conn, ids)
    if done:
        await record(services, actor, "relay.retry", partner_id=None, subject=source.table_name,
                     after={"ids": done})
    return done


async def delete_failed(services: Services, source: OutboxSource, actor: Actor, ids: Sequence[int]) -> list[int]:
    """Delete failed rows for good (never pending ones). Audited; the ids deleted."""
    if not ids:
        raise ConfigError("ids: name the failed rows to delete")
    async with source.connect() as conn:
        done = await source.drop(conn, ids)
    if done:
        await record(services, actor, "relay.delete", partner_id=None, subject=source.table_name,
                     before={"ids": done})
    return done
