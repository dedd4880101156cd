"""The development outbox: what customers would have been sent when no
provider is configured, and what the development webhook receiver got.
Kept as it would have gone out (full addresses: this is for development),
each field cut to its bound, pruned with the attempt log."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from shipcast.exceptions import StoreError
from shipcast.store.base import StoreBase, _aware, _utc, now
from shipcast.store.tables import outbox

#: The most characters kept of a message's text and of an email's HTML part.
MAX_TEXT = 64 * 1024
MAX_HTML = 256 * 1024
#: The columns a listing shows (an email's HTML part only on its own page).
LISTED = [column for column in outbox.columns if column.name != "html"]


@dataclass(frozen=True)
class OutboxMessage:
    """One message kept instead of sent (or one webhook received)."""

    channel: str
    partner_id: str
    recipient: str
    text: str
    event_id: str | None = None
    event_type: str | None = None
    order_id: str | None = None
    subject: str | None = None
    html: str | None = None
    content_sid: str | None = None
    variables: str | None = None
    verified: bool | None = None
    detail: str | None = None


def _bounded(message: OutboxMessage) -> dict[str, Any]:
    """The row: every string cut to its column's length (or the text's and HTML's bounds)."""
    row = asdict(message)
    for name, value in row.items():
        if isinstance(value, str):
            length = {"text": MAX_TEXT, "html": MAX_HTML, "variables": MAX_TEXT}.get(
                name, getattr(outbox.c[name].type, "length", None))
            row[name] = value[:length] if length else value
    return row


def _shown(row: Any) -> dict[str, Any]:
    return {**row, "at": _aware(row["at"])}


class OutboxStore(StoreBase):

    async def add_outbox(self, message: OutboxMessage) -> int:
        """Keep ``message``; returns its number in the outbox."""
        try:
            async with self._connection(False) as conn:
                result = await conn.execute(outbox.insert().values(at=now(), **_bounded(message)))
                key = result.inserted_primary_key
                assert key is not None
                return int(key[0])
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def list_outbox(self, *, partner_id: str | None = None, channel: str | None = None,
                          limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
        """Messages kept, newest first (without an email's HTML part); ``before``: older than that number."""
        query = sa.select(*LISTED).order_by(outbox.c.id.desc()).limit(limit)
        if partner_id:
            query = query.where(outbox.c.partner_id == partner_id)
        if channel:
            query = query.where(outbox.c.channel == channel)
        if before is not None:
            query = query.where(outbox.c.id < before)
        return [_shown(row._mapping) for row in await self._rows(query)]

    async def outbox_message(self, message_id: int) -> dict[str, Any] | None:
        """One message kept, whole."""
        found = await self._rows(sa.select(outbox).where(outbox.c.id == message_id))
        return _shown(found[0]._mapping) if found else None

    async def prune_outbox(self, before: datetime, batch: int, *, dry_run: bool = False) -> int:
        """Delete up to ``batch`` messages kept before ``before`` (with
        ``dry_run``: count every one that would go)."""
        return await self._delete_some(outbox, outbox.c.at < _utc(before), batch, dry_run=dry_run)
