"""Scenarios 1 and 7: shipcast's own processes die or are restarted while
10,000 events flow."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ..conftest import make_settings
from ..helpers import Receiver, Subprocess, applied, eventually
from .harness import Oms, Row, Target, account, processes, ready, recovery, summary, webhook_doc

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]

N = 10_000
WORKER = ("worker", "--channel", "webhook")


def delivered(targets: list[Target]) -> int:
    return sum(len(t.receiver.delivered) for t in targets)


async def test_1_kill_9_of_a_worker_three_times_during_a_run(vhost: str, pg_url: str,
                                                             record_property: Any) -> None:
    settings = make_settings(vhost, pg_url)
    base_url = f"http://127.0.0.1:{settings.port}"
    async with Receiver() as main, Receiver() as backup:
        targets = [Target("acme", "main", main), Target("acme", "backup", backup)]
        async with applied(settings, webhook_doc(targets)) as services, processes(settings, ("api",)):
            await ready(base_url)
            oms = Oms(base_url, settings.api_token or "", ["acme"], N, rate=800).start()
            worker = Subprocess(settings, *WORKER).start()
            recoveries, at_kills = [], []
            try:
                for share in (0.2, 0.45, 0.7):
                    await eventually(lambda: delivered(targets) >= share * 2 * N, timeout=90)
                    worker.kill()
                    at_kills.append(delivered(targets))
                    print(worker.stop())
                    worker = Subprocess(settings, *WORKER).start()  # as a supervisor would
                    restarted = time.monotonic()
                    recoveries.append(await recovery(restarted, targets))
                await oms.done()
                accounts = await account(oms, targets, services)
            finally:
                print(worker.stop())
    assert max(at_kills) < 2 * N, "the run was over before the last kill"
    Row("1. kill -9 of the webhook worker", oms.sent, "3 × kill -9, each followed by a new worker",
        sum(map(len, accounts.lost.values())), accounts.duplicates, accounts.parked, max(recoveries),
        f"2 endpoints, PostgreSQL; {accounts.duplicates / (2 * oms.sent):.2%} of deliveries repeated"
        ).record(record_property)
    assert not accounts.lost, summary(accounts)
    assert accounts.parked == 0, summary(accounts)
    for target in targets:  # a receiver deduplicating on webhook-id sees exactly one of each
        assert set(target.delivered()) == set(oms.confirmed)


async def test_7_graceful_shutdown_and_restart_under_load(vhost: str, pg_url: str, record_property: Any) -> None:
    """SIGTERM to the worker twice and to the API once, each started again at
    once: nothing lost, and nothing sent twice."""
    settings = make_settings(vhost, pg_url)
    base_url = f"http://127.0.0.1:{settings.port}"
    async with Receiver(delay=0.05) as main:
        main_target = Target("acme", "main", main)
        targets = [main_target]
        async with applied(settings, webhook_doc(targets)) as services:
            api = Subprocess(settings, "api").start()
            worker = Subprocess(settings, *WORKER).start()
            recoveries = []
            try:
                await ready(base_url)
                # Held at 60% until the API's restart, which then has events still to accept.
                oms = Oms(base_url, settings.api_token or "", ["acme"], N, rate=800, hold=0.6).start()
                for share, role in ((0.2, "worker"), (0.4, "api"), (0.6, "worker")):
                    await eventually(lambda: delivered(targets) >= share * N, timeout=90)
                    if role == "api":
                        oms.resume()
                        print(await _stop(api))
                        api = Subprocess(settings, "api").start()
                        await ready(base_url)
                    else:
                        print(await _stop(worker))
                        worker = Subprocess(settings, *WORKER).start()
                    restarted = time.monotonic()
                    # After the API's restart, the first delivery of an event it accepted.
                    recoveries.append(await recovery(restarted, targets, oms if role == "api" else None))
                await oms.done()
                accounts = await account(oms, targets, services)
            finally:
                print(await _stop(worker))
                print(await _stop(api))
    refused = sum(oms.refusals.values())
    Row("7. graceful shutdown and restart", oms.sent, "SIGTERM: worker, API, worker; each started again",
        sum(map(len, accounts.lost.values())), accounts.duplicates, accounts.parked, max(recoveries),
        f"{refused} posts refused while the API restarted, and posted again").record(record_property)
    assert not accounts.lost, summary(accounts)
    assert accounts.duplicates == 0, summary(accounts)
    assert set(main_target.delivered()) == set(oms.confirmed)


async def _stop(process: Subprocess) -> str:
    return await asyncio.to_thread(process.stop)
