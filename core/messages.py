"""Messages to end customers: the templates, their context, the tracking link.

Every customer channel (SMS, WhatsApp, email) renders ``templates/<channel>/
<TYPE>.<lang>.j2`` (English and Hindi ship), unless the partner's config
overrides it. Rendering is strict: a missing variable is an error when the
partners file is applied (every template is rendered then, for every event
type and language, with realistic data and with the envelope's nulls), never
a blank in a customer's message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from marshmallow import RAISE, Schema, ValidationError, fields, validates_schema

from .envelope import Event
from .exceptions import ClaimedElsewhere, ConfigError, DeferDelivery, SentBefore, SkipDelivery, StoreError
from .partners import Partner
from .settings import Settings
from .store import address_hash
from .templating import environment

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)

#: Languages every shipped template exists in; a customer's other languages get English.
LANGUAGES = ("en", "hi")


def language_of(event: Event, default: str = "en") -> str:
    language = (event.order.customer.language or default).split("-")[0]
    return language if language in LANGUAGES else default


def _link_keys(settings: Settings, purpose: str) -> list[bytes]:
    """The keys links are signed with: one per ``SHIPCAST_SECRET_KEY`` key,
    the first signing, every one verifying, so rotating the secret key (new
    key first, old after it) keeps links in messages already sent working."""
    from .crypto import secret_box

    secrets = [k.strip() for k in (settings.secret_key or "").split(",") if k.strip()] \
        or [secret_box(settings).key_id]
    return [hashlib.sha256(f"{purpose}:{secret}".encode()).digest() for secret in secrets]


#: The bytes of HMAC-SHA256 a link token keeps: 96 bits, unguessable.
MAC_BYTES = 12


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def sign_link(settings: Settings, purpose: str, payload: str) -> str:
    """``payload`` and its MAC (keyed for ``purpose``), URL-safe: a link
    token nobody can forge or alter. Not encrypted: the payload is readable."""
    mac = _mac(_link_keys(settings, purpose)[0], payload.encode())
    return base64.urlsafe_b64encode(payload.encode() + b"|" + mac).rstrip(b"=").decode()


def verify_link(settings: Settings, purpose: str, token: str) -> str | None:
    """The payload of a token :func:`sign_link` made for ``purpose``, or ``None``."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
        return None  # one token per payload: no second spelling with stray characters
    # The MAC is binary and may hold a "|" itself: split at its fixed length, never by searching.
    payload, bar, mac = raw[:-MAC_BYTES - 1], raw[-MAC_BYTES - 1:-MAC_BYTES], raw[-MAC_BYTES:]
    if not payload or bar != b"|" or not any(hmac.compare_digest(mac, _mac(key, payload))
                              for key in _link_keys(settings, purpose)):
        return None
    return payload.decode("utf-8", "replace")


def unsubscribe_token(settings: Settings, channel: str, partner_id: str, address: str) -> str:
    """A token for one customer's one-click unsubscribe from one partner's
    messages on one channel; it carries a hash of the address, not the address."""
    return sign_link(settings, "unsubscribe", f"{channel}:{partner_id}:{address_hash(address)}")


def read_unsubscribe_token(settings: Settings, token: str) -> tuple[str, str, str] | None:
    """``(channel, partner_id, address hash)``, or ``None`` for a forged token."""
    payload = verify_link(settings, "unsubscribe", token)
    if payload is None or payload.count(":") != 2:
        return None
    channel, partner_id, hashed = payload.split(":")
    return channel, partner_id, hashed




def link_mac(settings: Settings, purpose: str, payload: str) -> str:
    """A short MAC of ``payload`` for ``purpose`` (a form's CSRF token), hex."""
    return _mac(_link_keys(settings, purpose)[0], payload.encode()).hex()


def check_link_mac(settings: Settings, purpose: str, payload: str, mac: str) -> bool:
    return any(hmac.compare_digest(mac.encode(), _mac(key, payload.encode()).hex().encode())
               for key in _link_keys(settings, purpose))


def tracking_url(settings: Settings, event: Event, partner: Partner | None) -> str:
    """The tracking-page link every message carries, from the tracking
    channel (or another plugin) through ``shipcast_tracking_url``; without
    one, ``SHIPCAST_PUBLIC_URL`` itself."""
    from .plugin_manager import get_plugin_manager

    url = get_plugin_manager().hook.shipcast_tracking_url(event=event, partner=partner, settings=settings)
    return str(url) if url else settings.public_url


