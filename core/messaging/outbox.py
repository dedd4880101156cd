"""The development outbox: where a customer message goes, rendered exactly as
it would have been sent, when its provider is not configured (no Twilio
credentials, no SMTP server) in development mode (or with ``SHIPCAST_DEV_OUTBOX=on``).

The channel keeps every rule (opt-outs, quiet hours, the claim) as for a
real send; only the last step differs, and the delivery is logged
``delivered`` with a response naming the outbox message (``development
outbox #12``). With credentials set, nothing goes here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shipcast.model.envelope import Event
from shipcast.plugin.channel import Channel
from shipcast.plugin.context import ChannelContext
from shipcast.settings import Settings
from shipcast.store import OutboxMessage

#: The provider name a message kept here is noted under (``send_noted``).
PROVIDER = "outbox"
#: What ``SHIPCAST_DEV_OUTBOX`` says when the outbox must never be used.
OFF = "off"


#: What ``SHIPCAST_DEV_OUTBOX`` says when the outbox is used outside development mode too.
ON = "on"


def in_use(settings: Settings, configured: bool) -> bool:
    """Whether messages whose provider is (or is not) ``configured`` go to
    the outbox: only in development mode (``SHIPCAST_DEVELOPMENT``), unless
    ``SHIPCAST_DEV_OUTBOX`` says ``on`` (or ``off``). A production process
    missing a credential fails its deliveries, as it always did."""
    if configured or settings.dev_outbox == OFF:
        return False
    return settings.development or settings.dev_outbox == ON


def twilio_configured(settings: Settings) -> bool:
    """Whether Twilio's credentials are set: then SMS and WhatsApp go through Twilio."""
    return bool(settings.twilio_account_sid and settings.twilio_auth_token)


def response(number: int) -> str:
    """What the delivery log says of a message kept in the outbox."""
    return f"development outbox #{number}"


async def keep(context: ChannelContext, channel: str, event: Event, recipient: str, text: str,
               **content: Any) -> str:
    """Keep one message for ``event`` instead of sending it; returns what the
    delivery log says (:func:`response`). ``content``: the other fields of
    :class:`~shipcast.store.OutboxMessage` (``subject``, ``html``, ``detail``, ...)."""
    number = await context.store.add_outbox(OutboxMessage(
        channel=channel, partner_id=event.partner_id, event_id=event.event_id, event_type=event.event_type,
        order_id=event.order.order_id, recipient=recipient, text=text, **content))
    return response(number)


def reasons(settings: Settings, channels: Mapping[str, type[Channel]]) -> dict[str, str]:
    """Each channel whose messages go to the outbox under ``settings``, and
    why (``{"sms": "SHIPCAST_TWILIO_… not set"}``)."""
    found: dict[str, str] = {}
    for name, channel in sorted(channels.items()):
        why = channel.development_outbox(settings)
        if why:
            found[name] = why
    return found


def warning(found: dict[str, str]) -> str:
    """The warning logged at start (and shown on every portal page) while the outbox is in use."""
    said = "; ".join(f"{name}: {why}" for name, why in found.items())
    return (f"development outbox in use: {', '.join(found)} messages are kept, not sent ({said}); "
            f"see them with 'shipcast outbox list' or in the portal. SHIPCAST_DEV_OUTBOX=off refuses to.")
