"""The ``shipcast`` command line. ``shipcast --help`` lists every command;
each group of commands is a module of this package."""

from __future__ import annotations

import sys

import click

from shipcast.app.cli import (  # noqa: F401  (their commands)
    dead,
    deliveries,
    events,
    operations,
    outbox,
    partners,
    portal,
    privacy,
    relay,
    serve,
    templates,
)
from shipcast.app.cli.base import (
    WHEN,
    cli,
    cli_actor,
    echo_json,
    open_services,
    print_table,
    registry,
    run_command,
    utc_filters,
)
from shipcast.exceptions import ShipcastError
from shipcast.plugin.registry import Registry
from shipcast.settings import Settings

__all__ = ["WHEN", "cli", "cli_actor", "echo_json", "main", "open_services", "print_table", "registry", "run_command",
           "utc_filters"]


def main(args: list[str] | None = None) -> None:
    """The ``shipcast`` command: build the settings and the registry once, add
    the plugins' commands, and run the command asked for with them."""
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:  # each problem by its variable, never the values given (secrets among them)
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            name, message = "SHIPCAST_" + "_".join(map(str, error["loc"])).upper(), error["msg"]
            message = message.removeprefix("Value error, ")
            problems.append(message if not error["loc"] or name in message else f"{name}: {message}")
        click.echo(f"Error: invalid settings: {'; '.join(problems)}", err=True)
        sys.exit(2)
    try:
        found = Registry(settings)
    except ShipcastError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    found.hook.shipcast_commands(cli=cli)
    cli.main(args=args, obj=found, prog_name="shipcast")
