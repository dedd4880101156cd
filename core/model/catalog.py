"""What the model is validated against: the event types and channels a
running shipcast has registered.

The registry of a running shipcast builds a :class:`Catalog` once and passes
it down; loading a partners file takes one. The marshmallow fields that need
it while a document loads (a list of event types, the ``channels:`` mapping)
read it from :func:`validating`, set for the length of one load only, so two
differently configured shipcast instances can validate side by side.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from marshmallow import Schema

from shipcast.exceptions import ConfigError
from shipcast.model.event_types import EventTypeRegistry


@dataclass(frozen=True)
class Catalog:
    """The registered event types, each channel's config schema by name, and
    the channels whose section a partner's own people change (the others are
    the operator's partners file's alone)."""

    event_types: EventTypeRegistry
    channel_schemas: Mapping[str, type[Schema]] = field(default_factory=dict)
    editable: tuple[str, ...] = ()


_current: ContextVar[Catalog | None] = ContextVar("shipcast_catalog", default=None)


@contextmanager
def validating(catalog: Catalog) -> Iterator[Catalog]:
    """Validate against ``catalog`` inside the ``with`` block."""
    token = _current.set(catalog)
    try:
        yield catalog
    finally:
        _current.reset(token)


def current() -> Catalog:
    """The catalog of the load in progress.

    :raises ConfigError: a schema that needs it was loaded outside :func:`validating`.
    """
    catalog = _current.get()
    if catalog is None:
        raise ConfigError("a partner config was validated without the registry's catalog "
                          "(load it inside shipcast.model.catalog.validating)")
    return catalog
