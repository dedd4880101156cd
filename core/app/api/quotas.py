"""Per-partner quotas on what the partner API sends again (test sends,
resends, recovers): the shared queues serve every partner, so none may fill
them. A token bucket per partner, refilled steadily over the hour, in each
API process; past it, 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import time

from fastapi import HTTPException, Request


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
