"""Deliveries (one event to one target) and the log of their attempts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from shipcast.model.outcomes import Outcome
from shipcast.store.base import RESPONSE_EXCERPT, StoreBase, _aware, _filtered, _utc, now
from shipcast.store.records import Attempt
from shipcast.store.tables import attempts, deliveries, events

#: Where a delivery sits in the log's order: ``(updated_at, event_id, channel, target)``.
DeliveryKey = tuple[datetime, str, str, str]


def delivery_key(row: dict[str, Any]) -> DeliveryKey:
    """The key of a row of :meth:`DeliveryStore.page_deliveries`: the next page starts after it."""
    return row["updated_at"], row["event_id"], row["channel"], row["target"]


class DeliveryStore(StoreBase):

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
                         "response": a.response[:RESPONSE_EXCERPT] if a.response else None,
                         "request": orjson.dumps(a.request).decode() if a.request else None}
                        for a in items if a.outcome != "waiting"]
        latest: dict[tuple[str, str, str], dict[str, Any]] = {}
        for a in items:
            latest[(a.event_id, a.channel, a.target)] = {
                "event_id": a.event_id, "channel": a.channel, "target": a.target,
                "partner_id": a.partner_id, "event_type": a.event_type, "order_id": a.order_id,
                "sequence": a.sequence, "address": a.address, "status": Outcome(a.outcome).status,
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
        return [{**row._asdict(), "at": _aware(row.at), "request": orjson.loads(row.request) if row.request else None}
                for row in await self._rows(query)]

    async def page_deliveries(self, partner_id: str, *, after: DeliveryKey | None = None,
                              event_id: str | None = None, channel: str | None = None,
                              status: str | None = None, target: str | None = None,
                              event_type: str | None = None, order_id: str | None = None,
                              since: datetime | None = None, until: datetime | None = None,
                              channels: Sequence[str] | None = None, masks: Sequence[str] | None = None,
                              limit: int = 25) -> list[dict[str, Any]]:
        """One partner's deliveries, newest first, a page at a time: the next
        page is the rows after the last one's :func:`delivery_key` (keyset,
        not offset), so a page costs the same deep in a large log, and rows
        arriving meanwhile (newer) never repeat a row on the next page nor push
        one off it. A row that changes meanwhile moves up to the newest page.
        ``channels`` narrows to those channels, ``masks`` to rows whose masked
        address is one of them (in any case: an email's mask keeps its case)."""
        d = deliveries.c
        query = _filtered(sa.select(deliveries).order_by(d.updated_at.desc(), d.event_id.desc(), d.channel.desc(),
                                                         d.target.desc()).limit(limit),
                          d.updated_at, since, until, partner_id=partner_id, event_id=event_id, channel=channel,
                          status=status, target=target, event_type=event_type)
        if order_id:
            # A customer channel's claim wrote its row without the order (filled since once an attempt is
            # logged): the archive names the order's events either way.
            query = query.where(sa.or_(d.order_id == order_id, d.event_id.in_(sa.select(events.c.event_id).where(
                events.c.partner_id == partner_id, events.c.order_id == order_id))))
        if channels is not None:
            query = query.where(d.channel.in_(list(channels)))
        if masks is not None:
            query = query.where(sa.func.lower(d.address).in_(sorted({masked.lower() for masked in masks})))
        if after is not None:
            stamp, last_event, last_channel, last_target = after
            at = _utc(stamp)
            # The plain bound first: the index on (partner_id, updated_at) starts the scan at the cursor
            # (without it, the OR below makes a deep page read every newer row, as OFFSET does).
            query = query.where(d.updated_at <= at)
            query = query.where(sa.or_(d.updated_at < at, sa.and_(d.updated_at == at, sa.or_(
                d.event_id < last_event, sa.and_(d.event_id == last_event, sa.or_(
                    d.channel < last_channel, sa.and_(d.channel == last_channel, d.target < last_target)))))))
        return [{**row._asdict(), "updated_at": _aware(row.updated_at)} for row in await self._rows(query)]

    async def delivery_counts(self, partner_id: str, since: datetime) -> dict[str, int]:
        """How many of a partner's deliveries last changed since ``since``, by status."""
        return (await self.count_deliveries(since=since, partner_id=partner_id)).get(partner_id, {})

    async def attempted_targets(self, partner_id: str, since: datetime) -> list[tuple[str, str]]:
        """Every ``(channel, target)`` of a partner's attempts since ``since``."""
        a = attempts.c
        rows = await self._rows(sa.select(a.channel, a.target).where(a.partner_id == partner_id, a.at >= _utc(since))
                                .group_by(a.channel, a.target).order_by(a.channel, a.target))
        return [(row.channel, row.target) for row in rows]

    async def count_deliveries(self, *, since: datetime | None = None, status: str | None = None,
                               partner_id: str | None = None) -> dict[str, dict[str, int]]:
        """How many deliveries each partner has in each status, of those last
        changed since ``since`` (all when ``None``): ``{partner: {status: n}}``."""
        query = _filtered(sa.select(deliveries.c.partner_id, deliveries.c.status, sa.func.count().label("n"))
                          .group_by(deliveries.c.partner_id, deliveries.c.status),
                          deliveries.c.updated_at, since, None, status=status, partner_id=partner_id)
        counts: dict[str, dict[str, int]] = {}
        for row in await self._rows(query):
            counts.setdefault(row.partner_id, {})[row.status] = int(row.n)
        return counts

    # -- endpoint health and operator events -----------------------------------
