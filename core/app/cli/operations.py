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
    from shipcast.amqp.management import Management

    async def fetch() -> list[dict[str, Any]]:
        async with Management(registry().settings) as management:
            return [q for q in await management.queues() if q["name"].startswith("shipcast.")]

    rows = [queue_status(queue) for queue in sorted(run_command(fetch), key=lambda q: q["name"])]
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


def queue_status(queue: dict[str, Any]) -> dict[str, Any]:
    """One queue as ``shipcast status`` shows it: its role, numbers, policy
    and problems (a work queue nobody consumes; a dead queue holding or
    gaining messages; a policy setting missing, or overridden by an argument
    an earlier shipcast declared)."""
    from shipcast.amqp.topology import LEGACY_ARGUMENTS, POLICIES, QUEUE_PREFIX

    name = queue["name"]
    rest = name.removeprefix(QUEUE_PREFIX).split(".")
    role = "dead" if rest[-1] == "dead" else "retry" if len(rest) > 1 and rest[1] == "retry" else \
        "work" if len(rest) == 1 else "other"
    stats = queue.get("message_stats") or {}
    row: dict[str, Any] = {
        "queue": name, "channel": rest[0] if role != "other" else None, "role": role,
        "ready": queue.get("messages_ready", 0), "unacked": queue.get("messages_unacknowledged", 0),
        "consumers": queue.get("consumers", 0),
        "publish_rate": (stats.get("publish_details") or {}).get("rate", 0.0),
        "ack_rate": (stats.get("ack_details") or {}).get("rate", 0.0),
        "policy": queue.get("policy") or None,
    }
    problems = []
    if role == "work" and not row["consumers"]:
        problems.append("no consumer: start `shipcast worker --channel " + str(row["channel"]) + "`")
    if role == "dead" and row["ready"] + row["unacked"]:
        problems.append(f"{row['ready'] + row['unacked']} parked: `shipcast dead list --channel {row['channel']}`")
    if role == "dead" and row["publish_rate"] > 0:
        problems.append(f"growing ({row['publish_rate']:.1f}/s)")
    arguments = queue.get("arguments") or {}
    legacy = sorted(set(arguments) & set(LEGACY_ARGUMENTS.get(role, {})))
    if legacy:
        problems.append(f"declared with {', '.join(legacy)}, which override its policy: `shipcast queues migrate`")
    # The management API shows a new queue's policy once its statistics refresh (every 5 s).
    effective = queue.get("effective_policy_definition") or {}
    wanted = {key for name, _, definition in POLICIES if name == f"shipcast-{role}" for key in definition}
    if str(row["policy"] or "").startswith("shipcast-migrating-") or name.endswith(".migrating"):
        problems.append("left by a migration that stopped half way: run `shipcast queues migrate`")
    elif "effective_policy_definition" in queue and (missing := sorted(wanted - set(effective))):
        problems.append(f"no {', '.join(missing)} in its policy: the policy is missing, out of date or replaced "
                        f"(`shipcast-{role}`)")
    row["problems"] = problems
    return row


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
