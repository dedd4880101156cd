"""Send logged deliveries again, from the archive, through the normal queues."""

from __future__ import annotations

from .broker import TARGET_HEADER, event_message
from .envelope import parse_event
from .services import Services
from .topology import QUEUE_PREFIX
from .worker import FORCE_HEADER


async def replay_deliveries(services: Services, *, event_id: str | None = None, partner_id: str | None = None,
                            channel: str | None = None, status: str | None = None, limit: int = 1000) -> int:
    """Republish each matching delivery to its channel's work queue, for its
    target only, marked to be sent even if it was delivered before.
    Returns how many were replayed."""
    rows = await services.store.list_deliveries(event_id=event_id, partner_id=partner_id, channel=channel,
                                                status=status, limit=limit)
    replayed = 0
    for row in rows:
        body = await services.store.get_event(row["event_id"])
        if body is None:
            continue
        event = parse_event(body)
        message = event_message(event, headers={TARGET_HEADER: row["target"], FORCE_HEADER: True})
        await services.broker.publish(message, f"{QUEUE_PREFIX}{row['channel']}", exchange="")
        replayed += 1
    return replayed
