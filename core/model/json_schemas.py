"""The JSON Schema of what a marshmallow schema loads, so an API that
validates a body with marshmallow documents it from the very same schema.

A field is described by its type, its marshmallow validators (``Length``,
``Range``, ``Regexp``, ``OneOf``, ``Equal``), ``required``, ``allow_none``,
``load_default`` and its ``metadata`` (``description``, ``examples``, and
``json_schema``: keywords for a rule the field checks in code); a schema
refusing unknown keys (marshmallow's default) says
``additionalProperties: false``. A field of a type of its own, whose rule
no validator shows, describes itself with a method::

    def json_schema(self, describer: Describer) -> dict[str, Any]: ...

Nested schemas become named definitions (``#/components/schemas/<Name>``
in an OpenAPI document), so a client generated from it gets one class for
each. Rules a schema checks in code (``@validates``, a function validator)
are not found: a field says them in its ``metadata``, as keywords where
JSON Schema has them and in words where it has none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from marshmallow import EXCLUDE, INCLUDE, Schema, fields, missing, validate

from shipcast.model.catalog import Catalog

JsonSchema = dict[str, Any]


class Describer:
    """Describes marshmallow schemas against one catalog (the event types and
    channels a running shipcast has registered), collecting the nested ones
    in :attr:`definitions`.

    :param ref_template: where a definition is referred to, ``{name}`` its name.
    """

    def __init__(self, catalog: Catalog, ref_template: str = "#/components/schemas/{name}") -> None:
        self.catalog = catalog
        self.ref_template = ref_template
        self.definitions: dict[str, JsonSchema] = {}
        self._names: dict[type[Schema], str] = {}

    def ref(self, schema: type[Schema] | Schema, name: str | None = None) -> JsonSchema:
        """A reference to ``schema``'s definition, described once under
        ``name`` (by default its class's name without ``Schema``)."""
        cls = schema if isinstance(schema, type) else type(schema)
        if cls not in self._names:
            name = self._free(name or cls.__name__.removesuffix("Schema") or cls.__name__)
            self._names[cls] = name
            self.definitions[name] = {}  # taken before describing: a schema may nest itself
            self.definitions[name] = self.schema(cls)
        return {"$ref": self.ref_template.format(name=self._names[cls])}

    def define(self, name: str, described: JsonSchema) -> JsonSchema:
        """Add a definition of one's own (a variant of a schema, an enum); a
        reference to it. The same definition twice is one."""
        if self.definitions.get(name) != described:
            name = self._free(name)
            self.definitions[name] = described
        return {"$ref": self.ref_template.format(name=name)}

    def _free(self, name: str) -> str:
        taken, number = name, 1
        while taken in self.definitions:
            number += 1
            taken = f"{name}{number}"
        return taken

    def schema(self, schema: type[Schema] | Schema, *, partial: bool = False, exclude: Iterable[str] = (),
               nullable: Iterable[str] = ()) -> JsonSchema:
        """The object ``schema`` loads. ``partial``: none of its fields is
        required (an update); ``exclude``: fields left out (so refused, when
        unknown keys are); ``nullable``: fields that may also be ``null``."""
        instance = schema() if isinstance(schema, type) else schema
        left_out, may_be_null = set(exclude), set(nullable)
        properties: dict[str, JsonSchema] = {}
        required: list[str] = []
        for name, field in instance.load_fields.items():
            key = field.data_key or name
            if key in left_out:
                continue
            described = self.field(field)
            if partial:  # absent is unchanged, not the default
                described = _without_default(described)
            if key in may_be_null and not field.allow_none:
                described = _or_null(described)
            properties[key] = described
            if field.required and not partial:
                required.append(key)
        result: JsonSchema = {"type": "object", "properties": properties}
        if required:
            result["required"] = required
        if instance.unknown not in (INCLUDE, EXCLUDE):
            result["additionalProperties"] = False
        doc = _first_paragraph(type(instance).__doc__)
        if doc:
            result["description"] = doc
        return result

    def field(self, field: fields.Field) -> JsonSchema:  # type: ignore[type-arg]
        """What one field loads, with its validators, default and metadata."""
        own: Callable[[Describer], JsonSchema] | None = getattr(field, "json_schema", None)
        described = dict(own(self)) if own is not None else self._by_type(field)
        if own is None:
            for validator in field.validators:
                described.update(_validator(validator, described))
        default = field.load_default
        if callable(default):
            default = default()
        if default is not missing and default is not None and _is_json(default) and "default" not in described:
            described["default"] = default
        for key in ("description", "examples"):
            if key in field.metadata:
                described[key] = field.metadata[key]
        described.update(field.metadata.get("json_schema", {}))
        return _or_null(described) if field.allow_none else described

    def _by_type(self, field: fields.Field) -> JsonSchema:  # type: ignore[type-arg]
        if isinstance(field, fields.Nested):
            nested = field.nested
            if callable(nested) and not isinstance(nested, type):
                nested = nested()
            ref = self.ref(nested)  # type: ignore[arg-type]
            return {"type": "array", "items": ref} if field.many else ref
        if isinstance(field, fields.List):
            return {"type": "array", "items": self.field(field.inner)}
        if isinstance(field, fields.Dict):
            described: JsonSchema = {"type": "object"}
            if field.value_field is not None:
                described["additionalProperties"] = self.field(field.value_field)
            if field.key_field is not None:
                keys = self.field(field.key_field)
                keys.pop("type", None)
                if keys:
                    described["propertyNames"] = keys
            return described
        if isinstance(field, fields.UUID):
            return {"type": "string", "format": "uuid"}
        if isinstance(field, fields.String):
            return {"type": "string"}
        if isinstance(field, fields.Boolean):
            return {"type": "boolean"}
        if isinstance(field, fields.Integer):
            return {"type": "integer"}
        if isinstance(field, fields.Number):
            return {"type": "number"}
        if isinstance(field, fields.DateTime):
            return {"type": "string", "format": "date-time"}
        if isinstance(field, fields.Date):
            return {"type": "string", "format": "date"}
        if isinstance(field, fields.Time):
            return {"type": "string", "format": "time"}
        return {}  # any JSON value: what a plain Field or Raw loads


def class_name(name: str) -> str:
    """A definition's name for a thing named in snake or kebab case (``webhook`` → ``Webhook``)."""
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name))


