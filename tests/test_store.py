"""The store, written once and run on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shipcast.batching import Batcher
from tests.bound import example
from shipcast.exceptions import StoreError
from shipcast.model.partners import Partner
from shipcast.store import Attempt, Store

pytestmark = pytest.mark.store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await Store(database_url).open()
    yield store
    await store.close()


def attempt(event_id: str, outcome: str, n: int, target: str = "main", **kw: object) -> Attempt:
    return Attempt(event_id=event_id, channel="webhook", target=target, partner_id="acme",
                   address="https://x.example.com/", outcome=outcome, attempt=n, latency_ms=12.5, **kw)  # type: ignore[arg-type]


async def test_events_are_stored_once_and_read_back(store: Store) -> None:
    event = example("OFD")
    await store.save_events([event])
    await store.save_events([event])  # a redelivered archive message
    assert await store.get_event(event.event_id) == event.model_dump(mode="json", by_alias=True)
    assert [e["event_id"] for e in await store.list_events(partner_id="acme")] == [event.event_id]
    assert await store.list_events(partner_id="other") == []
    assert await store.get_event("evt_missing") is None


class Inserts:
    """Counts the statements that insert into the events table."""

    def __init__(self, store: Store) -> None:
        assert store.engine is not None
        self.engine, self.count = store.engine.sync_engine, 0
        sa.event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        self.count += statement.lstrip().upper().startswith("INSERT INTO EVENTS")

    def close(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._seen)


async def test_the_second_store_channels_copy_of_an_event_writes_nothing(store: Store) -> None:
    """The archive's and the tracking channel's copies of one event, at the
    same moment or one after the other, cost one insert; a failed insert
    fails its waiters too and marks nothing stored; a pruned event is stored again."""
    inserts = Inserts(store)
    try:
        batch = [example("OFD", order_id=f"ORD-S{i}") for i in range(5)]
        await asyncio.gather(store.save_events(batch), store.save_events(batch[::-1]))
        await store.save_events(batch[:2])
        assert inserts.count == 1
        assert {e["event_id"] for e in await store.list_events()} == {e.event_id for e in batch}

        broken, statements = example("DEL"), store._statements
        store._statements = {**statements, "insert_events": sa.text("INSERT INTO no_such_table VALUES (1)")}
        results = await asyncio.gather(store.save_events([broken]), store.save_events([broken]),
                                       return_exceptions=True)
        store._statements = statements
        assert [type(result) for result in results] == [StoreError, StoreError], results
        await store.save_events([broken])
        assert await store.get_event(broken.event_id) is not None

        count = inserts.count
        assert await store.prune_events(datetime.now(UTC) + timedelta(days=1), 100) == 6
        await store.save_events([batch[0]])
        assert inserts.count == count + 1 and await store.get_event(batch[0].event_id) is not None
    finally:
        inserts.close()


async def test_a_waiter_cancelled_leaves_the_insert_it_waited_on_to_the_others(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three copies of one event at once: one inserts, two wait on it. One
    waiter is cancelled (its worker stopping): the insert and the other waiter
    finish as if nothing happened. A copy past the minute a process remembers
    is inserted again (the insert leaves the row as it is)."""
    from shipcast.store import events as event_store

    inserts = Inserts(store)
    try:
        event = example("OFD", order_id="ORD-CANCEL")
        tasks = [asyncio.create_task(store.save_events([event])) for _ in range(3)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not tasks[0].done()  # the insert is in the database's thread; the other two wait on it
        tasks[2].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[:2] == [None, None] and isinstance(results[2], asyncio.CancelledError), results
        await store.save_events([event])
        assert inserts.count == 1 and await store.get_event(event.event_id) is not None
        monkeypatch.setattr(event_store, "RECENT_SECONDS", 0.0)
        await store.save_events([event])
        assert inserts.count == 2
    finally:
        inserts.close()


async def test_attempts_and_deliveries(store: Store) -> None:
    await store.record([attempt("e1", "retry", 1, status=500, error="HTTP 500", response="oops")])
    await store.record([attempt("e1", "retry", 2, error="timed out after 15s")])
    await store.record([attempt("e1", "delivered", 3, status=200, response="x" * 5000)])
    [delivery] = await store.list_deliveries(event_id="e1")
    assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("delivered", 3, 200)
    attempts = await store.list_attempts("e1")
    assert [(a["outcome"], a["status"], a["error"]) for a in attempts] == [
        ("retry", 500, "HTTP 500"), ("retry", None, "timed out after 15s"), ("delivered", 200, None)]
    assert len(attempts[2]["response"]) == 1024
    assert attempts[0]["at"].tzinfo is not None and attempts[0]["latency_ms"] == 12.5
    assert await store.delivered_targets("e1", "webhook") == {"main"}
    assert await store.delivered_for("webhook", ["e1", "missing", "e1"]) == [{"main"}, set(), {"main"}]


async def test_a_delivered_delivery_is_never_turned_back_into_a_failure(store: Store) -> None:
    await store.record([attempt("e2", "delivered", 1, status=200)])
    await store.record([attempt("e2", "dead", 1, error="late duplicate")])
    [delivery] = await store.list_deliveries(event_id="e2")
    assert delivery["status"] == "delivered"


async def test_concurrent_records_are_batched_and_all_committed(store: Store) -> None:
    writes: list[int] = []

    async def write(items: object) -> None:
        writes.append(len(items))  # type: ignore[arg-type]
        await store.record(items)  # type: ignore[arg-type]

    batcher: Batcher[Attempt, None] = Batcher(write)
    await asyncio.gather(*(batcher.submit(attempt(f"b{i}", "delivered", 1, status=200)) for i in range(200)))
    await batcher.close()
    assert sum(writes) == 200 and len(writes) < 10
    assert len(await store.list_deliveries(status="delivered", limit=1000)) == 200


async def test_a_failed_batch_raises_to_every_waiter(store: Store) -> None:
    async def broken(items: object) -> None:
        raise StoreError("disk full")

    batcher: Batcher[int, None] = Batcher(broken)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    await batcher.close()
    assert [type(r) for r in results] == [StoreError, StoreError]


async def test_one_bad_item_does_not_fail_its_batch(store: Store) -> None:
    good = [example("OFD", order_id=f"O{i}") for i in range(5)]
    bad = example("DEL").model_copy(update={"partner_id": "p" * 65})  # longer than the column
    batcher: Batcher[object, None] = Batcher(store.save_events)  # type: ignore[arg-type]
    results = await asyncio.gather(*(batcher.submit(e) for e in [*good[:2], bad, *good[2:]]),
                                   return_exceptions=True)
    await batcher.close()
    if store.engine is not None and store.engine.dialect.name == "sqlite":
        assert results == [[None]] * 6  # SQLite does not enforce lengths: all stored
    else:
        assert [type(r).__name__ for r in results] == ["list"] * 2 + ["StoreError"] + ["list"] * 3
    for event in good:
        assert await store.get_event(event.event_id) is not None


async def test_close_writes_what_is_pending(store: Store) -> None:
    batcher: Batcher[Attempt, None] = Batcher(store.record)
    waiting = asyncio.ensure_future(batcher.submit(attempt("pending", "delivered", 1)))
    await asyncio.sleep(0)
    await batcher.close()
    await asyncio.wait_for(waiting, 5)
    assert await store.delivered_targets("pending", "webhook") == {"main"}


async def test_partners_and_disabled_targets(store: Store) -> None:
    acme = Partner("acme", "Acme", {"primary_color": "#000000"}, {"webhook": {"endpoints": []}})
    await store.put_partners([acme])
    await store.put_partners([Partner("acme", "Acme Retail", {}, {})])
    assert [p.name for p in await store.get_partners()] == ["Acme Retail"]
    await store.disable_target("webhook", "acme", "main", "HTTP 410")
    await store.disable_target("webhook", "acme", "main", "HTTP 410")
    assert await store.get_disabled_targets() == {("webhook", "acme", "main")}
    await store.put_partners([acme])  # re-applying re-enables
    assert await store.get_disabled_targets() == set()
    assert await store.delete_partner("acme") and await store.get_partner("acme") is None


async def test_an_unreachable_database_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot open the store"):
        await Store("postgresql+asyncpg://nobody@127.0.0.1:1/none").open()


async def test_a_store_made_by_an_earlier_version_gets_the_new_columns(database_url: str) -> None:
    import sqlalchemy as sa

    store = await Store(database_url).open()
    assert store.engine is not None
    async with store.engine.begin() as conn:  # as the previous version left it
        for index in ("ix_deliveries_order", "ix_deliveries_partner", "ix_attempts_target"):
            await conn.execute(sa.text(f"DROP INDEX {index}"))
        for table, column in (("deliveries", "event_type"), ("deliveries", "order_id"),
                              ("deliveries", "sequence"), ("attempts", "partner_id")):
            await conn.execute(sa.text(f'ALTER TABLE {table} DROP COLUMN "{column}"'))
    await store.close()

    store = await Store(database_url).open()
    try:
        await store.record([attempt("evt_1", "retry", 1, event_type="OFD", order_id="ORD-1", sequence=3)])
        [row] = await store.list_deliveries(order_id="ORD-1", event_type="OFD")
        assert row["status"] == "retrying" and row["sequence"] == 3
        assert [a["partner_id"] for a in await store.list_attempts(partner_id="acme")] == ["acme"]
        assert store.engine is not None
        async with store.engine.connect() as conn:
            indexes = await conn.run_sync(lambda sync: {i["name"] for i in sa.inspect(sync).get_indexes("deliveries")})
        assert {"ix_deliveries_order", "ix_deliveries_partner"} <= indexes
    finally:
        await store.close()


async def test_time_filters_mean_the_same_instant_whatever_the_offset(store: Store) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    await store.record([attempt("evt_1", "delivered", 1)])
    stamp = (await store.list_deliveries())[0]["updated_at"]
    india = timezone(timedelta(hours=5, minutes=30))
    for since, found in ((stamp - timedelta(seconds=1), 1), (stamp + timedelta(seconds=1), 0)):
        for value in (since.astimezone(UTC), since.astimezone(india), since.astimezone(UTC).replace(tzinfo=None)):
            assert len(await store.list_deliveries(since=value)) == found, value
            assert len(await store.list_attempts(since=value)) == found, value


async def test_a_sent_message_counts_only_under_the_claim_it_was_sent_under(store: Store) -> None:
    """The id a provider gave is what stops a redelivered copy from texting
    again; a text from an earlier claim, which failed since, must not."""
    assert await store.claim("e9", "sms", "customer", "acme", "+91******3210", stale_after=120) is None
    assert await store.sent_message("e9", "sms", "customer") is None
    await store.add_provider_message("twilio", "SM1", "e9", "sms", "customer")
    assert await store.sent_message("e9", "sms", "customer") == "SM1"  # cut off after Twilio took it
    # The carrier reported it undelivered: dead. A replay claims it again; SM1 no longer counts.
    await store.record([Attempt(event_id="e9", channel="sms", target="customer", partner_id="acme",
                                address="+91******3210", outcome="dead", attempt=1, latency_ms=1.0,
                                error="Twilio 30003: unreachable")])
    assert await store.sent_message("e9", "sms", "customer") is None
    assert await store.claim("e9", "sms", "customer", "acme", "+91******3210", stale_after=120) is None
    assert await store.sent_message("e9", "sms", "customer") is None
    await store.add_provider_message("twilio", "SM2", "e9", "sms", "customer")
    assert await store.sent_message("e9", "sms", "customer") == "SM2"
