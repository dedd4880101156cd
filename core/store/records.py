"""What the store takes and gives besides rows: an attempt as the worker
saw it, and attempt statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shipcast.model.partners import Partner


@dataclass(frozen=True)
class Attempt:
    """One try at delivering an event to one target, as the worker saw it."""

    event_id: str
    channel: str
    target: str
    partner_id: str
    address: str
    outcome: str  # delivered | retry | dead, or waiting (deferred, not attempted)
    attempt: int
    latency_ms: float
    status: int | None = None
    error: str | None = None
    response: str | None = None
    at: datetime | None = None
    event_type: str | None = None
    order_id: str | None = None
    sequence: int | None = None
    #: What was sent (``{"method", "url", "headers"}``), when the channel tells.
    request: dict[str, Any] | None = None


def attempt_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, success rate, latency percentiles (of attempts that connected)
    and the newest error, from attempts newest first."""
    rows = [row for row in rows if row["outcome"] != "skipped"]  # nothing was sent: not the endpoint's doing
    delivered = sum(1 for row in rows if row["outcome"] == "delivered")
    latencies = sorted(row["latency_ms"] for row in rows if row["latency_ms"] > 0)

    def percentile(p: float) -> float | None:
        if not latencies:
            return None
        return round(float(latencies[min(len(latencies) - 1, math.ceil(p / 100 * len(latencies)) - 1)]), 2)

    last_error = next((row for row in rows if row["outcome"] != "delivered"), None)
    return {
        "attempts": len(rows), "delivered": delivered, "failed": len(rows) - delivered,
        "success_rate": round(delivered / len(rows), 4) if rows else None,
        "latency_ms": {"p50": percentile(50), "p90": percentile(90), "p95": percentile(95),
                       "p99": percentile(99)},
        "last_error": {"at": last_error["at"].isoformat(), "error": last_error["error"],
                       "status": last_error["status"]} if last_error else None,
    }


def partner_from_json(config: str) -> Partner:
    data = orjson.loads(config)
    marked = data.get("file_fields")
    return Partner(data["id"], data["name"], data.get("branding", {}), data.get("channels", {}),
                   frozenset(marked) if marked is not None else None)
