"""Payload filters: a declarative condition on an event's envelope fields,
checked against the envelope's schema when a config is applied, and compiled
once into a predicate that is run on each event.

A filter is data, never code: JSON (or YAML) read by :func:`check` and turned
into nested closures by :func:`compile_filter`. Its grammar::

    filter    := {clause, ...}            every clause holds
    clause    := "all": [filter, ...]     every filter holds
               | "any": [filter, ...]     at least one holds
               | "not": filter            it does not hold
               | path: condition          a field of the envelope, dotted: order.payment.method
    condition := value                    equal to it (null: the field is null)
               | [value, ...]             equal to one of them
               | {operator: operand, ...} every operator holds
    operator  := eq | ne | in | nin | gt | gte | lt | lte | exists

``gt``, ``gte``, ``lt`` and ``lte`` compare numbers, dates and times (never
a null field); ``ne`` and ``nin`` hold for a null field; ``exists: true``
holds when the field is not null (a group absent for the event's type is
null, and so is every field in it).
"""

from __future__ import annotations

import math
import operator
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any

import orjson
from marshmallow import ValidationError
from marshmallow import fields as mfields
from pydantic import BaseModel

from shipcast.exceptions import ConfigError
from shipcast.model.catalog import current
from shipcast.model.envelope import Event

#: A compiled filter: called with an :class:`~shipcast.model.envelope.Event`, true when it matches.
Predicate = Callable[[Any], bool]

#: How deep ``all``, ``any`` and ``not`` may nest.
MAX_DEPTH = 8
#: Conditions and listed values in one filter, at most.
MAX_TERMS = 200
#: Values one ``[...]``, ``in`` or ``nin`` may list.
MAX_VALUES = 100
#: Characters of one text value.
MAX_TEXT = 500
#: Whole numbers are compared within 64 bits, as they are stored.
INT64 = 2**63

COMBINATORS = ("all", "any", "not")
OPERATORS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists")
#: The kinds of field that ``gt``, ``gte``, ``lt`` and ``lte`` compare.
ORDERED = frozenset({"integer", "number", "date", "date-time"})
#: The envelope's field that names a registered event type.
EVENT_TYPE = "event_type"

_KINDS = {"group": "a group of fields", "string": "text", "integer": "a whole number", "number": "a number",
          "boolean": "true or false", "date": "a date", "date-time": "a time"}


@dataclass(frozen=True)
class Field:
    """One field of the envelope a filter may name.

    :param path: as filters write it (``return.reason``).
    :param kind: ``group``, ``string``, ``integer``, ``number``, ``boolean``, ``date`` or ``date-time``.
    :param attrs: where the parsed event keeps it (``return_.reason``).
    :param choices: the values it may take, when the schema lists them.
    :param children: a group's fields.
    """

    path: str
    kind: str
    attrs: str
    choices: tuple[Any, ...] | None = None
    children: tuple[str, ...] = ()


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The envelope group a field's annotation holds (``Address | None``: ``Address``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _leaf(schema: Mapping[str, Any]) -> tuple[str, tuple[Any, ...] | None]:
    """A leaf's kind and choices from its JSON Schema (nullable: the non-null member)."""
    options = [option for option in schema.get("anyOf", [schema]) if option.get("type") != "null"]
    [option] = options
    choices = tuple(option["enum"]) if "enum" in option else (option["const"],) if "const" in option else None
    kind = option["type"]
    if kind == "string" and option.get("format") in ("date", "date-time"):
        kind = option["format"]
    return kind, choices


def _walk(model: type[BaseModel], path: str, attrs: str, table: dict[str, Field]) -> tuple[str, ...]:
    properties = model.model_json_schema(mode="validation")["properties"]
    names = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        here, where = f"{path}{key}", f"{attrs}{name}"
        names.append(key)
        group = _model_in(info.annotation)
        if group is not None:
            children = _walk(group, f"{here}.", f"{where}.", table)
            table[here] = Field(here, "group", where, children=children)
        else:
            kind, choices = _leaf(properties[key])
            table[here] = Field(here, kind, where, choices)
    return tuple(names)


@lru_cache(maxsize=1)
def envelope_fields() -> Mapping[str, Field]:
    """Every field of the envelope a filter may name, by path (and the
    envelope itself, a group, as ``""``), from the envelope's own models and
    JSON Schema: the same for every registry, as event types add rows, not fields."""
    table: dict[str, Field] = {}
    roots = _walk(Event, "", "", table)
    table[""] = Field("", "group", "", children=roots)
    return types.MappingProxyType(table)


def _join(at: str, key: Any) -> str:
    return f"{at}.{key}" if at else str(key)


