"""The WhatsApp channel: Twilio's WhatsApp API with the merchant's approved
content templates (utility category, checked with Twilio's Content API at
apply): a ``content_sid`` per event type (one, or one per language) and its
variables, rendered from the event; they must carry the tracking link, and a
FAIL's the failure's reason. A customer WhatsApp cannot reach (not
opted in, not a user, blocked: Twilio 63003, 63014, 63016, 63024) gets a text
instead when the merchant sets ``fallback_sms_sender``.

Config (``channels.whatsapp``)::

    whatsapp:
      events: [OFD, DEL, FAIL]
      sender: "+14155238886"              # the WhatsApp business number
      content_sids: {OFD: HX…, DEL: HX…, FAIL: {en: HX…, hi: HX…}}   # one, or one per language
      variables: {OFD: ["{{ customer.name }}", "{{ otp.code }}"]}   # default: see VARIABLES
      fallback_sms_sender: ACMEIN          # text instead when WhatsApp cannot reach them
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import jinja2
import orjson
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shipcast import hookimpl
from shipcast.exceptions import (
    ClaimedElsewhere,
    ConfigError,
    DeferDelivery,
    PermanentDelivery,
    RetryableDelivery,
    SentBefore,
)
from shipcast.messaging import outbox
from shipcast.messaging.fields import ByEventType, Critical, IdsByType, QuietHours, id_for
from shipcast.messaging.rules import UNREACHABLE, finish_sends, keep_rules, mask, send_noted, settle_quietly
from shipcast.messaging.templates import context, lacks, language_of, render_source, tracking_url
from shipcast.model.envelope import Event
from shipcast.model.partners import Partner
from shipcast.plugin.channel import Channel, Delivered, EventList, Target
from shipcast.plugin.context import Registered
from shipcast.plugins.sms import SmsChannel, e164
from shipcast.plugins.sms.providers import CustomerOptedOut, NotOnWhatsApp, TwilioSms
from shipcast.settings import Settings
from shipcast.store import Attempt
from shipcast.templating import unsafe

log = logging.getLogger(__name__)

#: The variables each event type's content template gets by default, in order ({{1}}, {{2}}, ...).
VARIABLES: dict[str, list[str]] = {
    "OFD": ["{{ partner.name }}", "{{ order.order_id }}", "{{ rider.name if rider else '-' }}",
            "{{ otp.code if otp else '-' }}", "{{ tracking_url }}"],
    "DEL": ["{{ partner.name }}", "{{ order.order_id }}", "{{ tracking_url }}"],
    "FAIL": ["{{ partner.name }}", "{{ order.order_id }}", "{{ failure.reason if failure else '-' }}",
             "{{ failure.reschedule_url if failure and failure.reschedule_url else tracking_url }}",
             "{{ tracking_url }}"],
    "RET": ["{{ partner.name }}", "{{ order.order_id }}", "{{ return.reason if return else '-' }}",
            "{{ tracking_url }}"],
}
_DEFAULT = ["{{ partner.name }}", "{{ order.order_id }}", "{{ tracking_url }}"]


class WhatsAppConfig(Schema):
    class Meta:
        unknown = RAISE

    events = EventList()
    sender = fields.String(required=True, validate=validate.Regexp(r"^\+[0-9]{6,15}\Z",
                                                                   error="must be the E.164 business number"))
    country = fields.String(load_default="IN", validate=validate.Regexp(r"^[A-Z]{2}\Z", error="must be like IN"))
    #: The approved content template of each event type: one, or one per language.
    content_sids = IdsByType(r"HX[0-9a-fA-F]{32}", "must be an approved content template's sid (HX…)",
                             required=True, metadata={"description": "The approved content template (HX…) of "
                                                      "each event type in events, or per language (en required)"})
    variables = ByEventType(fields.List(fields.String(validate=validate.Length(min=1, max=1000)),
                                        validate=validate.Length(max=20)), load_default=dict)
    fallback_sms_sender = fields.String(validate=validate.Regexp(
        r"^(\+[0-9]{6,15}|[A-Za-z0-9]{3,11})$", error="must be a phone number (+…) or a 3-11 character header"))
    quiet_hours = fields.Nested(QuietHours)
    critical = Critical()

    @validates_schema
    def _every_type_has_a_template(self, data: dict[str, Any], **_: Any) -> None:
        events = data.get("events", ["*"])  # '*': every type it has a content template for
        missing = [t for t in events if t != "*" and t not in data.get("content_sids", {})]
        if missing:
            raise ValidationError(f"no approved content template for {missing}: WhatsApp sends only those",
                                  "content_sids")


def variables_for(registry: Registered, event: Event, partner: Partner, config: Mapping[str, Any]) -> str:
    """The content template's variables as Twilio takes them: ``{"1": …, "2": …}`` in JSON.

    Each is one line with single spaces: WhatsApp refuses a variable with a
    line break, a tab or a run of spaces, so order data holding one must not
    cost the customer the message."""
    expressions = (config.get("variables") or {}).get(event.event_type) or VARIABLES.get(event.event_type, _DEFAULT)
    values = context(registry, event, partner)
    try:  # the partner's expressions are data: rendered in the sandbox, refused and bounded as templates are
        rendered = {str(i): " ".join(render_source(e, values).split()) or "-" for i, e in enumerate(expressions, 1)}
    except jinja2.TemplateError as exc:
        raise ConfigError(f"whatsapp variables for {event.event_type} failed: {exc}") from exc
    except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"whatsapp variables for {event.event_type} failed: {type(exc).__name__}: {exc}") from exc
    return orjson.dumps(rendered).decode()


def shown(content_sid: str, variables: str) -> tuple[str, str]:
    """A content template's variables (Twilio's JSON) as a person reads them,
    one ``{{n}} = value`` a line, and what the message is: for the preview and the outbox."""
    values = orjson.loads(variables)
    text = "\n".join(f"{{{{{number}}}}} = {value}" for number, value in values.items())
    return text, f"content template {content_sid}, {len(values)} variables"


#: When each (Content API, sid) was last seen an approved utility template:
#: asked again after :data:`APPROVAL_TTL` seconds (a template can be recategorised).
_approved: dict[tuple[str, str], float] = {}
APPROVAL_TTL = 3600.0
#: How long apply waits for Twilio's answers, all templates together.
APPROVAL_DEADLINE = 10.0


async def _unapproved(settings: Settings, content_sids: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each content template Twilio's Content API says is not an approved
    utility template, by the field naming it. Checked only with Twilio's
    credentials set; a template Twilio cannot be asked about within
    :data:`APPROVAL_DEADLINE` is let through with a warning (shipcast must
    start while Twilio is down), but credentials Twilio refuses are an error."""
    if not settings.twilio_account_sid or not settings.twilio_auth_token:
        return {}
    fields_of = {f"content_sids.{event_type}" + (f".{language}" if isinstance(sids, Mapping) else ""): sid
                 for event_type, sids in content_sids.items()
                 for language, sid in (sids.items() if isinstance(sids, Mapping) else [("", sids)])}
    now = time.monotonic()
    asked = {field_name: sid for field_name, sid in fields_of.items()
             if now - _approved.get((settings.twilio_content_url, sid), -APPROVAL_TTL) >= APPROVAL_TTL}
    errors: dict[str, list[str]] = {}
    twilio = TwilioSms(settings)
    await twilio.start()

    async def judge(field_name: str, sid: str) -> None:
        try:
            status, category = await twilio.whatsapp_approval(sid)
        except LookupError as exc:
            errors[field_name] = [str(exc)]
            return
        except RetryableDelivery as exc:
            if exc.status in (401, 403):
                errors[field_name] = [f"Twilio refused SHIPCAST_TWILIO_ACCOUNT_SID and _AUTH_TOKEN ({exc.status})"]
            else:
                log.warning("could not check WhatsApp template %s (%s): %s", sid, field_name, exc)
            return
        if status != "approved":
            errors[field_name] = [f"{sid} is not approved for WhatsApp (status: {status or 'none'})"]
        elif category.upper() != "UTILITY":
            errors[field_name] = [f"{sid} is a {category or 'uncategorised'} template: customers' order "
                                  "messages must use UTILITY templates"]
        else:
            _approved[(settings.twilio_content_url, sid)] = time.monotonic()

    tasks = [asyncio.ensure_future(judge(field_name, sid)) for field_name, sid in asked.items()]
    try:
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=APPROVAL_DEADLINE)
            for task in late:
                task.cancel()
            if late:
                log.warning("could not check %d WhatsApp templates: Twilio did not answer in %.0f s",
                            len(late), APPROVAL_DEADLINE)
    finally:
        await twilio.close()
    return errors


