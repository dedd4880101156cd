"""SMS providers: who actually sends. Twilio ships; an Indian gateway (MSG91,
Exotel) is one more :class:`SmsProvider` registered with the
``shipcast_sms_providers`` hook, without touching the channel."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp

from shipcast.exceptions import ConfigError, PermanentDelivery, RetryableDelivery
from shipcast.messaging import outbox
from shipcast.settings import Settings

from .segments import describe

if TYPE_CHECKING:
    from shipcast.model.envelope import Event
    from shipcast.plugin.context import ChannelContext

#: Twilio errors that retrying cannot fix (https://www.twilio.com/docs/api/errors).
TWILIO_PERMANENT = {
    21211: "invalid 'To' phone number",
    21214: "'To' number cannot be reached",
    21408: "sending to this region is not enabled",
    21601: "'To' number is not a mobile number",
    20003: "Twilio refused the account's credentials (SHIPCAST_TWILIO_ACCOUNT_SID / _AUTH_TOKEN)",
    21606: "'From' number cannot send SMS",
    21610: "the customer has opted out (replied STOP)",
    21612: "'To' number cannot receive from this 'From'",
    21614: "'To' number is not a valid mobile number",
    63003: "the customer is not on WhatsApp",
    63014: "the customer blocked the business on WhatsApp",
    63016: "outside the WhatsApp session window: use an approved template",
    63024: "the customer's WhatsApp cannot receive this message",
    30003: "the handset is unreachable (switched off or out of coverage)",
    30004: "the message was blocked (the customer blocked the sender, or DND)",
    30005: "the number is unknown or no longer in service",
    30006: "a landline, or a number the carrier cannot reach",
    30007: "the carrier filtered the message (content or DLT template mismatch)",
    30008: "the carrier could not deliver it, for reasons it did not give",
}
#: Errors about one customer, not the provider or the merchant's account: they
#: do not count against the provider's circuit breaker or health.
CUSTOMER_FAULTS = {21211, 21214, 21601, 21610, 21612, 21614, 63003, 63014, 63016, 63024}
#: WhatsApp could not reach this customer (not opted in, not a user, blocked):
#: a merchant may fall back to SMS.
WHATSAPP_UNREACHABLE = {63003, 63014, 63016, 63024}
#: Twilio errors worth retrying: rate limits and Twilio's own outages, and a
#: refused account (wrong credentials), which the operator fixes without the
#: messages being lost meanwhile (the circuit opens and the endpoint health
#: tells the operator).
TWILIO_RETRYABLE = {20003, 20429, 20500, 20503, 30001}


def twilio_reason(code: int) -> str:
    """A Twilio error in our words (Twilio's own often quote the customer's number)."""
    return f"Twilio {code}: {TWILIO_PERMANENT.get(code) or 'see https://www.twilio.com/docs/errors/' + str(code)}"


class CustomerOptedOut(PermanentDelivery):
    """The provider says the customer opted out: recorded, and nothing more is sent."""


class NotOnWhatsApp(PermanentDelivery):
    """WhatsApp cannot reach this customer; SMS may."""


@dataclass(frozen=True)
class SmsMessage:
    to: str
    sender: str
    body: str
    #: India's DLT template id for this text, for providers on Indian routes.
    dlt_template_id: str | None = None
    status_callback: str | None = None
    #: The event the text is about (the development outbox files the text under it).
    event: Event | None = None


class SmsProvider:
    """Sends one SMS. :meth:`send` returns the provider's message id, or raises
    :class:`RetryableDelivery` / :class:`PermanentDelivery` with its code."""

    name: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def start(self) -> None:
        """Open clients."""

    async def close(self) -> None:
        """Close what :meth:`start` opened."""

    async def send(self, message: SmsMessage) -> str:
        raise NotImplementedError


class OutboxSms(SmsProvider):
    """Keeps each text in the development outbox instead of sending it: what
    Twilio is given when its credentials are not set (see
    :mod:`shipcast.messaging.outbox`). Never chosen by a partner's config."""

    name = outbox.PROVIDER

    def __init__(self, settings: Settings, context: ChannelContext) -> None:
        super().__init__(settings)
        self.context = context

    async def send(self, message: SmsMessage) -> str:
        assert message.event is not None, "the outbox files a text under its event"
        return await outbox.keep(self.context, "sms", message.event, message.to, message.body,
                                 subject=f"from {message.sender}", detail=describe(message.body))


