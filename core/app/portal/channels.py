"""A merchant's own settings in the portal, under ``/portal/p/{partner_id}/``:
its customer channels (``channels/``: turned on or off, their event types,
sender, quiet hours in its time zone and the rest of the channel's section),
each event type's message in English and Hindi side by side with a live
preview (``channels/{channel}/templates/{TYPE}``), its branding with a live
preview of the tracking page and an email (``branding``), and test messages
to its own number or address.

Every change goes through :mod:`shipcast.app.partner_config`, as the partner
API's do: the partners document's validation, the same errors (shown beside
the field, a template's at its line), the file's fields shown and kept
read-only. The form is built from the channel's own schema, so a channel a
plugin adds gets its page too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from marshmallow import Schema, fields

from shipcast.app import partner_config
from shipcast.app.api.quotas import resend_quota
from shipcast.app.partner_config import SERVER_ONLY
from shipcast.app.people import Person
from shipcast.app.portal.session import checked_form_lists, member, partner_admin
from shipcast.app.portal.web import fragment, framed, page, redirect
from shipcast.app.services import Services, services_of
from shipcast.exceptions import ConfigError, DeliveryError
from shipcast.messaging.fields import QuietHours, TemplateText
from shipcast.messaging.preview import Preview
from shipcast.messaging.quiet import quiet_for
from shipcast.messaging.templates import LANGUAGES
from shipcast.model.envelope import Event
from shipcast.model.examples import example
from shipcast.model.partners import BRANDING, EventList, Partner, plain
from shipcast.security.redact import without_redacted

router = APIRouter(prefix="/portal/p/{partner_id}", include_in_schema=False)

#: What people read beside each field a channel's config may have; other fields show their name.
HELP = {
    "events": "The event types this channel messages the customer on.",
    "sender": "Who the message is from: a phone number (+…) or, for SMS, the sender header (India: the DLT header).",
    "country": "The country of numbers written without a country code, like IN.",
    "provider": "The SMS provider (twilio unless a plugin adds another).",
    "from_address": "Who the email is from, like: Acme Retail <orders@acme.example.com>",
    "reply_to": "Where customers' replies go (default: your support email).",
    "transactional": "Sent without an unsubscribe link (the customer cannot opt out of these).",
    "critical": "Sent even in quiet hours (OFD, FAIL and anything with an OTP always are).",
    "quiet_hours": "Messages that can wait are held until these hours end, in your time zone.",
    "fallback_sms_sender": "Text the customer from this sender when WhatsApp cannot reach them.",
    "content_sids": ('Your approved content template of each event type: {"OFD": "HX…"}, '
                     'or {"OFD": {"en": "HX…", "hi": "HX…"}}.'),
    "variables": 'Each content template\'s variables, in order: {"OFD": ["{{ partner.name }}", "{{ tracking_url }}"]}.',
    "dlt_template_ids": 'India\'s DLT id of each text: {"OFD": {"en": "1107…", "hi": "1107…"}}.',
    "timezone": "The time zone dates on the tracking page are shown in.",
    "reschedule_days": "How many days ahead a customer may pick a new delivery date.",
    "link_days": "How many days a tracking link keeps working.",
    "rating": "Ask the customer to rate the delivery on the tracking page.",
}
#: The longest value one form field may carry (a JSON field's whole text).
MAX_VALUE = 64 * 1024
#: Branding's fields, in the order the form shows them.
BRANDING_FIELDS = ("logo_url", "primary_color", "support_phone", "support_email")


def _base(partner_id: str) -> str:
    return f"/portal/p/{partner_id}"


@dataclass
class FormField:
    """One field of a channel's form: how it is shown, its value, and whether the partners file owns it."""

    name: str
    kind: str  # text | number | check | events | quiet | json
    value: Any
    owned: bool
    required: bool
    #: What the channel's schema says of the field (its ``metadata["description"]``).
    about: str = ""

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").capitalize()

    @property
    def help(self) -> str:
        return HELP.get(self.name) or self.about


