"""The ``shipcast`` command line. ``shipcast --help`` lists every command."""

from __future__ import annotations

import json
import os
import select
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from . import __version__
from .exceptions import ConfigError, InvalidEvent, ShipcastError
from .runtime import run_async, select_channels, serve
from .services import Services

T = TypeVar("T")


def run_command(factory: Callable[[], Awaitable[T]]) -> T:
    result: list[T] = []

    async def main() -> None:
        result.append(await factory())

    try:
        run_async(main())
    except ShipcastError as exc:
        raise click.ClickException(str(exc)) from exc
    return result[0]


def echo_json(value: Any, **dumps: Any) -> None:
    """Print ``value`` as indented JSON, all of it: written out in a loop that
    waits on a full pipe even if the descriptor was left non-blocking (a
    test saw ``deliveries list --json`` cut at 64 KiB)."""
    sys.stdout.flush()
    data = (json.dumps(value, indent=2, **dumps) + "\n").encode()
    fd = sys.stdout.fileno()
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            select.select([], [fd], [])


@asynccontextmanager
async def open_services(*, broker: bool = True) -> Any:
    services = Services.from_settings()
    await services.store.open()
    if broker:
        await services.broker.connect(timeout=15)
    try:
        yield services
    finally:
        await services.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shipcast")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def main(verbose: bool) -> None:
    """shipcast: order events in, signed webhooks and no-code channels out.

    Settings come from SHIPCAST_* environment variables (see README).
    """
    from .logs import configure

    configure(verbose, os.environ.get("SHIPCAST_LOG_FORMAT", "auto"))


@main.command()
def run() -> None:
    """The API and every channel worker in one process."""
    names = select_channels([])
    _announce()
    run_command(lambda: serve(api=True, worker_names=names))


@main.command()
def api() -> None:
    """The HTTP API only (ingest, admin, plugin routes)."""
    _announce()
    run_command(lambda: serve(api=True, worker_names=[]))


@main.command()
@click.option("--channel", "names", multiple=True, metavar="NAME",
              help="Channel to work on; repeat for several. Default: all.")
def worker(names: tuple[str, ...]) -> None:
    """Channel workers only; run as many as you like, they compete on the queues."""
    try:
        selected = select_channels(names)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--channel") from exc
    run_command(lambda: serve(api=False, worker_names=selected))


def _announce() -> None:
    from .settings import Settings

    settings = Settings()
    click.echo(f"shipcast {__version__}: API on http://{settings.host}:{settings.port} "
               f"(docs at /docs), RabbitMQ UI at {settings.management_url.split('@')[-1]}", err=True)
    if not settings.api_token:
        click.echo("warning: SHIPCAST_API_TOKEN is not set: the API refuses every request", err=True)


# -- partners ----------------------------------------------------------------

@main.group()
def partners() -> None:
    """Apply and list partner configs."""


@partners.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path))
def partners_apply(path: Path) -> None:
    """Validate a partners file, store it, and make the bindings match."""
    from .partners import load_partners_file
    from .reconcile import apply_partners

    try:
        loaded = load_partners_file(path)
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
    from .redact import redact

    async def fetch() -> Any:
        async with open_services(broker=False) as services:
            return await services.store.get_partners()

    found = run_command(fetch)
    if as_json:
        echo_json([redact(p.to_dict()) for p in found])
        return
    if not found:
        click.echo("no partners applied yet: shipcast partners apply -f FILE")
    for partner in found:
        click.echo(f"{partner.id:<20} {partner.name:<30} {', '.join(sorted(partner.channels)) or '-'}")


# -- publish -------------------------------------------------------------------

def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


