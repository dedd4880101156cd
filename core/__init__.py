"""shipcast: order events in, signed webhooks and no-code channels out.

Plugins import what they need from here::

    from shipcast import Channel, Delivered, Target, hookimpl
"""

from __future__ import annotations

from .hookspecs import hookimpl  # first: every other module may register hooks

from .broker import Publisher  # noqa: E402
from .channel import Channel, Delivered, Target  # noqa: E402
from .envelope import Event  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Channel", "Delivered", "Event", "Publisher", "Target", "__version__", "hookimpl"]