def _kind(field: fields.Field) -> str:  # type: ignore[type-arg]
    if isinstance(field, EventList) or (isinstance(field, fields.List) and isinstance(field.inner, fields.String)):
        return "events"
    if isinstance(field, fields.Nested):
        return "quiet" if field.nested is QuietHours else "json"
    if isinstance(field, fields.Boolean):
        return "check"
    if isinstance(field, (fields.Integer, fields.Float)):
        return "number"
    if isinstance(field, fields.String):
        return "text"
    return "json"


def _schema(services: Services, channel: str) -> Schema:
    return services.registry.catalog.channel_schemas[channel]()


def form_fields(services: Services, partner: Partner, channel: str) -> list[FormField]:
    """The fields of ``channel``'s form, as the partner's saved config fills
    them; a JSON field as the channel shows it (its secrets redacted: saved
    back, a redacted one keeps the stored one)."""
    config = plain(partner.channels.get(channel) or {})
    public = services.registry.channels[channel].shown(config)
    owned = partner.owned()
    shown = []
    for name, field in _schema(services, channel).fields.items():
        if name in SERVER_ONLY or (name == "templates" and isinstance(field, fields.Dict)
                                   and isinstance(field.value_field, TemplateText)):
            continue  # templates have their own page
        kind = _kind(field)
        value = config.get(name)
        if kind == "json":
            value = public.get(name)
            value = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() if value not in (None, {}, []) else ""
        elif kind == "quiet":
            value = {key: str(value.get(key, ""))[:5] if key != "timezone" else value.get(key, "")
                     for key in ("start", "end", "timezone")} if value else {"start": "", "end": "", "timezone": ""}
        elif kind == "events" and value is None:
            value = ["*"] if name == "events" and channel in partner.channels else []
        shown.append(FormField(name, kind, value, f"channels.{channel}.{name}" in owned, field.required,
                               str(field.metadata.get("description", ""))))
    return shown