@main.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="One JSON event per line.")
@click.option("--batch", default=100, show_default=True, help="Events confirmed together.")
def publish(path: Path, batch: int) -> None:
    """Publish events from a JSON Lines file, with a progress bar and a summary.

    Invalid lines are reported with their line number and not published."""
    from .envelope import parse_event

    async def go() -> tuple[int, list[str], list[str]]:
        lines = list(_lines(path))
        invalid: list[str] = []
        unconfirmed: list[str] = []
        published = 0
        async with open_services() as services:
            with click.progressbar(length=len(lines), label=f"publishing {path.name}", file=sys.stderr,
                                   show_pos=True) as bar:
                for start in range(0, len(lines), batch):
                    chunk = lines[start:start + batch]
                    valid = []
                    for number, line in chunk:
                        try:
                            valid.append(parse_event(line.encode()))
                        except InvalidEvent as exc:
                            invalid.append(f"line {number}: {exc}")
                    try:
                        await services.publisher.publish_valid(valid)
                        published += len(valid)
                    except ShipcastError as exc:
                        unconfirmed += [event.event_id for event in valid]
                        click.echo(f"lines {chunk[0][0]}-{chunk[-1][0]}: not confirmed: {exc}", err=True)
                    bar.update(len(chunk))
        return published, invalid, unconfirmed

    published, invalid, unconfirmed = run_command(go)
    for problem in invalid:
        click.echo(problem, err=True)
    click.echo(f"published {published}, invalid {len(invalid)}, unconfirmed {len(unconfirmed)}")
    if invalid or unconfirmed:
        sys.exit(1)


# -- deliveries ------------------------------------------------------------------

#: A time on the command line: ISO 8601, UTC unless it gives an offset.
WHEN = click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"])


def _filters(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--event", "event_id", help="Event id."),
        click.option("--partner", "partner_id", help="Partner id."),
        click.option("--channel", help="Channel name."),
        click.option("--endpoint", "target", help="Target (webhook endpoint) id."),
        click.option("--type", "event_type", help="Event type (OFD, DEL, ...)."),
        click.option("--order", "order_id", help="Order id."),
        click.option("--since", type=WHEN, help="Changed at or after (ISO 8601; UTC unless it says)."),
        click.option("--until", type=WHEN, help="Changed before."),
        click.option("--status", type=click.Choice(["delivered", "retrying", "waiting", "skipped", "dead"])),
        click.option("--limit", default=100, show_default=True),
    ]):
        func = option(func)
    return func


