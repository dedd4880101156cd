"""``prune`` what is past its retention, and ``customers forget`` one customer."""

from __future__ import annotations

from typing import Any

import click

from shipcast.app.cli.base import cli, echo_json, open_services, run_command
from shipcast.store import Forgotten


@cli.command()
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
@click.option("--json", "as_json", is_flag=True)
def prune(dry_run: bool, as_json: bool) -> None:
    """Remove what is past its retention (SHIPCAST_RETAIN_*): old attempts,
    old response excerpts, old archived events, OTPs no longer needed."""
    from shipcast.app.retention import prune as prune_store

    async def go() -> dict[str, int]:
        async with open_services(broker=False) as services:
            return await prune_store(services.store, services.settings, dry_run=dry_run)

    done = run_command(go)
    if as_json:
        echo_json({"dry_run": dry_run, **done})
        return
    verb = "would remove" if dry_run else "removed"
    for name, count in done.items():
        click.echo(f"{verb} {count} {name}")


@cli.group()
def customers() -> None:
    """A customer's personal data."""


@customers.command("forget")
@click.option("--phone", help="The customer's phone number, as the OMS sent it or in E.164.")
@click.option("--email", help="The customer's email address.")
@click.option("--partner", "partner_id", help="Only this partner's orders (default: every partner's).")
def customers_forget(phone: str | None, email: str | None, partner_id: str | None) -> None:
    """Redact a customer's personal data everywhere shipcast stores it, and
    say what changed. Their opt-outs stay (kept as keyed hashes)."""
    if bool(phone) == bool(email):
        raise click.UsageError("give one of --phone or --email")

    async def go() -> dict[str, Any]:
        async with open_services(broker=False) as services:
            forgotten: Forgotten = await services.store.forget_customer(phone=phone, email=email,
                                                                        partner_id=partner_id)
            return forgotten.to_dict()

    echo_json(run_command(go))
