"""The tracking channel: every merchant's branded tracking page.

It binds its own queue (``shipcast.tracking``) to every event, keeps each
order's timeline (the events table, written as the archive writes it, so the
page never waits for the archive), and pings the pages open on that order so
they update within a second. The page itself is served by routes this plugin
adds to the API (``/t/{token}``), and every customer message links to it
through the ``shipcast_tracking_url`` hook.

Config (``channels.tracking``, optional: every partner has a page)::

    tracking:
      timezone: Asia/Kolkata    # times on the page, and the reschedule dates
      reschedule_days: 3        # dates offered after a failed attempt, from tomorrow
      link_days: 30             # how long a link in a message keeps working
      rating: true              # ask for a 1-5 rating after delivery
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from shipcast import hookimpl
from shipcast.messaging.fields import TimeZone
from shipcast.model.envelope import Event
from shipcast.model.event_types import EventType
from shipcast.model.partners import Partner
from shipcast.plugin.channel import Channel, Delivered, Target
from shipcast.plugins.archive import ArchiveChannel
from shipcast.settings import Settings

from .links import tracking_token
from .live import MAX_PINGED, declare_live_exchange, ping

_PAGE = Target("page", "tracking page")


class TrackingConfig(Schema):
    class Meta:
        unknown = RAISE

    timezone = TimeZone()
    reschedule_days = fields.Integer(load_default=3, validate=validate.Range(1, 14))
    link_days = fields.Integer(load_default=30, validate=validate.Range(1, 365))
    rating = fields.Boolean(load_default=True)


class TrackingChannel(ArchiveChannel):
    """The archive's job (store every event, write-behind) on a queue of its
    own, then a ping to the pages open on the stored events' orders."""

    name = "tracking"
    description = "The branded tracking page: each order's timeline, live in the customer's browser"
    prefetch = 256
    config_schema = TrackingConfig
    partner_editable = True
    branding_preview = "branding/tracking"

    async def start(self) -> None:
        await super().start()
        # Without confirms: a ping is best-effort (a page lost one shows the event at its
        # next reconnect), and most go to no page at all; a confirm per ping cost a wait and
        # a broker frame for each.
        self._pings = await self.context.broker.require().channel(publisher_confirms=False)
        self._live = await declare_live_exchange(self._pings)

    async def close(self) -> None:
        await super().close()
        await self._pings.close()

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        return [_PAGE]

    async def write_batch(self, events: Sequence[Event]) -> None:
        """Stored, then pinged, a batch at a time: one ping names every order of
        the batch, so a page rendered for it shows the event."""
        await super().write_batch(events)
        orders = list(dict.fromkeys((event.partner_id, event.order.order_id) for event in events))
        for start in range(0, len(orders), MAX_PINGED):
            # Not mandatory: with no page open, no queue is bound, and the broker drops it quietly.
            await self._live.publish(ping(*orders[start:start + MAX_PINGED]), routing_key="", mandatory=False)


#: The customer's own events, published from the tracking page.
CUSTOMER_EVENT_TYPES = (
    EventType("RESCHEDULE_REQUESTED", "The customer picked a new delivery date on the tracking page.",
              frozenset({"order", "customer_input"}), frozenset({"otp", "return", "delivery_confirmation"})),
    EventType("INSTRUCTIONS_ADDED", "The customer added delivery instructions on the tracking page.",
              frozenset({"order", "customer_input"}), frozenset({"otp", "return", "delivery_confirmation"})),
    EventType("RATED", "The customer rated the delivery (1-5) on the tracking page.",
              frozenset({"order", "customer_input"}), frozenset({"otp", "failure", "return"})),
)


@hookimpl
def shipcast_channels() -> list[type[Channel]]:
    return [TrackingChannel]


@hookimpl
def shipcast_event_types() -> list[EventType]:
    return list(CUSTOMER_EVENT_TYPES)


@hookimpl
def shipcast_routers() -> list[Any]:
    from . import portal
    from .routes import router

    return [router, portal.router]


@hookimpl
def shipcast_tracking_url(event: Event, partner: Partner | None, settings: Settings) -> str | None:
    days = int(((partner.channels.get("tracking") if partner else None) or {}).get("link_days", 30))
    token = tracking_token(settings, event.partner_id, event.order.order_id, days)
    return f"{settings.public_url.rstrip('/')}/t/{token}"