def utc_filters(filters: dict[str, Any]) -> dict[str, Any]:
    from datetime import UTC

    return {key: value.replace(tzinfo=UTC) if hasattr(value, "tzinfo") and value.tzinfo is None else value
            for key, value in filters.items()}


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Print rows as aligned columns, headed by each column's title."""
    cells = [[title for _, title in columns]] + [
        ["-" if row.get(key) is None else str(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


@main.group()
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
    from .replay import matching_deliveries, replay_rows

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


# -- templates -----------------------------------------------------------------------

@main.group()
def templates() -> None:
    """Customer message templates (SMS, WhatsApp, email)."""


@templates.command("preview")
@click.option("--partner", "partner_id", required=True, help="A partner applied already.")
@click.option("--event", "event_type", required=True, help="Event type (OFD, DEL, ...).")
@click.option("--channel", required=True, help="A customer channel the partner uses (sms, whatsapp, email).")
@click.option("--lang", "language", type=click.Choice(["en", "hi"]), help="Default: the sample customer's.")
def templates_preview(partner_id: str, event_type: str, channel: str, language: str | None) -> None:
    """Render a partner's message for a realistic sample event, as it would be sent."""
    from .examples import example
    from .plugin_manager import channels, event_types
    from .services import Services
    from .settings import Settings

    if event_type not in event_types():
        raise click.BadParameter(f"unknown event type; known: {', '.join(event_types())}", param_hint="--event")

    async def fetch() -> Any:
        async with open_services(broker=False) as services:
            return await services.store.get_partner(partner_id)

    partner = run_command(fetch)
    if partner is None:
        raise click.ClickException(f"no partner {partner_id!r}: apply it first (shipcast partners apply -f FILE)")
    if channel not in partner.channels:
        raise click.ClickException(f"partner {partner_id!r} does not use {channel!r}; it uses: "
                                   f"{', '.join(sorted(partner.channels)) or 'nothing'}")
    installed = channels()
    if channel not in installed:
        raise click.ClickException(f"no channel {channel!r} is installed; installed: {', '.join(sorted(installed))}")
    event = example(event_type, partner_id=partner_id)
    if language:
        event = event.model_copy(update={"order": event.order.model_copy(update={
            "customer": event.order.customer.model_copy(update={"language": language})})})
    try:
        shown, summary = installed[channel](Services.from_settings(Settings())).preview(event, partner)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(shown)
    click.echo(f"-- {summary}", err=True)


# -- dead letters ----------------------------------------------------------------

@main.group()
def dead() -> None:
    """The parking lot of each channel: list and replay."""


def _topology(channel: str) -> Any:
    from .plugin_manager import channels
    from .settings import Settings

    known = channels()
    if channel not in known:
        raise click.BadParameter(f"unknown channel; installed: {', '.join(sorted(known))}", param_hint="--channel")
    return known[channel].topology(Settings().retry_delays)


@dead.command("list")
@click.option("--channel", required=True)
@click.option("--limit", default=100, show_default=True)
def dead_list(channel: str, limit: int) -> None:
    """Show parked messages (they stay parked)."""
    from .parking import list_dead

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
    from .parking import replay_dead

    topology = _topology(channel)

    async def go() -> int:
        async with open_services(broker=True) as services:
            return await replay_dead(services.broker, topology, limit=limit,
                                     event_ids=set(event_ids) or None)

    click.echo(f"replayed {run_command(go)} dead letters into {topology.work.name}")


@main.group()
def queues() -> None:
    """shipcast's queues in RabbitMQ."""


@queues.command("migrate")
@click.option("--channel", "names", multiple=True, help="Only this channel (repeatable); default: all.")
def queues_migrate(names: tuple[str, ...]) -> None:
    """Declare again, without the arguments that override their policies, the
    queues an earlier shipcast declared with them. Their messages are kept.
    Stop the channel's workers first; the API may keep running."""
    from .management import Management
    from .migration import migrate
    from .plugin_manager import channels

    topologies = [_topology(name) for name in names or sorted(channels())]

    async def go() -> Any:
        async with open_services(broker=True) as services, Management(services.settings) as management:
            return await migrate(services.broker.require(), management, topologies)

    done = run_command(go)
    for migrated in done:
        click.echo(f"{migrated.queue}: {migrated.moved} messages kept; declared without {', '.join(migrated.dropped)}")
    click.echo(f"{len(done)} queue{'s' * (len(done) != 1)} migrated" if done
               else "nothing to migrate: every queue takes its policy")


# -- status and schema -------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Queues, consumers, rates and dead letters, from the RabbitMQ management API."""
    from .management import Management
    from .settings import Settings

    async def fetch() -> list[dict[str, Any]]:
        async with Management(Settings()) as management:
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
    from .topology import LEGACY_ARGUMENTS, POLICIES, QUEUE_PREFIX

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


@main.command()
@click.option("--vhost", default="/", show_default=True, help="The virtual host to describe.")
@click.option("--user", default="shipcast", show_default=True, help="The least-privilege user to create.")
@click.option("--password", envvar="SHIPCAST_RABBITMQ_PASSWORD", default="change-me", show_default=True,
              help="Its password (stored hashed); or SHIPCAST_RABBITMQ_PASSWORD.")
def topology(vhost: str, user: str, password: str) -> None:
    """Print RabbitMQ definitions of shipcast's whole topology (exchanges,
    queues, policies, a least-privilege user), for import through the
    management API: deploy/rabbitmq/definitions.json."""
    from .plugin_manager import channels
    from .settings import Settings
    from .topology import definitions, password_hash

    delays = Settings().retry_delays
    described = definitions([cls.topology(delays) for _, cls in sorted(channels().items())], vhost=vhost,
                            user=user, password_hash=password_hash(password, salt=b"shcs"))
    echo_json(described)


@main.command()
@click.option("--example", "example_type", metavar="TYPE", help="Print a realistic sample event of TYPE instead.")
def schema(example_type: str | None) -> None:
    """Print the envelope's JSON Schema (or a sample event)."""
    from .envelope import json_schema
    from .plugin_manager import event_types

    if example_type is None:
        echo_json(json_schema())
        return
    registry = event_types()
    if example_type not in registry:
        raise click.BadParameter(f"unknown event type; known: {', '.join(registry)}", param_hint="--example")
    from .examples import example

    click.echo(orjson.dumps(orjson.loads(example(example_type).to_json()), option=orjson.OPT_INDENT_2).decode())


def _plugin_commands() -> None:
    from .plugin_manager import get_plugin_manager

    get_plugin_manager().hook.shipcast_commands(cli=main)


_plugin_commands()
