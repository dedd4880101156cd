"""The one place shipcast's hooks are declared.

Hooks register things: event types, channels, HTTP routes, commands. Work that awaits
(delivering) lives in the methods of the objects a hook returns, because pluggy
calls hooks synchronously. Every hook is documented in ``docs/plugins.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    from fastapi import APIRouter

    from .envelope import Event
    from .partners import Partner
    from .plugins.sms.providers import SmsProvider
    from .settings import Settings

    from .channel import Channel
    from .event_types import EventType

hookspec = pluggy.HookspecMarker("shipcast")
hookimpl = pluggy.HookimplMarker("shipcast")


@hookspec
def shipcast_event_types() -> list[EventType]:
    """Register event types: rows saying which field groups an event of that type
    requires and which must be null.

    Two plugins may register the same row; registering different rows under one
    name is an error at start-up.

    :return: a list of :class:`shipcast.event_types.EventType`.
    """
    raise NotImplementedError


@hookspec
def shipcast_channels() -> list[type[Channel]]:
    """Register channels: each a subclass of :class:`shipcast.Channel` that
    describes its queue and delivers to targets.

    Channel names must be unique; the core declares each channel's queue,
    retry tiers and parking lot, and runs its worker.

    :return: a list of channel classes (not instances).
    """
    raise NotImplementedError


@hookspec
def shipcast_routers() -> list[APIRouter]:
    """Add HTTP routes to the API (callbacks, pages, admin views).

    Routes are mounted as given, so a router should carry its own prefix.
    Handlers reach the running services through ``request.app.state.services``.

    :return: a list of :class:`fastapi.APIRouter`.
    """
    raise NotImplementedError


@hookspec
def shipcast_commands(cli: click.Group) -> None:
    """Add commands to the ``shipcast`` command line (operators' tools for a
    channel, say). Called once, when the command line is loaded.

    Commands reach the store and the broker through
    :func:`shipcast.cli.open_services`, and run coroutines with
    :func:`shipcast.cli.run_command` (shipcast errors become clean messages).

    :param cli: the ``shipcast`` :class:`click.Group`; add to it with
        ``cli.add_command`` or its ``command``/``group`` decorators.
    """


@hookspec(firstresult=True)
def shipcast_tracking_url(event: Event, partner: Partner | None, settings: Settings) -> str | None:
    """The tracking-page link for an event's order, carried by every customer
    message. The tracking channel answers it with its page,
    ``{SHIPCAST_PUBLIC_URL}/t/{token}``; a plugin registered later answers
    first. Without any answer, ``SHIPCAST_PUBLIC_URL``. Stops at the first
    non-None result.

    :param event: the event a message is about.
    :param partner: the partner's stored config, or ``None``.
    :param settings: the running settings.
    :return: an absolute URL, or ``None`` to leave it to another plugin.
    """


@hookspec
def shipcast_sms_providers() -> list[type[SmsProvider]]:
    """Register SMS providers for the SMS channel: each a subclass of
    :class:`shipcast.plugins.sms.providers.SmsProvider` with a unique ``name``,
    chosen per partner with ``channels.sms.provider``.

    :return: a list of provider classes (not instances).
    """
    raise NotImplementedError
