"""What a channel reaches at run time: a narrow, typed view of the running
process (its settings and what it registered, the store, the broker, the
partner cache, the publisher), not the application's whole ``Services``.

These are protocols, so the plugin contract depends on no implementation:
:class:`~shipcast.plugin.registry.Registry` is a :class:`Registered`, and the
application's ``Services`` is a :class:`ChannelContext`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pluggy

    from shipcast.amqp.connection import Broker
    from shipcast.batching import Batcher
    from shipcast.model.catalog import Catalog
    from shipcast.model.envelope import Event
    from shipcast.model.event_types import EventTypeRegistry
    from shipcast.settings import Settings
    from shipcast.store import Attempt, PartnerCache, Store


class Registered(Protocol):
    """What the running process has registered, as channels see it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def hook(self) -> pluggy.HookRelay:
        """Call the plugins' hooks (``registered.hook.shipcast_tracking_url(...)``)."""

    @property
    def event_types(self) -> EventTypeRegistry: ...

    @property
    def catalog(self) -> Catalog:
        """What partner configs are validated against."""


class EventPublisher(Protocol):
    """Publishes events with ingest's guarantees (validated, confirmed)."""

    async def publish(self, *events: Event | dict[str, Any]) -> list[str]: ...

    async def publish_valid(self, events: Sequence[Event]) -> list[str]: ...


class ChannelContext(Protocol):
    """Everything a channel may use while it runs (read-only: a channel uses
    these, it does not replace them)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def registry(self) -> Registered: ...

    @property
    def store(self) -> Store: ...

    @property
    def broker(self) -> Broker: ...

    @property
    def partners(self) -> PartnerCache:
        """Applied partner configs and disabled targets, kept in memory."""

    @property
    def publisher(self) -> EventPublisher: ...

    @property
    def recorder(self) -> Batcher[Attempt, None]:
        """Writes attempt records in batches."""

    @property
    def extensions(self) -> dict[str, Any]:
        """What plugins keep per process (a live-update hub), by plugin name."""

    @property
    def stopping(self) -> asyncio.Event:
        """Set when the process starts shutting down: long-lived work ends."""
