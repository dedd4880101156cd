"""``run``, ``api`` and ``worker``: shipcast's processes."""

from __future__ import annotations

import click

from shipcast import __version__
from shipcast.app.cli.base import (
    cli,
    registry,
    run_command,
)
from shipcast.app.runtime import select_channels, serve
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError


@cli.command()
def run() -> None:
    """The API and every channel worker in one process."""
    names = select_channels(registry(), [])
    _announce()
    run_command(lambda: serve(api=True, worker_names=names, services=Services.from_settings(
        registry().settings, registry=registry())))


@cli.command()
def api() -> None:
    """The HTTP API only (ingest, admin, plugin routes)."""
    _announce()
    run_command(lambda: serve(api=True, worker_names=[], services=Services.from_settings(
        registry().settings, registry=registry())))


@cli.command()
@click.option("--channel", "names", multiple=True, metavar="NAME",
              help="Channel to work on; repeat for several. Default: all.")
def worker(names: tuple[str, ...]) -> None:
    """Channel workers only; run as many as you like, they compete on the queues."""
    try:
        selected = select_channels(registry(), names)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--channel") from exc
    run_command(lambda: serve(api=False, worker_names=selected, services=Services.from_settings(
        registry().settings, registry=registry())))


def _announce() -> None:
    settings = registry().settings
    click.echo(f"shipcast {__version__}: API on http://{settings.host}:{settings.port} "
               f"(docs at /docs), RabbitMQ UI at {settings.management_url.split('@')[-1]}", err=True)
    if not settings.api_token:
        click.echo("warning: SHIPCAST_API_TOKEN is not set: the API refuses every request", err=True)
