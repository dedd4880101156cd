"""The registry: what one running shipcast has loaded, built once from its
settings and passed down.

Built-ins are registered from :data:`~shipcast.plugin.builtins.DEFAULT_PLUGINS`;
third-party packages register through the ``shipcast`` entry-point group.
``SHIPCAST_PLUGINS`` (:attr:`Settings.plugins`: comma-separated names, e.g.
``webhook,archive,my-sms``) restricts which plugins load; the core event
types always load. Nothing here is process-wide: two registries built from
different settings live side by side in one process.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

import pluggy

from shipcast.amqp.topology import ChannelTopology
from shipcast.exceptions import ConfigError
from shipcast.model.catalog import Catalog
from shipcast.model.event_types import EventTypeRegistry
from shipcast.plugin import hookspecs
from shipcast.plugin.builtins import ALWAYS, DEFAULT_PLUGINS
from shipcast.plugin.channel import Channel
from shipcast.plugin.markers import PROJECT
from shipcast.settings import Settings

_CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _short(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def plugin_manager(allowed: frozenset[str] | None, extra: Iterable[object] = ()) -> pluggy.PluginManager:
    """A plugin manager with the core's hooks, the built-in plugins (those
    ``allowed``, or all), the ``extra`` plugin objects given, then the
    installed entry points (those ``allowed``, or all)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    # Plugins that declare hooks of their own do it as they are registered.
    pm.hook.shipcast_addhooks.call_historic(kwargs={"pluginmanager": pm})
    for module_name in DEFAULT_PLUGINS:
        if allowed is None or module_name in ALWAYS or _short(module_name) in allowed:
            pm.register(importlib.import_module(module_name), name=module_name)
    for plugin in extra:
        pm.register(plugin)
    if allowed is not None:
        # Block entry points that were not asked for; pluggy skips blocked names.
        for ep in entry_points(group=PROJECT):
            if ep.name not in allowed:
                pm.set_blocked(ep.name)
    pm.load_setuptools_entrypoints(PROJECT)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        # A hook no loaded plugin declares: its plugin is missing or not allowed.
        raise ConfigError(f"plugin {exc.plugin!r}: {exc}; is the plugin that declares it loaded "
                          f"(SHIPCAST_PLUGINS)?") from exc
    return pm


def _channels(pm: pluggy.PluginManager) -> dict[str, type[Channel]]:
    found: dict[str, type[Channel]] = {}
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


class Registry:
    """The plugins, channels and event types of one running shipcast.

    :param settings: the running settings; ``settings.plugins`` restricts
        which plugins load.
    :param plugins: plugin objects to register besides the built-in and
        installed ones (a test's, or an embedding application's).
    """

    def __init__(self, settings: Settings, *, plugins: Iterable[object] = ()) -> None:
        self.settings = settings
        self.pm = plugin_manager(settings.allowed_plugins, plugins)
        self.hook = self.pm.hook
        self.event_types = EventTypeRegistry(
            row for rows in self.hook.shipcast_event_types() for row in rows)
        #: Every registered channel class, by name.
        self.channels: dict[str, type[Channel]] = _channels(self.pm)
        #: What partner configs are validated against.
        self.catalog = Catalog(self.event_types,
                               {name: channel.config_schema for name, channel in self.channels.items()},
                               tuple(name for name, channel in self.channels.items() if channel.partner_editable))

    def topologies(self) -> list[ChannelTopology]:
        """Every registered channel's queues, with the running retry schedule."""
        return [channel.topology(self.settings.retry_delays) for channel in self.channels.values()]

    def channel(self, name: str) -> type[Channel]:
        """One registered channel class.

        :raises ConfigError: no channel of that name is installed.
        """
        try:
            return self.channels[name]
        except KeyError:
            raise ConfigError(f"unknown channel {name!r}; installed: {', '.join(sorted(self.channels))}") from None
