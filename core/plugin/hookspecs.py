"""The one place the core's hooks are declared: a pure spec file.

Hooks register things: event types, channels, HTTP routes, commands. Work that awaits
(delivering) lives in the methods of the objects a hook returns, because pluggy
calls hooks synchronously. A plugin that offers hooks of its own declares them
itself, through :func:`shipcast_addhooks` (the SMS channel's providers, say).
Every hook is documented in ``docs/plugins.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipcast.plugin.markers import hookspec

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import click
    import pluggy
    from fastapi import APIRouter

    from shipcast.model.envelope import Event
    from shipcast.model.event_types import EventType
    from shipcast.model.partners import Partner
    from shipcast.plugin.channel import Channel
    from shipcast.plugin.portal import PortalSection
    from shipcast.settings import Settings


@hookspec(historic=True)
def shipcast_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own, for other plugins to
    implement (the SMS channel's ``shipcast_sms_providers``, say). Called when
    the plugin is registered.

    :param pluginmanager: the registry's plugin manager; call
        ``pluginmanager.add_hookspecs(module)``.
    """


@hookspec
def shipcast_event_types() -> list[EventType]:
    """Register event types: rows saying which field groups an event of that type
    requires and which must be null.

    Two plugins may register the same row; registering different rows under one
    name is an error at start-up.

    :return: a list of :class:`shipcast.model.event_types.EventType`.
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
    Handlers reach the running services through ``shipcast.app.api.services_of(request)``.

    :return: a list of :class:`fastapi.APIRouter`.
    """
    raise NotImplementedError


@hookspec
def shipcast_commands(cli: click.Group) -> None:
    """Add commands to the ``shipcast`` command line (operators' tools for a
    channel, say). Called once, when the command line is loaded.

    Commands reach the store and the broker through
    :func:`shipcast.app.cli.open_services`, and run coroutines with
    :func:`shipcast.app.cli.run_command` (shipcast errors become clean messages).

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
def shipcast_portal_sections() -> list[PortalSection]:
    """Add pages to the partner portal's navigation (a channel's own pages:
    the webhook channel's endpoints, say). The pages themselves are routes the
    plugin adds with :func:`shipcast_routers`, under
    ``/portal/p/{partner_id}/<path>``, guarded by the portal's dependencies
    (``shipcast.app.portal.member`` to read, ``partner_admin`` to change).

    :return: a list of :class:`shipcast.plugin.portal.PortalSection`.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def shipcast_send_mail(settings: Settings, to: str, subject: str, text: str) -> Awaitable[None] | None:
    """Send an email to a person (a portal invitation), not to a customer.
    The email channel answers when SMTP is configured (``SHIPCAST_SMTP_HOST``
    set). Stops at the first non-None result.

    :return: an awaitable that sends it (and raises if it cannot), or ``None``
        when not configured to send.
    """
