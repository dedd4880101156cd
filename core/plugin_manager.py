"""The plugin manager: built-in plugins first, then installed ones.

Built-ins are registered from :data:`DEFAULT_PLUGINS`; third-party packages
register through the ``shipcast`` entry-point group. ``SHIPCAST_PLUGINS``
(comma-separated names, e.g. ``webhook,archive,my-sms``) restricts which
channel plugins load; the core event types always load.
"""

from __future__ import annotations

import importlib
import os
import re
from functools import cache
from typing import TYPE_CHECKING, Any

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
    "shipcast.plugins.sms",
    "shipcast.plugins.email",
    "shipcast.plugins.whatsapp",
    "shipcast.plugins.archive",
    "shipcast.plugins.tracking",
)
_ALWAYS = {"shipcast.event_types"}
_CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


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
    from .channel import Channel

    found: dict[str, type[Channel]] = {}
    pm = get_plugin_manager()
    for impl in pm.hook.shipcast_channels.get_hookimpls():
        registered: list[Any] = impl.function()  # type: ignore[assignment]
        for channel in registered:
            where = f"plugin {impl.plugin_name!r}"
            if not (isinstance(channel, type) and issubclass(channel, Channel)):
                raise ConfigError(f"{where} registers {channel!r}, which is not a Channel subclass")
            name = getattr(channel, "name", None)
            if not isinstance(name, str) or not _CHANNEL_NAME.match(name):
                raise ConfigError(f"{where}: channel {channel.__name__} needs a name matching {_CHANNEL_NAME.pattern}")
            if name in found and found[name] is not channel:
                raise ConfigError(f"{where}: another plugin already registers a channel named {name!r}")
            found[name] = channel
    return found
