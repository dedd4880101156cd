"""``outbox``: the development outbox, where customer messages are kept when
no provider is configured, and what the development webhook receiver got."""

from __future__ import annotations

from typing import Any

import click

from shipcast.app.cli.base import cli, echo_json, open_services, print_table, run_command


@cli.group()
def outbox() -> None:
    """The development outbox: messages kept instead of sent, webhooks received."""


@outbox.command("list")
@click.option("--partner", "partner_id", help="Only this partner's.")
@click.option("--channel", help="Only this channel's (sms, whatsapp, email, webhook-receiver, ...).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
def outbox_list(partner_id: str | None, channel: str | None, limit: int, as_json: bool) -> None:
    """Messages in the outbox, newest first."""
    async def fetch() -> list[dict[str, Any]]:
        async with open_services(broker=False) as services:
            found: list[dict[str, Any]] = await services.store.list_outbox(
                partner_id=partner_id, channel=channel, limit=limit)
            return found

    rows = run_command(fetch)
    if as_json:
        echo_json(rows, default=str)
        return
    if not rows:
        click.echo("the outbox is empty: nothing kept (it holds messages only while a channel has no provider "
                   "configured, and what the development webhook receiver got)")
        return
    for row in rows:
        row["when"] = f"{row['at']:%Y-%m-%d %H:%M:%S}"
        row["what"] = " ".join((row["subject"] if row["channel"] == "email" else row["text"]).split())[:60]
        if row["verified"] is not None:
            row["what"] = ("verified " if row["verified"] else "NOT verified ") + (row["event_id"] or "")
    print_table(rows, [("id", "#"), ("when", "at (UTC)"), ("channel", "channel"), ("partner_id", "partner"),
                       ("event_type", "type"), ("order_id", "order"), ("recipient", "to"), ("what", "message")])


@outbox.command("show")
@click.argument("number", type=click.IntRange(1, 2**62))
@click.option("--html", "as_html", is_flag=True, help="Print an email's HTML part only.")
@click.option("--json", "as_json", is_flag=True)
def outbox_show(number: int, as_html: bool, as_json: bool) -> None:
    """One message in the outbox, whole, as it would have been sent."""
    async def fetch() -> dict[str, Any] | None:
        async with open_services(broker=False) as services:
            found: dict[str, Any] | None = await services.store.outbox_message(number)
            return found

    row = run_command(fetch)
    if row is None:
        raise click.BadParameter(f"no message #{number} in the outbox", param_hint="NUMBER")
    if as_json:
        echo_json(row, default=str)
        return
    if as_html:
        if not row["html"]:
            raise click.BadParameter(f"message #{number} is {row['channel']}, with no HTML part", param_hint="--html")
        click.echo(row["html"])
        return
    for key, title in (("id", "#"), ("at", "at"), ("channel", "channel"), ("partner_id", "partner"),
                       ("event_id", "event"), ("event_type", "type"), ("order_id", "order"), ("recipient", "to"),
                       ("subject", "subject"), ("content_sid", "content template"), ("detail", "detail")):
        if row[key] is not None:
            click.echo(f"{title + ':':<18}{row[key]}")
    if row["verified"] is not None:
        click.echo(f"{'signature:':<18}{'verified' if row['verified'] else 'NOT verified'}")
    click.echo("")
    click.echo(row["text"])
    if row["html"]:
        click.echo(f"\n(and an HTML part of {len(row['html'])} characters: 'shipcast outbox show {number} --html')")
