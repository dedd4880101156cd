"""The SMS channel: a text to the order's customer on the events the merchant
picks, rendered from ``templates/sms`` (English, Hindi) or the partner's own,
sent through a provider plugin (Twilio ships).

Config (``channels.sms`` in the partners file)::

    sms:
      events: [OFD, FAIL]
      sender: ACMEIN               # the sender header (India: the DLT header)
      provider: twilio             # default
      country: IN                  # for numbers written without +country code
      dlt_template_ids: {OFD: {en: "1107161234567890123", hi: "1107161234567890125"},
                         FAIL: "1107161234567890124"}   # one id: FAIL's texts are all English
      templates: {FAIL: "..."}     # or {FAIL: {en: "...", hi: "..."}}
      quiet_hours: {start: "21:00", end: "08:00", timezone: Asia/Kolkata}
      critical: [RET]              # more types sent even in quiet hours

A customer who opted out (Twilio 21610) gets nothing more on this channel, an
OFD or FAIL received after the order's DEL or RET is not sent, and a
non-critical text (a DEL's review request) waits out the quiet hours. OFDs,
FAILs and anything carrying an OTP are always critical: ``critical`` adds
types, it cannot make those wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import phonenumbers
import pluggy
from marshmallow import RAISE, Schema, fields, validate

from shipcast import hookimpl
from shipcast.exceptions import ConfigError, PermanentDelivery, SentBefore
from shipcast.messaging import outbox
from shipcast.messaging.fields import Critical, IdsByType, QuietHours, TemplateDir, Templates, id_for
from shipcast.messaging.rules import finish_sends, keep_rules, mask, send_noted
from shipcast.messaging.templates import LANGUAGES, check_templates, language_of, render, serves, text_language
from shipcast.model.envelope import Event
from shipcast.model.partners import Partner
from shipcast.plugin.channel import Channel, Delivered, EventList, Target
from shipcast.plugin.context import Registered
from shipcast.settings import Settings

from .providers import CustomerOptedOut, OutboxSms, SmsMessage, SmsProvider, TwilioSms
from .segments import describe, encoding, segments

#: The longest text sent, in segments: anything longer is a template to fix.
MAX_SEGMENTS = 6


class SmsConfig(Schema):
    class Meta:
        unknown = RAISE

    events = EventList()
    sender = fields.String(required=True, validate=validate.Regexp(
        r"^(\+[0-9]{6,15}|[A-Za-z0-9]{3,11})$", error="must be a phone number (+…) or a 3-11 character header"))
    provider = fields.String(load_default="twilio")
    country = fields.String(load_default="IN", validate=validate.Regexp(r"^[A-Z]{2}\Z", error="must be like IN"))
    #: India's DLT id of each event type's text: one, or one per language (each text is registered apart).
    dlt_template_ids = IdsByType(r"[0-9]{19}", "must be a 19-digit DLT template id")
    templates = Templates()
    #: A directory on the server with the partner's own ``<channel>/<TYPE>.<lang>.j2``.
    template_dir = TemplateDir()
    quiet_hours = fields.Nested(QuietHours)
    critical = Critical()


class SmsChannel(Channel):
    name = "sms"
    description = "Texts to the order's customer (Twilio, or another provider plugin)"
    prefetch = 64
    config_schema = SmsConfig
    partner_editable = True
    customer_field = "phone"
    lift_note = ("Twilio itself keeps blocking texts to a number that replied STOP until the customer texts "
                 "START to your sender: until then a text fails again with Twilio 21610 and the opt-out "
                 "comes back.")
    providers: dict[str, SmsProvider]

    @classmethod
    def customer_address(cls, written: str, config: Mapping[str, Any]) -> str | None:
        """The number in E.164 (the config's ``country`` for one written without +)."""
        return e164(written, config.get("country", "IN"))

    @classmethod
    async def prepare(cls, registry: Registered, partner_id: str, config: dict[str, Any],
                      stored: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every template this config may send renders, in every language."""
        errors = cls.check(registry, partner_id, config)
        if errors:
            raise ConfigError("refused", errors)
        return config

    @classmethod
    def check(cls, registry: Registered, partner_id: str, config: Mapping[str, Any]) -> dict[str, list[str]]:
        known = providers(registry)
        errors: dict[str, list[str]] = {}
        if config.get("provider", "twilio") not in known:
            errors["provider"] = [f"unknown SMS provider; installed: {', '.join(sorted(known))}"]
        errors.update(check_templates(registry, cls.name, partner_id, partner_id, {}, config))
        errors.update(missing_dlt_ids(config))
        return errors

    @classmethod
    def development_outbox(cls, settings: Settings) -> str | None:
        if outbox.in_use(settings, outbox.twilio_configured(settings)):
            return "texts through Twilio, whose SHIPCAST_TWILIO_ACCOUNT_SID and _AUTH_TOKEN are not set"
        return None

    async def start(self) -> None:
        self.providers = {}
        self._opening = asyncio.Lock()

    async def close(self) -> None:
        await finish_sends()
        for provider in self.providers.values():
            await provider.close()

    async def _provider(self, name: str) -> SmsProvider:
        if name not in self.providers:
            async with self._opening:  # the first texts arrive together: open one client, not one each
                if name not in self.providers:
                    if name == TwilioSms.name and self.development_outbox(self.settings):
                        provider: SmsProvider = OutboxSms(self.settings, self.context)
                    else:
                        provider = providers(self.context.registry)[name](self.settings)
                    await provider.start()
                    self.providers[name] = provider
        return self.providers[name]

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        if partner is None or self.name not in partner.channels or not event.order.customer.phone:
            return []
        config = partner.channels[self.name]
        if not serves(self.name, event.event_type, config):
            return []
        raw = event.order.customer.phone
        number = self.customer_address(raw, config)
        if number is None:
            return [Target("customer", mask(raw), {"invalid": raw, "config": config, "partner": partner})]
        return [Target("customer", mask(number), {"to": number, "config": config, "partner": partner})]

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered:
        if "invalid" in target.options:
            raise PermanentDelivery(f"not a valid phone number: {target.address}", target_fault=False)
        config, partner = target.options["config"], target.options["partner"]
        try:
            await keep_rules(self.context, self.name, event, target.options["to"], config)
        except SentBefore as sent:
            return Delivered(201, sent.reason)
        return await self.text(event, partner, config, target.options["to"])

    def preview(self, event: Event, partner: Partner) -> tuple[str, str]:
        text = self.render(event, partner, partner.channels[self.name])
        return text, describe(text)

    def preview_parts(self, event: Event, partner: Partner) -> dict[str, Any]:
        text, summary = self.preview(event, partner)
        count = segments(text)
        return {"text": text, "summary": summary, "segments": count, "encoding": encoding(text),
                "too_long": f"{count} segments; at most {MAX_SEGMENTS} are sent" if count > MAX_SEGMENTS else None}

    async def send_test(self, event: Event, partner: Partner, to: str) -> Delivered:
        config = partner.channels[self.name]
        number = e164(to, config.get("country", "IN"))
        if number is None:
            raise ConfigError("invalid number", {"to": [f"not a valid phone number for {config.get('country', 'IN')}"]})
        return await self.text(event, partner, config, number)

    def render(self, event: Event, partner: Partner, config: Mapping[str, Any]) -> str:
        return render(self.context.registry, self.name, event, partner, config.get("templates"),
                      directory=config.get("template_dir"))

    async def text(self, event: Event, partner: Partner, config: Mapping[str, Any], to: str) -> Delivered:
        """Render and send the text (the rules kept already): for this channel,
        and for WhatsApp's fallback."""
        try:
            text = self.render(event, partner, config)
        except ConfigError as exc:  # a template edited since it was applied: retrying cannot fix it
            raise PermanentDelivery(str(exc)) from exc
        count = segments(text)
        if count > MAX_SEGMENTS:
            raise PermanentDelivery(f"message is {count} segments; at most {MAX_SEGMENTS}: shorten the template")
        provider = await self._provider(config.get("provider", "twilio"))
        written_in = text_language(self.name, event.event_type, language_of(event), config.get("templates"),
                                   config.get("template_dir"))
        message = SmsMessage(
            to=to, sender=config["sender"], body=text,
            dlt_template_id=id_for(config.get("dlt_template_ids", {}), event.event_type, written_in),
            status_callback=f"{self.settings.public_url.rstrip('/')}/callbacks/sms/{provider.name}", event=event)
        try:
            sid = await send_noted(self.context, lambda: provider.send(message), provider.name, event, self.name)
        except CustomerOptedOut as exc:
            await self.context.store.add_opt_out(self.name, event.partner_id, to, exc.reason)
            raise
        return Delivered(201, f"{sid}: {count} segment{'s' if count > 1 else ''}")


def missing_dlt_ids(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per-language DLT ids must cover every language a text is sent in:
    a Hindi text under the English text's id is one the carrier filters."""
    errors: dict[str, list[str]] = {}
    for event_type, ids in config.get("dlt_template_ids", {}).items():
        for language in LANGUAGES:
            try:
                written_in = text_language("sms", event_type, language, config.get("templates"),
                                           config.get("template_dir"))
            except ConfigError:
                continue  # no text at all: check_templates says so
            if not isinstance(ids, Mapping) and written_in != "en":
                # One id is one registered text: the English one.
                errors[f"dlt_template_ids.{event_type}"] = [
                    f"one id, but {event_type} texts are also sent in '{written_in}', registered under their "
                    f"own DLT id: give {{en: …, {written_in}: …}}"]
            elif isinstance(ids, Mapping) and written_in not in ids:
                errors[f"dlt_template_ids.{event_type}.{written_in}"] = [
                    f"missing: {event_type} texts are sent in '{written_in}', registered under their own DLT id"]
    return errors


def e164(raw: str, country: str) -> str | None:
    """``raw`` in E.164 (``country`` for numbers written without one), or
    ``None`` when it is not a valid number."""
    try:
        number = phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def providers(registry: Registered) -> dict[str, type[SmsProvider]]:
    """Every SMS provider registered with ``registry``, by name."""
    found: dict[str, type[SmsProvider]] = {}
    for registered in registry.hook.shipcast_sms_providers():
        for provider in registered:
            found[provider.name] = provider
    return found


@hookimpl
def shipcast_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def shipcast_channels() -> list[type[Channel]]:
    return [SmsChannel]


@hookimpl
def shipcast_sms_providers() -> list[type[SmsProvider]]:
    return [TwilioSms]


@hookimpl
def shipcast_routers() -> list[Any]:
    from .callbacks import router

    return [router]