def context(settings: Settings, event: Event, partner: Partner | None) -> dict[str, Any]:
    """What a template sees: the envelope's groups (``None`` where they do not
    apply), the partner's name and branding, and the tracking link."""
    envelope = event.model_dump(mode="json", by_alias=True)
    # Every branding field is there, None when the partner has not set it.
    branding = {"logo_url": None, "primary_color": None, "support_phone": None, "support_email": None,
                **(dict(partner.branding) if partner else {})}
    return {
        **envelope,
        "event": envelope,
        "customer": envelope["order"]["customer"],
        "partner": {"id": event.partner_id, "name": partner.name if partner else event.partner_id, **branding},
        "tracking_url": tracking_url(settings, event, partner),
    }


@cache
def _compiled(source: str) -> jinja2.Template:
    return environment().from_string(source)


@lru_cache(maxsize=1024)
def _from_file(path: str, changed: int) -> jinja2.Template:
    """A partner's template file, read again only when it changes."""
    return _compiled(Path(path).read_text(encoding="utf-8"))


def template_for(channel: str, event_type: str, language: str, overrides: Mapping[str, Any] | None,
                 directory: str | None = None) -> jinja2.Template:
    """The partner's override for this event type (one text, or one per
    language), else its own directory's ``<channel>/<TYPE>.<lang>.j2``, else
    the shipped template; English where a language is missing."""
    return _text(channel, event_type, language, overrides, directory)[1]()


def text_language(channel: str, event_type: str, language: str, overrides: Mapping[str, Any] | None,
                  directory: str | None = None) -> str:
    """The language of the text :func:`template_for` picks for ``language``:
    itself, or English where there is no text in it. A partner's single text
    for every language counts as English. India's DLT registers each text
    with its own id, so the id sent follows this, not the customer's language."""
    return _text(channel, event_type, language, overrides, directory)[0]


def _text(channel: str, event_type: str, language: str, overrides: Mapping[str, Any] | None,
          directory: str | None) -> tuple[str, Callable[[], jinja2.Template]]:
    override = (overrides or {}).get(event_type)
    if isinstance(override, Mapping):
        for lang in (language, "en"):
            if override.get(lang):
                return lang, partial(_compiled, str(override[lang]))
    elif override:
        return "en", partial(_compiled, str(override))
    if directory:
        for lang in (language, "en"):
            path = Path(directory) / channel / f"{event_type}.{lang}.j2"
            try:
                changed = path.stat().st_mtime_ns
            except OSError:
                continue
            return lang, partial(_from_file, str(path), changed)
    loader = environment()
    for lang in (language, "en"):
        try:
            loader.get_template(f"{channel}/{event_type}.{lang}.j2")
        except jinja2.TemplateNotFound:
            continue
        return lang, partial(loader.get_template, f"{channel}/{event_type}.{lang}.j2")
    raise ConfigError(f"no {channel} template for {event_type}: add templates/{channel}/{event_type}.en.j2 "
                      f"or a '{event_type}' entry under the partner's {channel}.templates")


class IdsByType(fields.Field):  # type: ignore[type-arg]
    """A provider's id for each event type's text: ``{OFD: id}`` for every
    language, or ``{OFD: {en: id, hi: id}}`` one per language (English, the
    fallback, required). Errors name the event type and language."""

    def __init__(self, pattern: str, error: str, **kwargs: Any) -> None:
        if not kwargs.get("required"):
            kwargs.setdefault("load_default", dict)
        super().__init__(**kwargs)
        self.pattern, self.error = re.compile(pattern), error

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValidationError("must map event types to an id, or to {en: id, hi: id}")
        errors: dict[str, Any] = {}
        for event_type, ids in value.items():
            if not isinstance(ids, Mapping):
                if not (isinstance(ids, str) and self.pattern.fullmatch(ids)):
                    errors[str(event_type)] = [self.error]
                continue
            wrong = {str(lang): [f"unknown language; one of {', '.join(LANGUAGES)}"]
                     for lang in ids if lang not in LANGUAGES}
            wrong.update({str(lang): [self.error] for lang, one in ids.items() if lang in LANGUAGES
                          and not (isinstance(one, str) and self.pattern.fullmatch(one))})
            if "en" not in ids:
                wrong["en"] = ["missing: English is the fallback for every other language"]
            if wrong:
                errors[str(event_type)] = wrong
        if errors:
            raise ValidationError(errors)
        return {str(k): dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}