def _no_such_field(path: str, fields: Mapping[str, Field]) -> str:
    """Name the fields there are where ``path`` went astray."""
    parent = ""
    for part in path.split("."):
        here = _join(parent, part)
        if here not in fields:
            break
        parent = here
    found = fields[parent]
    if found.kind != "group":
        return f"no such field: {parent} is {_KINDS[found.kind]}, with no fields inside"
    return f"no such field; {'the event' if not parent else parent} has {', '.join(found.children)}"


class _Checker:
    """Walks a filter once, bounded, collecting every error by where it is."""

    def __init__(self, event_types: Collection[str] | None) -> None:
        self.fields = envelope_fields()
        self.event_types = event_types
        self.errors: dict[str, list[str]] = {}
        self.terms = 0

    def error(self, at: str, message: str) -> None:
        self.errors.setdefault(at, []).append(message)

    def count(self, at: str, n: int = 1) -> bool:
        """Count ``n`` terms; false (and said once) past the bound."""
        self.terms += n
        if self.terms > MAX_TERMS:
            if "" not in self.errors:
                self.error("", f"too large: at most {MAX_TERMS} conditions and listed values")
            return False
        return True

    def filter(self, spec: Any, at: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.error(at, f"nested too deeply: all, any and not may nest {MAX_DEPTH} levels")
            return
        if not isinstance(spec, Mapping):
            self.error(at, 'must be an object: {"field.path": value}, or all, any or not')
            return
        if not spec:
            self.error(at, "is empty: name a field, or use all, any or not")
            return
        for key, value in spec.items():
            if self.terms > MAX_TERMS:
                return
            here = _join(at, key)
            if not isinstance(key, str):
                self.error(here, "a field's path must be text")
            elif key in ("all", "any"):
                if not isinstance(value, list) or not value:
                    self.error(here, "must be a list of one filter or more")
                elif len(value) > MAX_TERMS:
                    self.error(here, f"lists more than {MAX_TERMS} filters")
                else:
                    for index, item in enumerate(value):
                        self.filter(item, _join(here, index), depth + 1)
            elif key == "not":
                self.filter(value, here, depth + 1)
            else:
                self.condition(key, value, here)

    def condition(self, path: str, value: Any, at: str) -> None:
        field = self.fields.get(path) if path else None
        if field is None:
            self.error(at, _no_such_field(path, self.fields))
            return
        if isinstance(value, Mapping):
            if not value:
                self.error(at, f"names no operator; use {', '.join(OPERATORS)}")
            for op, operand in value.items():
                where = _join(at, op)
                if op not in OPERATORS:
                    self.error(where, f"unknown operator; use {', '.join(OPERATORS)}")
                elif op == "exists":
                    if self.count(where) and not isinstance(operand, bool):
                        self.error(where, "must be true or false")
                elif op in ("in", "nin"):
                    self.values(field, operand, where)
                elif op in ("eq", "ne"):
                    self.value(field, operand, where)
                elif field.kind not in ORDERED:
                    self.error(where, f"compares numbers, dates and times; {path} is {_KINDS[field.kind]}")
                elif operand is None:
                    self.count(where)
                    self.error(where, "cannot compare with null: use exists")
                else:
                    self.value(field, operand, where)
        elif isinstance(value, list):
            self.values(field, value, at)
        else:
            self.value(field, value, at)

    def values(self, field: Field, value: Any, at: str) -> None:
        if not isinstance(value, list) or not value:
            self.error(at, "must be a list of one value or more")
        elif len(value) > MAX_VALUES:
            self.error(at, f"lists more than {MAX_VALUES} values")
        else:
            for index, item in enumerate(value):
                self.value(field, item, _join(at, index))

    def value(self, field: Field, value: Any, at: str) -> None:
        if not self.count(at) or value is None:
            return
        try:
            converted = convert(field, value)
        except ValueError as exc:
            self.error(at, str(exc))
            return
        if field.path == EVENT_TYPE and self.event_types is not None and converted not in self.event_types:
            self.error(at, f"unknown event type {converted!r}; known: {', '.join(self.event_types)}")
        elif field.choices is not None and converted not in field.choices:
            self.error(at, f"must be one of {', '.join(repr(c) for c in field.choices)}")


def convert(field: Field, value: Any) -> Any:
    """``value`` as the parsed event holds ``field`` (a date as a date), to compare with.

    :raises ValueError: ``value`` is not of the field's kind, saying what it must be.
    """
    kind = field.kind
    if value is None:
        return None
    if kind == "group":
        raise ValueError(f"{field.path} is a group of fields: compare a field inside it, "
                         "or use exists (or null)")
    if kind == "boolean":
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool):
        pass  # true is no number, and no text
    elif kind == "string":
        if isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise ValueError(f"longer than {MAX_TEXT} characters")
            return value
    elif kind in ("integer", "number") and isinstance(value, int) and not -INT64 <= value < INT64:
        raise ValueError("out of range: a whole number fits in 64 bits")
    elif kind == "integer":
        if isinstance(value, int):
            return value
    elif kind == "number":
        if isinstance(value, int | float) and math.isfinite(value):
            return value
    elif kind == "date":
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise ValueError(f"must be a date like 2024-05-01, as {field.path} is")
    elif kind == "date-time":
        try:
            moment = value if isinstance(value, datetime) else datetime.fromisoformat(value) \
                if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment
        raise ValueError(f"must be a time with its zone, like 2024-05-01T18:30:00Z, as {field.path} is")
    raise ValueError(f"must be {_KINDS[kind]}, as {field.path} is")


