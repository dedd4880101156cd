"""``templates preview``: a partner's customer message, as it would be sent."""

from __future__ import annotations

from typing import Any

import click

from shipcast.app.cli.base import (
    cli,
    open_services,
    registry,
    run_command,
)
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError


@cli.group()
def templates() -> None:
    """Customer message templates (SMS, WhatsApp, email)."""


@templates.command("preview")
@click.option("--partner", "partner_id", required=True, help="A partner applied already.")
@click.option("--event", "event_type", required=True, help="Event type (OFD, DEL, ...).")
@click.option("--channel", required=True, help="A customer channel the partner uses (sms, whatsapp, email).")
@click.option("--lang", "language", type=click.Choice(["en", "hi"]), help="Default: the sample customer's.")
def templates_preview(partner_id: str, event_type: str, channel: str, language: str | None) -> None:
    """Render a partner's message for a realistic sample event, as it would be sent."""
    from shipcast.model.examples import example

    found = registry()
    if event_type not in found.event_types:
        raise click.BadParameter(f"unknown event type; known: {', '.join(found.event_types)}", param_hint="--event")

    async def fetch() -> Any:
        async with open_services(broker=False) as services:
            return await services.store.get_partner(partner_id)

    partner = run_command(fetch)
    if partner is None:
        raise click.ClickException(f"no partner {partner_id!r}: apply it first (shipcast partners apply -f FILE)")
    if channel not in partner.channels:
        raise click.ClickException(f"partner {partner_id!r} does not use {channel!r}; it uses: "
                                   f"{', '.join(sorted(partner.channels)) or 'nothing'}")
    installed = found.channels
    if channel not in installed:
        raise click.ClickException(f"no channel {channel!r} is installed; installed: {', '.join(sorted(installed))}")
    event = example(event_type, found.event_types, partner_id=partner_id)
    if language:
        event = event.model_copy(update={"order": event.order.model_copy(update={
            "customer": event.order.customer.model_copy(update={"language": language})})})
    try:
        shown, summary = installed[channel](Services.from_settings(found.settings, registry=found)).preview(
            event, partner)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(shown)
    click.echo(f"-- {summary}", err=True)
