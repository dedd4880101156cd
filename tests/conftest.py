"""Shared fixtures: a RabbitMQ virtual host per test, SQLite and PostgreSQL
stores, a local webhook receiver, and shipcast running in-process."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from shipcast.settings import Settings

from .helpers import Receiver, ShipcastProcess

AMQP_HOST = os.environ.get("TEST_AMQP_HOST", "127.0.0.1:5672")
MANAGEMENT = os.environ.get("TEST_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
TOKEN = "test-token-" + uuid.uuid4().hex
SECRET_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()


@pytest.fixture(scope="session", autouse=True)
async def tasks_end_with_the_session() -> AsyncIterator[None]:
    """Every task a test left running is cancelled when the session ends; one
    that will not stop (it swallows its cancellation, or waits on what never
    comes) fails the session's last teardown, named with where it is stuck,
    instead of hanging the closing event loop and, with it, the test process."""
    yield
    me = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not me and not task.done()]
    for task in left:
        task.cancel()
    stuck = (await asyncio.wait(left, timeout=15))[1] if left else set()
    if stuck:
        where = []
        for task in stuck:
            frames = task.get_stack(limit=8)
            where.append(f"{task!r} at " + " <- ".join(f"{f.f_code.co_filename}:{f.f_lineno}" for f in frames))
            asyncio.tasks._all_tasks.discard(task)  # type: ignore[attr-defined]  # or the closing loop waits for ever
        raise AssertionError("tasks left running that do not stop when cancelled:\n" + "\n".join(where))


#: Fixtures that reach RabbitMQ or PostgreSQL: a test of the fast tier uses none.
SERVICE_FIXTURES = {"vhost", "management", "pg_database", "database_url", "settings", "shipcast"}


def pytest_configure(config: pytest.Config) -> None:
    """In several processes, the slow tests start first (:func:`slow_first`). A
    worker cannot tell the scheduler (xdist sets its ``--dist`` to "no"); the
    order is made for worksteal's, which ``make test`` uses, and under another
    it still starts the slow tests early."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        config.pluginmanager.register(SlowFirst(int(workers)), "shipcast-slow-first")