def check(spec: Any, event_types: Collection[str] | None) -> dict[str, list[str]]:
    """What is wrong with filter ``spec``, by where it is (``any.1.order.foo``;
    ``""`` for the filter as a whole); empty when nothing is. ``event_types``
    are the registered types an ``event_type`` condition may name (``None``:
    any). The walk is bounded by :data:`MAX_DEPTH` and :data:`MAX_TERMS`,
    however large ``spec`` is."""
    checker = _Checker(event_types)
    checker.filter(spec, "", 1)
    return checker.errors


class FilterField(mfields.Dict):
    """A config's ``filter:``, a JSON object, checked against the envelope and
    the registered event types (of the load in progress); loaded as JSON gives it back."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {"description": "Only the events this condition on their fields holds "
                                                      "for: {\"order.payment.method\": \"cod\"}, all, any, not"})
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        errors = check(value, current().event_types)
        if errors:
            raise ValidationError({at or "_schema": messages for at, messages in errors.items()})
        return orjson.loads(orjson.dumps(value))  # a date YAML read becomes the text JSON has


# -- compiling ------------------------------------------------------------------

def compile_filter(spec: Any) -> Predicate:
    """``spec`` (checked when it was applied) as a predicate on events.

    :raises ConfigError: ``spec`` is not a filter (a stored one from another
        version, say), naming what is wrong.
    """
    errors = check(spec, None)
    if errors:
        raise ConfigError("a stored filter is not valid; apply the endpoint again",
                          {_join("filter", at) if at else "filter": messages for at, messages in errors.items()})
    return _compile(spec)


def _compile(spec: Mapping[str, Any]) -> Predicate:
    return _all([_clause(key, value) for key, value in spec.items()])


def _all(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]

    def every(event: Any) -> bool:
        for part in parts:
            if not part(event):
                return False
        return True
    return every


def _any(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]

    def some(event: Any) -> bool:
        for part in parts:
            if part(event):
                return True
        return False
    return some


def _not(inner: Predicate) -> Predicate:
    return lambda event: not inner(event)


def _getter(attrs: str) -> Callable[[Any], Any]:
    """Reads a field from the parsed event; a field inside a null group is null."""
    read = operator.attrgetter(attrs)
    if "." not in attrs:
        return read  # top-level fields are always there

    def get(event: Any) -> Any:
        try:
            return read(event)
        except AttributeError:  # a group on the way is None
            return None
    return get


def _clause(key: str, value: Any) -> Predicate:
    if key == "all":
        return _all([_compile(item) for item in value])
    if key == "any":
        return _any([_compile(item) for item in value])
    if key == "not":
        return _not(_compile(value))
    field = envelope_fields()[key]
    get = _getter(field.attrs)
    if isinstance(value, Mapping):
        return _all([_operator(field, get, op, operand) for op, operand in value.items()])
    if isinstance(value, list):
        return _operator(field, get, "in", value)
    return _operator(field, get, "eq", value)


def _operator(field: Field, get: Callable[[Any], Any], op: str, operand: Any) -> Predicate:
    if op == "exists":
        return (lambda event: get(event) is not None) if operand else (lambda event: get(event) is None)
    if op in ("in", "nin"):
        choices = frozenset(convert(field, item) for item in operand)
        if op == "in":
            return lambda event: get(event) in choices
        return lambda event: get(event) not in choices
    wanted = convert(field, operand)
    if op == "eq":
        return lambda event: get(event) == wanted
    if op == "ne":
        return lambda event: get(event) != wanted
    compare = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}[op]

    def ordered(event: Any) -> bool:
        found = get(event)
        return found is not None and compare(found, wanted)
    return ordered
