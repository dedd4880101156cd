"""The plugin manager: built-in plugins first, then installed ones.

Built-ins are registered from :data:`DEFAULT_PLUGINS`; third-party packages
register through the ``shipcast`` entry-point group. ``SHIPCAST_PLUGINS``
(comma-separated names, e.g. ``webhook,archive,my-sms``) restricts which
channel plugins load; the core event types always load.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from typing import TYPE_CHECKING

import pluggy

from . import hookspecs
from .event_types import EventTypeRegistry
from .exceptions import ConfigError

if TYPE_CHECKING:
    from .channel import Channel

#: Modules registered before any installed plugin, in this order.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "shipcast.event_types",
    "shipcast.plugins.webhook",
    "shipcast.plugins.archive",
)
_ALWAYS = {"shipcast.event_types"}


def _allowed() -> set[str] | None:
    raw = os.environ.get("SHIPCAST_PLUGINS", "").strip()
    return {name.strip() for name in raw.split(",") if name.strip()} if raw else None


def _short(module: str) -> str:
    return module.rsplit(".", 1)[-1]


@cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built once."""
    pm = pluggy.PluginManager("shipcast")
    pm.add_hookspecs(hookspecs)
    allowed = _allowed()
    for module_name in DEFAULT_PLUGINS:
        if allowed is None or module_name in _ALWAYS or _short(module_name) in allowed:
            pm.register(importlib.import_module(module_name), name=module_name)
    if allowed is not None:
        # Block entry points that were not asked for; pluggy skips blocked names.
        from importlib.metadata import entry_points

        for ep in entry_points(group="shipcast"):
            if ep.name not in allowed:
                pm.set_blocked(ep.name)
    pm.load_setuptools_entrypoints("shipcast")
    pm.check_pending()
    return pm


def reset() -> None:
    """Forget the cached manager and registries (tests, or after changing
    ``SHIPCAST_PLUGINS``)."""
    get_plugin_manager.cache_clear()
    event_types.cache_clear()
    channels.cache_clear()


@cache
def event_types() -> EventTypeRegistry:
    """Every registered event type."""
    rows = [row for rows in get_plugin_manager().hook.shipcast_event_types() for row in rows]
    return EventTypeRegistry(rows)


@cache
def channels() -> dict[str, type[Channel]]:
    """Every registered channel class, by name."""
    found: dict[str, type[Channel]] = {}
    for group in reversed(get_plugin_manager().hook.shipcast_channels()):
        for channel in group:
            if channel.name in found and found[channel.name] is not channel:
                raise ConfigError(f"two plugins register a channel named {channel.name!r}")
            found[channel.name] = channel
    return found
