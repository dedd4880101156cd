"""shipcast: order events in, signed webhooks and no-code channels out.

Plugins import what they need from here::

    from shipcast import Channel, ChannelConfig, Delivered, Event, Partner, Target, hookimpl

The core's subpackages are its layers, each importing only from its own
layer or below (``docs/architecture.md``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from shipcast.app.publisher import Publisher  # noqa: E402
from shipcast.model.envelope import Event  # noqa: E402
from shipcast.model.partners import Partner  # noqa: E402
from shipcast.plugin.channel import Channel, ChannelConfig, Delivered, Target  # noqa: E402
from shipcast.plugin.markers import hookimpl  # noqa: E402

__all__ = ["Channel", "ChannelConfig", "Delivered", "Event", "Partner", "Publisher", "Target", "__version__",
           "hookimpl"]
