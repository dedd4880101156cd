"""Scenario 3: a 3-node RabbitMQ cluster (deploy/cluster.sh) behind a TCP
load balancer, as a Kubernetes Service or HAProxy puts it. kill -9 of the
node leading the busiest quorum queue, mid-run: nothing confirmed is lost,
and shipcast's connections fail over to the surviving nodes by themselves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from ..conftest import make_settings
from ..helpers import Receiver, TcpProxy, applied, eventually
from .harness import Oms, Row, Target, account, cluster_sh, processes, ready, recovery, summary, webhook_doc

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(400)]

AMQP_PORTS = (5701, 5702, 5703)
N = 10_000


class Balancer(TcpProxy):
    """A TCP load balancer with failover: each new connection goes to the
    first node, in order, that accepts it."""

    def __init__(self, ports: Sequence[int]) -> None:
        super().__init__(("127.0.0.1", ports[0]))
        self.ports = ports

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        for port in self.ports:
            with contextlib.suppress(OSError):
                return await asyncio.open_connection("127.0.0.1", port)
        raise OSError("no node of the cluster accepts connections")


@pytest.fixture
async def cluster() -> AsyncIterator[None]:
    cluster_sh("stop")  # a cluster left by an interrupted run
    print(await asyncio.to_thread(cluster_sh, "start"))
    try:
        yield
    finally:
        await asyncio.to_thread(cluster_sh, "stop")


async def management(node: int, path: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{15700 + node}", auth=("guest", "guest"),
                                 timeout=10) as client:
        response = await client.get(path)
        response.raise_for_status()
        return response.json()


async def queue_info(node: int, name: str) -> dict[str, Any]:
    return dict(await management(node, f"/api/queues/%2F/{name}"))


async def connections_by_node(node: int) -> dict[str, int]:
    """shipcast's connections per node, as the cluster sees them."""
    found: dict[str, int] = {}
    for connection in await management(node, "/api/connections"):
        if (connection.get("client_properties") or {}).get("connection_name") == "shipcast":
            found[connection["node"]] = found.get(connection["node"], 0) + 1
    return found


def node_number(node: str) -> int:
    return int(node.split("@")[0].rsplit("-", 1)[1])


async def test_3_kill_9_of_the_leader_node_of_a_3_node_cluster(cluster: None, pg_url: str,
                                                               record_property: Any) -> None:
    balancer = await Balancer(AMQP_PORTS).start()
    settings = make_settings("", pg_url, amqp_url=f"amqp://guest:guest@127.0.0.1:{balancer.port}/",
                             management_url="http://guest:guest@127.0.0.1:15702")
    base_url = f"http://127.0.0.1:{settings.port}"
    try:
        async with Receiver() as main:
            targets = [Target("acme", "main", main)]
            async with applied(settings, webhook_doc(targets)) as services:
                before = await queue_info(1, "shipcast.webhook")
                assert before["type"] == "quorum" and len(before["members"]) == 3, before
                leader = node_number(before["leader"])
                survivor = next(n for n in (1, 2, 3) if n != leader)
                # The API and the worker connect to the leader's node (so does this test's own
                # connection when that is node 1): killing it cuts every one of them.
                first = AMQP_PORTS[leader - 1]
                balancer.ports = [first, *(port for port in AMQP_PORTS if port != first)]
                connections = 3 if leader == 1 else 2
                async with processes(settings, ("api",), ("worker", "--channel", "webhook")):
                    await ready(base_url)
                    # Held at 60% until the kill: the OMS has more to post after it, whatever the machine's pace.
                    oms = Oms(base_url, settings.api_token or "", ["acme"], N, rate=600, hold=0.6).start()
                    await eventually(lambda: oms.sent >= N * 0.4 and main.delivered, timeout=120)
                    # The management API lists connections a few seconds late.
                    on_leader = await eventually(lambda: _connections_on(survivor, before["leader"], connections),
                                                 timeout=30)
                    oms.resume()
                    await asyncio.to_thread(cluster_sh, "kill", str(leader))
                    killed = time.monotonic()
                    recovered = await recovery(killed, targets, oms)
                    after = await eventually(lambda: _new_leader(survivor, before["leader"]), timeout=60)
                    # Every process connected again, to the nodes left.
                    moved = await eventually(lambda: _connections_off(survivor, before["leader"], on_leader),
                                             timeout=60)
                    await oms.done(timeout=90)
                    accounts = await account(oms, targets, services)
                    delivered_at_kill = sum(1 for r in main.delivered if r.at < killed)
    finally:
        await balancer.close()
    refused = sum(oms.refusals.values())
    Row("3. 3-node cluster, leader killed", oms.sent,
        f"kill -9 of {before['leader'].split('@')[0]}, leader of shipcast.webhook (quorum, 3 members)",
        sum(map(len, accounts.lost.values())), accounts.duplicates, accounts.parked, recovered,
        f"{on_leader} connections failed over to {', '.join(n.split('@')[0] for n in sorted(moved))}; new leader "
        f"{after['leader'].split('@')[0]}; {refused} posts refused during failover, posted again"
        ).record(record_property)
    assert delivered_at_kill < N, "the run was over before the kill"
    assert not accounts.lost, summary(accounts)
    assert set(targets[0].delivered()) == set(oms.confirmed)


async def _new_leader(node: int, old: str) -> dict[str, Any] | None:
    try:
        info = await queue_info(node, "shipcast.webhook")
    except httpx.HTTPError:
        return None
    return info if info.get("leader") not in (None, old) else None


async def _connections_on(node: int, leader: str, count: int) -> int:
    """How many of shipcast's connections are on the leader, once ``count`` are."""
    found = await connections_by_node(node)
    return found.get(leader, 0) if found.get(leader, 0) >= count else 0


async def _connections_off(node: int, dead: str, count: int) -> dict[str, int] | None:
    try:
        found = await connections_by_node(node)
    except httpx.HTTPError:
        return None
    return found if dead not in found and sum(found.values()) >= count else None
