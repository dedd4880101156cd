"""``relay``: the transactional outbox relay, its table's DDL, and its state
(depth, oldest row, failed rows to retry or delete). See docs/relay.md."""

from __future__ import annotations

import sys
from typing import Any

import click

from shipcast.app.cli.base import cli, cli_actor, echo_json, open_services, print_table, registry, run_command
from shipcast.app.relay.actions import SHOWN, delete_failed, overview, relay_source, retry_failed
from shipcast.app.relay.ddl import DIALECTS, outbox_ddl
from shipcast.app.relay.source import OutboxSource, moment
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError


def _source() -> OutboxSource:
    try:
        return relay_source(registry().settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@cli.group(invoke_without_command=True)
@click.pass_context
def relay(context: click.Context) -> None:
    """Publish the events an OMS writes to its outbox table (SHIPCAST_RELAY_*).

    With no command, runs the relay until SIGINT or SIGTERM. Run several for
    high availability: one is active, the others take over within seconds.
    """
    if context.invoked_subcommand is not None:
        return
    from shipcast.app.relay.process import serve_relay

    source = _source()
    click.echo(f"shipcast relay: {source.dialect} outbox {source.database}.{source.table_name}", err=True)
    run_command(lambda: serve_relay(Services.from_settings(registry().settings, registry=registry()), source))


@relay.command("sql")
@click.option("--dialect", required=True, type=click.Choice(DIALECTS), help="The OMS's database.")
@click.option("--table", default="shipcast_outbox", show_default=True, help="The outbox table's name.")
def relay_sql(dialect: str, table: str) -> None:
    """Print the outbox table's DDL (with PostgreSQL's NOTIFY trigger)."""
    try:
        click.echo(outbox_ddl(dialect, table), nl=False)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--table") from None


@relay.command("status")
@click.option("--json", "as_json", is_flag=True)
def relay_status(as_json: bool) -> None:
    """Pending rows, the oldest one's age and the failed rows. Exits 1 when
    rows have failed (an operator must retry or delete them), else 0."""
    source = _source()

    async def fetch() -> tuple[Any, list[dict[str, Any]]]:
        try:
            return await overview(source)
        finally:
            await source.close()

    stats, failed = run_command(fetch)
    if as_json:
        echo_json({"depth": stats.depth, "oldest_age_seconds": stats.oldest_age, "failed": stats.failed,
                   "failed_rows": failed}, default=str)
    else:
        oldest = "-" if stats.oldest_age is None else f"{stats.oldest_age:.1f}s"
        click.echo(f"outbox {source.database}.{source.table_name}: {stats.depth} pending, oldest {oldest}, "
                   f"{stats.failed} failed")
        if failed:
            for row in failed:
                row["when"] = moment(row["failed_at"])
            print_table(failed, [("id", "id"), ("event_id", "event"), ("partner_id", "partner"),
                                 ("order_id", "order"), ("when", "failed at"), ("error", "error")])
            if stats.failed > len(failed):
                click.echo(f"(the first {SHOWN} of {stats.failed})")
    if stats.failed:
        sys.exit(1)


@relay.command("retry")
@click.argument("ids", nargs=-1, type=click.IntRange(1))
@click.option("--all", "every", is_flag=True, help="Retry every failed row.")
def relay_retry(ids: tuple[int, ...], every: bool) -> None:
    """Make failed rows pending again (after fixing what their error says)."""
    if bool(ids) == every:
        raise click.UsageError("name the failed rows' ids, or --all")
    done = _change(lambda services, source: retry_failed(services, source, cli_actor(), None if every else ids))
    click.echo(f"retried {len(done)} failed rows" + (f": {', '.join(map(str, done))}" if done else ""))


@relay.command("delete")
@click.argument("ids", nargs=-1, type=click.IntRange(1), required=True)
def relay_delete(ids: tuple[int, ...]) -> None:
    """Delete failed rows for good (pending rows are never deleted)."""
    done = _change(lambda services, source: delete_failed(services, source, cli_actor(), ids))
    click.echo(f"deleted {len(done)} failed rows" + (f": {', '.join(map(str, done))}" if done else ""))


def _change(action: Any) -> list[int]:
    source = _source()

    async def change() -> list[int]:
        try:
            async with open_services(broker=False) as services:
                done: list[int] = await action(services, source)
                return done
        finally:
            await source.close()

    return run_command(change)
