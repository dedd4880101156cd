"""``partners apply`` and ``partners list``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shipcast.app.cli.base import (
    cli,
    echo_json,
    open_services,
    registry,
    run_command,
)
from shipcast.exceptions import ConfigError


@cli.group()
def partners() -> None:
    """Apply and list partner configs."""


@partners.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path))
def partners_apply(path: Path) -> None:
    """Validate a partners file, store it, and make the bindings match."""
    from shipcast.app.reconcile import apply_partners
    from shipcast.model.partners import load_partners_file

    try:
        loaded = load_partners_file(path, catalog=registry().catalog)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc

    async def apply() -> Any:
        async with open_services() as services:
            return await apply_partners(services, loaded, source=str(path))

    try:
        changes = run_command(apply)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    for partner in loaded:
        click.echo(f"applied {partner.id} ({partner.name}): {', '.join(sorted(partner.channels)) or 'no channels'}")
    for queue, keys in sorted(changes.added.items()):
        click.echo(f"  bound   {queue} <- {', '.join(sorted(keys))}")
    for queue, keys in sorted(changes.removed.items()):
        click.echo(f"  unbound {queue} <- {', '.join(sorted(keys))}")


@partners.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (secrets redacted).")
def partners_list(as_json: bool) -> None:
    """Applied partners and their channels (secrets are never printed)."""
    from shipcast.plugin.public import public_partner

    async def fetch() -> Any:
        async with open_services(broker=False) as services:
            return services.registry.channels, await services.store.get_partners()

    channels, found = run_command(fetch)
    if as_json:
        echo_json([public_partner(channels, p) for p in found])
        return
    if not found:
        click.echo("no partners applied yet: shipcast partners apply -f FILE")
    for partner in found:
        click.echo(f"{partner.id:<20} {partner.name:<30} {', '.join(sorted(partner.channels)) or '-'}")