def id_for(ids: Mapping[str, Any], event_type: str, language: str) -> str | None:
    """The id :class:`IdsByType` gives this event type's text in ``language`` (English where it has none)."""
    found = ids.get(event_type)
    if isinstance(found, Mapping):
        return found.get(language) or found.get("en")
    return found


def serves(channel: str, event_type: str, config: Mapping[str, Any]) -> bool:
    """Whether a customer channel's config sends a message for this event
    type: it lists the type, or lists ``*`` and a template for the type
    exists (so the customer's own events, such as a rating, text nobody)."""
    events = config.get("events", ["*"])
    if event_type in events:
        return True
    if "*" not in events:
        return False
    directory = config.get("template_dir")
    return event_type in (config.get("templates") or {}) or event_type in _shipped(channel) \
        or bool(directory and (Path(directory) / channel / f"{event_type}.en.j2").is_file())


@cache
def _shipped(channel: str) -> frozenset[str]:
    """The event types ``templates/<channel>/`` has an English template for."""
    from importlib.resources import files

    folder = files("shipcast.templates") / channel
    return frozenset(entry.name.removesuffix(".en.j2") for entry in folder.iterdir()
                     if entry.name.endswith(".en.j2")) if folder.is_dir() else frozenset()


def single_line(value: Any) -> Any:
    """``value`` with every line break in its texts made a space, for a
    template whose lines mean something (an email's first line is its subject)."""
    if isinstance(value, str):
        return " ".join(value.splitlines())
    if isinstance(value, dict):
        return {key: single_line(item) for key, item in value.items()}
    if isinstance(value, list):
        return [single_line(item) for item in value]
    return value


def render(settings: Settings, channel: str, event: Event, partner: Partner | None,
           overrides: Mapping[str, Any] | None = None, language: str | None = None,
           directory: str | None = None, *, single_lines: bool = False) -> str:
    """One customer message; with ``single_lines``, no text of the event or
    the partner breaks a line of it (see :func:`single_line`).

    :raises ConfigError: naming the template and what is wrong.
    """
    language = language or language_of(event)
    where = f"{channel} template for {event.event_type} ({language})"
    values = context(settings, event, partner)
    try:
        template = template_for(channel, event.event_type, language, overrides, directory)
        return template.render(single_line(values) if single_lines else values).strip()
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{where} is not valid Jinja: line {exc.lineno}: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{where} failed: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:  # a partner's template file, unreadable
        raise ConfigError(f"{where} cannot be read: {exc}") from exc


def check_templates(settings: Settings, channel: str, partner_id: str, partner_name: str,
                    branding: Mapping[str, Any], config: Mapping[str, Any],
                    shape: Callable[[str], str | None] | None = None) -> dict[str, list[str]]:
    """Render every template this config may send, for every event type it
    serves and every language, with realistic data and with the nulls each
    event type's row leaves; ``shape`` says what is wrong with a rendered
    text, if anything (an email without a subject line), and :func:`lacks`
    what every customer's message must carry. Returns the errors, keyed by field."""
    from .examples import example
    from .plugin_manager import event_types

    events = config.get("events", ["*"])
    types = [t for t in event_types() if serves(channel, t, config)] if "*" in events else list(events)
    overrides = config.get("templates") or {}
    partner = Partner(partner_id, partner_name, branding, {channel: config})
    errors: dict[str, list[str]] = {}
    directory = config.get("template_dir")
    if directory and not (Path(directory) / channel).is_dir():
        return {"template_dir": [f"no directory {Path(directory) / channel} on this server"]}
    for event_type in types:
        event = example(event_type, partner_id=partner_id)
        sparse = sparse_event(event)
        for language in LANGUAGES:
            for sample in (event, sparse):
                try:
                    url = tracking_url(settings, sample, partner)
                    text = render(settings, channel, sample, partner, overrides, language, config.get("template_dir"))
                    wrong = (shape(text) if shape else None) or lacks(text, sample, url)
                    if wrong:
                        raise ConfigError(f"{channel} template for {event_type} ({language}) {wrong}")
                except ConfigError as exc:
                    where = f"templates.{event_type}" if event_type in overrides else \
                        "template_dir" if directory else f"events ({event_type})"
                    errors.setdefault(where, []).append(f"{language}: {exc}")
                    break
    return {where: sorted(set(messages)) for where, messages in errors.items()}


