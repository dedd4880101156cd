"""The partners file: load it, validate it with marshmallow, explain errors.

Each channel validates its own section with its ``config_schema``, so the core
knows no channel by name. Errors name the file, the partner and the field::

    partners.yaml: partner 'acme': channels.webhook.endpoints.0.url: Not a valid URL.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from shipcast.exceptions import ConfigError
from shipcast.model.catalog import Catalog, current, validating
from shipcast.model.envelope import PARTNER_ID_PATTERN


@dataclass(frozen=True)
class Partner:
    """A partner's applied config: who they are and which channels serve them."""

    id: str
    name: str
    branding: Mapping[str, Any] = field(default_factory=dict)
    channels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "branding": dict(self.branding),
                "channels": {name: dict(config) for name, config in self.channels.items()}}


class BrandingSchema(Schema):
    class Meta:
        unknown = RAISE

    logo_url = fields.Url(schemes={"https", "http"})
    primary_color = fields.String(validate=validate.Regexp(r"^#[0-9a-fA-F]{6}$", error="must be a colour like #0a7cff"))
    support_phone = fields.String(validate=validate.Regexp(r"^\+[0-9]{6,15}$", error="must be E.164, like +919876543210"))
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


class PartnerSchema(Schema):
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
        partners.append(Partner(loaded["id"], loaded["name"], loaded["branding"], loaded["channels"]))
    if errors:
        raise ConfigError(f"{source}: invalid partners file", errors)
    return partners


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
