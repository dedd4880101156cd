"""Fixtures of the fault-injection suite.

A scenario that stops, restarts or alarms RabbitMQ or PostgreSQL does it to
a server of its own (:func:`own_broker`, :func:`own_postgresql`), never to
the machine's: the rest of the suite goes on beside it, waiting for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from shipcast.settings import Settings

from ..conftest import make_settings

from .harness import cluster_sh, run


@pytest.fixture
async def pg_url(pg_database: str) -> AsyncIterator[str]:
    """The session's PostgreSQL database, emptied: the store the scenarios run on
    unless they are about SQLite."""
    from shipcast.store import metadata

    engine = create_async_engine(pg_database)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await engine.dispose()
    yield pg_database


@contextlib.asynccontextmanager
async def _slot(kind: str, numbers: Sequence[int], wait: float = 600) -> AsyncIterator[int]:
    """One of ``numbers`` no other test process holds, held until the block ends:
    the servers of two scenarios running side by side never share a port."""
    deadline = time.monotonic() + wait
    while True:
        for number in numbers:
            with contextlib.ExitStack() as held:
                lock = held.enter_context(open(Path(tempfile.gettempdir()) / f"shipcast-tests.{kind}-{number}", "a"))
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                yield number
                return
        assert time.monotonic() < deadline, f"every {kind} of {list(numbers)} was taken for {wait:.0f}s"
        await asyncio.sleep(0.5)


@dataclass(frozen=True)
class OwnBroker:
    """A RabbitMQ node of a test's own (``deploy/cluster.sh alone``), not joined to the machine's."""

    number: int

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{5700 + self.number}/"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{15700 + self.number}"

    def settings(self, database_url: str, **overrides: Any) -> Settings:
        """The test's settings, on this node."""
        return make_settings("", database_url, amqp_url=self.amqp_url, management_url=self.management_url,
                             **overrides)

    async def ctl(self, *command: str) -> str:
        """``rabbitmqctl`` on this node."""
        return await asyncio.to_thread(cluster_sh, "ctl", str(self.number), *command)

    async def diagnostics(self, *command: str) -> str:
        """``rabbitmq-diagnostics`` on this node."""
        return await asyncio.to_thread(cluster_sh, "diag", str(self.number), *command)


@pytest.fixture
async def own_broker() -> AsyncIterator[OwnBroker]:
    """A RabbitMQ node to stop, restart and alarm: nodes 4 to 9 of
    ``deploy/cluster.sh`` (1 to 3 are its cluster's)."""
    async with _slot("rabbitmq-node", range(4, 10)) as number:
        node = str(number)
        await asyncio.to_thread(cluster_sh, "remove", node)  # one left by an interrupted run
        try:
            await asyncio.to_thread(cluster_sh, "alone", node)
            yield OwnBroker(number)
        finally:
            await asyncio.to_thread(cluster_sh, "remove", node)


@dataclass(frozen=True)
class OwnPostgresql:
    """A PostgreSQL cluster of a test's own (Debian's ``pg_createcluster``), trusting local connections."""

    version: str
    name: str
    port: int

    @property
    def url(self) -> str:
        """Its ``postgres`` database, as SQLAlchemy's asyncpg URL."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @contextlib.asynccontextmanager
    async def stopped(self) -> AsyncIterator[None]:
        """Stopped (``-m fast``: sessions ended, a shutdown checkpoint) for the block, started again after it."""
        await run("pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, "stop", "-m", "fast")
        try:
            yield
        finally:
            await run("pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, "start")


@pytest.fixture
async def own_postgresql() -> AsyncIterator[OwnPostgresql]:
    """A PostgreSQL server to stop and start, of the machine's version, on ports 5441 to 5446."""
    version = max((path.name for path in Path("/etc/postgresql").iterdir()), key=lambda name: float(name))
    async with _slot("postgresql", range(1, 7)) as number:
        server = OwnPostgresql(version, f"shipcast_own_{number}", 5440 + number)

        async def drop() -> None:
            if Path(f"/etc/postgresql/{version}/{server.name}").exists():
                await run("pg_dropcluster", "--stop", version, server.name)

        await drop()  # one left by an interrupted run
        try:
            # Started by the test alone: one an interrupted run left behind does not come back with the service.
            await run("pg_createcluster", version, server.name, "--port", str(server.port), "--start",
                      "--start-conf=manual", "--", "--auth=trust")
            yield server
        finally:
            await drop()
