"""The delivery log: ``deliveries list``, ``replay``, ``recover``, ``attempts``."""

from __future__ import annotations

import sys
from typing import Any

import click

from shipcast.app.cli.base import (
    WHEN,
    _filters,
    cli,
    echo_json,
    open_services,
    print_table,
    run_command,
    utc_filters,
)


@cli.group()
def deliveries() -> None:
    """The delivery log: list and replay."""


@deliveries.command("list")
@_filters
@click.option("--json", "as_json", is_flag=True)
def deliveries_list(as_json: bool, **filters: Any) -> None:
    """Deliveries, newest first."""

    async def fetch() -> Any:
        async with open_services(broker=False) as services:
            return await services.store.list_deliveries(**utc_filters(filters))

    rows = run_command(fetch)
    if as_json:
        echo_json(rows, default=str)
        return
    if not rows:
        click.echo("no deliveries match")
        return
    for row in rows:
        row["when"] = f"{row['updated_at']:%Y-%m-%d %H:%M:%S}"
        row["error"] = (row["last_error"] or "")[:60] or None
    print_table(rows, [("when", "updated (UTC)"), ("status", "status"), ("channel", "channel"),
                  ("partner_id", "partner"), ("target", "target"), ("event_type", "type"),
                  ("order_id", "order"), ("event_id", "event"), ("attempts", "attempts"), ("error", "last error")])


@deliveries.command("replay")
@_filters
def deliveries_replay(**filters: Any) -> None:
    """Send matching deliveries again, even ones delivered before."""
    if not any(filters[key] for key in ("event_id", "partner_id", "channel", "status", "target", "event_type",
                                        "order_id", "since")):
        raise click.UsageError("say what to replay: --event, --partner, --channel or --status")

    click.echo(f"replayed {_replay(utc_filters(filters))} deliveries")


def _replay(filters: dict[str, Any]) -> int:
    """Replay matching deliveries with a progress bar."""
    from shipcast.delivery.replay import matching_deliveries, replay_rows

    async def go() -> int:
        async with open_services() as services:
            rows = await matching_deliveries(services, **filters)
            with click.progressbar(length=len(rows), label="replaying", file=sys.stderr, show_pos=True) as bar:
                return await replay_rows(services, rows, progress=bar.update)

    return run_command(go)


@deliveries.command("recover")
@click.option("--since", required=True, type=WHEN,
              help="Recover what failed at or after this time (ISO 8601; UTC unless it says).")
@click.option("--partner", "partner_id", help="Only this partner.")
@click.option("--channel", help="Only this channel.")
@click.option("--endpoint", "target", help="Only this target.")
@click.option("--limit", default=100000, show_default=True)
def deliveries_recover(**filters: Any) -> None:
    """Send again everything that failed (parked) since a time."""
    click.echo(f"recovered {_replay(utc_filters({**filters, 'status': 'dead'}))} deliveries")


@deliveries.command("attempts")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
def deliveries_attempts(event_id: str, as_json: bool) -> None:
    """Every attempt at delivering one event, oldest first."""

    async def fetch() -> Any:
        async with open_services(broker=False) as services:
            return await services.store.list_attempts(event_id)

    rows = run_command(fetch)
    if as_json:
        echo_json(rows, default=str)
        return
    for row in rows:
        row["when"] = f"{row['at']:%Y-%m-%d %H:%M:%S.%f}"[:-3]
        row["latency"] = f"{row['latency_ms']:.1f} ms"
    print_table(rows, [("when", "at (UTC)"), ("channel", "channel"), ("target", "target"), ("outcome", "outcome"),
                  ("status", "status"), ("latency", "latency"), ("error", "error")])
    if not rows:
        click.echo(f"no attempts for {event_id}")
