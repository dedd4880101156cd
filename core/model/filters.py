"""Payload filters: a declarative condition on an event's envelope fields,
checked against the envelope's schema (and the event types an endpoint
receives) when a config is applied, and compiled once into a predicate that
is run on each event.

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

import logging
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
from shipcast.model.event_types import EventType
from shipcast.model.json_schemas import Describer, JsonSchema

log = logging.getLogger(__name__)

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
        if isinstance(value, float) and value.is_integer() and -INT64 <= value < INT64:
            return int(value)  # JSON writes a whole number as 2.0 too
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


# -- what can never match -----------------------------------------------------------

#: A clause's possible values for one event type, and the conditions that settle it when only one is.
_Outcome = tuple[frozenset[bool], tuple[tuple[str, str], ...]]
_EITHER: _Outcome = (frozenset((True, False)), ())


def _names(types: Collection[str]) -> str:
    listed = list(types)
    return listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} and {listed[-1]}"


def never_matches(spec: Any, rows: Mapping[str, EventType], events: Collection[str]) -> dict[str, list[str]]:
    """Where filter ``spec`` (checked) rules out every event of the types an
    endpoint receives (``events``: names, or ``"*"`` for all of ``rows``),
    by where it is, as :func:`check` says it; empty when some event may
    match. Only what the event types settle is judged: ``event_type``
    itself, and a field of a group a type's row makes null (``return.*``
    for OFD events). A filter that never holds for other reasons (a city
    that is two cities at once) is the partner's to find."""
    if not isinstance(spec, Mapping) or check(spec, None):
        return {}
    types = [rows[name] for name in (rows if "*" in events else events) if name in rows]
    settled: dict[tuple[str, str], list[str]] = {}
    for row in types:
        values, why = _settle(spec, row, "")
        if True in values:
            return {}
        for reason in why:
            settled.setdefault(reason, []).append(row.name)
    names = [row.name for row in types]
    whole = {reason: found for reason, found in settled.items() if len(found) == len(names)}
    errors: dict[str, list[str]] = {}
    for (at, group), found in (whole or settled).items():
        if group != EVENT_TYPE:
            message = f"never matches: {_names(found)} events have no {group}"
        elif len(found) == len(names) and "*" not in events:
            message = f"never matches: only {_names(found)} events come here"
        else:
            message = f"never matches {_names(found)} events, by their type"
        errors.setdefault(at, []).append(message)
    return errors


def unmatched_filter(config: Mapping[str, Any], rows: Mapping[str, EventType]) -> dict[str, list[str]]:
    """Where a destination's ``filter`` rules out every event of its
    ``events`` (absent: ``["*"]``; ``rows``: the registered types), by field:
    ``filter.return.reason``, as a config's errors name it."""
    spec = config.get("filter")
    if spec is None:
        return {}
    return {_join("filter", at): messages
            for at, messages in never_matches(spec, rows, config.get("events", ["*"])).items()}


def _settle(spec: Mapping[str, Any], row: EventType, at: str) -> _Outcome:
    """What ``spec`` can be for events of ``row``'s type: true, false or either."""
    return _both([_settle_clause(key, value, row, _join(at, key)) for key, value in spec.items()])


def _both(parts: list[_Outcome]) -> _Outcome:
    false = [why for values, why in parts if values == {False}]
    if false:
        return frozenset((False,)), tuple(reason for why in false for reason in why)
    if all(values == {True} for values, _ in parts):
        return frozenset((True,)), tuple(reason for _, why in parts for reason in why)
    return _EITHER


def _either(parts: list[_Outcome]) -> _Outcome:
    true = [why for values, why in parts if values == {True}]
    if true:
        return frozenset((True,)), tuple(reason for why in true for reason in why)
    if all(values == {False} for values, _ in parts):
        return frozenset((False,)), tuple(reason for _, why in parts for reason in why)
    return _EITHER


def _settle_clause(key: str, value: Any, row: EventType, at: str) -> _Outcome:
    if key in ("all", "any"):
        parts = [_settle(item, row, _join(at, index)) for index, item in enumerate(value)]
        return _both(parts) if key == "all" else _either(parts)
    if key == "not":
        values, why = _settle(value, row, at)
        return frozenset(not v for v in values), why
    group = key.split(".", 1)[0]
    if key == EVENT_TYPE:
        known: Any = row.name
    elif group in row.forbidden:
        known = None  # the group is null for this type, and every field in it
    else:
        return _EITHER
    holds = _condition(envelope_fields()[key], lambda _: known, value)(None)
    return frozenset((holds,)), ((at, EVENT_TYPE if key == EVENT_TYPE else group),)