class SlowFirst:
    def __init__(self, workers: int) -> None:
        self.workers = workers

    @pytest.hookimpl(trylast=True)  # after -k, -m and --deselect: the shares are of what runs
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        items[:] = slow_first(items, self.workers)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/fast/ is in the fast tier; and a test marked
    ``fast`` that asks for a service is refused, so the tier stays one that
    runs with no service at all."""
    fast_dir = Path(__file__).parent / "fast"
    for item in items:
        if fast_dir in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.fast)
        if item.get_closest_marker("fast") is not None:
            wanted = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
            if wanted or item.get_closest_marker("broker") or item.get_closest_marker("store"):
                raise pytest.UsageError(f"{item.nodeid} is marked fast but needs a service "
                                        f"({', '.join(sorted(wanted)) or 'broker/store marker'})")


def slow_first(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """The collection reordered for ``workers`` processes. pytest-xdist's
    worksteal hands each process a contiguous share of the collection (each
    share ``len(rest) // processes left``) and an idle process takes the end
    of the longest queue. The tests marked ``slow`` open the shares, dealt in
    turn, the longest timeout first: a scenario of minutes starts at the
    beginning, beside the others, rather than last and alone. Every process
    reorders the same collection the same way, as xdist requires."""
    slow = sorted((item for item in items if item.get_closest_marker("slow")), key=_timeout, reverse=True)
    rest = [item for item in items if not item.get_closest_marker("slow")]
    sizes: list[int] = []
    left = len(items)
    for k in range(workers):
        sizes.append(left // (workers - k))
        left -= sizes[-1]
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    turn = 0
    for item in slow:  # dealt in turn, to the shares with room
        while len(shares[turn % workers]) >= sizes[turn % workers]:
            turn += 1
        shares[turn % workers].append(item)
        turn += 1
    for share, size in zip(shares, sizes, strict=True):
        room = size - len(share)
        share.extend(rest[:room])
        del rest[:room]
    return [item for share in shares for item in share]


def _timeout(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    return float(marker.args[0]) if marker is not None and marker.args else 0.0


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the reliability scenarios' rows (in the controlling process
    too, when the tests run in several)."""
    if report.when == "call":
        RELIABILITY_ROWS.extend(value for name, value in report.user_properties if name == "reliability")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RELIABILITY_ROWS:
        from .reliability.report import table, write_artifact

        terminalreporter.write_sep("=", "reliability: every confirmed event, under each fault")
        terminalreporter.write_line(table(RELIABILITY_ROWS))
        write_artifact(RELIABILITY_ROWS)


RELIABILITY_ROWS: list[dict[str, Any]] = []


#: Ports below the kernel's ephemeral range (32768 and up), a block per xdist
#: worker: an outgoing connection's local port, which the kernel picks from that
#: range, can never take a port a test chose and has not bound yet.
_PORTS_PER_WORKER = 2000
#: A random start in the block keeps two test sessions on one machine apart too.
_next_port = iter(range(12000 + _PORTS_PER_WORKER * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
                        + random.randrange(_PORTS_PER_WORKER // 2), 32768))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server a test starts."""
    for port in _next_port:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left below the ephemeral range")


@pytest.fixture(scope="session")
def management() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=_mgmt_base(),
                      auth=("guest", "guest"), timeout=30) as client:
        client.get("/api/overview").raise_for_status()
        yield client


def _mgmt_base() -> str:
    rest = MANAGEMENT.split("://", 1)[1].split("@")[-1]
    return f"http://{rest}"


@pytest.fixture
def vhost(management: httpx.Client) -> Iterator[str]:
    """A fresh RabbitMQ virtual host: exchanges, queues and bindings of one test
    cannot meet another's."""
    name = f"shipcast-test-{uuid.uuid4().hex[:10]}"
    management.put(f"/api/vhosts/{name}").raise_for_status()
    management.put(f"/api/permissions/{name}/guest",
                   json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    yield name
    management.delete(f"/api/vhosts/{name}")


async def _pg_admin(statement: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
async def pg_database() -> AsyncIterator[str]:
    """A PostgreSQL database for this test session, dropped at the end."""
    name = f"shipcast_test_{uuid.uuid4().hex[:10]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path, pg_database: str) -> AsyncIterator[str]:
    """Each store test runs twice: on SQLite and on PostgreSQL (emptied first)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'shipcast.db'}"
        return
    url = pg_database
    from shipcast.store import metadata

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await engine.dispose()
    yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'shipcast.db'}"


def make_settings(vhost: str, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        amqp_url=f"amqp://guest:guest@{AMQP_HOST}/{vhost}",
        database_url=database_url,
        management_url=MANAGEMENT,
        api_token=TOKEN,
        secret_key=SECRET_KEY,
        retry_schedule="1,2",
        webhook_allowed_networks="127.0.0.0/8",
        webhook_timeout=2,
        breaker_cooldown=0.5,
        config="/nonexistent/shipcast.yaml",
        port=free_port(),
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(vhost: str, sqlite_url: str) -> Settings:
    return make_settings(vhost, sqlite_url)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as server:
        yield server


@pytest.fixture
async def shipcast(settings: Settings) -> AsyncIterator[ShipcastProcess]:
    """shipcast's API and every channel worker, in this process, on real sockets."""
    async with ShipcastProcess(settings) as running:
        yield running


#: Debian's Chromium, which Playwright drives (it cannot download its own here).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Where browser tests leave their screenshots (``SHIPCAST_TEST_ARTIFACTS`` moves them).
ARTIFACTS = Path(os.environ.get("SHIPCAST_TEST_ARTIFACTS") or Path(__file__).parents[1] / "build" / "test-artifacts")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium for a module's browser tests."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()