class WhatsAppChannel(Channel):
    name = "whatsapp"
    description = "WhatsApp messages to the order's customer (Twilio content templates), with SMS fallback"
    prefetch = 64
    config_schema = WhatsAppConfig
    partner_editable = True
    customer_field = "phone"
    lift_note = ("A customer who sent STOP on WhatsApp stays blocked by Twilio (21610) until they message "
                 "START to your WhatsApp number.")

    @classmethod
    def customer_address(cls, written: str, config: Mapping[str, Any]) -> str | None:
        """The number in E.164 (the config's ``country`` for one written without +)."""
        return e164(written, config.get("country", "IN"))

    @classmethod
    async def prepare(cls, registry: Registered, partner_id: str, config: dict[str, Any],
                      stored: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every event type's variables render, with full events and with the
        envelope's nulls, and Twilio has approved each content template."""
        errors = cls.check(registry, partner_id, config) | await _unapproved(registry.settings, config["content_sids"])
        if errors:
            raise ConfigError("refused", errors)
        return config

    @classmethod
    def check(cls, registry: Registered, partner_id: str, config: Mapping[str, Any]) -> dict[str, list[str]]:
        from shipcast.messaging.templates import sparse_event
        from shipcast.model.examples import example

        partner = Partner(partner_id, partner_id, {}, {cls.name: config})
        errors: dict[str, list[str]] = {
            f"variables.{event_type}.{index}": found
            for event_type, expressions in (config.get("variables") or {}).items()
            for index, expression in enumerate(expressions) if (found := unsafe(expression))}
        if errors:  # what reaches for code is refused before it runs, even sandboxed
            return errors
        for event_type in config["content_sids"]:
            for event in (example(event_type, registry.event_types, partner_id=partner_id),
                          sparse_event(example(event_type, registry.event_types, partner_id=partner_id))):
                try:
                    url = tracking_url(registry, event, partner)
                    values = orjson.loads(variables_for(registry, event, partner, config))
                    wrong = lacks(" ".join(values.values()), event, url)
                    if wrong:
                        raise ConfigError(f"whatsapp variables for {event_type} {wrong}")
                except ConfigError as exc:
                    errors[f"variables.{event_type}"] = [str(exc)]
                    break
        return errors

    @classmethod
    def development_outbox(cls, settings: Settings) -> str | None:
        if outbox.in_use(settings, outbox.twilio_configured(settings)):
            return "messages through Twilio, whose SHIPCAST_TWILIO_ACCOUNT_SID and _AUTH_TOKEN are not set"
        return None

    async def start(self) -> None:
        self.twilio = TwilioSms(self.settings)
        self.outbox = bool(self.development_outbox(self.settings))
        self._started = False
        self._opening = asyncio.Lock()
        self.sms = SmsChannel(self.context)
        await self.sms.start()

    async def close(self) -> None:
        await finish_sends()
        if self._started:
            await self.twilio.close()
        await self.sms.close()

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        if partner is None or self.name not in partner.channels or not event.order.customer.phone:
            return []
        config = partner.channels[self.name]
        if event.event_type not in config["content_sids"]:
            return []
        number = self.customer_address(event.order.customer.phone, config)
        options = {"to": number, "config": config, "partner": partner}
        return [Target("customer", mask(number or event.order.customer.phone), options)]

    def preview(self, event: Event, partner: Partner) -> tuple[str, str]:
        config = partner.channels[self.name]
        sid = id_for(config["content_sids"], event.event_type, language_of(event))
        if sid is None:
            raise ConfigError(f"no approved content template for {event.event_type} in content_sids")
        return shown(sid, variables_for(self.context.registry, event, partner, config))

    def preview_parts(self, event: Event, partner: Partner) -> dict[str, Any]:
        text, summary = self.preview(event, partner)
        config = partner.channels[self.name]
        return {"text": text, "summary": summary,
                "content_sid": id_for(config["content_sids"], event.event_type, language_of(event)),
                "variables": orjson.loads(variables_for(self.context.registry, event, partner, config))}

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered:
        config, partner, to = target.options["config"], target.options["partner"], target.options["to"]
        if to is None:
            raise PermanentDelivery(f"not a valid phone number: {target.address}", target_fault=False)
        fallback = bool(config.get("fallback_sms_sender"))
        # A customer WhatsApp could not reach before goes straight to the fallback text.
        try:
            unreachable = await keep_rules(self.context, self.name, event, to, config, unreachable_ok=fallback)
        except SentBefore as sent:
            return Delivered(201, sent.reason)
        if unreachable:
            return await self.fallback(event, partner, config, to, unreachable)
        try:
            variables = variables_for(self.context.registry, event, partner, config)
        except ConfigError as exc:  # a template edited since it was applied: retrying cannot fix it
            raise PermanentDelivery(str(exc)) from exc
        try:
            sid = await self.send(event, config, to, variables, target.id)
        except CustomerOptedOut as exc:
            await self.context.store.add_opt_out(self.name, event.partner_id, to, exc.reason)
            raise
        except NotOnWhatsApp as exc:
            await self.context.store.add_opt_out(self.name, event.partner_id, to, f"{UNREACHABLE}{exc.reason}")
            if not fallback:
                raise
            return await self.fallback(event, partner, config, to, exc.reason)
        return Delivered(201, sid)

    async def send(self, event: Event, config: Mapping[str, Any], to: str, variables: str,
                   target_id: str = "customer") -> str:
        """Hand the content template's message to Twilio (without credentials,
        keep it in the development outbox), noting its sid; returns it."""
        content_sid = id_for(config["content_sids"], event.event_type, language_of(event))
        if self.outbox:  # no Twilio credentials: kept as Twilio would have been given it
            text, detail = shown(content_sid or "", variables)
            return await send_noted(self.context, lambda: outbox.keep(
                self.context, self.name, event, f"whatsapp:{to}", text, subject=f"from whatsapp:{config['sender']}",
                content_sid=content_sid, variables=variables, detail=detail), outbox.PROVIDER, event, self.name,
                target_id)
        if not self._started:
            async with self._opening:  # the first messages arrive together: open one client
                if not self._started:
                    await self.twilio.start()
                    self._started = True
        return await send_noted(self.context, lambda: self.twilio.create(
            to=f"whatsapp:{to}", from_=f"whatsapp:{config['sender']}", content_sid=content_sid,
            content_variables=variables,
            status_callback=f"{self.settings.public_url.rstrip('/')}/callbacks/sms/twilio"),
            "twilio", event, self.name, target_id)

    async def send_test(self, event: Event, partner: Partner, to: str) -> Delivered:
        config = partner.channels[self.name]
        number = e164(to, config.get("country", "IN"))
        if number is None:
            raise ConfigError("invalid number", {"to": [f"not a valid phone number for {config.get('country', 'IN')}"]})
        return Delivered(201, await self.send(event, config, number,
                                              variables_for(self.context.registry, event, partner, config)))

    async def fallback(self, event: Event, partner: Partner, config: Mapping[str, Any], to: str,
                       why: str) -> Delivered:
        """Text the customer instead, under the SMS channel's rules and claim: never twice."""
        sms_config = {**(partner.channels.get("sms") or {}), "sender": config["fallback_sms_sender"]}
        try:
            await keep_rules(self.context, "sms", event, to, {**sms_config, "critical": config.get("critical", [])})
        except ClaimedElsewhere as claimed:  # the SMS channel is texting them now: this copy comes back
            raise DeferDelivery(claimed.reason) from claimed
        except SentBefore as before:
            sent = Delivered(201, before.reason)
        else:
            sent = await self.sms.text(event, partner, sms_config, to)
        # Settle the SMS channel's claim as sent, so its own copy of this event sends nothing.
        await settle_quietly(self.context.recorder.submit(Attempt(
            event_id=event.event_id, channel="sms", target="customer", partner_id=event.partner_id,
            address=mask(to), outcome="delivered", attempt=1, latency_ms=0.0, status=sent.status,
            response=f"sent as WhatsApp's fallback: {sent.response}", event_type=event.event_type,
            order_id=event.order.order_id, sequence=event.sequence)))
        return Delivered(sent.status, f"WhatsApp could not reach them ({why}); sent as SMS {sent.response}")


@hookimpl
def shipcast_channels() -> list[type[Channel]]:
    return [WhatsAppChannel]
