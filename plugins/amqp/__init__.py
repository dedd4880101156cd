"""The AMQP channel: events published to the partner's own RabbitMQ.

Per partner, a list of destinations: a broker URL (``amqp://`` or
``amqps://``, its credentials stored encrypted), an exchange, a routing-key
template (``{partner_id}.{event_type}.{order_id}``: a substitution, not
code) and the event types it takes. Each message is the webhook envelope,
persistent, with the Standard Webhooks headers (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``, signed with the destination's
secret) as message headers, published mandatory with publisher confirms: a
missing exchange, a nack, an unroutable message, an unreachable broker or
refused credentials is a failed attempt, retried and parked like a webhook's.

The example of a destination plugin (docs/plugins.md): the config and its
checks in ``config.py``, the connections in ``connections.py``, the
channel in ``channel.py``, and the partner API's secret route in ``routes.py``.
"""

from __future__ import annotations

from typing import Any

from shipcast import hookimpl
from shipcast.plugin.channel import Channel

from .channel import AmqpChannel

__all__ = ["AmqpChannel"]


@hookimpl
def shipcast_channels() -> list[type[Channel]]:
    return [AmqpChannel]


@hookimpl
def shipcast_routers() -> list[Any]:
    from .routes import router

    return [router]
