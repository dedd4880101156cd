"""What operators see and rely on: the topology as RabbitMQ definitions
(imported into a fresh virtual host, run on by the least-privilege user),
queues that say what they are, /metrics that match a run, JSON logs with the
delivery's fields and no secrets, and SIGTERM in the middle of a stream
losing and repeating nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import httpx
import pytest

from shipcast import metrics
from shipcast.app.publisher import Publisher
from tests.bound import example
from tests.bound import channels
from shipcast.settings import Settings
from shipcast.amqp.topology import definitions, password_hash

from .conftest import AMQP_HOST, MANAGEMENT, free_port, make_settings
from .helpers import Receiver, ShipcastProcess, Subprocess, applied, eventually, partners_doc, settings_env

pytestmark = pytest.mark.broker

def topologies(delays: tuple[int, ...]) -> list[Any]:
    return [cls.topology(delays) for _, cls in sorted(channels().items())]


DEPLOY = Path(__file__).parents[1] / "deploy"
PROBES = {"/healthz", "/readyz"}


def _check_command(where: str, args: list[str]) -> None:
    assert args[0] in ("api", "run", "worker"), where
    if args[0] == "worker":
        named = [args[i + 1] for i, arg in enumerate(args) if arg == "--channel"]
        assert named and set(named) <= set(channels()), where


def test_the_compose_file_and_the_manifests_use_only_what_shipcast_knows() -> None:
    import yaml

    from shipcast.plugins.email.settings import SmtpSettings

    # The core's settings, and those a channel reads itself.
    known = {f"SHIPCAST_{name.upper()}" for name in Settings.model_fields} \
        | {f"SHIPCAST_SMTP_{name.upper()}" for name in SmtpSettings.model_fields}
    known.add("SHIPCAST_RABBITMQ_PASSWORD")  # read by `shipcast topology`, which renders the broker's definitions
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    workers = set()
    for name, service in compose["services"].items():
        settings = {key for key in service.get("environment", {}) if key.startswith("SHIPCAST_")}
        assert settings <= known, f"{name}: unknown settings {settings - known}"
        if name.startswith(("api", "worker")):
            _check_command(name, service["command"])
            assert {"rabbitmq", "postgres"} <= set(service["depends_on"])
            probe = " ".join(service["healthcheck"]["test"])
            port = service["environment"].get("SHIPCAST_HEALTH_PORT") or "8000"
            assert f"127.0.0.1:{port}/readyz" in probe, name
            workers.update(service["command"][2::2])
    assert workers == set(channels()), "one worker per channel"
    manifests = [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
    [config] = [doc for doc in manifests if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "shipcast"]
    assert set(config["data"]) <= known, set(config["data"]) - known
    deployments = [doc for doc in manifests if doc["kind"] == "Deployment"]
    assert {doc["spec"]["template"]["spec"]["containers"][0]["args"][-1] for doc in deployments} == {"api", *channels()}
    for doc in deployments:
        [container] = doc["spec"]["template"]["spec"]["containers"]
        _check_command(doc["metadata"]["name"], container["args"])
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] in PROBES and get["port"] in ports
        expected = int(config["data"]["SHIPCAST_PORT" if container["args"][0] == "api" else "SHIPCAST_HEALTH_PORT"])
        assert list(ports.values()) == [expected], doc["metadata"]["name"]
    assert any(doc["kind"] == "Service" and doc["spec"]["selector"]["role"] == "api" for doc in manifests)


@pytest.fixture
async def imported() -> AsyncIterator[tuple[str, str, str]]:
    """The definitions imported into a fresh virtual host, for a user of its own."""
    vhost, user, password = f"shipcast-defs-{uuid.uuid4().hex[:8]}", f"shipcast-{uuid.uuid4().hex[:6]}", "s3cret"
    described = definitions(topologies(make_settings("x", "sqlite://").retry_delays), vhost=vhost, user=user,
                            password_hash=password_hash(password))
    async with httpx.AsyncClient(base_url=f"{MANAGEMENT}/api", timeout=30) as api:
        response = await api.post("/definitions", json=described)
        assert response.status_code in (200, 201, 204), response.text
        try:
            yield vhost, user, password
        finally:
            await api.delete(f"/vhosts/{vhost}")
            await api.delete(f"/users/{user}")


async def test_imported_definitions_give_a_broker_shipcast_runs_on_as_a_least_privilege_user(
        imported: tuple[str, str, str], sqlite_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    vhost, user, password = imported
    settings = make_settings(vhost, sqlite_url).model_copy(
        update={"amqp_url": f"amqp://{user}:{password}@{AMQP_HOST}/{vhost}",
                "management_url": f"http://{user}:{password}@{MANAGEMENT.split('@')[-1]}"})
    caplog.set_level(logging.INFO, logger="shipcast.app.reconcile")
    async with ShipcastProcess(settings) as shipcast:
        # Not a policymaker, it cannot check the policies; it says so, and runs on the imported ones.
        assert any("shipcast's policies not checked" in r.getMessage() and "policymaker" in r.getMessage()
                   for r in caplog.records)
        await shipcast.apply(partners_doc("acme", receiver.url))
        event = example("OFD", partner_id="acme")
        assert (await shipcast.http.post("/v1/events", json=json.loads(event.to_json()))).status_code == 202
        await eventually(lambda: receiver.ids == [event.event_id])
    # The user may touch shipcast's resources only.
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_queue("someone-elses-queue")
    finally:
        await connection.close()
    # Every queue says in the UI which channel and role it serves, and carries its policy.
    async with httpx.AsyncClient(base_url=f"{MANAGEMENT}/api", timeout=30) as api:
        queues = (await api.get(f"/queues/{vhost}")).json()
    durable = [q for q in queues if q["durable"]]
    assert {q["name"] for q in durable} >= {"shipcast.webhook", "shipcast.webhook.dead", "shipcast.webhook.retry.1"}
    for queue in durable:
        role = queue["arguments"]["x-shipcast-role"]
        assert queue["arguments"]["x-shipcast-channel"] in queue["name"]
    # The management API shows each queue's policy once it has refreshed its statistics (every 5 s).
    async def policies() -> dict[str, str] | None:
        async with httpx.AsyncClient(base_url=f"{MANAGEMENT}/api", timeout=30) as api:
            shown = {q["name"]: q.get("policy") for q in (await api.get(f"/queues/{vhost}")).json() if q["durable"]}
        return shown if all(shown.values()) else None

    shown = await eventually(policies, timeout=30)
    for queue in durable:
        assert shown[queue["name"]] == f"shipcast-{queue['arguments']['x-shipcast-role']}", queue["name"]


async def test_metrics_match_what_was_delivered(settings: Settings, receiver: Receiver) -> None:
    async with ShipcastProcess(settings) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url, events=["OFD", "DEL"]))

        def snapshot() -> dict[str, float]:
            return {"ofd": metrics.value("shipcast_events_published_total", event_type="OFD"),
                    "del": metrics.value("shipcast_events_published_total", event_type="DEL"),
                    "delivered": metrics.value("shipcast_deliveries_total", channel="webhook", event_type="OFD",
                                               outcome="delivered"),
                    "latency": metrics.value("shipcast_delivery_latency_seconds", channel="webhook",
                                             event_type="OFD"),
                    "accepted": metrics.value("shipcast_ingest_requests_total", code="202"),
                    "refused": metrics.value("shipcast_ingest_requests_total", code="422")}

        before = snapshot()
        batch = [json.loads(example("OFD", partner_id="acme").to_json()) for _ in range(7)] + \
                [json.loads(example("DEL", partner_id="acme").to_json()) for _ in range(3)]
        assert (await shipcast.http.post("/v1/events", json=batch)).status_code == 202
        assert (await shipcast.http.post("/v1/events", json={"event_type": "OFD"})).status_code == 422
        await eventually(lambda: len(receiver.ids) == 10)
        await eventually(lambda: snapshot()["delivered"] - before["delivered"] == 7)
        after = snapshot()
        assert {k: after[k] - before[k] for k in after} == {"ofd": 7, "del": 3, "delivered": 7, "latency": 7,
                                                             "accepted": 1, "refused": 1}
        text = (await shipcast.http.get("/metrics")).text
    assert "# TYPE shipcast_delivery_latency_seconds histogram" in text
    assert re.search(r'shipcast_delivery_latency_seconds_bucket\{channel="webhook",event_type="OFD",le="\+Inf"\} \d+',
                     text)
    assert re.search(r'shipcast_deliveries_in_flight\{channel="webhook"\} 0', text)
    assert "# TYPE shipcast_circuit_state gauge" in text


async def test_sigterm_in_the_middle_of_a_stream_loses_nothing_and_sends_nothing_twice(
        vhost: str, sqlite_url: str) -> None:
    n = 600
    settings = make_settings(vhost, sqlite_url)
    async with Receiver(delay=0.05) as receiver, applied(settings, partners_doc("acme", receiver.url)):
        events = [example("OFD", partner_id="acme", order_id=f"ORD-{i}") for i in range(n)]
        worker = Subprocess(settings, "worker", "--channel", "webhook", "--channel", "archive",
                            env={"SHIPCAST_LOG_FORMAT": "json"}).start()
        async with Publisher(settings=settings) as publisher:
            for start in range(0, n, 100):
                await publisher.publish(*events[start:start + 100])
                if start == 200:
                    await eventually(lambda: len(receiver.ids) >= 100, timeout=60)
                    # SIGTERM while events are still arriving (in a thread: the receiver in this
                    # process must keep answering while the worker finishes what it has in flight).
                    output = await asyncio.to_thread(worker.stop)
        assert worker.process is not None and worker.process.returncode == 0, output
        assert len(set(receiver.ids)) < n, "the worker finished before SIGTERM"
        drained = Subprocess(settings, "worker", "--channel", "webhook", "--channel", "archive").start()
        try:
            await eventually(lambda: len(set(receiver.ids)) == n, timeout=90)
        finally:
            await asyncio.to_thread(drained.stop)
        assert set(receiver.ids) == {e.event_id for e in events}
        twice = {i: c for i, c in Counter(receiver.ids).items() if c > 1}
        assert not twice, f"sent twice: {len(twice)} events\n{output[-3000:]}"
    # Its log was JSON lines (stderr is no terminal), and said how it stopped.
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)


async def test_sigterm_while_a_worker_still_starts_lets_it_finish_starting_and_stops_cleanly(
        vhost: str, sqlite_url: str) -> None:
    """SIGTERM as soon as the first of two channels consumes, while the
    second still declares its queues: the start-up ends before the shutdown
    (cancelled half way, one of its calls closed its AMQP channel, and at
    times the connection under the first channel's deliveries)."""
    settings = make_settings(vhost, sqlite_url)
    async with Receiver() as receiver, applied(settings, partners_doc("acme", receiver.url)):
        for _ in range(3):
            worker = Subprocess(settings, "worker", "--channel", "webhook", "--channel", "archive",
                                env={"SHIPCAST_LOG_FORMAT": "json"}).start()
            await eventually(lambda: b"consuming shipcast.webhook" in worker.read(), timeout=60, interval=0.002)
            output = await asyncio.to_thread(worker.stop)
            assert worker.process is not None and worker.process.returncode == 0, output
            assert "consuming shipcast.archive" in output and "cancelled" not in output, output[-3000:]


#: A worker in a Python process of its own that, once started, prints how many
#: objects the collector's full passes leave out and how many they still scan.
FROZEN = """
import asyncio, gc, json, os, signal, time
from shipcast.app.runtime import serve
from shipcast.app.services import Services

async def main():
    running = asyncio.ensure_future(serve(api=False, worker_names=["webhook"], services=Services.from_settings()))
    deadline = time.monotonic() + 60
    while not gc.get_freeze_count() and time.monotonic() < deadline and not running.done():
        await asyncio.sleep(0.05)
    print(json.dumps([gc.get_freeze_count(), len(gc.get_objects(generation=2))]), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    await running

asyncio.run(main())
"""


async def test_a_started_process_leaves_its_start_up_out_of_full_collections(settings: Settings) -> None:
    """What start-up made lives as long as the process: the garbage
    collector's full passes (each one stalled deliveries in flight for about
    0.1 s on a busy machine) no longer scan it."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", FROZEN, env=settings_env(settings),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, err.decode()[-3000:]
    frozen, scanned = json.loads(out.decode().splitlines()[-1])
    assert frozen > 50_000, err.decode()[-3000:]  # the modules, the models, the clients
    assert scanned < frozen / 5


async def test_delivery_log_lines_carry_the_delivery_and_no_secrets_or_otps(
        vhost: str, sqlite_url: str) -> None:
    settings = make_settings(vhost, sqlite_url, retry_schedule="1")
    secret = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ=="
    async with Receiver(default=503) as receiver, applied(settings, partners_doc("acme", receiver.url, secret=secret)):
        health = free_port()
        worker = Subprocess(settings, "worker", "--channel", "webhook",
                            env={"SHIPCAST_LOG_FORMAT": "json", "SHIPCAST_HEALTH_PORT": str(health)}).start()
        event = example("OFD", partner_id="acme")
        try:
            async with Publisher(settings=settings) as publisher:
                await publisher.publish(event)
            await eventually(lambda: len(receiver.requests) >= 2, timeout=30)  # tried, retried
            # A worker has no API, but its own health and metrics port, for probes and Prometheus.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health}") as http:
                await eventually(lambda: _ready(http))
                text = (await http.get("/metrics")).text
                assert 'shipcast_deliveries_total{channel="webhook",event_type="OFD",outcome="retry"} 1' in text
                assert (await http.get("/v1/events")).status_code == 404  # and nothing else
        finally:
            output = await asyncio.to_thread(worker.stop)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    deliveries = [line for line in lines if line.get("event_id") == event.event_id]
    assert deliveries, output
    for line in deliveries:
        assert (line["partner"], line["channel"], line["target"]) == ("acme", "webhook", "main")
        assert line["outcome"] in ("retry", "dead") and "HTTP 503" in line["message"]
    assert "4821" not in output and "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ" not in output


async def _ready(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_metrics_and_the_console_are_the_operators_on_the_public_port(vhost: str, sqlite_url: str) -> None:
    """The API's own port answers /metrics and / only with the operator's
    token; its operations port serves them, with the probes, without one."""
    settings = make_settings(vhost, sqlite_url)
    health = free_port()
    api = Subprocess(settings, "api", env={"SHIPCAST_HEALTH_PORT": str(health)}).start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health}") as ops, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}") as public:
            await eventually(lambda: _ready(ops), timeout=30)
            assert "shipcast_" in (await ops.get("/metrics")).text
            assert "shipcast" in (await ops.get("/")).text
            for path in ("/metrics", "/"):
                assert (await public.get(path)).status_code == 401, path
                wrong = await public.get(path, headers={"authorization": "Bearer wrong"})
                assert wrong.status_code == 401, path
                allowed = await public.get(path, headers={"authorization": f"Bearer {settings.api_token}"})
                assert allowed.status_code == 200, path
            assert (await public.get("/readyz")).status_code == 200  # probes stay open
    finally:
        await asyncio.to_thread(api.stop)
