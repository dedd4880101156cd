"""The model's functions bound to the registry a default ``shipcast run``
builds (every built-in and installed plugin): what most tests validate
against. A test of another configuration builds its own ``Registry``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from shipcast.messaging import templates
from shipcast.model import envelope, examples, partners
from shipcast.model.envelope import Event
from shipcast.model.event_types import EventTypeRegistry
from shipcast.plugin.channel import Channel
from shipcast.plugin.registry import Registry
from shipcast.settings import Settings

REGISTRY = Registry(Settings(plugins=""))


def channels() -> dict[str, type[Channel]]:
    return REGISTRY.channels


def event_types() -> EventTypeRegistry:
    return REGISTRY.event_types


def example(event_type: str, **options: Any) -> Event:
    return examples.example(event_type, REGISTRY.event_types, **options)


def parse_event(data: Any, **options: Any) -> Event:
    return envelope.parse_event(data, REGISTRY.event_types, **options)


def parse_events(data: Any) -> list[Event]:
    return envelope.parse_events(data, REGISTRY.event_types)


def json_schema(**options: Any) -> dict[str, Any]:
    return envelope.json_schema(REGISTRY.event_types, **options)


def load_partners(data: Any, source: str = "<partners>") -> list[partners.Partner]:
    return partners.load_partners(data, source, catalog=REGISTRY.catalog)


def load_partners_file(path: str | Path) -> list[partners.Partner]:
    return partners.load_partners_file(path, catalog=REGISTRY.catalog)


@lru_cache(maxsize=64)
def registry_for(settings: Settings) -> Registry:
    """A registry built from ``settings`` (a test's public URL, say), once per settings."""
    return Registry(settings)


def render(settings: Settings, *args: Any, **options: Any) -> str:
    return templates.render(registry_for(settings), *args, **options)


def check_templates(settings: Settings, *args: Any, **options: Any) -> dict[str, list[str]]:
    return templates.check_templates(registry_for(settings), *args, **options)
