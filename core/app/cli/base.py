"""What every command shares: the ``shipcast`` group, the registry the entry
point built, the services a command opens, and printing."""

from __future__ import annotations

import getpass
import json
import os
import select
import sys
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import click

from shipcast import __version__
from shipcast.app.audit import Actor
from shipcast.app.runtime import run_async
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError, ShipcastError
from shipcast.plugin.registry import Registry
from shipcast.settings import Settings

T = TypeVar("T")


def registry() -> Registry:
    """The registry the entry point built for this command (its settings are
    ``registry().settings``); one is built from the environment when a
    command runs without the entry point (a plugin's test, say)."""
    context = click.get_current_context(silent=True)
    found = context.find_object(Registry) if context is not None else None
    return found if found is not None else Registry(Settings())


def cli_actor() -> Actor:
    """Who the audit log says made a change from the command line: the user running it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown user"
    return Actor(f"command line ({user})", "cli")


def run_command(factory: Callable[[], Awaitable[T]]) -> T:
    result: list[T] = []

    async def main() -> None:
        result.append(await factory())

    try:
        run_async(main())
    except ShipcastError as exc:
        raise click.ClickException(str(exc)) from exc
    return result[0]


def echo_json(value: Any, **dumps: Any) -> None:
    """Print ``value`` as indented JSON, all of it: written out in a loop that
    waits on a full pipe even if the descriptor was left non-blocking (a
    test saw ``deliveries list --json`` cut at 64 KiB)."""
    sys.stdout.flush()
    data = (json.dumps(value, indent=2, **dumps) + "\n").encode()
    fd = sys.stdout.fileno()
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            select.select([], [fd], [])


@asynccontextmanager
async def open_services(*, broker: bool = True) -> Any:
    """The services of this command, opened (with the broker unless
    ``broker`` is false) and closed after."""
    found = registry()
    services = Services.from_settings(found.settings, registry=found)
    await services.store.open()
    if broker:
        await services.broker.connect(timeout=15)
    try:
        yield services
    finally:
        await services.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shipcast")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def cli(verbose: bool) -> None:
    """shipcast: order events in, signed webhooks and no-code channels out.

    Settings come from SHIPCAST_* environment variables (see README).
    """
    from shipcast.logs import configure

    configure(verbose, os.environ.get("SHIPCAST_LOG_FORMAT", "auto"))


#: A time on the command line: ISO 8601, UTC unless it gives an offset.
WHEN = click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"])


def _filters(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--event", "event_id", help="Event id."),
        click.option("--partner", "partner_id", help="Partner id."),
        click.option("--channel", help="Channel name."),
        click.option("--endpoint", "target", help="Target (webhook endpoint) id."),
        click.option("--type", "event_type", help="Event type (OFD, DEL, ...)."),
        click.option("--order", "order_id", help="Order id."),
        click.option("--since", type=WHEN, help="Changed at or after (ISO 8601; UTC unless it says)."),
        click.option("--until", type=WHEN, help="Changed before."),
        click.option("--status", type=click.Choice(["delivered", "retrying", "waiting", "skipped", "dead"])),
        click.option("--limit", default=100, show_default=True),
    ]):
        func = option(func)
    return func


def utc_filters(filters: dict[str, Any]) -> dict[str, Any]:
    from datetime import UTC

    return {key: value.replace(tzinfo=UTC) if hasattr(value, "tzinfo") and value.tzinfo is None else value
            for key, value in filters.items()}


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Print rows as aligned columns, headed by each column's title."""
    cells = [[title for _, title in columns]] + [
        ["-" if row.get(key) is None else str(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def _topology(channel: str) -> Any:
    found = registry()
    try:
        return found.channel(channel).topology(found.settings.retry_delays)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--channel") from None
