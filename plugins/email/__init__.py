"""The email channel: a message to the order's customer, with a text and an
HTML part, sent over SMTP.

The text comes from ``templates/email/<TYPE>.<lang>.j2`` (its first line is
the subject) or the partner's own; the HTML part sets the same paragraphs,
autoescaped, in ``templates/email/layout.html`` with the partner's branding.
Messages that are not strictly transactional (by default the DEL's review
request) carry ``List-Unsubscribe`` with one-click unsubscribe (RFC 8058).

Config (``channels.email``)::

    email:
      events: [OFD, DEL, FAIL]
      from_address: "Acme Retail <orders@acme.example.com>"
      reply_to: support@acme.example.com
      transactional: [OFD, FAIL, RET]     # no unsubscribe link on these
      templates: {DEL: "Subject line\\nBody ..."}
      quiet_hours: {start: "21:00", end: "08:00", timezone: Asia/Kolkata}
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from collections.abc import Awaitable, Mapping
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import EmailPolicy, Policy
from typing import Any

import aiosmtplib
from marshmallow import RAISE, Schema, ValidationError, fields, validates

from shipcast import hookimpl
from shipcast.exceptions import ConfigError, PermanentDelivery, RetryableDelivery
from shipcast.messaging import outbox
from shipcast.messaging.fields import Critical, EventTypes, QuietHours, TemplateDir, Templates
from shipcast.messaging.rules import keep_rules, mask
from shipcast.messaging.templates import check_templates, language_of, serves
from shipcast.model.envelope import Event
from shipcast.model.partners import Partner
from shipcast.plugin.channel import Channel, Delivered, EventList, Target
from shipcast.plugin.context import Registered
from shipcast.security.identifiers import normalized
from shipcast.security.links import unsubscribe_token
from shipcast.settings import Settings

from .compose import html_part, written
from .settings import SmtpSettings

TRANSACTIONAL = ("OFD", "FAIL", "RET")
#: SMTP answers that refuse shipcast's own login, not one customer's message.
AUTH_REFUSED = {530, 534, 535}
ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>]+")
#: RFC 5322's hard limit on a line, CRLF excluded.
MAX_LINE = 998


class VerbatimHeader(UnstructuredHeader, BaseHeader):
    """A header written out on one line, as it was set.

    Mail clients offer one-click unsubscribe only when they find the URL
    itself in ``List-Unsubscribe`` (RFC 2369, RFC 8058). A URL has no
    whitespace to fold at, so at the usual 78 columns the generator (and
    aiosmtplib flattens with ``email.policy.SMTP``, whatever the message's
    policy) writes it as RFC 2047 encoded-words, which no client reads as a
    link. Up to RFC 5322's hard limit it is left whole instead."""

    def fold(self, *, policy: Policy) -> str:
        return super().fold(policy=policy.clone(max_line_length=MAX_LINE))


def _policy() -> EmailPolicy[EmailMessage]:
    registry = HeaderRegistry()
    for name in ("List-Unsubscribe", "List-Unsubscribe-Post"):
        registry.map_to_type(name, VerbatimHeader)
    return email.policy.default.clone(header_factory=registry)


#: The default policy, with the one-click unsubscribe headers kept verbatim.
POLICY = _policy()


#: An address as the sender check below takes it, for the config's JSON Schema.
_ADDRESS = r"[^<>@\s\",;:()\[\]\\]+@[^<>@\s\",;:()\[\]\\.]+(\.[^<>@\s\",;:()\[\]\\.]+)+"


class EmailConfig(Schema):
    class Meta:
        unknown = RAISE

    events = EventList()
    from_address = fields.String(required=True, metadata={
        "description": "The sender: an address, with a display name or not",
        "examples": ["Acme Retail <orders@acme.example.com>"],
        "json_schema": {"pattern": rf"^({_ADDRESS}|[^<>@\",;:()\[\]\\]*<{_ADDRESS}>)$"}})
    reply_to = fields.Email()
    transactional = EventTypes(load_default=lambda: list(TRANSACTIONAL))
    templates = Templates()
    #: A directory on the server with the partner's own ``<channel>/<TYPE>.<lang>.j2``.
    template_dir = TemplateDir()
    quiet_hours = fields.Nested(QuietHours)
    critical = Critical()

    @validates("from_address")
    def _sender(self, value: str, **_: Any) -> None:
        name, address = email.utils.parseaddr(value)
        if "@" not in address or "." not in address.rsplit("@", 1)[-1]:
            raise ValidationError("must be an address, like 'Acme Retail <orders@acme.example.com>'")


