"""The partners file: load it, validate it with marshmallow, explain errors.

Each channel validates its own section with its ``config_schema``, so the core
knows no channel by name. Errors name the file, the partner and the field::

    partners.yaml: partner 'acme': channels.webhook.endpoints.0.url: Not a valid URL.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from shipcast.exceptions import ConfigError
from shipcast.model.catalog import Catalog, current, validating
from shipcast.model.envelope import PARTNER_ID_PATTERN
from shipcast.model.json_schemas import Describer, JsonSchema, class_name


@dataclass(frozen=True)
class Partner:
    """A partner's applied config: who they are and which channels serve them.

    ``file_fields`` are the fields a partners document (the file, or
    ``POST /v1/partners``) set, as paths (``name``, ``branding.primary_color``,
    ``channels.sms``, ``channels.sms.sender``): the document owns them, and the
    partner API and the portal change only the rest. ``None`` for a config
    stored before fields were marked: the document owns all of it."""

    id: str
    name: str
    branding: Mapping[str, Any] = field(default_factory=dict)
    channels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    file_fields: frozenset[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        shown = {"id": self.id, "name": self.name, "branding": dict(self.branding),
                 "channels": {name: dict(config) for name, config in self.channels.items()}}
        if self.file_fields is not None:
            shown["file_fields"] = sorted(self.file_fields)
        return shown

    def owned(self) -> frozenset[str]:
        """The fields the partners document owns (every one it could have set, for an unmarked config)."""
        return self.file_fields if self.file_fields is not None else fields_set(self.to_dict())


#: The channel whose section a document owns whole: its endpoints follow their own rule (an
#: endpoint registered through the API is kept when the document lists the channel without it).
WHOLE_SECTIONS = frozenset({"webhook"})


def fields_set(item: Mapping[str, Any]) -> frozenset[str]:
    """The fields a partners document's entry sets, as paths: ``name``, each
    ``branding.<key>``, each ``channels.<name>`` and each of its keys."""
    found = {"name"} if "name" in item else set()
    branding = item.get("branding")
    if isinstance(branding, Mapping):
        found |= {f"branding.{key}" for key in branding}
    channels = item.get("channels")
    if isinstance(channels, Mapping):
        for name, config in channels.items():
            found.add(f"channels.{name}")
            if name not in WHOLE_SECTIONS and isinstance(config, Mapping):
                found |= {f"channels.{name}.{key}" for key in config}
    return frozenset(found)


class BrandingSchema(Schema):
    """How the tracking page and customer messages look: the partner's logo, colour and contacts."""

    class Meta:
        unknown = RAISE

    logo_url = fields.Url(schemes={"https", "http"})
    primary_color = fields.String(validate=validate.Regexp(r"^#[0-9a-fA-F]{6}\Z", error="must be a colour like #0a7cff"))
    support_phone = fields.String(validate=validate.Regexp(r"^\+[0-9]{6,15}\Z", error="must be E.164, like +919876543210"))
    support_email = fields.Email()


class EventList(fields.List):  # type: ignore[type-arg]
    """A list of event types, or ``["*"]`` for all of them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields.String(), load_default=lambda: ["*"], **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        items = super()._deserialize(value, attr, data, **kwargs)
        if not items:
            raise ValidationError("must list at least one event type, or '*'")
        if "*" in items and len(items) > 1:
            raise ValidationError("'*' already means every event type; list nothing else with it")
        known = current().event_types
        unknown = [item for item in items if item != "*" and item not in known]
        if unknown:
            raise ValidationError(
                f"unknown event types {unknown}; known: {', '.join(known)} or '*'"
            )
        return items

    def json_schema(self, describer: Describer) -> JsonSchema:
        return {"type": "array", "items": describer.define("EventType", event_type_schema(describer.catalog)),
                "minItems": 1, "not": {"contains": {"const": "*"}, "minItems": 2},
                "description": "Event types, or [\"*\"] for every one", "default": ["*"]}


def event_type_schema(catalog: Catalog) -> JsonSchema:
    """An event type's name, one the catalog registers, or ``*`` for all."""
    types = catalog.event_types.values()
    return {"type": "string", "enum": [*catalog.event_types, "*"], "x-enum-varnames": [*catalog.event_types, "ALL"],
            "description": "An event type: " + "; ".join(f"{t.name}: {t.description}" for t in types)
            + "; * for every one"}


