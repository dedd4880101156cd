"""``shipcast run`` (and ``shipcast api``) on several processes: one port, the queues consumed
competitively, a dead process started again, limits shared out, and
``/metrics`` adding up every process's figures."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import create_async_engine

from shipcast import metrics
from shipcast.delivery.isolation import Gates
from shipcast.plugin.channel import Target
from shipcast.settings import Settings
from tests.bound import example

from .conftest import TOKEN, free_port
from .helpers import Receiver, Subprocess, eventually, partners_doc


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(found) for found in path.read_text().split()] if path.exists() else []


def _consumers(management: httpx.Client, vhost: str, queue: str) -> int:
    found = management.get(f"/api/queues/{vhost}/{queue}")
    return int(found.json().get("consumers", 0)) if found.status_code == 200 else 0


async def _post(http: httpx.AsyncClient, events: list[dict[str, Any]]) -> bool:
    try:
        return (await http.post("/v1/events", json=events)).status_code == 202
    except httpx.HTTPError:
        return False


async def _logged(settings: Settings, n: int) -> bool:
    """Whether the delivery log holds ``n`` webhook deliveries as delivered."""
    from shipcast.store.tables import deliveries

    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            count = (await conn.execute(sa.select(sa.func.count()).select_from(deliveries).where(
                deliveries.c.channel == "webhook", deliveries.c.status == "delivered"))).scalar_one()
    finally:
        await engine.dispose()
    return int(count) >= n


def _figure(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


@pytest.mark.slow
async def test_two_processes_share_the_port_and_the_queues_and_a_killed_one_comes_back(
        settings: Settings, vhost: str, management: httpx.Client, tmp_path: Path) -> None:
    health = free_port()
    async with Receiver() as receiver:
        config = tmp_path / "shipcast.yaml"
        config.write_text(yaml.safe_dump(partners_doc("acme", receiver.url)))
        process = Subprocess(settings, "run", "--processes", "2",
                             env={"SHIPCAST_CONFIG": str(config), "SHIPCAST_HEALTH_PORT": str(health)}).start()
        assert process.process is not None
        output = ""
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=30,
                                         headers={"authorization": f"Bearer {TOKEN}"}) as http:
                # Both processes consume the webhook queue, each with its own channel.
                await eventually(lambda: _consumers(management, vhost, "shipcast.webhook") == 2, timeout=60)
                children = _children(process.process.pid)
                assert len(children) == 2, children

                first = [orjson.loads(example("OFD", partner_id="acme", order_id=f"A{i}").to_json())
                         for i in range(40)]
                for at in range(0, len(first), 4):  # several requests: the kernel spreads the connections
                    assert await _post(http, first[at:at + 4])
                await eventually(lambda: len(set(receiver.ids)) == len(first), timeout=60)
                # Each logged too: a delivery the kill cut off between its POST and its record
                # would rightly be sent again, and the check below is of the deliveries not in flight.
                await eventually(lambda: _logged(settings, len(first)), timeout=30)

                # kill -9 one process: the other goes on, and the dead one is started again.
                os.kill(children[1], signal.SIGKILL)
                second = [orjson.loads(example("DEL", partner_id="acme", order_id=f"B{i}").to_json())
                          for i in range(20)]
                await eventually(lambda: _post(http, second[:10]), timeout=30)
                await eventually(lambda: len(set(_children(process.process.pid)) - {children[1]}) == 2, timeout=30)
                await eventually(lambda: _consumers(management, vhost, "shipcast.webhook") == 2, timeout=60)
                await eventually(lambda: _post(http, second[10:]), timeout=30)
                wanted = {event["event_id"] for event in first + second}
                await eventually(lambda: wanted <= set(receiver.ids), timeout=60)

                # Any process's /metrics counts every process's deliveries (once each figure is shared).
                async def counted() -> bool:
                    text = (await http.get(f"http://127.0.0.1:{health}/metrics")).text
                    return _figure(text, 'shipcast_deliveries_total{channel="webhook"') >= len(second)
                await eventually(counted, timeout=10)
        finally:
            output = process.stop()
        assert process.process.returncode == 0, output
        assert "process 1 exited (-9)" in output, output
        # Nothing sent twice to the partner: each event's delivery was logged once.
        assert not [found for found, seen in Counter(receiver.ids).items() if seen > 1]
        assert _children(process.process.pid) == []


@pytest.mark.slow
async def test_an_ordered_endpoint_under_several_processes_is_warned_about(settings: Settings, vhost: str,
                                                                          management: httpx.Client,
                                                                          tmp_path: Path) -> None:
    """`shipcast run --processes 2` with an ordered endpoint delivers, and the
    process that delivers says the endpoint's order holds within a process
    only, and how to keep it."""
    async with Receiver() as receiver:
        config = tmp_path / "shipcast.yaml"
        config.write_text(yaml.safe_dump(partners_doc("acme", receiver.url, ordered=True)))
        process = Subprocess(settings, "run", "--processes", "2", env={"SHIPCAST_CONFIG": str(config)}).start()
        output = ""
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=30,
                                         headers={"authorization": f"Bearer {TOKEN}"}) as http:
                await eventually(lambda: _consumers(management, vhost, "shipcast.webhook") == 2, timeout=60)
                event = orjson.loads(example("OFD", partner_id="acme", order_id="A1").to_json())
                assert await _post(http, [event])
                await eventually(lambda: event["event_id"] in receiver.ids, timeout=30)
                # Counted beside the delivery: said once the count is in, before the stop cancels it.
                await eventually(lambda: b"target acme/main is ordered" in process.read(), timeout=30)
        finally:
            output = process.stop()
        assert process.process is not None and process.process.returncode == 0, output
        warned = [line for line in output.splitlines() if "target acme/main is ordered" in line]
        assert len(warned) == 1, output
        assert "2 consumers deliver from shipcast.webhook" in warned[0] and "--processes 1" in warned[0], output


@pytest.mark.slow
async def test_the_api_alone_on_two_processes_shares_the_port_and_consumes_nothing(
        settings: Settings, vhost: str, management: httpx.Client, tmp_path: Path) -> None:
    """`shipcast api --processes 2`: two API processes on one port, the
    partners file applied by the first, no queue consumed, and `/metrics`
    adding up both."""
    config = tmp_path / "shipcast.yaml"
    config.write_text(yaml.safe_dump(partners_doc("acme", "http://127.0.0.1:9/hook")))
    process = Subprocess(settings, "api", "--processes", "2", env={"SHIPCAST_CONFIG": str(config)}).start()
    assert process.process is not None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=30,
                                     headers={"authorization": f"Bearer {TOKEN}"}) as http:
            async def ready() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/readyz")).status_code == 200 and len(_children(process.process.pid)) == 2
                return False
            await eventually(ready, timeout=60)
            events = [orjson.loads(example("OFD", partner_id="acme", order_id=f"A{i}").to_json()) for i in range(30)]
            for event in events:  # a connection each: the kernel spreads them over the processes
                async with httpx.AsyncClient(base_url=http.base_url, headers=http.headers) as one:
                    assert (await one.post("/v1/events", json=event)).status_code == 202

            def queued() -> bool:
                found = management.get(f"/api/queues/{vhost}/shipcast.webhook").json()
                return found.get("messages") == len(events) and found.get("consumers") == 0
            await eventually(queued, timeout=30)

            async def counted() -> bool:
                return _figure((await http.get("/metrics")).text,
                               'shipcast_ingest_requests_total{code="202"}') == len(events)
            await eventually(counted, timeout=10)

            # kill -9 one: the other serves on, and the dead one is started again. A process
            # restarted takes connections only once it can publish: no request meets it starting.
            children = _children(process.process.pid)
            os.kill(children[0], signal.SIGKILL)
            answers: Counter[int] = Counter()
            back = None
            for i in range(2000):
                async with httpx.AsyncClient(base_url=http.base_url, headers=http.headers) as one:
                    later = orjson.loads(example("DEL", partner_id="acme", order_id=f"B{i}").to_json())
                    answers[(await one.post("/v1/events", json=later)).status_code] += 1
                if back is None and len(set(_children(process.process.pid)) - {children[0]}) == 2:
                    back = i
                if back is not None and i >= back + 100:  # well past the restarted one's start
                    break
            assert back is not None and set(answers) == {202}, (back, answers)
            children = _children(process.process.pid)
    finally:
        output = process.stop()
    assert process.process.returncode == 0, output
    assert "shipcast api: 2 processes" in output and re.search(r"process [01] exited \(-9\)", output), output
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], output


@pytest.mark.slow
def test_a_process_that_cannot_start_ends_the_run_with_its_error(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "shipcast.yaml"
    config.write_text("partners:\n  - id: Not An Id\n")
    process = Subprocess(settings, "run", "--processes", "2", env={"SHIPCAST_CONFIG": str(config)}).start()
    assert process.process is not None
    process.process.wait(90)
    output = process.stop()
    assert process.process.returncode not in (0, None), output
    assert "before it was ready" in output and "Not An Id" in output, output


@pytest.mark.slow
async def test_the_processes_end_with_a_supervisor_killed_with_9(settings: Settings) -> None:
    process = Subprocess(settings, "run", "--processes", "2").start()
    assert process.process is not None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=5) as http:
            async def ready() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/readyz")).status_code == 200 and len(_children(process.process.pid)) == 2
                return False
            await eventually(ready, timeout=60)
        children = _children(process.process.pid)
        os.kill(process.process.pid, signal.SIGKILL)  # not its process group: the supervisor alone
        process.process.wait(10)

        def gone() -> bool:
            return not [pid for pid in children if Path(f"/proc/{pid}").exists()
                        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
        await eventually(gone, timeout=60)
    finally:
        output = process.stop()
    assert "Traceback" not in output, output


@pytest.mark.fast
def test_metrics_add_up_every_process_and_show_the_worst_circuit(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_counters", "_gauges", "_histograms"):
        monkeypatch.setattr(metrics, name, type(getattr(metrics, name))())
    monkeypatch.setattr(metrics, "_shared", None)
    # Another process's figures, as it wrote them.
    metrics.inc("shipcast_deliveries_total", 3, channel="webhook", event_type="OFD", outcome="delivered")
    metrics.put("shipcast_circuit_state", 2.0, channel="webhook", partner="acme", target="main")
    metrics.add("shipcast_deliveries_in_flight", 4, channel="webhook")
    metrics.observe("shipcast_delivery_latency_seconds", 0.02, channel="webhook", event_type="OFD")
    metrics.share(tmp_path, "1")
    metrics.publish()
    assert json.loads((tmp_path / "1.json").read_text())["counters"]
    # This process's own.
    for name in ("_counters", "_gauges", "_histograms"):
        monkeypatch.setattr(metrics, name, type(getattr(metrics, name))())
    metrics.share(tmp_path, "0")
    metrics.inc("shipcast_deliveries_total", 2, channel="webhook", event_type="OFD", outcome="delivered")
    metrics.put("shipcast_circuit_state", 0.0, channel="webhook", partner="acme", target="main")
    metrics.add("shipcast_deliveries_in_flight", 1, channel="webhook")
    metrics.observe("shipcast_delivery_latency_seconds", 3.0, channel="webhook", event_type="OFD")
    (tmp_path / "2.json").write_text("{not json")  # a file half written by hand: skipped, not a 500

    text = metrics.render()
    assert 'shipcast_deliveries_total{channel="webhook",event_type="OFD",outcome="delivered"} 5' in text
    assert 'shipcast_circuit_state{channel="webhook",partner="acme",target="main"} 2' in text
    assert 'shipcast_deliveries_in_flight{channel="webhook"} 5' in text
    assert 'shipcast_delivery_latency_seconds_count{channel="webhook",event_type="OFD"} 2' in text
    assert 'shipcast_delivery_latency_seconds_bucket{channel="webhook",event_type="OFD",le="0.025"} 1' in text
    assert 'shipcast_delivery_latency_seconds_sum{channel="webhook",event_type="OFD"} 3.02' in text
    # A process that ended: its counts still count (no sum goes back), its gauges no longer.
    metrics.retire(tmp_path, "1", 1)
    text = metrics.render()
    assert 'shipcast_deliveries_total{channel="webhook",event_type="OFD",outcome="delivered"} 5' in text
    assert 'shipcast_deliveries_in_flight{channel="webhook"} 1' in text
    assert 'shipcast_circuit_state{channel="webhook",partner="acme",target="main"} 0' in text
    monkeypatch.setattr(metrics, "_shared", None)
    metrics.inc("shipcast_deliveries_total", 1, channel="webhook", event_type="OFD", outcome="delivered")
    text = metrics.render()  # alone: its own only
    assert 'shipcast_deliveries_total{channel="webhook",event_type="OFD",outcome="delivered"} 3' in text


@pytest.mark.fast
def test_each_process_keeps_its_share_of_an_endpoints_limits() -> None:
    target = Target("main", "https://x.example.com/", concurrency=10, rate_limit=30.0)
    alone = Gates(Settings(api_token="t")).get("acme", target)
    shared = Gates(Settings(api_token="t"), share=3).get("acme", target)
    assert (alone.concurrency, alone.rate) == (10, 30.0)
    assert (shared.concurrency, shared.rate) == (4, 10.0)  # 10 / 3 rounded up: never 0
    unlimited = Gates(Settings(api_token="t"), share=3).get("acme", Target("main", "https://x.example.com/"))
    assert unlimited.rate == 0.0  # no limit stays no limit