def lacks(text: str, event: Event, url: str) -> str | None:
    """What a customer's message must carry and ``text`` does not: the
    tracking link (where a DEL's customer rates the delivery and a FAIL's
    picks a new time) in every message, and a FAIL's reason."""
    missing = []
    if url not in text:
        missing.append("the tracking link ({{ tracking_url }})")
    if event.event_type == "FAIL" and event.failure is not None and event.failure.reason not in text:
        missing.append("the failure's reason ({{ failure.reason }})")
    return f"must give {' and '.join(missing)}" if missing else None


def sparse_event(event: Event) -> Event:
    """The same event with every optional field left out, in every group it carries."""
    def bare(group: Any, *names: str) -> Any:
        return group.model_copy(update=dict.fromkeys(names)) if group is not None else None

    order = event.order.model_copy(update={"merchant_order_ref": None, "address": None, "payment": None,
                                           "item_count": None, "promised_date": None,
                                           "customer": bare(event.order.customer, "email", "phone")})
    return event.model_copy(update={
        "order": order,
        "rider": bare(event.rider, "phone", "photo_url", "vehicle_number"),
        "otp": bare(event.otp, "expires_at"),
        "failure": bare(event.failure, "next_attempt_at", "reschedule_url"),
        "return_": bare(event.return_, "initiated_at", "destination"),
        "delivery_confirmation": bare(event.delivery_confirmation, "received_by", "method", "proof_url"),
    })


# -- the rules every customer channel keeps ----------------------------------------

#: Event types after which an order's earlier kinds of message are stale.
TERMINAL = ("DEL", "RET")
#: Event types sent whatever the quiet hours and whatever the config says:
#: OTPs and failures cannot wait. A config's ``critical`` only adds to them.
CRITICAL = ("OFD", "FAIL")


def critical(event: Event, config: Mapping[str, Any]) -> bool:
    """Whether this message goes out even in the merchant's quiet hours: an
    OFD or FAIL, any event carrying an OTP, or a type the config's
    ``critical`` adds. No config can make an OTP or a failure wait."""
    return event.event_type in CRITICAL or event.otp is not None \
        or event.event_type in (config.get("critical") or ())


def _known_zone(value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {value!r}") from None


class TimeZone(fields.String):
    """An IANA time zone name (``Asia/Kolkata``, the default), refused when unknown."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(load_default="Asia/Kolkata", validate=_known_zone, **kwargs)


class QuietHours(Schema):
    """``quiet_hours: {start: "21:00", end: "08:00", timezone: Asia/Kolkata}``."""

    class Meta:
        unknown = RAISE

    start = fields.Time(required=True, format="%H:%M")
    end = fields.Time(required=True, format="%H:%M")
    timezone = TimeZone()

    @validates_schema
    def _ends(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("start") == data.get("end"):
            raise ValidationError("start and end are the same: the hours would be quiet all day", "end")


class Critical(fields.List):  # type: ignore[type-arg]
    """``critical: [DEL]``: event types sent even in quiet hours, besides the
    OFDs, FAILs and OTPs that always are (empty by default)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields.String(), load_default=list, **kwargs)


def quiet_for(quiet: Mapping[str, Any] | None, at: datetime) -> float:
    """Seconds until the quiet hours end, or 0 outside them."""
    if not quiet:
        return 0.0
    zone = ZoneInfo(quiet.get("timezone") or "Asia/Kolkata")
    local = at.astimezone(zone)
    start, end = (_as_time(quiet["start"]), _as_time(quiet["end"]))
    now = local.time().replace(tzinfo=None)
    inside = start <= now < end if start < end else (now >= start or now < end)
    if not inside:
        return 0.0
    ends = datetime.combine(local.date(), end, zone)
    if ends <= local:
        ends += timedelta(days=1)
    return (ends - local).total_seconds()


def _as_time(value: Any) -> dt_time:
    return value if isinstance(value, dt_time) else dt_time.fromisoformat(str(value))


#: Seconds after which a claim to send a message, never settled, is taken over.
CLAIM_STALE_AFTER = 120.0


#: How an opt-out starts when the channel cannot reach the customer at all
#: (not on WhatsApp, blocked), rather than the customer asked.
UNREACHABLE = "unreachable: "


