"""Applied partner configs and disabled targets, kept in memory by every
process that delivers or serves partners, and reloaded from the store."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import TYPE_CHECKING

from shipcast.model.partners import Partner

if TYPE_CHECKING:
    from shipcast.store.partners import PartnerStore


class PartnerCache:
    """Applied partner configs and disabled targets, kept in memory.

    Reloaded from the store when a ``partners apply`` anywhere announces a
    change on the ``shipcast.control`` exchange, and at least every
    ``max_age`` seconds in case an announcement was missed.
    """

    def __init__(self, store: PartnerStore, *, max_age: float = 30.0) -> None:
        self.store = store
        self.max_age = max_age
        self._partners: dict[str, Partner] = {}
        self._disabled: set[tuple[str, str, str]] = set()
        #: Targets failing without a success, and since when.
        self.failing: dict[tuple[str, str, str], datetime] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def reload(self, *, if_older_than: float | None = None) -> None:
        """Load every partner config; with ``if_older_than``, skip it when
        another caller reloaded while this one waited for the lock."""
        async with self._lock:
            if if_older_than is not None and time.monotonic() - self._loaded_at <= if_older_than:
                return
            partners = await self.store.get_partners()
            self._disabled = await self.store.get_disabled_targets()
            self.failing = await self.store.get_failing()
            self._partners = {partner.id: partner for partner in partners}
            self._loaded_at = time.monotonic()

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    async def get(self, partner_id: str) -> Partner | None:
        age = time.monotonic() - self._loaded_at
        if age > self.max_age:
            await self.reload(if_older_than=self.max_age)
        elif partner_id not in self._partners and age > 1.0:
            # An unknown partner may have just been applied: look again, at most once a second.
            await self.reload(if_older_than=1.0)
        return self._partners.get(partner_id)

    def is_disabled(self, channel: str, partner_id: str, target: str) -> bool:
        return (channel, partner_id, target) in self._disabled

    def mark_disabled(self, channel: str, partner_id: str, target: str) -> None:
        self._disabled.add((channel, partner_id, target))
