"""Event types are data: each row says which field groups an event of that
type must carry and which must be null.

The built-in rows (OFD, DEL, FAIL, RET) are registered through the same hook a
plugin uses to add its own (PICKED_UP, IN_TRANSIT, RESCHEDULED, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from shipcast.exceptions import ConfigError

#: The envelope's field groups, in the order they are serialised.
GROUPS: tuple[str, ...] = ("order", "rider", "otp", "failure", "return", "delivery_confirmation",
                           "customer_input")

_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")


@dataclass(frozen=True)
class EventType:
    """One registry row.

    :param name: the type's code, upper case (``OFD``); it is the last word of
        the routing key ``<partner_id>.<name>``.
    :param description: what happened, in words for the docs and ``schema``.
    :param required: groups an event of this type must carry.
    :param forbidden: groups that must be null. Groups in neither set are optional.
    """

    name: str
    description: str
    required: frozenset[str] = field(default_factory=frozenset)
    forbidden: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"event type {self.name!r}: name must match {_NAME.pattern}")
        unknown = (self.required | self.forbidden) - set(GROUPS)
        if unknown:
            raise ConfigError(f"event type {self.name}: unknown groups {sorted(unknown)}")
        both = self.required & self.forbidden
        if both:
            raise ConfigError(f"event type {self.name}: groups both required and null {sorted(both)}")
        if "order" not in self.required:
            raise ConfigError(f"event type {self.name}: every event type requires 'order'")

    def check(self, present: Iterable[str]) -> list[tuple[str, str]]:
        """Return ``(group, message)`` for each group that breaks this row."""
        present = set(present)
        problems = [
            (group, f"required for {self.name} events")
            for group in GROUPS
            if group in self.required and group not in present
        ]
        problems += [
            (group, f"must be null for {self.name} events")
            for group in GROUPS
            if group in self.forbidden and group in present
        ]
        return problems


def _row(name: str, description: str, required: str, forbidden: str) -> EventType:
    return EventType(name, description, frozenset(required.split()), frozenset(forbidden.split()))


BUILTIN: tuple[EventType, ...] = (
    _row("OFD", "Out for delivery: a rider has the parcel and an OTP was issued.",
         "order rider otp", "failure return delivery_confirmation customer_input"),
    _row("DEL", "Delivered to the customer.",
         "order rider delivery_confirmation", "otp failure return customer_input"),
    _row("FAIL", "A delivery attempt failed; the reason says why.",
         "order rider failure", "otp return delivery_confirmation customer_input"),
    _row("RET", "The parcel is being returned to the merchant.",
         "order return", "rider otp failure delivery_confirmation customer_input"),
)


class EventTypeRegistry(Mapping[str, EventType]):
    """Every known event type by name, built from the ``shipcast_event_types`` hook."""

    def __init__(self, rows: Iterable[EventType]) -> None:
        self._rows: dict[str, EventType] = {}
        for row in rows:
            if row.name in self._rows and self._rows[row.name] != row:
                raise ConfigError(f"event type {row.name} is registered twice with different rows")
            self._rows[row.name] = row

    def __getitem__(self, name: str) -> EventType:
        return self._rows[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._rows))

    def __len__(self) -> int:
        return len(self._rows)