async def keep_rules(services: Services, channel: str, event: Event, address: str,
                     config: Mapping[str, Any], target: str = "customer", *,
                     unreachable_ok: bool = False) -> str | None:
    """Skip what must not be sent, hold back what must wait, and claim the
    message so no other copy of the event sends it too.

    Returns ``None``, or with ``unreachable_ok``, why the channel cannot reach
    this customer (the caller sends another way, under the claim it holds).

    :raises SkipDelivery: the customer opted out of this channel, the message
        is stale (the order's DEL or RET is already archived), or it was sent
        (:class:`SentBefore` when a copy cut off before it was logged sent it:
        the caller reports it delivered).
    :raises DeferDelivery: it is a non-critical message in the merchant's
        quiet hours (sent once they end, spending no attempt), or another copy
        is being sent now (:class:`ClaimedElsewhere`: tried again, to send it
        should that copy fail).
    """
    store = services.store
    unreachable = reason = None
    transactional = event.event_type in config.get("transactional", ())
    if unreachable_ok or not transactional:  # a transactional text never waits on an opt-out lookup
        reason = await store.opted_out(channel, event.partner_id, address)
    if reason is not None and reason.startswith(UNREACHABLE):
        if not unreachable_ok:
            raise SkipDelivery(f"{channel} cannot reach the customer: {reason.removeprefix(UNREACHABLE)}")
        unreachable = reason.removeprefix(UNREACHABLE)
    # An unsubscribe from marketing-like messages leaves the transactional ones (OTPs, failures) flowing.
    elif reason is not None and not transactional:
        raise SkipDelivery(f"the customer opted out of {channel}: {reason}")
    if event.event_type not in TERMINAL:
        later = await store.later_event(event.partner_id, event.order.order_id, event.sequence, TERMINAL)
        if later is not None:
            raise SkipDelivery(f"stale: a later {'/'.join(TERMINAL)} of this order ({later}) was received first")
    if not critical(event, config):
        wait = quiet_for(config.get("quiet_hours"), datetime.now(UTC))
        if wait > 0:
            quiet = config["quiet_hours"]
            raise DeferDelivery(f"quiet hours until {_as_time(quiet['end']):%H:%M} {quiet.get('timezone')}",
                                retry_after=wait)
    # A claim still "sending", fresh or stale, may belong to a copy whose broker
    # connection dropped after the provider took the message (see send_noted).
    sent = await store.sent_message(event.event_id, channel, target)
    if sent is not None:
        raise SentBefore(sent)
    held = await store.claim(event.event_id, channel, target, event.partner_id, mask(address), CLAIM_STALE_AFTER)
    if held == "delivered":
        raise SkipDelivery("sent already: one message per event")
    if held is not None:
        raise ClaimedElsewhere("another copy of this event is being sent now")
    return unreachable


async def send_noted(services: Services, send: Callable[[], Awaitable[str]], provider: str, event: Event,
                     channel: str, target: str = "customer") -> str:
    """Hand a message to the provider and note the id it gives, to the end
    even when the broker connection drops meanwhile (the worker's handler is
    cancelled then, and RabbitMQ redelivers the message): the redelivered
    copy finds the id (:func:`keep_rules` raises :class:`SentBefore`) and
    sends nothing again."""
    async def sending() -> str:
        message_id = await send()
        # Noted or the message may go twice: a store that fails now gets a few more tries.
        for pause in NOTE_RETRIES:
            try:
                await services.store.add_provider_message(provider, message_id, event.event_id, channel, target)
                break
            except StoreError as exc:
                if pause is None:
                    log.warning("sent, but not recorded: %s", exc)
                else:
                    await asyncio.sleep(pause)
        return message_id

    task = asyncio.ensure_future(sending())
    _sending.add(task)  # held (and awaited by finish_sends) even when the handler is cancelled
    task.add_done_callback(_sending.discard)
    return await asyncio.shield(task)


#: Pauses between tries to note a sent message's id; None: the last try.
NOTE_RETRIES: tuple[float | None, ...] = (0.5, 2.0, 5.0, None)
_sending: set[asyncio.Future[str]] = set()


async def finish_sends(timeout: float = 30) -> None:
    """Wait for messages handed to a provider to be noted (before the
    provider's client and the store close)."""
    if _sending:
        await asyncio.wait(set(_sending), timeout=timeout)


def mask(address: str) -> str:
    """An address as the delivery log keeps it: the start and last four characters."""
    address = address.strip()
    return address[:3] + "*" * max(0, len(address) - 7) + address[-4:] if len(address) > 7 else "***"


async def settle_quietly(bookkeeping: Awaitable[Any]) -> None:
    """Bookkeeping after a message was sent: if the store fails now, log it
    rather than fail the delivery, which would send the message again."""
    try:
        await bookkeeping
    except StoreError as exc:
        log.warning("sent, but not recorded: %s", exc)