def _validator(validator: Any, described: JsonSchema) -> JsonSchema:
    """The JSON Schema keywords a marshmallow validator stands for (none for a
    function: its rule is in words, in the field's description)."""
    kind = described.get("type")
    if isinstance(validator, validate.Length):
        low, high = ("minLength", "maxLength") if kind == "string" else \
            ("minItems", "maxItems") if kind == "array" else ("minProperties", "maxProperties")
        if validator.equal is not None:
            return {low: validator.equal, high: validator.equal}
        return {**({low: validator.min} if validator.min is not None else {}),
                **({high: validator.max} if validator.max is not None else {})}
    if isinstance(validator, validate.Range):
        keywords: JsonSchema = {}
        if validator.min is not None:
            keywords["minimum" if validator.min_inclusive else "exclusiveMinimum"] = validator.min
        if validator.max is not None:
            keywords["maximum" if validator.max_inclusive else "exclusiveMaximum"] = validator.max
        return keywords
    if isinstance(validator, validate.Regexp):
        return {"pattern": json_pattern(str(validator.regex.pattern))}
    if isinstance(validator, validate.URL):
        schemes = sorted(validator.schemes or ())
        return {"format": "uri", **({"pattern": f"^({'|'.join(map(re.escape, schemes))})://"} if schemes else {})}
    if isinstance(validator, validate.Email):
        return {"format": "email"}
    if isinstance(validator, validate.OneOf):
        return {"enum": list(validator.choices)}
    if isinstance(validator, validate.Equal):
        return {"const": validator.comparable}
    return {}


def json_pattern(pattern: str) -> str:
    """A Python pattern, which marshmallow matches from the start of the value
    (``re.match``), as a JSON Schema pattern, which may match anywhere and
    whose ``$`` is the very end (Python's ``\\Z``)."""
    pattern = re.sub(r"(?<!\\)\\Z", "$", pattern)
    return pattern if pattern.startswith("^") else f"^(?:{pattern})"


def _or_null(described: JsonSchema) -> JsonSchema:
    if described.get("type") in ("string", "boolean", "integer", "number", "array", "object") \
            and "$ref" not in described and "enum" not in described:
        return {**described, "type": [described["type"], "null"]}
    return {"anyOf": [described, {"type": "null"}]}


def _without_default(described: JsonSchema) -> JsonSchema:
    described = {key: value for key, value in described.items() if key != "default"}
    if "anyOf" in described:
        described["anyOf"] = [_without_default(option) for option in described["anyOf"]]
    return described


def _is_json(value: Any) -> bool:
    if isinstance(value, bool | str) or value is None:
        return True
    if isinstance(value, int | float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_json(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _is_json(item) for key, item in value.items())
    return False


def _first_paragraph(doc: str | None) -> str | None:
    if not doc:
        return None
    return " ".join(doc.strip().split("\n\n", 1)[0].split())
