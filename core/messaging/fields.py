"""The marshmallow fields customer channels share in their configs: provider
ids per event type and language, quiet hours and their time zone, and the
types that are sent whatever the hour. Each field naming event types
refuses one the catalog does not register, as a partners file's ``events`` does."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shipcast.messaging.templates import LANGUAGES
from shipcast.model.catalog import current
from shipcast.model.json_schemas import Describer, JsonSchema

#: The longest template text a partner may give, in characters.
MAX_TEMPLATE = 32 * 1024


#: A text that is not all whitespace, as Python's ``str.strip`` sees it (which
#: strips \x1c-\x1f and \x85, whitespace to no JSON Schema engine), as a pattern.
NOT_BLANK = r"[^\s\x1c-\x1f\x85]"


def known_event_types(value: Iterable[Any]) -> None:
    """A validator: every event type ``value`` names (a list's items, a
    mapping's keys) is one the catalog registers. A type misspelt would
    otherwise be kept and never match an event."""
    known = current().event_types
    unknown = sorted({str(name) for name in value if name not in known})
    if unknown:
        raise ValidationError(f"unknown event types {unknown}; known: {', '.join(known)}")


class TemplateText(fields.Field):  # type: ignore[type-arg]
    """One template text, or one per language, each at most :data:`MAX_TEMPLATE` characters."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        texts = [value] if isinstance(value, str) else list(value.values()) if isinstance(value, Mapping) else None
        if not texts or not all(isinstance(text, str) and text.strip() for text in texts) or (
                isinstance(value, Mapping) and not all(isinstance(key, str) for key in value)):
            raise ValidationError("must be a template text, or a mapping of language to text")
        longest = max(len(text) for text in texts)
        if longest > MAX_TEMPLATE:
            raise ValidationError(f"a template text is at most {MAX_TEMPLATE} characters; this one is {longest}")
        return value if isinstance(value, str) else dict(value)

    def json_schema(self, describer: Describer) -> JsonSchema:
        text = {"type": "string", "maxLength": MAX_TEMPLATE, "pattern": NOT_BLANK,
                "description": "A Jinja template, rendered in a sandbox: it must compile and render"}
        return {"anyOf": [text, {"type": "object", "minProperties": 1, "propertyNames": {"enum": list(LANGUAGES)},
                                 "additionalProperties": text}],
                "description": "One template text, or one per language"}


class ByEventType(fields.Dict):
    """A mapping of event types the catalog registers to what the channel
    sends for each (WhatsApp's ``variables``): a type misspelt is refused."""

    def __init__(self, values: fields.Field, **kwargs: Any) -> None:  # type: ignore[type-arg]
        super().__init__(keys=fields.String(), values=values, validate=known_event_types, **kwargs)

    def json_schema(self, describer: Describer) -> JsonSchema:
        assert self.value_field is not None
        return {"type": "object", "propertyNames": {"enum": list(describer.catalog.event_types)},
                "additionalProperties": describer.field(self.value_field)}


class Templates(ByEventType):
    """``templates: {OFD: text, FAIL: {en: text, hi: text}}``: the partner's
    own text of an event type's message, for every language or one per language."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(TemplateText(), load_default=dict, **kwargs)


class TemplateDir(fields.String):
    """A directory on the server with the partner's own ``<channel>/<TYPE>.<lang>.j2``
    (the operator's partners file alone sets it): a path, which holds no NUL."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=validate.Regexp(r"^[^\x00]*$", error="a path holds no NUL character"),
                         metadata={"description": "A directory on shipcast's server (the operator's to set)"},
                         **kwargs)


class IdsByType(fields.Field):  # type: ignore[type-arg]
    """A provider's id for each event type's text: ``{OFD: id}`` for every
    language, or ``{OFD: {en: id, hi: id}}`` one per language (English, the
    fallback, required). Errors name the event type and language."""

    def __init__(self, pattern: str, error: str, **kwargs: Any) -> None:
        if not kwargs.get("required"):
            kwargs.setdefault("load_default", dict)
        super().__init__(validate=known_event_types, **kwargs)
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

    def json_schema(self, describer: Describer) -> JsonSchema:
        one = {"type": "string", "pattern": f"^(?:{self.pattern.pattern})$"}
        by_language = {"type": "object", "required": ["en"], "additionalProperties": False,
                       "properties": {language: one for language in LANGUAGES}}
        return {"type": "object", "propertyNames": {"enum": list(describer.catalog.event_types)},
                "additionalProperties": {"anyOf": [one, by_language]},
                "description": "An id for each event type's text: one, or one per language (en required)"}


def id_for(ids: Mapping[str, Any], event_type: str, language: str) -> str | None:
    """The id :class:`IdsByType` gives this event type's text in ``language`` (English where it has none)."""
    found = ids.get(event_type)
    if isinstance(found, Mapping):
        return found.get(language) or found.get("en")
    return found


def _known_zone(value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {value!r}") from None


class TimeZone(fields.String):
    """An IANA time zone name (``Asia/Kolkata``, the default), refused when unknown."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(load_default="Asia/Kolkata", validate=_known_zone, **kwargs)

    def json_schema(self, describer: Describer) -> JsonSchema:
        zones = sorted(available_timezones())
        return {**describer.define("TimeZone", {"type": "string", "enum": zones, "x-enum-varnames": _names(zones),
                                                "description": "An IANA time zone name"}),
                "default": "Asia/Kolkata"}


def _names(values: list[str]) -> list[str]:
    """A distinct identifier for each value, for a generated client's enum
    (``Etc/GMT+1`` and ``Etc/GMT-1`` would otherwise read alike)."""
    names: list[str] = []
    for value in values:
        name = re.sub(r"\W+", "_", value.replace("+", "_PLUS_").replace("-", "_MINUS_")).strip("_").upper()
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


class Clock(fields.Time):
    """A time of day, ``"21:00"``; ``"21:00:00"`` too, as a stored config gives it back."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="%H:%M", **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and re.fullmatch(r"[0-9]{2}:[0-9]{2}:00", value):
            value = value[:5]
        return super()._deserialize(value, attr, data, **kwargs)

    def json_schema(self, describer: Describer) -> JsonSchema:
        return {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9](:00)?$", "examples": ["21:00"],
                "description": "A time of day, HH:MM"}


class QuietHours(Schema):
    """Hours in which a message that can wait waits, from ``start`` to ``end``
    (which differ) in ``timezone``: ``{start: "21:00", end: "08:00", timezone: Asia/Kolkata}``."""

    class Meta:
        unknown = RAISE

    start = Clock(required=True)
    end = Clock(required=True)
    timezone = TimeZone()

    @validates_schema
    def _ends(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("start") == data.get("end"):
            raise ValidationError("start and end are the same: the hours would be quiet all day", "end")


class EventTypes(fields.List):  # type: ignore[type-arg]
    """A list of event types the catalog registers (no ``*``): email's
    ``transactional``, the ``critical`` types."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields.String(), validate=known_event_types, **kwargs)

    def json_schema(self, describer: Describer) -> JsonSchema:
        return {"type": "array", "items": {"enum": list(describer.catalog.event_types)}}


class Critical(EventTypes):
    """``critical: [DEL]``: event types sent even in quiet hours, besides the
    OFDs, FAILs and OTPs that always are (empty by default)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(load_default=list, **kwargs)