class FilterField(mfields.Dict):
    """A config's ``filter:``, a JSON object, checked against the envelope and
    the registered event types (of the load in progress); loaded as JSON gives it back."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {"description": "Only the events this condition on their fields holds "
                                                      "for: {\"order.payment.method\": \"cod\"}, all, any, not"})
        super().__init__(**kwargs)

    def json_schema(self, describer: Describer) -> JsonSchema:
        return describer.define("Filter", filter_schema(describer))

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        errors = check(value, current().event_types)
        if errors:
            raise ValidationError({at or "_schema": messages for at, messages in errors.items()})
        return orjson.loads(orjson.dumps(value))  # a date YAML read becomes the text JSON has


# -- described, for the API's documentation ------------------------------------------

#: A value of each kind as JSON writes it: dates and times those ``fromisoformat`` reads on any day of a month.
_DAY = r"[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
_VALUES: dict[str, JsonSchema] = {
    "group": {"not": {}, "description": "A group compares with null only"},
    "string": {"type": "string", "maxLength": MAX_TEXT},
    "integer": {"type": "integer", "minimum": -INT64, "maximum": INT64 - 1},
    "number": {"type": "number", "minimum": -INT64, "maximum": INT64 - 1},
    "boolean": {"type": "boolean"},
    "date": {"type": "string", "format": "date", "pattern": f"^{_DAY}$"},
    "date-time": {"type": "string", "format": "date-time", "pattern": f"^{_DAY}T([01][0-9]|2[0-3]):[0-5][0-9]:"
                  r"[0-5][0-9](\.[0-9]{3}|\.[0-9]{6})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])$"},
}


def filter_schema(describer: Describer) -> JsonSchema:
    """A filter as :func:`check` takes it, as JSON Schema: each field of the
    envelope by its path, with a condition of its kind. The bounds on size
    (:data:`MAX_DEPTH`, :data:`MAX_TERMS`) are in its description."""
    ref = {"$ref": describer.ref_template.format(name="Filter")}
    filters = {"type": "array", "items": ref, "minItems": 1, "maxItems": MAX_TERMS}
    conditions = {path: _condition_schema(describer, field) for path, field in envelope_fields().items() if path}
    return {"type": "object", "minProperties": 1, "additionalProperties": False,
            "description": f"A condition on the event's fields, by their dotted paths; all, any and not nest "
                           f"{MAX_DEPTH} levels at most, and a filter holds {MAX_TERMS} conditions and listed "
                           "values at most. One that no event of the endpoint's types can match is refused "
                           "(never matches: a field of a group those types carry as null, say)",
            "properties": {"all": filters, "any": filters, "not": ref, **conditions}}


def _condition_schema(describer: Describer, field: Field) -> JsonSchema:
    if field.path == EVENT_TYPE:
        value: JsonSchema = {"type": "string", "enum": list(describer.catalog.event_types)}
    elif field.choices is not None:
        value = {"enum": list(field.choices)}
    else:
        kind = field.kind.replace("-", " ").title().replace(" ", "")
        return describer.define(f"FilterOn{kind}", _condition_schema_of(field.kind, _VALUES[field.kind]))
    return _condition_schema_of(field.kind, value)


def _condition_schema_of(kind: str, value: JsonSchema) -> JsonSchema:
    """A condition on a field whose values are ``value``: a value (or null),
    a list of them, or operators."""
    one = {"anyOf": [value, {"type": "null"}]}
    listed = {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_VALUES}
    operators: JsonSchema = {"eq": one, "ne": one, "in": listed, "nin": listed, "exists": {"type": "boolean"}}
    if kind in ORDERED:
        operators.update(dict.fromkeys(("gt", "gte", "lt", "lte"), value))
    return {"anyOf": [one, listed, {"type": "object", "minProperties": 1, "additionalProperties": False,
                                    "properties": operators}]}


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


@dataclass(frozen=True)
class Compiled:
    """A destination's stored filter, compiled: its predicate, or (``None``)
    why it does not compile, as a reason to park its copy of an event with."""

    spec: Any
    predicate: Predicate | None
    problem: str | None = None


class CompiledFilters:
    """The stored filters a channel runs, one entry per destination (its
    partner and id), each compiled once: the same filter reloaded (equal,
    another object) is not compiled again, and a changed one replaces its
    destination's entry rather than piling up beside it. A stored filter
    that does not compile (one of another version, say) is kept with why,
    logged once, so the channel holds back that destination's copy alone.
    Past ``limit`` entries they are dropped and compiled again as events
    need them.

    :param kind: what a destination is called in that reason (``endpoint``).
    """

    def __init__(self, limit: int = 4096, *, kind: str = "destination") -> None:
        self.limit = limit
        self.kind = kind
        self._compiled: dict[tuple[str, str], Compiled] = {}

    def __len__(self) -> int:
        return len(self._compiled)

    def get(self, key: tuple[str, str], spec: Any) -> Compiled:
        """Destination ``key``'s stored filter ``spec``, compiled."""
        cached = self._compiled.get(key)
        if cached is not None and cached.spec is spec:
            return cached
        if cached is not None and cached.spec == spec:  # the same filter, reloaded: found by identity from now on
            cached = self._compiled[key] = Compiled(spec, cached.predicate, cached.problem)
            return cached
        try:
            cached = Compiled(spec, compile_filter(spec))
        except ConfigError as exc:
            where = "; ".join(f"{at}: {', '.join(messages)}" for at, messages in exc.errors.items())
            problem = f"not sent: the {self.kind}'s stored filter is not valid; apply the {self.kind} again ({where})"
            log.error("%s %s of %s: %s", self.kind, key[1], key[0], problem)
            cached = Compiled(spec, None, problem[:1000])
        if len(self._compiled) >= self.limit and key not in self._compiled:
            self._compiled.clear()
        self._compiled[key] = cached
        return cached


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
    return _condition(field, _getter(field.attrs), value)


def _condition(field: Field, get: Callable[[Any], Any], value: Any) -> Predicate:
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
