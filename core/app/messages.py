"""A partner's messages as the partner API and the portal read them and send
them again: one message with its deliveries and attempts; one message sent
again (resend), every one that failed since a time (recover), or every one
that failed (retry all failed). Both call these same functions: each sending
draws on the partner's quota of messages sent again and writes its audit
record.

The quota: the shared queues serve every partner, so none may fill them. A
token bucket per partner, refilled steadily over the hour, in each API
process (test sends draw on it too); past it, 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import HTTPException, Request

from shipcast.app.audit import Actor, record
from shipcast.app.services import Services
from shipcast.delivery.replay import matching_deliveries, replay_rows
from shipcast.store import Store

#: The most messages one recovery (or retry of all failed) looks at; the rest wait for the next.
RECOVER_LIMIT = 10_000


async def message(store: Store, partner_id: str, event_id: str) -> dict[str, Any] | None:
    """One of the partner's events as sent, with its deliveries and every
    attempt (oldest first); ``None`` when the partner has no such message.
    Event ids are the publishers': another partner's event may share this
    one's id, and is never shown."""
    if "\x00" in event_id:  # no id holds one (and PostgreSQL would refuse the query)
        return None
    event = await store.get_event(event_id)
    if event is not None and event.get("partner_id") != partner_id:
        event = None
    rows = await store.list_deliveries(event_id=event_id, partner_id=partner_id)
    if event is None and not rows:
        return None
    return {"event": event, "deliveries": rows, "attempts": await store.list_attempts(event_id, partner_id=partner_id),
            # Without a delivery, how long the event has waited for one (a type no channel takes never gets one).
            "stored_at": await store.event_stored_at(event_id) if event is not None and not rows else None}


class Quota:
    """``per_hour`` messages per partner, refilled continuously."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self.rate = per_hour / 3600.0
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, partner_id: str, wanted: int) -> int:
        """Take up to ``wanted`` messages' worth; returns how many were granted.

        :raises HTTPException: 429 with ``Retry-After`` when not even one is left.
        """
        now = time.monotonic()
        tokens, at = self._buckets.get(partner_id, (float(self.per_hour), now))
        tokens = min(float(self.per_hour), tokens + (now - at) * self.rate)
        granted = min(wanted, math.floor(tokens))
        if granted < 1:
            self._buckets[partner_id] = (tokens, now)
            wait = math.ceil((1 - tokens) / self.rate)
            raise HTTPException(429, f"partner {partner_id!r} has had {self.per_hour} messages sent again "
                                     f"in the last hour (SHIPCAST_PARTNER_RESEND_QUOTA); try again in {wait}s",
                                headers={"Retry-After": str(wait)})
        self._buckets[partner_id] = (tokens - granted, now)
        return granted

    def give_back(self, partner_id: str, unused: int) -> None:
        """Return what was granted and not sent (a recover that found fewer)."""
        if unused > 0 and partner_id in self._buckets:
            tokens, at = self._buckets[partner_id]
            self._buckets[partner_id] = (min(float(self.per_hour), tokens + unused), at)


def resend_quota(request: Request) -> Quota:
    """The API process's quota on messages sent again."""
    quota: Quota = request.app.state.resend_quota
    return quota


async def resend(services: Services, quota: Quota, partner_id: str, event_id: str, actor: Actor, *,
                 endpoint: str | None = None, channel: str | None = None) -> int | None:
    """Send one message again to each of its targets (or one endpoint, or one
    channel's), even if delivered. Returns how many were sent again, or
    ``None`` when the partner has no such delivery.

    :raises HTTPException: 429, the partner's quota is spent.
    """
    rows = await matching_deliveries(services, event_id=event_id, partner_id=partner_id, target=endpoint,
                                     channel=channel)
    if not rows:
        return None
    granted = quota.take(partner_id, len(rows))
    count = await replay_rows(services, rows[:granted])
    quota.give_back(partner_id, granted - count)
    await record(services, actor, "message.resend", partner_id=partner_id, subject=event_id,
                 after={"endpoint": endpoint, "channel": channel, "resent": count})
    return count


@dataclass(frozen=True)
class Recovered:
    """What a recovery sent again, and how many more matched beyond the quota."""

    recovered: int
    remaining: int


async def recover(services: Services, quota: Quota, partner_id: str, actor: Actor, *,
                  since: datetime | None, until: datetime | None = None, endpoint: str | None = None,
                  channel: str | None = None, limit: int = RECOVER_LIMIT) -> Recovered:
    """Send again every message of the partner that failed (parked) since
    ``since`` (``None``: every one that failed, "retry all failed"), as many
    as its quota allows.

    :raises HTTPException: 429, the partner's quota is spent.
    """
    rows = await matching_deliveries(services, partner_id=partner_id, status="dead", since=since, until=until,
                                     target=endpoint, channel=channel, limit=limit)
    granted = quota.take(partner_id, len(rows)) if rows else 0
    count = await replay_rows(services, rows[:granted])
    quota.give_back(partner_id, granted - count)
    after = {"until": until, "endpoint": endpoint, "channel": channel, "recovered": count}
    if since is None:
        await record(services, actor, "messages.retry_failed", partner_id=partner_id, subject="every failed message",
                     after=after)
    else:
        await record(services, actor, "messages.recover", partner_id=partner_id, subject=since.isoformat(),
                     after=after)
    return Recovered(count, len(rows) - granted)
