"""Messages to end customers: the templates, their context, the tracking link.

Every customer channel (SMS, WhatsApp, email) renders ``templates/<channel>/
<TYPE>.<lang>.j2`` (English and Hindi ship), unless the partner's config
overrides it. Rendering is strict: a missing variable is an error when the
partners file is applied (every template is rendered then, for every event
type and language, with realistic data and with the envelope's nulls), never
a blank in a customer's message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError

from shipcast.exceptions import ConfigError
from shipcast.model.envelope import Event
from shipcast.model.examples import example
from shipcast.model.partners import Partner
from shipcast.plugin.context import Registered
from shipcast.templating import environment, sandbox, template_line, unsafe

log = logging.getLogger(__name__)


#: Languages every shipped template exists in; a customer's other languages get English.
LANGUAGES = ("en", "hi")


def language_of(event: Event, default: str = "en") -> str:
    language = (event.order.customer.language or default).split("-")[0]
    return language if language in LANGUAGES else default


#: The colour of a partner's tracking page and emails when it has not set one.
DEFAULT_COLOUR = "#0a7cff"


def _luminance(colour: str) -> float:
    """WCAG's relative luminance of ``#rrggbb``."""
    def linear(channel: float) -> float:
        return channel / 12.92 if channel <= 0.03928 else ((channel + 0.055) / 1.055) ** 2.4

    red, green, blue = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * linear(red) + 0.7152 * linear(green) + 0.0722 * linear(blue)


def ink_on(colour: str) -> str:
    """The text colour, white or black, that reads best on ``colour``: a
    merchant's colour is the background of the tracking page's header and of
    the buttons there and in emails, and white on a light one is unreadable."""
    light = _luminance(colour)
    return "#ffffff" if (1.05 / (light + 0.05)) >= ((light + 0.05) / 0.05) else "#000000"


def tracking_url(registry: Registered, event: Event, partner: Partner | None) -> str:
    """The tracking-page link every message carries, from the tracking
    channel (or another plugin) through ``shipcast_tracking_url``; without
    one, ``SHIPCAST_PUBLIC_URL`` itself."""
    settings = registry.settings
    url = registry.hook.shipcast_tracking_url(event=event, partner=partner, settings=settings)
    return str(url) if url else settings.public_url


def context(registry: Registered, event: Event, partner: Partner | None) -> dict[str, Any]:
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
        "partner": {"id": event.partner_id, "name": partner.name if partner else event.partner_id, **branding,
                    "ink": ink_on(branding["primary_color"] or DEFAULT_COLOUR)},
        "tracking_url": tracking_url(registry, event, partner),
    }


#: The longest message a template may render, in characters: far past any
#: text or email, short of what a loop of long values would build.
MAX_RENDERED = 256 * 1024


@lru_cache(maxsize=4096)
def _compiled(source: str) -> jinja2.Template:
    """A partner's text, compiled in the sandbox: it is data, never code.
    What :func:`~shipcast.templating.unsafe` finds in it (a loop in a loop,
    a macro, an attribute starting with ``_``) is refused here, before it
    ever runs, wherever it is rendered from (a preview too)."""
    found = unsafe(source)
    if found:
        raise SecurityError("; ".join(found))
    return sandbox().from_string(source)


def render_source(source: str, values: Mapping[str, Any]) -> str:
    """A partner's own text (a WhatsApp variable, say) rendered in the sandbox,
    refused as :func:`_compiled` refuses it, bounded as every message is.

    :raises jinja2.TemplateError: including ``SecurityError`` for what is refused.
    """
    return _bounded(_compiled(source), values)


def _bounded(template: jinja2.Template, values: Mapping[str, Any]) -> str:
    """``template`` rendered, refused once its output passes :data:`MAX_RENDERED`."""
    parts, size = [], 0
    for part in template.generate(values):
        size += len(part)
        if size > MAX_RENDERED:
            raise SecurityError(f"the message grows past {MAX_RENDERED // 1024} KiB: it is refused")
        parts.append(part)
    return "".join(parts)


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
            except (OSError, ValueError):  # none there, or no path (a NUL in it)
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


