"""What the customer message log and the opt-outs read and change in the
store, written once and run on SQLite and on PostgreSQL: opt-outs paged by
key, found by the start of their hash, lifted; deliveries narrowed to
channels and masks (in any case), and found by order even when a claim wrote
the row without it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shipcast.messaging.rules import mask
from shipcast.security.links import identifiers
from shipcast.settings import Settings
from shipcast.store import Attempt, Store
from shipcast.store.customers import opt_out_key
from shipcast.store.deliveries import delivery_key
from tests.bound import example

pytestmark = pytest.mark.store

SETTINGS = Settings(secret_key="ZmFrZS1rZXktZm9yLXRlc3RzLW9ubHktMzItYnl0ZXM=")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store(database_url, identifiers(SETTINGS)).open()
    yield opened
    await opened.close()


async def test_opt_outs_page_by_key_and_are_found_and_lifted_by_their_hash(store: Store) -> None:
    numbers = [f"+9198765{i:05d}" for i in range(30)]
    for number in numbers:
        await store.add_opt_out("sms", "acme", number, "STOP")
    await store.add_opt_out("sms", "globex", numbers[0], "STOP")
    await store.add_opt_out("email", "acme", identifiers(SETTINGS).key("asha@example.com"),
                            "unsubscribed (one-click)", hashed=True, masked="ash*********.com")
    first = await store.list_opt_outs("acme", channels=["sms"], limit=25)
    rest = await store.list_opt_outs("acme", channels=["sms"], after=opt_out_key(first[-1]), limit=25)
    assert len(first) == 25 and len(rest) == 5
    assert {row["address_mask"] for row in first + rest} == {mask(number) for number in numbers}
    assert not {row["address_hash"] for row in first} & {row["address_hash"] for row in rest}
    assert all(row["partner_id"] == "acme" for row in first + rest)
    [email] = await store.list_opt_outs("acme", channels=["email"])
    assert email["address_mask"] == "ash*********.com"

    one = store.identifiers.matches(numbers[7])
    [found] = await store.list_opt_outs("acme", hashes=one)
    assert found["address_mask"] == mask(numbers[7]) == "+91******0007"
    assert (await store.find_opt_out("acme", "sms", found["address_hash"][:16]))["address_hash"] \
        == found["address_hash"]
    assert await store.find_opt_out("globex", "sms", found["address_hash"][:16]) is None
    assert await store.find_opt_out("acme", "sms", "%") is None  # a pattern is no wildcard
    assert await store.delete_opt_out("acme", "sms", found["address_hash"]) is True
    assert await store.delete_opt_out("acme", "sms", found["address_hash"]) is False
    assert await store.opted_out("sms", "acme", numbers[7]) is None
    assert await store.opted_out("sms", "globex", numbers[0]) == "STOP"


async def test_deliveries_narrow_to_channels_and_masks_and_are_found_by_order(store: Store) -> None:
    event = example("OFD", order_id="ORD-9", partner_id="acme")
    await store.save_events([event])
    # A customer channel claims first: its row has no order until its attempt is logged.
    assert await store.claim(event.event_id, "email", "customer", "acme", mask("Priya@Example.com"), 120) is None
    by_order = await store.page_deliveries("acme", order_id="ORD-9")
    assert [row["channel"] for row in by_order] == ["email"] and by_order[0]["order_id"] is None
    await store.record([Attempt(event_id=event.event_id, channel="email", target="customer", partner_id="acme",
                                address=mask("Priya@Example.com"), outcome="delivered", attempt=1, latency_ms=1.0,
                                event_type="OFD", order_id="ORD-9", sequence=event.sequence)])
    [row] = await store.page_deliveries("acme", order_id="ORD-9")
    assert row["order_id"] == "ORD-9" and row["event_type"] == "OFD" and row["status"] == "delivered"
    assert await store.page_deliveries("acme", order_id="ORD-8") == []
    assert await store.page_deliveries("globex", order_id="ORD-9") == []

    await store.record([Attempt(event_id=event.event_id, channel="sms", target="customer", partner_id="acme",
                                address=mask("+919876543210"), outcome="delivered", attempt=1, latency_ms=1.0,
                                event_type="OFD", order_id="ORD-9", sequence=event.sequence)])
    assert [r["channel"] for r in await store.page_deliveries("acme", masks=[mask("priya@example.com")])] \
        == ["email"]
    assert [r["channel"] for r in await store.page_deliveries("acme", channels=["sms"])] == ["sms"]
    both = await store.page_deliveries("acme", channels=["sms", "email"], limit=1)
    after = await store.page_deliveries("acme", channels=["sms", "email"], after=delivery_key(both[0]))
    assert {both[0]["channel"], *(r["channel"] for r in after)} == {"sms", "email"} and len(after) == 1
    assert await store.page_deliveries("acme", channels=[]) == []
