"""``publish`` events from a file, and print their ``schema``."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import orjson

from shipcast.app.cli.base import (
    cli,
    echo_json,
    open_services,
    registry,
    run_command,
)
from shipcast.exceptions import InvalidEvent, ShipcastError


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


@cli.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="One JSON event per line.")
@click.option("--batch", default=100, show_default=True, help="Events confirmed together.")
def publish(path: Path, batch: int) -> None:
    """Publish events from a JSON Lines file, with a progress bar and a summary.

    Invalid lines are reported with their line number and not published."""
    from shipcast.model.envelope import parse_event

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
                            valid.append(parse_event(line.encode(), services.registry.event_types))
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


@cli.command()
@click.option("--example", "example_type", metavar="TYPE", help="Print a realistic sample event of TYPE instead.")
@click.option("--partner", "partner_id", default="acme", show_default=True, metavar="ID",
              help="With --example: the partner the sample is for.")
def schema(example_type: str | None, partner_id: str) -> None:
    """Print the envelope's JSON Schema (or a sample event)."""
    from shipcast.model.envelope import json_schema
    from shipcast.model.examples import example

    types = registry().event_types
    if example_type is None:
        echo_json(json_schema(types))
        return
    if example_type not in types:
        raise click.BadParameter(f"unknown event type; known: {', '.join(types)}", param_hint="--example")
    if not re.fullmatch(r"[a-z0-9_-]{1,64}", partner_id):
        raise click.BadParameter("must match [a-z0-9_-]+ (at most 64 characters)", param_hint="--partner")
    click.echo(orjson.dumps(orjson.loads(example(example_type, types, partner_id=partner_id).to_json()),
                            option=orjson.OPT_INDENT_2).decode())