def render(registry: Registered, channel: str, event: Event, partner: Partner | None,
           overrides: Mapping[str, Any] | None = None, language: str | None = None,
           directory: str | None = None, *, single_lines: bool = False) -> str:
    """One customer message; with ``single_lines``, no text of the event or
    the partner breaks a line of it (see :func:`single_line`).

    :raises ConfigError: naming the template and what is wrong.
    """
    language = language or language_of(event)
    where = f"{channel} template for {event.event_type} ({language})"
    values = context(registry, event, partner)
    try:
        template = template_for(channel, event.event_type, language, overrides, directory)
        return _bounded(template, single_line(values) if single_lines else values).strip()
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{where} is not valid Jinja: line {exc.lineno}: {exc.message}") from exc
    except SecurityError as exc:
        raise ConfigError(f"{where} refused{_at(exc)}: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{where} failed{_at(exc)}: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:  # a partner's template file, unreadable
        raise ConfigError(f"{where} cannot be read: {exc}") from exc
    except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError, MemoryError) as exc:
        # A partner's template dividing by zero, say: its error, never the process's.
        raise ConfigError(f"{where} failed{_at(exc)}: {type(exc).__name__}: {exc}") from exc


def _at(exc: BaseException) -> str:
    line = template_line(exc)
    return f" at line {line}" if line is not None else ""


def partner_sources(channel: str, config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Every template text a partner's config supplies, as ``(field, which,
    text)``: ``("templates.OFD", "hi", …)``, ``("template_dir", "OFD.en.j2", …)``."""
    found: list[tuple[str, str, str]] = []
    for event_type, text in (config.get("templates") or {}).items():
        if isinstance(text, Mapping):
            found += [(f"templates.{event_type}", str(lang), str(one)) for lang, one in text.items()]
        elif text:
            found.append((f"templates.{event_type}", "", str(text)))
    directory = config.get("template_dir")
    folder = Path(directory) / channel if directory else None
    if folder is not None and folder.is_dir():
        for path in sorted(folder.glob("*.j2")):
            try:
                found.append(("template_dir", path.name, path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError):
                continue  # rendering it reports that it cannot be read
    return found


def refusals(channel: str, config: Mapping[str, Any]) -> dict[str, list[str]]:
    """What :func:`shipcast.templating.unsafe` finds in each template the
    config supplies, by field, each finding naming the text and its line."""
    errors: dict[str, list[str]] = {}
    for field, which, source in partner_sources(channel, config):
        errors.setdefault(field, []).extend(f"{which}: {found}" if which else found for found in unsafe(source))
    return {field: found for field, found in errors.items() if found}


def check_templates(registry: Registered, channel: str, partner_id: str, partner_name: str,
                    branding: Mapping[str, Any], config: Mapping[str, Any],
                    shape: Callable[[str], str | None] | None = None) -> dict[str, list[str]]:
    """Render every template this config may send, for every event type it
    serves and every language, with realistic data and with the nulls each
    event type's row leaves; ``shape`` says what is wrong with a rendered
    text, if anything (an email without a subject line), and :func:`lacks`
    what every customer's message must carry. Returns the errors, keyed by field."""
    events = config.get("events", ["*"])
    types = [t for t in registry.event_types if serves(channel, t, config)] if "*" in events else list(events)
    overrides = config.get("templates") or {}
    partner = Partner(partner_id, partner_name, branding, {channel: config})
    errors: dict[str, list[str]] = {}
    directory = config.get("template_dir")
    if directory and not (Path(directory) / channel).is_dir():
        return {"template_dir": [f"no directory {Path(directory) / channel} on this server"]}
    refused = refusals(channel, config)
    if refused:  # never rendered: what reaches for code is refused before it runs, even sandboxed
        return refused
    for event_type in types:
        event = example(event_type, registry.event_types, partner_id=partner_id)
        sparse = sparse_event(event)
        for language in LANGUAGES:
            for sample in (event, sparse):
                try:
                    url = tracking_url(registry, sample, partner)
                    text = render(registry, channel, sample, partner, overrides, language, config.get("template_dir"))
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
