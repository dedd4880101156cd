"""The archive channel: stores every event, off the ingest path.

Its table is the event log for replay, the order timeline for the tracking
page, and the source of "resend everything since T". It binds ``#``, so every
event is archived whatever the partners' configs say.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shipcast import hookimpl
from shipcast.batching import Batcher
from shipcast.model.envelope import Event
from shipcast.model.partners import Partner
from shipcast.plugin.channel import Channel, Delivered, Target

_TARGET = Target("store", "events table")


class ArchiveChannel(Channel):
    name = "archive"
    description = "Stores every event: the event log, order timelines, replay source"
    prefetch = 500
    static_bindings = ("#",)
    records_deliveries = False  # the stored event is its own record

    @classmethod
    def bindings(cls, partner_id: str, config: Any) -> set[str]:
        return set()

    async def start(self) -> None:
        # Concurrent deliveries share one insert: write-behind in batches.
        self._batcher: Batcher[Event, None] = Batcher(self.write_batch)

    async def write_batch(self, events: Sequence[Event]) -> None:
        """Write one batch of the events delivered to this channel."""
        await self.context.store.save_events(events)

    async def close(self) -> None:
        await self._batcher.close()

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        return [_TARGET]

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered:
        # A StoreError propagates: the worker holds the message until the store is back.
        await self._batcher.submit(event)
        return Delivered()


@hookimpl
def shipcast_channels() -> list[type[Channel]]:
    return [ArchiveChannel]
