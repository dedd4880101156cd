"""Retention and the right to be forgotten, written once and run on SQLite
and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from shipcast.app.retention import prune
from shipcast.model.envelope import Event
from shipcast.security.links import identifiers
from shipcast.settings import Settings
from shipcast.store import Attempt, OutboxMessage, Store
from shipcast.store.tables import attempts, events
from tests.bound import example

from .helpers import run_cli

pytestmark = pytest.mark.store

SETTINGS = Settings(secret_key="ZmFrZS1rZXktZm9yLXRlc3RzLW9ubHktMzItYnl0ZXM=")
NOW = datetime.now(UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store(database_url, identifiers(SETTINGS)).open()
    yield opened
    await opened.close()


def customer_event(event_type: str, order_id: str, *, phone: str = "+919876543210", partner_id: str = "acme",
                   email: str = "priya@example.com", sequence: int = 1, **changes: Any) -> Event:
    event = example(event_type, order_id=order_id, partner_id=partner_id, sequence=sequence)
    customer = event.order.customer.model_copy(update={"phone": phone, "email": email})
    return event.model_copy(update={"order": event.order.model_copy(update={"customer": customer}), **changes})


def attempt(event: Event, at: datetime, *, channel: str = "webhook", response: str | None = "ok") -> Attempt:
    return Attempt(event_id=event.event_id, channel=channel, target="main", partner_id=event.partner_id,
                   address="https://hooks.example.com/x" if channel == "webhook" else "+91******3210",
                   outcome="delivered", attempt=1, latency_ms=10.0, status=200, response=response, at=at,
                   event_type=event.event_type, order_id=event.order.order_id, sequence=event.sequence)


async def body(store: Store, event_id: str) -> dict[str, Any]:
    found = await store.get_event(event_id)
    assert found is not None
    return found


async def test_what_is_past_its_retention_goes_in_batches_and_a_dry_run_changes_nothing(store: Store) -> None:
    old, fresh = customer_event("OFD", "ORD-OLD"), customer_event("OFD", "ORD-NEW")
    await store.save_events([old, fresh])
    assert store.engine is not None
    async with store.engine.begin() as connection:  # archived 100 days ago
        await connection.execute(events.update().where(events.c.event_id == old.event_id)
                                 .values(stored_at=NOW - timedelta(days=100)))
    await store.record([attempt(fresh, NOW - timedelta(days=40)), attempt(fresh, NOW - timedelta(days=10)),
                        attempt(fresh, NOW - timedelta(days=1)), attempt(old, NOW - timedelta(days=99))])

    expected = {"otps": 0, "attempts": 2, "portal_signins": 0, "outbox": 0, "responses": 1, "events": 1}
    assert await prune(store, SETTINGS, dry_run=True, now=NOW) == expected
    assert await store.get_event(old.event_id) is not None and len(await store.list_attempts()) == 4

    assert await prune(store, SETTINGS, now=NOW) == expected
    assert await store.get_event(old.event_id) is None and await store.list_deliveries(event_id=old.event_id) == []
    left = await store.list_attempts(fresh.event_id)
    assert len(left) == 2 and sorted(row["response"] is None for row in left) == [False, True]
    assert await prune(store, SETTINGS, now=NOW) == {"otps": 0, "attempts": 0, "portal_signins": 0, "outbox": 0,
                                                       "responses": 0, "events": 0}
    forever = SETTINGS.model_copy(update={"retain_attempts_days": 0, "retain_events_days": 0,
                                          "retain_responses_days": 0})
    # Kept for ever but the OTP, expired by then.
    assert await prune(store, forever, now=NOW + timedelta(days=3650)) == {"otps": 1}


async def test_an_otp_leaves_the_archive_once_delivered_or_expired(store: Store) -> None:
    delivered = customer_event("OFD", "ORD-1")
    expired = customer_event("OFD", "ORD-2")
    expired = expired.model_copy(update={"otp": expired.otp.model_copy(  # type: ignore[union-attr]
        update={"expires_at": NOW - timedelta(minutes=1)})})
    pending = customer_event("OFD", "ORD-3")
    await store.save_events([delivered, customer_event("DEL", "ORD-1", sequence=2), expired, pending])
    assert await prune(store, SETTINGS, dry_run=True, now=NOW) == {"otps": 2, "attempts": 0, "portal_signins": 0,
                                                                   "outbox": 0, "responses": 0, "events": 0}
    assert (await prune(store, SETTINGS, now=NOW))["otps"] == 2
    assert (await body(store, delivered.event_id))["otp"] is None
    assert (await body(store, expired.event_id))["otp"] is None
    assert (await body(store, pending.event_id))["otp"]["code"] == "4821"  # still out for delivery
    # However many valid OTPs come first, an expired one further on is found.
    await store.save_events([customer_event("OFD", f"ORD-V{i}") for i in range(12)])
    late = customer_event("OFD", "ORD-LATE")
    late = late.model_copy(update={"otp": late.otp.model_copy(  # type: ignore[union-attr]
        update={"expires_at": NOW - timedelta(minutes=1)})})
    await store.save_events([late])
    assert await store.drop_spent_otps(NOW, 2) == 1
    assert (await body(store, late.event_id))["otp"] is None
    assert (await body(store, delivered.event_id))["order"]["order_id"] == "ORD-1"


async def test_a_customer_is_forgotten_everywhere_and_reported(store: Store) -> None:
    mine = [customer_event("OFD", "ORD-1", phone="+91 98765 43210"), customer_event("DEL", "ORD-1", sequence=2)]
    elsewhere = customer_event("OFD", "ORD-9", partner_id="globex")
    someone_else = customer_event("OFD", "ORD-2", phone="+919000000001", email="ravi@example.com")
    await store.save_events([*mine, elsewhere, someone_else])
    await store.record([attempt(mine[0], NOW, channel="sms", response='{"to": "+919876543210"}'),
                        attempt(mine[0], NOW), attempt(someone_else, NOW, channel="sms")])
    await store.add_opt_out("sms", "acme", "+919876543210", "STOP")
    for event in (mine[0], someone_else):  # what the development outbox kept for each
        await store.add_outbox(OutboxMessage(channel="sms", partner_id="acme", event_id=event.event_id,
                                             recipient=event.order.customer.phone or "", text="Hi"))

    forgotten = await store.forget_customer(phone="+919876543210", partner_id="acme")
    assert forgotten.to_dict() == {"events": 2, "deliveries": 1, "attempts": 2, "outbox": 1,
                                   "opt_outs": "kept: stored as keyed hashes, so the customer stays opted out "
                                               "(their masked address dropped)"}
    assert [row["event_id"] for row in await store.list_outbox()] == [someone_else.event_id]
    for event in mine:
        redacted = await body(store, event.event_id)
        assert redacted["order"]["customer"] == {"name": "[redacted]", "phone": None, "email": None,
                                                 "language": "en"}
        assert redacted["order"]["address"] is None and redacted["otp"] is None
        text = json.dumps(redacted)
        assert "9876543210" not in text and "98765 43210" not in text and "priya" not in text.lower()
    delivered = await body(store, mine[1].event_id)
    assert delivered["delivery_confirmation"]["received_by"] is None
    assert delivered["order"]["order_id"] == "ORD-1"  # the order's history stays
    deliveries = {row["channel"]: row for row in await store.list_deliveries(event_id=mine[0].event_id)}
    assert deliveries["sms"]["address"] == "[redacted]" and deliveries["webhook"]["address"].startswith("https://")
    assert all(row["response"] is None for row in await store.list_attempts(mine[0].event_id))
    # Another partner's order and another customer are untouched; the opt-out still holds.
    assert (await body(store, elsewhere.event_id))["order"]["customer"]["phone"] == "+919876543210"
    assert (await body(store, someone_else.event_id))["order"]["customer"]["name"] == "Priya Sharma"
    assert await store.opted_out("sms", "acme", "+919876543210") == "STOP"

    spaced = customer_event("OFD", "ORD-7", phone="+33 6 12 34 50 29", email="jean@example.fr")
    await store.save_events([spaced])  # the number's last four digits split by a space
    assert (await store.forget_customer(phone="+33612345029")).event_ids == [spaced.event_id]

    by_email = await store.forget_customer(email="PRIYA@example.com")
    assert by_email.events == 1 and by_email.event_ids == [elsewhere.event_id]
    assert (await body(store, elsewhere.event_id))["order"]["customer"]["email"] is None
    assert (await store.forget_customer(phone="+910000000000")).events == 0
    with pytest.raises(ValueError, match="phone number or an email"):
        await store.forget_customer()


async def test_the_commands_prune_and_forget(database_url: str, tmp_path: Any) -> None:
    settings = SETTINGS.model_copy(update={"database_url": database_url, "config": str(tmp_path / "none.yaml")})
    opened = await Store(database_url, identifiers(SETTINGS)).open()
    try:
        await opened.save_events([customer_event("OFD", "ORD-1"), customer_event("DEL", "ORD-1", sequence=2)])
    finally:
        await opened.close()
    dry = run_cli(settings, "prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {"dry_run": True, "otps": 1, "attempts": 0, "portal_signins": 0,
                                         "outbox": 0, "responses": 0, "events": 0}
    done = run_cli(settings, "prune")
    assert done.returncode == 0 and "removed 1 otps" in done.stdout
    forgot = run_cli(settings, "customers", "forget", "--phone", "+91 98765-43210")
    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout)["events"] == 2
    both = run_cli(settings, "customers", "forget", "--phone", "+1", "--email", "a@b.c")
    assert both.returncode == 2 and "give one of --phone or --email" in both.stderr
    reopened = await Store(database_url, identifiers(SETTINGS)).open()
    try:
        assert reopened.engine is not None
        async with reopened.engine.connect() as connection:
            bodies = [row.body for row in await connection.execute(sa.select(events.c.body))]
            assert bodies and not any("9876543210" in text for text in bodies)
            assert (await connection.execute(sa.select(sa.func.count()).select_from(attempts))).scalar() == 0
    finally:
        await reopened.close()


@pytest.mark.broker
async def test_the_operator_forgets_a_customer_through_the_api(shipcast: Any) -> None:
    from .helpers import partners_doc

    await shipcast.apply(partners_doc("acme", "https://hooks.example.com/x"))
    event = customer_event("OFD", "ORD-5")
    assert (await shipcast.http.post("/v1/events", content=event.to_json(),
                                     headers={"content-type": "application/json"})).status_code == 202

    async def archived() -> bool:
        return await shipcast.services.store.get_event(event.event_id) is not None
    from .helpers import eventually
    await eventually(archived)
    refused = await shipcast.http.post("/v1/customers/forget", json={"phone": "+919876543210", "email": "a@b.c"})
    assert refused.status_code == 422 and "give one of phone or email" in refused.text
    unknown = await shipcast.http.post("/v1/customers/forget", json={"name": "Priya"})
    assert unknown.status_code == 422 and "name" in unknown.text
    done = await shipcast.http.post("/v1/customers/forget", json={"phone": "+919876543210"})
    assert done.status_code == 200 and done.json()["events"] == 1
    assert (await shipcast.services.store.get_event(event.event_id))["order"]["customer"]["phone"] is None
    token = (await shipcast.http.post("/v1/partners/acme/tokens", json={"name": "t"})).json()["token"]
    partner = await shipcast.http.post("/v1/customers/forget", json={"phone": "+919876543210"},
                                       headers={"authorization": f"Bearer {token}"})
    assert partner.status_code == 403  # the operator's alone


async def test_sign_ins_that_can_no_longer_sign_anyone_in_are_pruned(store: Store) -> None:
    """Invitations expired, and portal sessions unseen or revoked, for longer
    than the attempt log is kept go; a live session and an invitation still
    usable stay."""
    from shipcast.store.tables import portal_invitations, portal_sessions

    old = NOW - timedelta(days=SETTINGS.retain_attempts_days + 1)
    await store.add_invitation("a" * 64, email="gone@x.example", partner_id=None, role="operator",
                               invited_by="tests", expires_at=old)
    await store.add_invitation("b" * 64, email="fresh@x.example", partner_id=None, role="operator",
                               invited_by="tests", expires_at=NOW + timedelta(days=1))
    for digest, email in (("c" * 64, "idle@x.example"), ("d" * 64, "live@x.example")):
        await store.add_session(digest, digest[:16], email=email, partner_id=None, role="operator", csrf="t")
    await store._run([(portal_sessions.update().where(portal_sessions.c.email == "idle@x.example")
                       .values(last_seen=old), None)])
    assert (await prune(store, SETTINGS, dry_run=True, now=NOW))["portal_signins"] == 2
    assert (await prune(store, SETTINGS, now=NOW))["portal_signins"] == 2
    invitations = await store._rows(sa.select(portal_invitations.c.email))
    sessions = await store._rows(sa.select(portal_sessions.c.email))
    assert [r.email for r in invitations] == ["fresh@x.example"] and [r.email for r in sessions] == ["live@x.example"]