class ChannelsField(fields.Field):  # type: ignore[type-arg]
    """``channels:`` maps a registered channel's name to its config, validated by
    that channel's own schema."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValidationError("must be a mapping of channel name to config")
        known = current().channel_schemas
        errors: dict[str, Any] = {}
        loaded: dict[str, Any] = {}
        for name, config in value.items():
            if name not in known:
                errors[name] = [f"unknown channel; installed: {', '.join(sorted(known))}"]
                continue
            try:
                loaded[name] = known[name](unknown=RAISE).load(config or {})
            except ValidationError as exc:
                errors[name] = exc.messages
        if errors:
            raise ValidationError(errors)
        return loaded

    def json_schema(self, describer: Describer) -> JsonSchema:
        channels = describer.catalog.channel_schemas
        return {"type": "object", "additionalProperties": False,
                "description": "Each channel serving the partner, by name, and its config",
                "properties": {name: _config(describer, name, schema) for name, schema in sorted(channels.items())}}


def _config(describer: Describer, name: str, schema: type[Schema]) -> JsonSchema:
    """A channel's section; ``null`` too (YAML's ``tracking:``) when an empty config is one."""
    ref = describer.ref(schema, f"{class_name(name)}Config")
    if any(field.required for field in schema().load_fields.values()):
        return ref
    return {"anyOf": [ref, {"type": "null"}]}


class PartnerSchema(Schema):
    """One partner: who they are, how they look, and the channels that serve them."""

    class Meta:
        unknown = RAISE

    id = fields.String(required=True, validate=validate.Regexp(
        PARTNER_ID_PATTERN, error="must match [a-z0-9_-]+ (at most 64 characters)"))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    branding = fields.Nested(BrandingSchema, load_default=dict)
    channels = ChannelsField(load_default=dict)


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(messages, Mapping):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            where = key if key == "_schema" else f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                where = prefix or "(partner)"
            for loc, msgs in _flatten(value, where).items():
                flat.setdefault(loc, []).extend(msgs)
        return flat
    if isinstance(messages, list) and all(isinstance(item, str) for item in messages):
        return {prefix or "(file)": list(messages)}
    if isinstance(messages, list):
        flat = {}
        for item in messages:
            for loc, msgs in _flatten(item, prefix).items():
                flat.setdefault(loc, []).extend(msgs)
        return flat
    return {prefix or "(file)": [str(messages)]}


BRANDING = "branding"


def plain(value: Any) -> Any:
    """A config value as JSON gives it back (a time as ``"21:00:00"``)."""
    return orjson.loads(orjson.dumps(value))


def declared(shape: Schema | fields.Field, value: Any) -> Any:  # type: ignore[type-arg]
    """``value`` cut down to what ``shape`` (a schema, or one of its fields)
    declares: of each mapping a schema reads, only the fields it declares, so
    what a channel stores beside a partner's config (encrypted credentials,
    rotated-out secrets, fingerprints) is left out. A value whose shape a
    field does not describe (a filter, a mapping of templates) is kept whole."""
    if isinstance(shape, Schema):
        if not isinstance(value, Mapping):
            return value
        return {key: declared(shape.fields[key], item) for key, item in value.items() if key in shape.fields}
    if isinstance(shape, fields.List) and isinstance(value, list):
        return [declared(shape.inner, item) for item in value]
    if isinstance(shape, fields.Nested) and isinstance(shape.schema, Schema):
        if shape.many and isinstance(value, list):
            return [declared(shape.schema, item) for item in value]
        return declared(shape.schema, value)
    return value


def load_section(catalog: Catalog, section: str, value: Any) -> dict[str, Any]:
    """``value`` validated as the partners document's ``branding`` or
    ``channels.<name>`` would be.

    :raises ConfigError: naming each field wrong by its path in the document.
    """
    where = BRANDING if section == BRANDING else f"channels.{section}"
    if not isinstance(value, Mapping):
        raise ConfigError("invalid config", {where: ["must be a mapping"]})
    halves = lone_surrogates(value)
    if halves:
        raise ConfigError("invalid config", {f"{where}.{at}": ["half a UTF-16 surrogate pair: not text"]
                                             for at in halves})
    schema = BrandingSchema if section == BRANDING else catalog.channel_schemas[section]
    try:
        with validating(catalog):
            loaded: dict[str, Any] = schema(unknown=RAISE).load(plain(value))
    except ValidationError as exc:
        raise ConfigError("invalid config", {f"{where}.{at}" if at != "(file)" else where: messages
                                             for at, messages in _flatten(exc.messages).items()}) from exc
    return loaded


def merge_document(catalog: Catalog, stored: Partner | None, given: Partner) -> Partner:
    """The config a partners document's entry makes of the stored one: the
    document's fields, and the partner's own where the document says nothing.

    :raises ConfigError: the merged section is not valid (the document
        dropped a field the partner's own settings need), naming it.
    """
    if stored is None or given.file_fields is None:
        return given
    before, now = stored.owned(), given.file_fields
    branding = {key: value for key, value in stored.branding.items() if f"{BRANDING}.{key}" not in before}
    branding.update(given.branding)
    channels: dict[str, Mapping[str, Any]] = {}
    for name, config in stored.channels.items():
        if name not in given.channels and f"channels.{name}" not in before:
            channels[name] = config  # the partner's own channel: the document never listed it
        elif name not in given.channels and name in WHOLE_SECTIONS:
            # The document stopped listing the webhook channel: endpoints registered through the API stay.
            own = [endpoint for endpoint in config.get("endpoints", ()) if endpoint.get("origin") == "api"]
            if own:
                channels[name] = {**config, "endpoints": own}
    for name, config in given.channels.items():
        previous = stored.channels.get(name)
        kept = {key: value for key, value in (previous or {}).items() if f"channels.{name}.{key}" not in before}
        if name in WHOLE_SECTIONS or not kept:
            channels[name] = config
            continue
        written = {key: config[key] for key in config if f"channels.{name}.{key}" in now}
        try:
            channels[name] = load_section(catalog, name, {**kept, **written})
        except ConfigError as exc:
            raise ConfigError("refused", {f"{at} (with the partner's own settings)": messages
                                          for at, messages in exc.errors.items()}) from exc
    return replace(given, branding=branding, channels=channels)


def load_partners(data: Any, source: str = "<partners>", *, catalog: Catalog) -> list[Partner]:
    """Validate a parsed partners document (``{"partners": [...]}``) against
    the registered channels and event types.

    :raises ConfigError: naming ``source``, each partner and each field wrong;
        nothing is returned unless every partner is valid.
    """
    if not isinstance(data, Mapping) or set(data) != {"partners"}:
        raise ConfigError(f"{source}: must be a mapping with one key, 'partners'")
    items = data["partners"]
    if not isinstance(items, list):
        raise ConfigError(f"{source}: 'partners' must be a list")
    errors: dict[str, list[str]] = {}
    partners: list[Partner] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        label = f"partner {item.get('id')!r}" if isinstance(item, Mapping) and item.get("id") else f"partner #{index}"
        try:
            with validating(catalog):
                loaded = PartnerSchema().load(item if isinstance(item, Mapping) else {})
        except ValidationError as exc:
            for loc, msgs in _flatten(exc.messages).items():
                errors[f"{label}: {loc}"] = msgs
            continue
        if loaded["id"] in seen:
            errors[f"{label}: id"] = ["duplicate partner id"]
            continue
        seen.add(loaded["id"])
        partners.append(Partner(loaded["id"], loaded["name"], loaded["branding"], loaded["channels"],
                                fields_set(item)))
    if errors:
        raise ConfigError(f"{source}: invalid partners file", errors)
    return partners


def document_schema(describer: Describer) -> JsonSchema:
    """The partners document :func:`load_partners` takes, as JSON Schema."""
    return describer.define("PartnersDocument", {
        "type": "object", "required": ["partners"], "additionalProperties": False,
        "description": "A partners document: the partners file, as JSON",
        "properties": {"partners": {"type": "array", "items": describer.ref(PartnerSchema, "Partner"),
                                    "description": "The partners to apply, each id once"}}})


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogates(data: Any, here: str = "") -> list[str]:
    """Where in ``data`` a text holds half a UTF-16 pair (a ``\\ud800`` escape
    in JSON or YAML): it is no character, and cannot be stored or sent."""
    if isinstance(data, str):
        return [here or "(value)"] if _SURROGATE.search(data) else []
    items = data.items() if isinstance(data, Mapping) else enumerate(data) if isinstance(data, list) else ()
    found = []
    for key, value in items:
        where = f"{here}.{key}" if here else str(key)
        found += [where] if isinstance(key, str) and _SURROGATE.search(key) else lone_surrogates(value, where)
    return found


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping, which
    YAML would let the last one win silently (a second ``url:``, a second
    ``id:``); keys merged in with ``<<`` may still be overridden. A character
    escaped as a UTF-16 pair (``"\\ud83d\\ude00"``) is joined into one, as
    JSON does; half a pair is refused."""

    def construct_scalar(self, node: yaml.ScalarNode) -> Any:  # type: ignore[override]
        value = super().construct_scalar(node)
        if isinstance(value, str) and _SURROGATE.search(value):
            try:
                value = value.encode("utf-16", "surrogatepass").decode("utf-16")
            except UnicodeDecodeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "found half a UTF-16 surrogate pair (a \\ud800-\\udfff escape): not text",
                    node.start_mark) from None
        return value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                        f"found the key {key!r} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# A number in exponent form without a dot or without the exponent's sign (``1e5``,
# ``-5e-324``, ``2.5E3``) is a number in JSON and in YAML 1.2, but a string to
# PyYAML's YAML 1.1 rules: a JSON body, or a filter's ``amount: 1e5``, would then
# be refused as text where a number goes. The forms YAML 1.1 already reads stay its own.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(text: str | bytes) -> Any:
    """Parse a partners document (YAML, or JSON, which is YAML).

    :raises yaml.YAMLError: not YAML, a key given twice in one mapping, or
        nested deeper than a partners document ever is.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply to be a partners document") from None


def load_partners_file(path: str | Path, *, catalog: Catalog) -> list[Partner]:
    """Read and validate a YAML partners file."""
    path = Path(path)
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}") \
            from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return load_partners(data, str(path), catalog=catalog)