class EmailChannel(Channel):
    name = "email"
    description = "Email to the order's customer, text and HTML, over SMTP"
    prefetch = 32
    config_schema = EmailConfig
    partner_editable = True
    branding_preview = "branding/email"
    customer_field = "email"

    @classmethod
    def customer_address(cls, written: str, config: Mapping[str, Any]) -> str | None:
        """The address in lower case (as opt-outs key it)."""
        address = normalized(written)
        return address if ADDRESS.fullmatch(address) else None

    @classmethod
    async def prepare(cls, registry: Registered, partner_id: str, config: dict[str, Any],
                      stored: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every template this config may send renders, in every language, and has a subject line."""
        errors = cls.check(registry, partner_id, config)
        if errors:
            raise ConfigError("refused", errors)
        return config

    @classmethod
    def check(cls, registry: Registered, partner_id: str, config: Mapping[str, Any]) -> dict[str, list[str]]:
        return check_templates(registry, cls.name, partner_id, partner_id, {}, config, shape=_subject_and_body)

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        to = event.order.customer.email
        if partner is None or self.name not in partner.channels or not to \
                or not serves(self.name, event.event_type, partner.channels[self.name]):
            return []
        return [Target("customer", mask(to), {"to": to, "config": partner.channels[self.name], "partner": partner})]

    @classmethod
    def development_outbox(cls, settings: Settings) -> str | None:
        if outbox.in_use(settings, SmtpSettings.of(settings).configured):
            return "SHIPCAST_SMTP_HOST is not set"
        return None

    async def start(self) -> None:
        self.smtp = SmtpSettings.of(self.settings)
        self.outbox = bool(self.development_outbox(self.settings))

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered:
        config, partner, to = target.options["config"], target.options["partner"], target.options["to"]
        await keep_rules(self.context, self.name, event, to, config)
        try:
            message = self.compose(event, partner, config, to)
        except ConfigError as exc:  # a template edited since it was applied: retrying cannot fix it
            raise PermanentDelivery(str(exc)) from exc
        return await self.send(event, message, to)

    async def send_test(self, event: Event, partner: Partner, to: str) -> Delivered:
        if not ADDRESS.fullmatch(to.strip()) or len(to) > 254:
            raise ConfigError("invalid address", {"to": ["not an email address"]})
        return await self.send(event, self.compose(event, partner, partner.channels[self.name], to.strip()), to.strip())

    async def send(self, event: Event, message: EmailMessage, to: str) -> Delivered:
        """Hand one composed message to the SMTP server (without one, keep it in the development outbox)."""
        if self.outbox:  # no SMTP server: kept as the customer would have received it
            return Delivered(250, await self.keep(event, message, to))
        smtp = self.smtp
        try:
            await aiosmtplib.send(message, hostname=smtp.host, port=smtp.port, username=smtp.username,
                                  password=smtp.password, start_tls=smtp.starttls,
                                  timeout=self.settings.webhook_timeout)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = next(iter(exc.recipients), None)
            code, text = (refused.code, refused.message) if refused is not None else (550, str(exc))
            raise _smtp_error(code, text, customer=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _smtp_error(exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise RetryableDelivery(f"SMTP server unreachable: {type(exc).__name__}: {exc}") from exc
        return Delivered(250, f"sent as {message['Message-ID']}")

    def preview(self, event: Event, partner: Partner) -> tuple[str, str]:
        message = self.compose(event, partner, partner.channels[self.name], event.order.customer.email or
                               "customer@example.com")
        return f"Subject: {message['Subject']}\n\n{_part(message, 'plain')}", _parts(message)

    async def keep(self, event: Event, message: EmailMessage, to: str) -> str:
        """Keep ``message`` in the development outbox: its subject, and both parts as composed."""
        return await outbox.keep(self.context, self.name, event, to, _part(message, "plain"),
                                 subject=str(message["Subject"]), html=_part(message, "html"),
                                 detail=f"from {message['From']}; {_parts(message)}")

    def preview_parts(self, event: Event, partner: Partner) -> dict[str, Any]:
        shown, summary = self.preview(event, partner)
        message = self.compose(event, partner, partner.channels[self.name], event.order.customer.email or
                               "customer@example.com")
        html = message.get_body(("html",))
        return {"text": shown, "summary": summary, "subject": str(message["Subject"]),
                "html": html.get_content() if html is not None else None}

    def compose(self, event: Event, partner: Partner, config: Mapping[str, Any], to: str) -> EmailMessage:
        """The message: subject, text and HTML parts, and the headers."""
        language = language_of(event)
        subject, text = written(self.context.registry, event, partner, config, language)
        unsubscribe = None
        if event.event_type not in config.get("transactional", TRANSACTIONAL):
            unsubscribe = (f"{self.settings.public_url.rstrip('/')}/u/"
                           f"{unsubscribe_token(self.settings, self.name, event.partner_id, to)}")
        html = html_part(self.context.registry, event, partner, subject, text, language, unsubscribe)
        message = EmailMessage(policy=POLICY)
        sender = email.utils.parseaddr(config["from_address"])
        message["From"] = str(Address(sender[0], addr_spec=sender[1]))
        message["To"] = to
        message["Subject"] = subject.strip()
        message["Date"] = email.utils.formatdate(localtime=False)
        message["Message-ID"] = email.utils.make_msgid(f"{event.event_id}", domain=sender[1].rsplit("@", 1)[-1])
        reply_to = config.get("reply_to") or partner.branding.get("support_email")
        if reply_to:
            message["Reply-To"] = reply_to
        if unsubscribe:
            message["List-Unsubscribe"] = f"<{unsubscribe}>"
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message.set_content(text + "\n")
        message.add_alternative(html, subtype="html")
        return message


def _part(message: EmailMessage, subtype: str) -> str:
    """One part of a composed message (``plain`` or ``html``), as text."""
    part = message.get_body((subtype,))
    return str(part.get_content()).strip() if part is not None else ""


def _parts(message: EmailMessage) -> str:
    unsubscribe = "with" if message["List-Unsubscribe"] else "without"
    return f"text and HTML parts, {unsubscribe} List-Unsubscribe"


def _subject_and_body(text: str) -> str | None:
    subject, _, body = text.partition("\n")
    if not subject.strip() or not body.strip():
        return "must give the subject on its first line and the body after it"
    return None


def _smtp_error(code: int, text: str, customer: bool = False) -> PermanentDelivery | RetryableDelivery:
    """A 5xx answer never changes (no such mailbox); a 4xx is worth retrying.
    A refused recipient is that customer's fault, not the server's.
    Addresses the server quotes are masked: the log keeps no customer's email."""
    reason = f"SMTP {code}: {ADDRESS.sub('<address>', text)}"[:500]
    if code in AUTH_REFUSED:  # the server refused our credentials: the operator fixes it, nothing is lost
        return RetryableDelivery(reason, status=code)
    if 500 <= code < 600:
        return PermanentDelivery(reason, status=code, target_fault=not customer)
    return RetryableDelivery(reason, status=code)


@hookimpl
def shipcast_channels() -> list[type[Channel]]:
    return [EmailChannel]


@hookimpl
def shipcast_send_mail(settings: Settings, to: str, subject: str, text: str) -> Awaitable[None] | None:
    """A person's email (a portal invitation) through the SMTP server, when one is configured."""
    smtp = SmtpSettings.of(settings)
    if not smtp.configured:
        return None
    message = EmailMessage(policy=_policy())
    message["From"], message["To"], message["Subject"] = smtp.from_address, to, subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=email.utils.parseaddr(smtp.from_address)[1]
                                                   .rsplit("@", 1)[-1] or None)
    message.set_content(text)

    async def send() -> None:
        await aiosmtplib.send(message, hostname=smtp.host, port=smtp.port, username=smtp.username,
                              password=smtp.password, start_tls=smtp.starttls, timeout=settings.webhook_timeout)

    return send()


@hookimpl
def shipcast_routers() -> list[Any]:
    from . import portal
    from .unsubscribe import router

    return [router, portal.router]
