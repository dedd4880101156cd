"""shipcast: order events in, signed webhooks and no-code channels out.

Plugins import what they need from here::

    from shipcast import Channel, Target, hookimpl
"""

from __future__ import annotations

from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["Channel", "Delivered", "Event", "Publisher", "Target", "hookimpl", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy, so `import shipcast` stays cheap and plugin modules can import it early.
    if name in ("Channel", "Delivered", "Target"):
        from . import channel

        return getattr(channel, name)
    if name == "Event":
        from .envelope import Event

        return Event
    if name == "Publisher":
        from .broker import Publisher

        return Publisher
    raise AttributeError(f"module 'shipcast' has no attribute {name!r}")
