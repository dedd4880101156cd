"""Send logged deliveries again, from the archive, through the normal queues."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from shipcast import tracing
from shipcast.amqp.headers import event_message, resend_headers
from shipcast.amqp.topology import QUEUE_PREFIX
from shipcast.model.envelope import parse_event
from shipcast.plugin.context import ChannelContext


async def matching_deliveries(services: ChannelContext, *, event_id: str | None = None, partner_id: str | None = None,
                              channel: str | None = None, status: str | None = None, target: str | None = None,
                              event_type: str | None = None, order_id: str | None = None,
                              since: datetime | None = None, until: datetime | None = None,
                              limit: int = 1000) -> list[dict[str, Any]]:
    """The logged deliveries a replay would send, each order in sequence, so
    an ordered endpoint gets them in order."""
    rows = await services.store.list_deliveries(event_id=event_id, partner_id=partner_id, channel=channel,
                                                status=status, target=target, event_type=event_type,
                                                order_id=order_id, since=since, until=until, limit=limit)
    rows.sort(key=lambda row: (row["order_id"] or "", row["sequence"] or 0, row["updated_at"]))
    return rows


async def replay_rows(services: ChannelContext, rows: Sequence[dict[str, Any]],
                      progress: Callable[[int], None] | None = None) -> int:
    """Republish each delivery to its channel's work queue, for its target
    only, marked to be sent even if it was delivered before (and whatever the
    target's event filter now says). Returns how many were replayed;
    ``progress`` is told of each row.

    When tracing is on, each is a trace of its own (the archive keeps no
    trace context), which its retries join."""
    replayed = 0
    for row in rows:
        body = await services.store.get_event(row["event_id"])
        # Event ids are the publisher's: never replay another partner's event that shares one.
        if body is not None and body.get("partner_id") == row["partner_id"]:
            event = parse_event(body, services.registry.event_types)
            queue = f"{QUEUE_PREFIX}{row['channel']}"
            with tracing.sent_again(queue, "resend", event.event_id, {
                    **tracing.event_attributes(event), tracing.CHANNEL: row["channel"],
                    tracing.TARGET: row["target"]}):
                message = event_message(event, headers=resend_headers(row["target"]))
                await services.broker.publish(message, queue, exchange="")
            replayed += 1
        if progress is not None:
            progress(1)
    return replayed


async def replay_deliveries(services: ChannelContext, **filters: Any) -> int:
    """Replay every delivery matching the filters of :func:`matching_deliveries`."""
    return await replay_rows(services, await matching_deliveries(services, **filters))
