"""The event archive: every event, for replay and the order timeline."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from shipcast.exceptions import StoreError
from shipcast.model.envelope import Event
from shipcast.store.base import StoreBase, _aware, _utc, now
from shipcast.store.tables import events


#: Event ids a process remembers having stored (about 1 MB), each for a minute:
#: the other store channel's copy of it comes seconds behind. A copy later than
#: that is inserted again, and the insert leaves the row as it is. (A minute is
#: well inside any retention: another process's prune never deletes a row
#: this process remembers storing.)
RECENT_EVENTS = 8_192
RECENT_SECONDS = 60.0


class EventStore(StoreBase):

    async def save_events(self, items: Sequence[Event]) -> None:
        """Store events; an event already stored is left as it is.

        The archive and the tracking channel each store every event, and in
        one process their copies of it come at about the same time: an event
        this process stored in the last minute, or is storing now, is not
        written again (the second waits for the first's insert instead).
        """
        stored, storing = self._stored_events, self._storing_events
        since = time.monotonic() - RECENT_SECONDS
        fresh: list[Event] = []
        waits: set[asyncio.Future[None]] = set()
        for event in items:
            if stored.get(event.event_id, -math.inf) > since:
                continue
            pending = storing.get(event.event_id)
            if pending is not None:
                waits.add(pending)
            else:
                fresh.append(event)
        if fresh:
            stamp = now()
            rows = [{"event_id": e.event_id, "partner_id": e.partner_id, "event_type": e.event_type,
                     "order_id": e.order.order_id, "sequence": e.sequence, "occurred_at": e.occurred_at,
                     "stored_at": stamp, "body": e.model_dump_json()} for e in fresh]
            insert: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for event in fresh:
                storing[event.event_id] = insert
            try:
                await self._run([(self._statements["insert_events"], rows)], hot=True)
            except BaseException as exc:
                insert.set_exception(exc if isinstance(exc, Exception) else StoreError("cancelled"))
                insert.exception()  # those waiting on it raise it; nobody waiting is no warning
                raise
            else:
                insert.set_result(None)
                done = time.monotonic()
                for event in fresh:
                    stored[event.event_id] = done
                    stored.move_to_end(event.event_id)
                while len(stored) > RECENT_EVENTS:
                    stored.popitem(last=False)
            finally:
                for event in fresh:
                    storing.pop(event.event_id, None)
        for wait in waits:
            # Shielded: a waiter cancelled (its worker stopping) must not cancel the insert others wait on.
            await asyncio.shield(wait)

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        rows = await self._rows(sa.select(events.c.body).where(events.c.event_id == event_id))
        return orjson.loads(rows[0].body) if rows else None

    async def partner_events(self, partner_id: str, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Those of ``event_ids`` the archive holds for ``partner_id``, by id."""
        if not event_ids:
            return {}
        rows = await self._rows(sa.select(events.c.event_id, events.c.body).where(
            events.c.partner_id == partner_id, events.c.event_id.in_(list(set(event_ids)))))
        return {row.event_id: orjson.loads(row.body) for row in rows}

    async def event_stored_at(self, event_id: str) -> datetime | None:
        """When the archive stored an event, or ``None``."""
        rows = await self._rows(sa.select(events.c.stored_at).where(events.c.event_id == event_id))
        return _aware(rows[0].stored_at) if rows else None

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

    async def later_event(self, partner_id: str, order_id: str, sequence: int,
                          event_types: Sequence[str]) -> str | None:
        """An archived event of the order, of one of ``event_types``, later in
        sequence: the DEL that makes an OFD stale."""
        rows = await self._rows(sa.select(events.c.event_id).where(
            events.c.partner_id == partner_id, events.c.order_id == order_id, events.c.sequence > sequence,
            events.c.event_type.in_(list(event_types))).limit(1))
        return str(rows[0].event_id) if rows else None

    # -- partner tokens and signing keys ---------------------------------------