class TwilioSms(SmsProvider):
    """Twilio's Messages API through the official SDK (its aiohttp client).
    Credentials come from ``SHIPCAST_TWILIO_ACCOUNT_SID`` / ``_AUTH_TOKEN``."""

    name = "twilio"

    async def start(self) -> None:
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        sid, token = self.settings.twilio_account_sid, self.settings.twilio_auth_token
        if not sid or not token:
            raise ConfigError("SHIPCAST_TWILIO_ACCOUNT_SID and SHIPCAST_TWILIO_AUTH_TOKEN must be set to send SMS "
                              "through Twilio")
        self._http = AsyncTwilioHttpClient(timeout=self.settings.webhook_timeout)
        self.client = Client(sid, token, http_client=self._http)
        self.client.api.base_url = self.settings.twilio_api_url
        self.client.content.base_url = self.settings.twilio_content_url

    async def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            await http.close()

    async def send(self, message: SmsMessage) -> str:
        return await self.create(to=message.to, from_=message.sender, body=message.body,
                                 status_callback=message.status_callback or _UNSET)

    async def create(self, **params: Any) -> str:
        """Create one message (SMS, or WhatsApp with ``whatsapp:`` addresses and
        a content template); Twilio's errors mapped to retry or dead letter."""
        from twilio.base.exceptions import TwilioRestException

        try:
            created = await self.client.messages.create_async(**params)
        except TwilioRestException as exc:
            code = exc.code or 0
            # Twilio's own text often quotes the customer's number: keep only the code and our words.
            reason = twilio_reason(code)
            exc.msg = reason
            if code in TWILIO_RETRYABLE or exc.status in (401, 429) or exc.status >= 500:
                raise RetryableDelivery(reason, status=exc.status, response=reason) from exc
            kind = CustomerOptedOut if code == 21610 else NotOnWhatsApp if code in WHATSAPP_UNREACHABLE \
                else PermanentDelivery
            raise kind(reason, status=exc.status, response=reason, target_fault=code not in CUSTOMER_FAULTS) from exc
        except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError) as exc:
            raise RetryableDelivery(f"Twilio unreachable: {type(exc).__name__}: {exc}") from exc
        return str(created.sid)

    async def whatsapp_approval(self, content_sid: str) -> tuple[str, str]:
        """A content template's WhatsApp approval status and category, as
        Twilio's Content API gives them (``approved``, ``UTILITY``).

        :raises LookupError: Twilio knows no such template.
        :raises RetryableDelivery: Twilio could not be asked.
        """
        from twilio.base.exceptions import TwilioRestException

        try:
            approval = await self.client.content.v1.contents(content_sid).approval_fetch().fetch_async()
        except TwilioRestException as exc:
            if exc.status == 404:
                raise LookupError(f"Twilio has no content template {content_sid}") from exc
            raise RetryableDelivery(f"Twilio's Content API answered {exc.status}", status=exc.status) from exc
        except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError) as exc:
            raise RetryableDelivery(f"Twilio unreachable: {type(exc).__name__}: {exc}") from exc
        whatsapp = approval.whatsapp or {}
        return str(whatsapp.get("status", "")), str(whatsapp.get("category", ""))


# The SDK leaves out a parameter given as its ``values.unset``.
from twilio.base import values as _values  # noqa: E402

_UNSET = _values.unset
