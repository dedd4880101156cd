"""The parking lot of each channel: ``dead list`` and ``dead replay``."""

from __future__ import annotations

from typing import Any

import click

from shipcast.app.cli.base import (
    _topology,
    cli,
    open_services,
    run_command,
)


@cli.group()
def dead() -> None:
    """The parking lot of each channel: list and replay."""


@dead.command("list")
@click.option("--channel", required=True)
@click.option("--limit", default=100, show_default=True)
def dead_list(channel: str, limit: int) -> None:
    """Show parked messages (they stay parked)."""
    from shipcast.amqp.parking import list_dead

    topology = _topology(channel)

    async def fetch() -> Any:
        async with open_services(broker=True) as services:
            return await list_dead(services.broker, topology, limit)

    letters = run_command(fetch)
    for letter in letters:
        click.echo(f"{letter.failed_at or '-':<32} {letter.event_id or '-':<40} target={letter.target or '-'} "
                   f"attempts={letter.attempts or '-'}  {letter.reason or ''}")
    click.echo(f"{len(letters)} dead letters in {topology.dead.name}")


@dead.command("replay")
@click.option("--channel", required=True)
@click.option("--event", "event_ids", multiple=True, help="Only these event ids (repeatable).")
@click.option("--limit", type=int, help="At most this many.")
def dead_replay(channel: str, event_ids: tuple[str, ...], limit: int | None) -> None:
    """Move parked messages back to the work queue with a fresh retry count."""
    from shipcast.amqp.parking import replay_dead

    topology = _topology(channel)

    async def go() -> int:
        async with open_services(broker=True) as services:
            return await replay_dead(services.broker, topology, limit=limit,
                                     event_ids=set(event_ids) or None)

    click.echo(f"replayed {run_command(go)} dead letters into {topology.work.name}")
