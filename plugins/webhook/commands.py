"""``shipcast endpoints …``: webhook endpoints across partners, for operators.

The same operations as the partner API (plugins/webhook/admin.py), as
tables, for every partner at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import orjson

from shipcast.app.cli import WHEN, cli_actor, echo_json, open_services, print_table, run_command

from . import admin


@click.group()
def endpoints() -> None:
    """Webhook endpoints across partners: list, stats, secrets, tests, disable, enable, operator events."""


@endpoints.command("list")
@click.option("--partner", "partner_id", help="Only this partner.")
@click.option("--json", "as_json", is_flag=True)
def endpoints_list(partner_id: str | None, as_json: bool) -> None:
    """Every endpoint with its URL, events, filter, options and health (no
    secrets: its own headers' values, password or token are masked)."""

    async def fetch() -> list[dict[str, Any]]:
        async with open_services(broker=False) as services:
            await services.partners.reload()
            return [{"partner": partner.id, **admin.describe(services, partner.id, endpoint)}
                    for partner in await services.store.get_partners()
                    if not partner_id or partner.id == partner_id
                    for endpoint in admin.endpoints_of(partner)]

    rows = run_command(fetch)
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        row["events"] = ",".join(row["events"])
        row["options"] = ",".join([o for o in ("ordered", "asymmetric") if row[o]]
                                  + ([f"auth={row['auth']['type']}"] if row["auth"] else [])
                                  + ([f"headers={','.join(row['headers'])}"] if row["headers"] else [])) or None
        row["filter"] = orjson.dumps(row["filter"]).decode() if row["filter"] is not None else None
        row["state"] = "disabled" if row["disabled"] else \
            f"failing since {row['failing_since'][:16]}" if row["failing_since"] else "ok"
    if rows:
        print_table(rows, [("partner", "partner"), ("id", "endpoint"), ("url", "url"), ("events", "events"),
                           ("filter", "filter"), ("options", "options"), ("state", "state")])
    else:
        click.echo("no webhook endpoints")


@endpoints.command("stats")
@click.argument("partner_id")
@click.argument("endpoint_id")
@click.option("--since", type=WHEN, help="From this time (default: the last 24 hours; UTC unless it says).")
def endpoints_stats(partner_id: str, endpoint_id: str, since: datetime | None) -> None:
    """Success rate, latency percentiles and the last error of one endpoint."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)

    async def fetch() -> dict[str, Any]:
        async with open_services(broker=False) as services:
            await services.partners.reload()
            return await admin.stats(services, partner_id, endpoint_id, since, limit=100000)

    stats = run_command(fetch)
    latency, rate, error = stats["latency_ms"], stats["success_rate"], stats["last_error"]
    click.echo(f"{partner_id}/{endpoint_id} since {stats['since'][:19]} UTC{'  (disabled)' if stats['disabled'] else ''}")
    click.echo(f"  attempts      {stats['attempts']} ({stats['delivered']} delivered, {stats['failed']} failed)")
    click.echo(f"  success rate  {'-' if rate is None else f'{rate:.1%}'}")
    click.echo(f"  latency       p50 {latency['p50']} ms  p90 {latency['p90']} ms  p99 {latency['p99']} ms")
    click.echo(f"  last error    {error['at'][:19]} {error['status'] or ''} {error['error']}" if error
               else "  last error    -")


@endpoints.command("secret")
@click.argument("partner_id")
@click.argument("endpoint_id")
def endpoints_secret(partner_id: str, endpoint_id: str) -> None:
    """Print an endpoint's current secret (to hand to its partner)."""

    async def fetch() -> dict[str, Any]:
        async with open_services(broker=False) as services:
            return await admin.reveal_secret(services, partner_id, endpoint_id, cli_actor())

    click.echo(run_command(fetch)["secret"])


@endpoints.command("rotate-secret")
@click.argument("partner_id")
@click.argument("endpoint_id")
@click.option("--secret", help="The new secret (whsec_…); default: a new random one.")
@click.option("--overlap", type=float, help="Seconds the old secret keeps signing (default: 24 h).")
def endpoints_rotate(partner_id: str, endpoint_id: str, secret: str | None, overlap: float | None) -> None:
    """Rotate an endpoint's secret; prints the new one."""

    async def go() -> dict[str, Any]:
        async with open_services() as services:
            return await admin.rotate_secret(services, partner_id, endpoint_id, secret, overlap, actor=cli_actor())

    rotated = run_command(go)
    click.echo(rotated["secret"])
    if rotated["previous_secret_valid_until"]:
        click.echo(f"the old secret keeps signing until {rotated['previous_secret_valid_until']}", err=True)


@endpoints.command("test")
@click.argument("partner_id")
@click.argument("endpoint_id")
@click.option("--type", "event_type", default="OFD", show_default=True, help="Event type of the sample.")
def endpoints_test(partner_id: str, endpoint_id: str, event_type: str) -> None:
    """Send a realistic sample event to one endpoint; prints its event id."""

    async def go() -> str:
        async with open_services() as services:
            return (await admin.send_test(services, partner_id, endpoint_id, event_type, actor=cli_actor())).event_id

    click.echo(run_command(go))


@endpoints.command("enable")
@click.argument("partner_id")
@click.argument("endpoint_id")
def endpoints_enable(partner_id: str, endpoint_id: str) -> None:
    """Re-enable an endpoint that was disabled (410 Gone or failing too long)."""

    async def go() -> None:
        async with open_services() as services:
            await admin.enable(services, partner_id, endpoint_id, cli_actor())

    run_command(go)
    click.echo(f"enabled {partner_id}/{endpoint_id}")


@endpoints.command("disable")
@click.argument("partner_id")
@click.argument("endpoint_id")
def endpoints_disable(partner_id: str, endpoint_id: str) -> None:
    """Stop sending to an endpoint until it is enabled again."""

    async def go() -> None:
        async with open_services() as services:
            await admin.disable(services, partner_id, endpoint_id, cli_actor())

    run_command(go)
    click.echo(f"disabled {partner_id}/{endpoint_id}")


@endpoints.command("events")
@click.option("--limit", default=50, show_default=True)
def endpoints_events(limit: int) -> None:
    """Operator events (endpoint failing, recovered, disabled), newest first."""

    async def fetch() -> list[dict[str, Any]]:
        async with open_services(broker=False) as services:
            events: list[dict[str, Any]] = await services.store.list_operator_events(limit=limit)
            return events

    rows = [{"at": f"{e['at']:%Y-%m-%d %H:%M:%S}", "type": e["type"],
             "endpoint": f"{e['body']['data']['partner_id']}/{e['body']['data']['endpoint_id']}",
             "sent": "yes" if e["sent_at"] else "not yet",
             "detail": str(e["body"]["data"].get("reason") or e["body"]["data"].get("error") or "")[:70] or None}
            for e in run_command(fetch)]
    if rows:
        print_table(rows, [("at", "at (UTC)"), ("type", "type"), ("endpoint", "endpoint"), ("sent", "sent"),
                           ("detail", "detail")])
    else:
        click.echo("no operator events")