def _parse(form: Mapping[str, list[str]], shown: list[FormField], saved: Mapping[str, Any],
           ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The channel's section from a POSTed form, and what cannot be read in it.
    The file's fields keep their saved values; the templates (their own page) too."""
    value: dict[str, Any] = {key: saved[key] for key in ("templates", *SERVER_ONLY) if key in saved}
    wrong: dict[str, list[str]] = {}
    for field in shown:
        given = [text.strip() for text in form.get(field.name, [])]
        if any(len(text) > MAX_VALUE for text in given):
            wrong[field.name] = [f"at most {MAX_VALUE // 1024} KiB"]
            continue
        if field.owned:
            if field.name in saved:
                value[field.name] = saved[field.name]
            continue
        if field.kind == "events":
            if "*" in given and len(given) > 1:
                given = [name for name in given if name != "*"]  # the types ticked, not "all" left ticked
            if given or field.name != "events":
                value[field.name] = given
        elif field.kind == "check":
            value[field.name] = bool(given)
        elif field.kind == "quiet":
            parts = {key: (form.get(f"{field.name}.{key}") or [""])[-1].strip() for key in ("start", "end", "timezone")}
            if parts["start"] or parts["end"]:
                value[field.name] = {key: text for key, text in parts.items() if text}
        elif given and given[-1]:
            if field.kind == "json":
                try:
                    value[field.name] = without_redacted(orjson.loads(given[-1]))
                except orjson.JSONDecodeError as exc:
                    wrong[field.name] = [f"not JSON: {exc}"]
            elif field.kind == "number":
                value[field.name] = int(given[-1]) if given[-1].lstrip("-").isdigit() else given[-1]
            else:
                value[field.name] = given[-1]
    return value, wrong


def _beside(errors: Mapping[str, list[str]], section: str) -> dict[str, list[str]]:
    """A change's errors by the form field they are shown beside (``_form`` for the rest)."""
    prefix = f"{section}." if section == BRANDING else f"channels.{section}."
    shown: dict[str, list[str]] = {}
    for where, messages in errors.items():
        name = where.removeprefix(prefix).split(".")[0] if where.startswith(prefix) else "_form"
        detail = where.removeprefix(prefix)
        shown.setdefault(name, []).extend(f"{detail}: {m}" if "." in detail else m for m in messages)
    return shown


# -- the channels, and one channel's settings --------------------------------------------


async def stored_partner(services: Services, partner_id: str) -> Partner:
    partner = await services.store.get_partner(partner_id)
    if partner is None:
        raise HTTPException(404, "no such page")
    return partner


def _channel(services: Services, channel: str) -> str:
    if channel not in partner_config.editable(services.registry):
        raise HTTPException(404, "no such page")
    return channel


@router.get("/channels")
async def channel_list(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    services = services_of(request)
    partner = await stored_partner(services, partner_id)
    known = services.registry.channels
    rows = [{"name": name, "description": known[name].description, "on": name in partner.channels,
             "events": (partner.channels.get(name) or {}).get("events", ["*"]),
             "owned": f"channels.{name}" in partner.owned(), "templates": _has_templates(services, name)}
            for name in partner_config.editable(services.registry)]
    return page(request, "channel_list.html", person, title="Customer channels", partner_id=partner_id,
                rows=rows, branding=partner.branding, base=_base(partner_id))


def _has_templates(services: Services, channel: str) -> bool:
    return "templates" in _schema(services, channel).fields


async def message_previews(services: Services, partner: Partner, channel: str,
                           draft: Mapping[str, Any] | None = None) -> list[Preview]:
    """What a channel without templates of its own (WhatsApp: approved content
    templates) sends for each event type it has a message for, as the saved
    config (or ``draft``) makes it: its channel page shows them, and follows
    the form as one types."""
    config = draft if draft is not None else partner.channels.get(channel)
    if config is None or _has_templates(services, channel) or services.registry.channels[channel].customer_field is None:
        return []
    events = config.get("events") or ["*"]
    shown = []
    for event_type in services.registry.event_types:
        if "*" not in events and event_type not in events:
            continue
        found = await partner_config.preview_section(services, partner.id, channel, draft, event_type, "en")
        if not found.samples:  # the draft is not a valid section: its problems, once
            return [found]
        if event_type in events or any(sample.error is None for sample in found.samples):
            shown.append(found)
    return shown


def _channel_page(request: Request, person: Person, partner: Partner, channel: str, *,
                  shown: list[FormField] | None = None, errors: Mapping[str, list[str]] | None = None,
                  status_code: int = 200, previews: list[Preview] | None = None) -> Response:
    services = services_of(request)
    config = partner.channels.get(channel) or {}
    quiet = config.get("quiet_hours")
    zone = (quiet or {}).get("timezone") or "Asia/Kolkata"
    now = datetime.now(ZoneInfo(zone))
    return page(request, "channel_form.html", person, title=f"{channel} · customer channels", partner_id=partner.id,
                status_code=status_code, channel=channel, description=services.registry.channels[channel].description,
                on=channel in partner.channels, owned_whole=f"channels.{channel}" in partner.owned(),
                fields=shown if shown is not None else form_fields(services, partner, channel),
                errors=errors or {}, catalog=[(n, t.description) for n, t in services.registry.event_types.items()],
                event_types=list(services.registry.event_types), languages=LANGUAGES,
                zones=sorted(available_timezones()), local_time=f"{now:%H:%M} in {zone}",
                quiet_now=bool(quiet and quiet_for(quiet, datetime.now(UTC)) > 0),
                templates=_has_templates(services, channel), base=_base(partner_id=partner.id),
                messages=services.registry.channels[channel].customer_field is not None,
                may_change=person.may_change(partner.id), test_to=request.query_params.get("to", ""),
                previews=previews or [])


@router.get("/channels/{customer_channel}")
async def channel_form(partner_id: str, customer_channel: str, request: Request,
                       person: Person = Depends(member)) -> Response:
    services = services_of(request)
    partner = await stored_partner(services, partner_id)
    channel = _channel(services, customer_channel)
    return _channel_page(request, person, partner, channel,
                         previews=await message_previews(services, partner, channel))


@router.post("/channels/{customer_channel}")
async def channel_save(partner_id: str, customer_channel: str, request: Request,
                       person: Person = Depends(partner_admin),
                       form: dict[str, list[str]] = Depends(checked_form_lists)) -> Response:
    """Turn the channel on with the form's settings, or change them."""
    services = services_of(request)
    channel = _channel(services, customer_channel)
    partner = await stored_partner(services, partner_id)
    shown = form_fields(services, partner, channel)
    value, wrong = _parse(form, shown, plain(partner.channels.get(channel) or {}))
    if not wrong:
        try:
            await partner_config.change_section(services, partner_id, channel, value, person.actor)
        except ConfigError as exc:
            wrong = _beside(exc.errors, channel)
        else:
            return redirect(request, f"{_base(partner_id)}/channels/{channel}", f"Saved the {channel} settings.")
    typed = [replace(f, value=_typed(form, f)) for f in shown]
    return _channel_page(request, person, partner, channel, shown=typed, errors=wrong, status_code=422)


def _typed(form: Mapping[str, list[str]], field: FormField) -> Any:
    """What was typed in a field, to show again beside its error."""
    if field.owned:
        return field.value
    given = form.get(field.name, [])
    if field.kind == "events":
        return given
    if field.kind == "check":
        return bool(given)
    if field.kind == "quiet":
        return {key: (form.get(f"{field.name}.{key}") or [""])[-1] for key in ("start", "end", "timezone")}
    return given[-1] if given else ""


@router.post("/channels/{customer_channel}/preview")
async def channel_preview(partner_id: str, customer_channel: str, request: Request,
                          person: Person = Depends(partner_admin),
                          form: dict[str, list[str]] = Depends(checked_form_lists)) -> Response:
    """The messages of what is typed in the channel's form (the page's script asks as one types): nothing is saved."""
    services = services_of(request)
    channel = _channel(services, customer_channel)
    partner = await stored_partner(services, partner_id)
    value, wrong = _parse(form, form_fields(services, partner, channel), plain(partner.channels.get(channel) or {}))
    previews = [] if wrong else await message_previews(services, partner, channel, value)
    return fragment(request, "channel_previews.html", previews=previews, wrong=wrong)


@router.post("/channels/{customer_channel}/off")
async def channel_off(partner_id: str, customer_channel: str, request: Request,
                      person: Person = Depends(partner_admin),
                      form: dict[str, list[str]] = Depends(checked_form_lists)) -> Response:
    services = services_of(request)
    channel = _channel(services, customer_channel)
    try:
        await partner_config.change_section(services, partner_id, channel, None, person.actor)
    except ConfigError as exc:
        return redirect(request, f"{_base(partner_id)}/channels/{channel}", "; ".join(
            m for messages in exc.errors.values() for m in messages))
    return redirect(request, f"{_base(partner_id)}/channels/{channel}",
                    f"Turned {channel} off: customers get nothing more on it.")


@router.post("/channels/{customer_channel}/test")
async def channel_test(partner_id: str, customer_channel: str, request: Request,
                       person: Person = Depends(partner_admin),
                       form: dict[str, list[str]] = Depends(checked_form_lists)) -> Response:
    """Send the saved config's message for a sample event to the merchant's own number or address."""
    services = services_of(request)
    channel = _channel(services, customer_channel)
    to = (form.get("to") or [""])[-1].strip()[:254]
    event_type = (form.get("event_type") or ["OFD"])[-1]
    language = (form.get("language") or ["en"])[-1]
    quota = resend_quota(request)
    here = f"{_base(partner_id)}/channels/{channel}"
    try:
        quota.take(partner_id, 1)
    except HTTPException as exc:
        return redirect(request, here, f"Not sent: {exc.detail}")
    try:
        sent = await partner_config.send_test(services, partner_id, channel, to, event_type,
                                              language if language in LANGUAGES else "en", person.actor)
    except (ConfigError, partner_config.UnknownPartner) as exc:
        quota.give_back(partner_id, 1)
        errors = getattr(exc, "errors", None) or {"to": [str(exc)]}
        return redirect(request, here, "Not sent: " + "; ".join(f"{k}: {'; '.join(v)}" for k, v in errors.items()))
    except DeliveryError as exc:
        return redirect(request, here, f"Not sent: the provider refused it: {exc}")
    return redirect(request, here, f"Sent the {event_type} test message to {sent['to']}: {sent['response']}")


# -- one event type's message, in every language, with its preview ------------------------


def shipped(channel: str, event_type: str, language: str) -> str | None:
    """The text shipcast ships for this message, if any."""
    found = files("shipcast.templates") / channel / f"{event_type}.{language}.j2"
    return found.read_text(encoding="utf-8").strip() if found.is_file() else None


def texts_of(config: Mapping[str, Any], channel: str, event_type: str) -> dict[str, dict[str, Any]]:
    """Each language's text of this message as the editor shows it, and its
    ``state``: the partner's ``own``, the ``shipped`` one (the partner has
    none for this message), or ``missing`` (the partner's text has no such
    language: those customers get its English text)."""
    override = (config.get("templates") or {}).get(event_type)
    shown = {}
    for language in LANGUAGES:
        default = shipped(channel, event_type, language)
        if not override:
            text, state = default or "", "shipped" if default else "missing"
        else:
            own = override.get(language) if isinstance(override, Mapping) else override if language == "en" else None
            text, state = (own, "own") if own else ("", "missing")
        shown[language] = {"text": text, "state": state, "shipped": default is not None}
    return shown


def typed_texts(form: Mapping[str, list[str]], channel: str, event_type: str) -> dict[str, str]:
    """Each language's text as the form gives it, ``reset`` ones back to the shipped text."""
    reset = set(form.get("reset", []))
    texts = {}
    for language in LANGUAGES:
        text = (form.get(f"text_{language}") or [""])[-1].replace("\r\n", "\n").strip()
        texts[language] = (shipped(channel, event_type, language) or "") if language in reset else text
    return texts


def _with_texts(config: Mapping[str, Any], channel: str, event_type: str,
                form: Mapping[str, list[str]]) -> dict[str, Any]:
    """The channel's config with this message's texts as the form gives
    them. Texts all as shipped are not stored (the message follows the
    shipped ones); otherwise every language given is, so a Hindi text left
    as shipped still goes to Hindi-speaking customers."""
    texts = typed_texts(form, channel, event_type)
    templates = {key: value for key, value in (config.get("templates") or {}).items() if key != event_type}
    if any(text != (shipped(channel, event_type, language) or "").strip() for language, text in texts.items()):
        templates[event_type] = {language: text for language, text in texts.items() if text}
    return {**config, "templates": templates}


def _event_type(services: Services, event_type: str) -> str:
    if event_type not in services.registry.event_types:
        raise HTTPException(404, "no such page")
    return event_type


async def _previews(services: Services, partner_id: str, channel: str, config: Mapping[str, Any],
                    event_type: str) -> dict[str, Preview]:
    return {language: await partner_config.preview_section(services, partner_id, channel, config, event_type,
                                                           language)
            for language in LANGUAGES}


def _templates_page(request: Request, person: Person, partner: Partner, channel: str, event_type: str,
                    texts: dict[str, dict[str, Any]], previews: dict[str, Preview], *,
                    status_code: int = 200) -> Response:
    services = services_of(request)
    field = f"templates.{event_type}"
    first = next(iter(previews.values()), None)
    others = [p for p in first.problems if p.field not in (field, f"channels.{channel}")] if first else []
    return page(request, "channel_templates.html", person, title=f"{event_type} · {channel}", partner_id=partner.id,
                status_code=status_code, channel=channel, event_type=event_type, texts=texts, previews=previews,
                field=field, other_problems=others, languages=LANGUAGES, base=_base(partner.id),
                on=channel in partner.channels, owned=f"channels.{channel}.templates" in partner.owned(),
                event_types=[t for t in services.registry.event_types], may_change=person.may_change(partner.id),
                description=services.registry.event_types[event_type].description)


@router.get("/channels/{customer_channel}/templates/{event_type}")
async def templates_form(partner_id: str, customer_channel: str, event_type: str, request: Request,
                         person: Person = Depends(member)) -> Response:
    services = services_of(request)
    channel, event_type = _channel(services, customer_channel), _event_type(services, event_type)
    partner = await stored_partner(services, partner_id)
    if not _has_templates(services, channel):
        raise HTTPException(404, "no such page")
    config = plain(partner.channels.get(channel) or {})
    previews = await _previews(services, partner_id, channel, config, event_type) if config else {}
    return _templates_page(request, person, partner, channel, event_type, texts_of(config, channel, event_type),
                           previews)


async def _draft(request: Request, partner_id: str, customer_channel: str, event_type: str,
                 form: Mapping[str, list[str]]) -> tuple[Services, Partner, str, str, dict[str, Any]]:
    services = services_of(request)
    channel, event_type = _channel(services, customer_channel), _event_type(services, event_type)
    partner = await stored_partner(services, partner_id)
    if not _has_templates(services, channel) or channel not in partner.channels:
        raise HTTPException(404, "no such page")
    return services, partner, channel, event_type, _with_texts(plain(partner.channels[channel]), channel,
                                                               event_type, form)


@router.post("/channels/{customer_channel}/templates/{event_type}")
async def templates_save(partner_id: str, customer_channel: str, event_type: str, request: Request,
                         person: Person = Depends(partner_admin),
                         form: dict[str, list[str]] = Depends(checked_form_lists)) -> Response:
    """Save this message's texts (``reset`` one language to the shipped text),
    or with ``preview`` only show the page with the previews of what was typed."""
    services, partner, channel, event_type, config = await _draft(request, partner_id, customer_channel,
                                                                  event_type, form)
    texts = {language: {"text": text, "state": "own" if text else "missing",
                        "shipped": shipped(channel, event_type, language) is not None}
             for language, text in typed_texts(form, channel, event_type).items()}
    if not form.get("preview"):
        try:
            await partner_config.change_section(services, partner_id, channel, config, person.actor)
        except ConfigError:
            pass  # shown below, each problem beside its text and line
        else:
            reset = set(form.get("reset", []))
            said = f"Reset the {'/'.join(sorted(reset))} text to the shipped one." if reset else "Saved."
            return redirect(request, f"{_base(partner_id)}/channels/{channel}/templates/{event_type}",
                            f"{event_type} {channel} message: {said}")
    previews = await _previews(services, partner_id, channel, config, event_type)
    failed = not all(p.ok for p in previews.values()) and not form.get("preview")
    return _templates_page(request, person, partner, channel, event_type, texts, previews,
                           status_code=422 if failed else 200)


@router.post("/channels/{customer_channel}/templates/{event_type}/preview")
async def templates_preview(partner_id: str, customer_channel: str, event_type: str, request: Request,
                            person: Person = Depends(partner_admin),
                            form: dict[str, list[str]] = Depends(checked_form_lists)) -> Response:
    """The preview panel of one language for what is typed (the page's script asks as one types)."""
    services, partner, channel, event_type, config = await _draft(request, partner_id, customer_channel,
                                                                  event_type, form)
    language = (form.get("language") or ["en"])[-1]
    if language not in LANGUAGES:
        raise HTTPException(422, f"language must be one of {', '.join(LANGUAGES)}")
    shown = await partner_config.preview_section(services, partner_id, channel, config, event_type, language)
    return fragment(request, "channel_preview.html", preview=shown, language=language,
                    field=f"templates.{event_type}", base=_base(partner_id), channel=channel, event_type=event_type)


@router.post("/channels/{customer_channel}/templates/{event_type}/email")
async def templates_email(partner_id: str, customer_channel: str, event_type: str, request: Request,
                          person: Person = Depends(partner_admin),
                          form: dict[str, list[str]] = Depends(checked_form_lists)) -> Response:
    """The HTML an email of what is typed would carry, for the preview's frame."""
    services, partner, channel, event_type, config = await _draft(request, partner_id, customer_channel,
                                                                  event_type, form)
    language = (form.get("language") or ["en"])[-1]
    shown = await partner_config.preview_section(services, partner_id, channel, config, event_type,
                                                 language if language in LANGUAGES else "en")
    html = next((s.parts or {}).get("html") for s in shown.samples) if shown.samples else None
    return framed(html or "<p>This message cannot be made yet: see the problems beside the text.</p>")


# -- branding, and what customers see of it ---------------------------------------------


def _branding_page(request: Request, person: Person, partner: Partner, values: Mapping[str, Any],
                   errors: Mapping[str, list[str]] | None = None, status_code: int = 200) -> Response:
    owned = partner.owned()
    return page(request, "branding.html", person, title="Branding", partner_id=partner.id, status_code=status_code,
                values={name: values.get(name) or "" for name in BRANDING_FIELDS}, errors=errors or {},
                owned={name for name in BRANDING_FIELDS if f"{BRANDING}.{name}" in owned},
                base=_base(partner.id), may_change=person.may_change(partner.id),
                previews=[(name, channel.branding_preview) for name, channel in
                          services_of(request).registry.channels.items() if channel.branding_preview],
                query=_query({name: values.get(name) or "" for name in BRANDING_FIELDS}))


def _query(values: Mapping[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in values.items() if v})


@router.get("/branding")
async def branding_form(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    partner = await stored_partner(services_of(request), partner_id)
    return _branding_page(request, person, partner, partner.branding)


@router.post("/branding")
async def branding_save(partner_id: str, request: Request, person: Person = Depends(partner_admin),
                        form: dict[str, list[str]] = Depends(checked_form_lists)) -> Response:
    services = services_of(request)
    partner = await stored_partner(services, partner_id)
    typed = {name: (form.get(name) or [""])[-1].strip()[:2000] for name in BRANDING_FIELDS}
    value = {name: partner.branding[name] if f"{BRANDING}.{name}" in partner.owned() and name in partner.branding
             else text for name, text in typed.items() if text or name in partner.branding and
             f"{BRANDING}.{name}" in partner.owned()}
    try:
        await partner_config.change_section(services, partner_id, BRANDING, value, person.actor)
    except ConfigError as exc:
        return _branding_page(request, person, partner, typed, _beside(exc.errors, BRANDING), 422)
    return redirect(request, f"{_base(partner_id)}/branding", "Saved the branding.")


def draft_branding(request: Request, partner: Partner) -> tuple[Partner, list[str]]:
    """The partner wearing the branding in the query (as typed), what is valid of it, and what is not."""
    from shipcast.model.partners import load_section

    typed = {name: request.query_params.get(name, "").strip()[:2000] for name in BRANDING_FIELDS}
    given = {name: text for name, text in typed.items() if text}
    wrong: list[str] = []
    for name, text in list(given.items()):
        try:
            load_section(services_of(request).registry.catalog, BRANDING, {name: text})
        except ConfigError as exc:
            wrong += [f"{name}: {'; '.join(m)}" for m in exc.errors.values()]
            del given[name]
    return Partner(partner.id, partner.name, given, partner.channels), wrong


def branding_sample(request: Request, partner_id: str) -> Event:
    """The one sample order every branding preview shows (of the query's
    ``event_type``, OFD by default), so the tracking page and the email name
    the same order. It has no merchant reference, which the tracking page
    would show in place of the order id the email gives, and no rider photo:
    the sample's address could not load, and would show as a broken image."""
    event_types = services_of(request).registry.event_types
    asked = request.query_params.get("event_type", "OFD")
    event = example(asked if asked in event_types else "OFD", event_types, partner_id=partner_id)
    rider = event.rider.model_copy(update={"photo_url": None}) if event.rider is not None else None
    return event.model_copy(update={"order": event.order.model_copy(update={"merchant_order_ref": None}),
                                    "rider": rider})
