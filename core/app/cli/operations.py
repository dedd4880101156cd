"""The broker side: ``queues migrate``, ``status`` and ``topology``."""

from __future__ import annotations

from typing import Any

import click

from shipcast.app.cli.base import (
    _topology,
    cli,
    echo_json,
    open_services,
    registry,
    run_command,
)


@cli.group()
def queues() -> None:
    """shipcast's queues in RabbitMQ."""


@queues.command("migrate")
@click.option("--channel", "names", multiple=True, help="Only this channel (repeatable); default: all.")
def queues_migrate(names: tuple[str, ...]) -> None:
    """Declare again, without the arguments that override their policies, the
    queues an earlier shipcast declared with them. Their messages are kept.
    Stop the channel's workers first; the API may keep running."""
    from shipcast.amqp.management import Management
    from shipcast.amqp.migration import migrate

    topologies = [_topology(name) for name in names or sorted(registry().channels)]

    async def go() -> Any:
        async with open_services(broker=True) as services, Management(services.settings) as management:
            return await migrate(services.broker.require(), management, topologies)

    done = run_command(go)
    for migrated in done:
        click.echo(f"{migrated.queue}: {migrated.moved} messages kept; declared without {', '.join(migrated.dropped)}")
    click.echo(f"{len(done)} queue{'s' * (len(done) != 1)} migrated" if done
               else "nothing to migrate: every queue takes its policy")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Queues, consumers, rates and dead letters, from the RabbitMQ management API."""
    from shipcast.app.queues import queue_statuses

    rows = run_command(lambda: queue_statuses(registry().settings))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no shipcast queues yet: start `shipcast run`")
        return
    click.echo(f"{'queue':<40} {'role':<7} {'ready':>7} {'unacked':>7} {'consumers':>9} {'in/s':>7} {'acked/s':>7}"
               "  problems")
    for row in rows:
        line = (f"{row['queue']:<40} {row['role']:<7} {row['ready']:>7} {row['unacked']:>7} {row['consumers']:>9} "
                f"{row['publish_rate']:>7.1f} {row['ack_rate']:>7.1f}")
        problems = "; ".join(row["problems"])
        click.echo(line + ("  " + click.style(problems, fg="red", bold=True) if problems else ""))
    dead_total = sum(row["ready"] + row["unacked"] for row in rows if row["role"] == "dead")
    click.echo(click.style(f"dead letters: {dead_total}", fg="red" if dead_total else "green"))


@cli.command()
@click.option("--vhost", default="/", show_default=True, help="The virtual host to describe.")
@click.option("--user", default="shipcast", show_default=True, help="The least-privilege user to create.")
@click.option("--password", envvar="SHIPCAST_RABBITMQ_PASSWORD", metavar="SECRET",
              help="Its password, required (stored only as a salted hash); or SHIPCAST_RABBITMQ_PASSWORD.")
def topology(vhost: str, user: str, password: str | None) -> None:
    """Print RabbitMQ definitions of shipcast's whole topology (exchanges,
    queues, policies, a least-privilege user whose password is
    SHIPCAST_RABBITMQ_PASSWORD), for import at the broker's boot or through
    the management API. Deploy scripts render them with the operator's secret
    (deploy/docker-compose.yml)."""
    from shipcast.amqp.topology import definitions, password_hash

    # No default: a password printed in these definitions would be one every
    # installation shares, and anyone who reaches the broker could log in with it.
    if not password:
        raise click.UsageError("no password for the RabbitMQ user: set SHIPCAST_RABBITMQ_PASSWORD "
                               "(or pass --password) to the secret shipcast will connect with")
    found = registry()
    delays = found.settings.retry_delays
    described = definitions([cls.topology(delays) for _, cls in sorted(found.channels.items())], vhost=vhost,
                            user=user, password_hash=password_hash(password))
    echo_json(described)
