"""The pluggy markers of the ``shipcast`` project: plugins decorate their
hooks with :data:`hookimpl` (re-exported as ``shipcast.hookimpl``)."""

from __future__ import annotations

import pluggy

PROJECT = "shipcast"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
