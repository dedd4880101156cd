"""The plugins every shipcast loads before installed ones, and the core's
own: the built-in event types (OFD, DEL, FAIL, RET), registered through the
same hook a plugin uses to add its own.

Adding a built-in channel is one line in :data:`DEFAULT_PLUGINS`.
"""

from __future__ import annotations

from shipcast.model.event_types import BUILTIN, EventType
from shipcast.plugin.markers import hookimpl

#: Modules registered before any installed plugin, in this order.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "shipcast.plugin.builtins",
    "shipcast.plugins.webhook",
    "shipcast.plugins.sms",
    "shipcast.plugins.email",
    "shipcast.plugins.whatsapp",
    "shipcast.plugins.archive",
    "shipcast.plugins.tracking",
    "shipcast.plugins.amqp",
)
#: Registered whatever ``SHIPCAST_PLUGINS`` says.
ALWAYS: frozenset[str] = frozenset({"shipcast.plugin.builtins"})


@hookimpl
def shipcast_event_types() -> list[EventType]:
    return list(BUILTIN)
