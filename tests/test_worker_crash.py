"""Nothing lost when a worker dies: kill -9 a real worker process in the
middle of a run, twice, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections import Counter

import pytest

from shipcast.app.publisher import Publisher
from tests.bound import example
from tests.bound import load_partners
from shipcast.app.reconcile import apply_partners
from shipcast.app.services import Services

from .conftest import make_settings
from .helpers import Receiver, Subprocess, eventually, partners_doc

pytestmark = [pytest.mark.broker, pytest.mark.store, pytest.mark.slow]

N = 1500


async def test_kill_9_mid_run_loses_nothing_and_logs_each_delivery_once(
        vhost: str, database_url: str) -> None:
    settings = make_settings(vhost, database_url)
    async with Receiver(delay=0.2) as receiver:
        services = Services.from_settings(settings)
        await services.start(wait_for_broker=True)
        try:
            await apply_partners(services, load_partners(partners_doc("acme", receiver.url), "test"))
            events = [example("OFD", partner_id="acme", order_id=f"ORD-{i}", sequence=i) for i in range(N)]
            async with Publisher(settings=settings) as publisher:
                for start in range(0, N, 500):
                    await publisher.publish(*events[start:start + 500])

            outputs = []
            for threshold in (N // 5, N // 2):
                worker = Subprocess(settings, "worker", "--channel", "webhook", "--channel", "archive").start()
                try:
                    await eventually(lambda: len(set(receiver.ids)) >= threshold, timeout=60)
                finally:
                    worker.kill()
                    outputs.append(worker.stop())
                    print(outputs[-1])  # shown by pytest when the test fails
            assert len(set(receiver.ids)) < N, "the worker finished before it could be killed:\n" + "\n".join(outputs)

            worker = Subprocess(settings, "worker", "--channel", "webhook", "--channel", "archive").start()
            try:
                await eventually(lambda: len(set(receiver.ids)) == N, timeout=90)
                expected = {e.event_id for e in events}
                assert set(receiver.ids) == expected
                rows = await eventually(
                    lambda: _all_delivered(services, N), timeout=30)
                assert {row["event_id"] for row in rows} == expected
                # The attempt log (not only the keyed deliveries table) has one success per event.
                delivered_attempts = await _delivered_attempts(services)
                assert set(delivered_attempts) == expected
                twice = {event_id: count for event_id, count in delivered_attempts.items() if count != 1}
                assert not twice, f"logged as delivered more than once: {twice}\n" + "\n".join(outputs)
                archived = await eventually(lambda: _archived(services, N), timeout=30)
                assert len(archived) == N
            finally:
                outputs.append(worker.stop())
                print(outputs[-1])
            duplicates = len(receiver.ids) - N
            print(f"\nreceived {len(receiver.ids)} requests for {N} events: "
                  f"{duplicates} duplicates ({duplicates / N:.1%}) after two kill -9")
        finally:
            await services.close()


async def _delivered_attempts(services: Services) -> Counter[str]:
    import sqlalchemy as sa

    from shipcast.store.tables import attempts

    assert services.store.engine is not None
    query = sa.select(attempts.c.event_id).where(attempts.c.channel == "webhook", attempts.c.outcome == "delivered")
    async with services.store.engine.connect() as conn:
        return Counter(row.event_id for row in await conn.execute(query))


async def _all_delivered(services: Services, n: int) -> list[dict[str, object]] | None:
    rows = await services.store.list_deliveries(channel="webhook", status="delivered", limit=n + 10)
    return rows if len(rows) == n else None


async def _archived(services: Services, n: int) -> list[dict[str, object]] | None:
    rows = await services.store.list_events(partner_id="acme", limit=n + 10)
    return rows if len(rows) == n else None
