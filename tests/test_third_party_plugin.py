"""A channel from another package, installed for real: a wheel built from
``tests/fixtures/shipcast-echo`` registers the ``echo`` channel through the
``shipcast`` entry-point group, and a ``shipcast worker`` subprocess delivers
with it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from shipcast.app.publisher import Publisher
from tests.bound import example
from shipcast.settings import Settings

from .helpers import Receiver, Subprocess, eventually, run_cli

pytestmark = [pytest.mark.broker, pytest.mark.slow]

FIXTURE = Path(__file__).parent / "fixtures" / "shipcast-echo"


@pytest.fixture(scope="module")
def echo_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``shipcast-echo`` installed into its own directory; put it on PYTHONPATH."""
    tmp_path = tmp_path_factory.mktemp("echo")
    source = tmp_path / "shipcast-echo"
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    shutil.copytree(FIXTURE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    assert (site / "shipcast_echo.py").is_file()
    return site


def consumers(management: httpx.Client, vhost: str, queue: str) -> int:
    response = management.get(f"/api/queues/{vhost}/{queue}")
    return int(response.json().get("consumers", 0)) if response.status_code == 200 else 0


@pytest.fixture
def worker(settings: Settings, echo_site: Path) -> Iterator[Subprocess]:
    """``shipcast worker --channel echo``, always stopped; its output is shown
    when the test fails."""
    process = Subprocess(settings, "worker", "--channel", "echo", env={"PYTHONPATH": str(echo_site)}).start()
    try:
        yield process
    finally:
        output = process.stop()
        assert process.process is not None
        print(f"--- shipcast worker --channel echo (exit {process.process.returncode}):\n{output}")


async def test_an_installed_channel_delivers_from_a_worker_subprocess(
        settings: Settings, vhost: str, management: httpx.Client, echo_site: Path, worker: Subprocess,
        receiver: Receiver, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(echo_site)}
    partners = tmp_path / "partners.yaml"
    partners.write_text(yaml.safe_dump({"partners": [{
        "id": "acme", "name": "Acme",
        "channels": {"echo": {"url": receiver.url, "events": ["OFD", "DEL"]}},
    }]}))

    def consuming() -> bool:
        # The worker is up once it consumes its queue (it declares the queue itself).
        assert worker.process is not None
        if worker.process.poll() is not None:
            raise AssertionError(f"the worker exited with status {worker.process.returncode}")
        return consumers(management, vhost, "shipcast.echo") >= 1

    await eventually(consuming, timeout=30)
    applied = await asyncio.to_thread(run_cli, settings, "partners", "apply", "-f", str(partners), env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "applied acme (Acme): echo" in applied.stdout
    assert "shipcast.echo <- acme.DEL, acme.OFD" in applied.stdout

    wanted = example("OFD", partner_id="acme")
    unwanted = example("RET", partner_id="acme")  # not in the partner's echo events: never bound
    async with Publisher(settings=settings) as publisher:
        assert await publisher.publish(wanted, unwanted) == [wanted.event_id, unwanted.event_id]

    await eventually(lambda: receiver.requests, timeout=30)
    await asyncio.sleep(1)  # nothing else may arrive
    assert [request.json["event_id"] for request in receiver.requests] == [wanted.event_id]
    [request] = receiver.requests
    assert request.headers["x-echo-event-id"] == wanted.event_id
    assert request.json["event_type"] == "OFD" and request.json["partner_id"] == "acme"


def test_an_unknown_channel_is_refused_naming_the_installed_ones(settings: Settings, echo_site: Path) -> None:
    result = run_cli(settings, "worker", "--channel", "nope", env={"PYTHONPATH": str(echo_site)}, timeout=60)
    assert result.returncode != 0
    assert "unknown channels ['nope']" in result.stderr
    assert "installed: amqp, archive, echo, email, sms, tracking, webhook, whatsapp" in result.stderr


def test_shipcast_plugins_restricts_which_installed_channels_load(settings: Settings, echo_site: Path) -> None:
    env = {"PYTHONPATH": str(echo_site), "SHIPCAST_PLUGINS": "webhook"}
    result = run_cli(settings, "worker", "--channel", "echo", env=env, timeout=60)
    assert result.returncode != 0
    assert "unknown channels ['echo']; installed: webhook" in result.stderr


async def test_an_installed_plugin_adds_a_portal_page_behind_the_portals_guards(
        settings: Settings, echo_site: Path, receiver: Receiver, tmp_path: Path) -> None:
    """The portal example of docs/plugins.md, installed as its own entry point:
    its page is in every partner's navigation, served in the portal's layout,
    and guarded like the core's (another partner's: 404; a stranger: sign in)."""
    env = {"PYTHONPATH": str(echo_site)}
    partners = tmp_path / "partners.yaml"
    partners.write_text(yaml.safe_dump({"partners": [
        {"id": pid, "name": pid.title(), "channels": {"echo": {"url": receiver.url}}} for pid in ("acme", "globex")]}))
    applied = await asyncio.to_thread(run_cli, settings, "partners", "apply", "-f", str(partners), env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr

    def link(partner_id: str) -> str:
        made = run_cli(settings, "portal", "invite", "--partner", partner_id, "--email", f"dev@{partner_id}.example",
                       env=env)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip().splitlines()[-1].split("token=", 1)[1]

    api = Subprocess(settings, "api", env=env).start()
    base = f"http://127.0.0.1:{settings.port}"

    def listening() -> bool:
        try:
            return httpx.get(f"{base}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        await eventually(listening, timeout=30)
        async with httpx.AsyncClient(base_url=base) as acme, httpx.AsyncClient(base_url=base) as globex:
            for client, partner_id in ((acme, "acme"), (globex, "globex")):
                signed = await client.post("/portal/signin", data={"token": link(partner_id)})
                assert signed.status_code == 303, signed.text
            overview = await acme.get("/portal/p/acme/")
            assert overview.status_code == 200 and '<a href="/portal/p/acme/echo">Echo</a>' in overview.text
            page = await acme.get("/portal/p/acme/echo")
            assert page.status_code == 200 and "<h1>Echo</h1><p>hello</p>" in page.text
            assert "content-security-policy" in page.headers and 'aria-current="page">Echo' in page.text
            assert (await globex.get("/portal/p/acme/echo")).status_code == 404
            async with httpx.AsyncClient(base_url=base) as stranger:
                assert (await stranger.get("/portal/p/acme/echo")).headers["location"] == "/portal/signin"
    finally:
        print(api.stop())
