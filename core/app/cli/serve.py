"""``run``, ``api`` and ``worker``: shipcast's processes."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

import click

from shipcast import __version__
from shipcast.app.audit import Actor
from shipcast.app.cli.base import (
    cli,
    open_services,
    registry,
    run_command,
)
from shipcast.app.runtime import select_channels, serve
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError
from shipcast.messaging import outbox
from shipcast.plugin.registry import Registry

log = logging.getLogger("shipcast")

#: Whom ``shipcast run`` signs in to the portal in development mode.
DEVELOPMENT_OPERATOR = "operator@shipcast.local"


@cli.command()
@click.option("--processes", type=click.IntRange(0, 256), default=None, metavar="N",
              help="Processes to run, each with the API and every channel worker "
                   "(default SHIPCAST_PROCESSES; 0: one per CPU).")
@click.option("--child", hidden=True, default=None, help="Set by shipcast run for the processes it starts.")
def run(processes: int | None, child: str | None) -> None:
    """The API and every channel worker, in one process per CPU."""
    from shipcast.app import processes as several

    found = registry()
    names = select_channels(found, [])
    if child is not None:  # one of several: the supervisor announced, warned and signed in
        _serve_on(found, names, child=child)
        return
    count = several.process_count(found.settings if processes is None
                                  else found.settings.model_copy(update={"processes": processes}))
    _announce()
    _warn_outbox(names)
    if found.settings.development:
        _sign_in_link()
    _serve_on(found, names, count=count, command="run")


@cli.command()
@click.option("--processes", type=click.IntRange(0, 256), default=1, show_default=True, metavar="N",
              help="Processes sharing the port (0: one per CPU).")
@click.option("--child", hidden=True, default=None, help="Set by shipcast api for the processes it starts.")
def api(processes: int, child: str | None) -> None:
    """The HTTP API only (ingest, admin, plugin routes)."""
    from shipcast.app import processes as several

    found = registry()
    if child is not None:
        _serve_on(found, [], child=child)
        return
    _announce()
    _serve_on(found, [], count=several.process_count(found.settings.model_copy(update={"processes": processes})),
              command="api")


@cli.command()
@click.option("--channel", "names", multiple=True, metavar="NAME",
              help="Channel to work on; repeat for several. Default: all.")
def worker(names: tuple[str, ...]) -> None:
    """Channel workers only; run as many as you like, they compete on the queues."""
    try:
        selected = select_channels(registry(), names)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--channel") from exc
    _warn_outbox(selected)
    run_command(lambda: serve(api=False, worker_names=selected, services=Services.from_settings(
        registry().settings, registry=registry())))


def _serve_on(found: Registry, names: Sequence[str], *, count: int = 1, command: str = "",
              child: str | None = None) -> None:
    """Serve the API and ``names``' workers: in this process (``count`` 1),
    as one of several (``child``, the spec its supervisor gave), or as the
    supervisor of ``count`` processes of ``shipcast command``."""
    from shipcast.app import processes as several

    def services() -> Services:
        return Services.from_settings(found.settings, registry=found)

    if child is not None:
        run_command(lambda: several.serve_child(json.loads(child), names, services()))
    elif count == 1:
        run_command(lambda: serve(api=True, worker_names=names, services=services()))
    else:
        try:
            status = several.supervise(found.settings, count, command)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        sys.exit(status)


def _announce() -> None:
    settings = registry().settings
    click.echo(f"shipcast {__version__}: API on http://{settings.host}:{settings.port} "
               f"(docs at /docs), RabbitMQ UI at {settings.management_url.split('@')[-1]}", err=True)
    if not settings.api_token:
        click.echo("warning: SHIPCAST_API_TOKEN is not set: the API refuses every request", err=True)


def _warn_outbox(names: Sequence[str]) -> None:
    """Say, at start, which of the channels this process works on keep their
    messages in the development outbox, and why."""
    found = registry()
    reasons = outbox.reasons(found.settings, {name: found.channels[name] for name in names})
    if reasons:
        log.warning(outbox.warning(reasons))


def _sign_in_link() -> None:
    """Development mode: a one-time link that signs the developer in to the portal as an operator."""
    from shipcast.app.people import invite

    async def make() -> str:
        async with open_services(broker=False) as services:
            made = await invite(services, email=DEVELOPMENT_OPERATOR, partner_id=None, role="operator",
                                invited_by=Actor("shipcast run (development mode)", "cli"))
            return str(made["link"])

    link = run_command(make)
    click.echo("The portal, as an operator (the link works once; make another with "
               f"'shipcast portal invite --operator --email {DEVELOPMENT_OPERATOR}'):\n{link}", err=True)
