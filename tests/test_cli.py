"""The shipcast command line, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from tests.bound import example
from shipcast.amqp.parking import list_dead
from tests.bound import channels
from shipcast.settings import Settings
from shipcast.store import Attempt, Store

from .helpers import Receiver, ShipcastProcess, eventually, partners_doc, run_cli, settings_env

pytestmark = pytest.mark.broker


def test_help_lists_every_command(settings: Settings) -> None:
    result = run_cli(settings, "--help")
    for command in ("run", "api", "worker", "partners", "publish", "deliveries", "dead", "queues", "status", "schema"):
        assert f"  {command} " in result.stdout


@pytest.mark.parametrize("event_type", ["OFD", "DEL", "FAIL", "RET"])
def test_schema_and_examples_agree(settings: Settings, event_type: str) -> None:
    schema = json.loads(run_cli(settings, "schema").stdout)
    sample = json.loads(run_cli(settings, "schema", "--example", event_type).stdout)
    jsonschema.Draft202012Validator(schema).validate(sample)
    assert sample["event_type"] == event_type


def test_schema_example_of_an_unknown_type_is_refused(settings: Settings) -> None:
    result = run_cli(settings, "schema", "--example", "NOPE")
    assert result.returncode == 2 and "unknown event type; known: DEL, FAIL, INSTRUCTIONS_ADDED, OFD, RATED, RESCHEDULE_REQUESTED, RET" in result.stderr


def test_worker_refuses_an_unknown_channel(settings: Settings) -> None:
    result = run_cli(settings, "worker", "--channel", "pigeon")
    assert result.returncode == 2 and "installed: amqp, archive, email, sms, tracking, webhook, whatsapp" in result.stderr


async def test_publish_file_progress_summary_and_delivery_commands(settings: Settings, tmp_path: Path) -> None:
    async with Receiver() as receiver, ShipcastProcess(settings) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url))
        events = [orjson.loads(example("OFD", partner_id="acme", order_id=f"O{i}").to_json()) for i in range(250)]
        lines = [json.dumps(e) for e in events]
        lines.insert(10, '{"event_type": "DEL", "partner_id": "acme"}')
        lines.insert(20, "this is not json")
        path = tmp_path / "events.jsonl"
        path.write_text("\n".join(lines) + "\n")

        result = run_cli(settings, "publish", "-f", str(path), "--batch", "100")
        assert result.returncode == 1  # some lines were refused
        assert "published 250, invalid 2, unconfirmed 0" in result.stdout
        assert "line 11: invalid event: occurred_at: Field required" in result.stderr
        assert "line 21: invalid event: not JSON" in result.stderr
        assert "publishing events.jsonl" in result.stderr  # the progress bar
        await eventually(lambda: len(set(receiver.ids)) == 250)
        assert set(receiver.ids) == {e["event_id"] for e in events}

        # Each look is a command of its own (a second or more on a loaded machine), and on a
        # loaded machine a delivery may have timed out once and be retrying when the receiver has it.
        await eventually(lambda: _listed(settings, 250, status="delivered"), timeout=60)

        replayed = run_cli(settings, "deliveries", "replay", "--event", events[0]["event_id"])
        assert replayed.stdout.strip() == "replayed 1 deliveries"
        await eventually(lambda: receiver.ids.count(events[0]["event_id"]) == 2)
        assert run_cli(settings, "deliveries", "replay").returncode == 2  # says what to replay

        status = run_cli(settings, "status")
        assert status.returncode == 0
        assert "shipcast.webhook " in status.stdout and "dead letters: 0" in status.stdout


def _dead_row(settings: Settings) -> dict[str, Any] | None:
    result = run_cli(settings, "status", "--json")
    [row] = [row for row in json.loads(result.stdout) if row["queue"] == "shipcast.webhook.dead"]
    return row if row["ready"] else None


def _listed(settings: Settings, n: int, status: str) -> list[dict[str, object]] | None:
    result = run_cli(settings, "deliveries", "list", "--channel", "webhook", "--status", status, "--limit", "1000",
                     "--json")
    try:
        rows = json.loads(result.stdout)
    except json.JSONDecodeError as exc:  # say how the output ended, should it be cut short again
        raise AssertionError(f"{exc}: exit {result.returncode}, {len(result.stdout)} characters of output, "
                             f"stderr: {result.stderr[-2000:]}") from exc
    return rows if len(rows) == n else None


async def _containing(text: Awaitable[str], wanted: str) -> str | None:
    found = await text
    return found if wanted in found else None


async def test_dead_list_and_replay_from_the_command_line(settings: Settings) -> None:
    async with Receiver(default=500) as receiver, ShipcastProcess(settings) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url))
        event = example("FAIL", partner_id="acme")
        await shipcast.services.publisher.publish(event)
        async def dead_list() -> str:
            # In a thread: the workers on this loop go on retrying while the command runs.
            return (await asyncio.to_thread(run_cli, settings, "dead", "list", "--channel", "webhook")).stdout

        listed = await eventually(lambda: _containing(dead_list(), "1 dead letters"), timeout=60)
        assert event.event_id in listed and "retries exhausted after 3 attempts: HTTP 500" in listed
        # What an operator reads in the UI's "get messages": every header of the failure.
        [parked] = await list_dead(shipcast.services.broker, channels()["webhook"].topology(settings.retry_delays))
        assert (parked.channel, parked.target, parked.attempts) == ("webhook", "main", 3)
        assert parked.last_error == "HTTP 500" and parked.reason == "retries exhausted after 3 attempts: HTTP 500"
        assert parked.first_failed_at is not None and parked.failed_at is not None
        assert datetime.fromisoformat(parked.first_failed_at) < datetime.fromisoformat(parked.failed_at)
        # `status --json` flags it, for scripts and alerts.
        rows = await eventually(lambda: _dead_row(settings), timeout=30)  # the management API refreshes every 5 s
        assert rows["ready"] == 1 and rows["channel"] == "webhook" and "1 parked" in rows["problems"][0]

        receiver.default = 200
        result = run_cli(settings, "dead", "replay", "--channel", "webhook")
        assert result.stdout.strip() == "replayed 1 dead letters into shipcast.webhook"
        await eventually(lambda: receiver.answered[-1:] == [200])
        assert "0 dead letters" in run_cli(settings, "dead", "list", "--channel", "webhook").stdout


@pytest.mark.slow
# A fresh venv and a real install: about 30 s alone, past the suite's 120 s when
# the suite's last, heaviest tests share the two cores with it.
@pytest.mark.timeout(300)
def test_pip_install_dot_into_a_fresh_venv_gives_a_working_command_with_templates(tmp_path: Path) -> None:
    """A real, non-editable `pip install .` into a new virtual environment,
    dependencies and all."""
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info",
                                                                "__pycache__", "*.db*", ".mypy_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                                str(source)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import shipcast, pathlib; "
                                "print(pathlib.Path(shipcast.__file__).parent)"],
                               capture_output=True, text=True, check=True).stdout.strip())
    assert site.is_relative_to(venv), site  # the installed copy, not this checkout
    assert (site / "py.typed").exists() and (site / "security" / "signing.py").exists() and (site / "plugins" / "webhook" / "guard.py").exists()
    assert sorted(p.name for p in (site / "templates").rglob("*.html"))
    result = subprocess.run([str(venv / "bin" / "shipcast"), "schema", "--example", "OFD"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["event_type"] == "OFD"


@pytest.mark.slow
async def test_run_applies_the_config_file_and_serves_api_and_workers(settings: Settings, tmp_path: Path) -> None:
    import httpx
    import yaml

    from .conftest import TOKEN
    from .helpers import Subprocess

    async with Receiver() as receiver:
        config = tmp_path / "shipcast.yaml"
        config.write_text(yaml.safe_dump(partners_doc("acme", receiver.url)))
        process = Subprocess(settings, "run", env={"SHIPCAST_CONFIG": str(config)}).start()
        output = ""
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}",
                                         headers={"authorization": f"Bearer {TOKEN}"}) as http:
                await eventually(lambda: _ready(http), timeout=30)
                event = orjson.loads(example("OFD", partner_id="acme").to_json())
                await eventually(lambda: _posted(http, event), timeout=30)
                await eventually(lambda: receiver.ids == [event["event_id"]], timeout=30)
        finally:
            output = process.stop()
        assert process.process is not None and process.process.returncode == 0, output
        assert "applied 1 partners from" in output


async def _ready(http: object) -> bool:
    try:
        return (await http.get("/readyz")).status_code == 200  # type: ignore[attr-defined,no-any-return]
    except Exception:
        return False


async def _posted(http: object, event: dict[str, object]) -> bool:
    return (await http.post("/v1/events", json=event)).status_code == 202  # type: ignore[attr-defined,no-any-return]


async def test_json_output_arrives_whole_through_a_non_blocking_pipe_read_slowly(settings: Settings) -> None:
    """`deliveries list --json | slow-reader`, with the pipe left non-blocking:
    all of the output arrives, not the 64 KiB a full pipe holds."""
    store = await Store(settings.database_url).open()
    try:
        await store.record([Attempt(event_id=f"evt_{i:032d}", channel="webhook", target="main", partner_id="acme",
                                    address="https://x.example.com/", outcome="delivered", attempt=1,
                                    latency_ms=1.0, status=200) for i in range(300)])
    finally:
        await store.close()
    read, write = os.pipe()
    os.set_blocking(write, False)
    with subprocess.Popen([str(Path(sys.executable).with_name("shipcast")), "deliveries", "list", "--json",
                           "--limit", "1000"], stdout=write, stderr=subprocess.PIPE,
                          env=settings_env(settings)) as command:
        os.close(write)
        time.sleep(2)  # the command fills the pipe and waits
        output = b""
        while chunk := os.read(read, 65536):
            output += chunk
        os.close(read)
        assert command.wait(30) == 0, command.stderr.read() if command.stderr else ""
    assert len(output) > 65536 and len(json.loads(output)) == 300
