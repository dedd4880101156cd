"""What a merchant's customers got, end to end: events through RabbitMQ to
the SMS and WhatsApp channels (the real twilio SDK, a local server speaking
Twilio's API, and Twilio's signed status callbacks on a message's SID) and
the email channel (a real SMTP server); the customer message log read
through the partner API and the portal, searched by order, phone and email
(a customer whose masked address is the same is never shown for another);
opt-outs listed, looked up and lifted; a forgotten customer found no more."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from shipcast.messaging.rules import UNREACHABLE, held_because
from shipcast.plugins.sms.providers import twilio_reason
from shipcast.settings import Settings

from .conftest import make_settings
from .helpers import ShipcastProcess, eventually, settled
from .portal import signed_in
from .test_email import Mailbox, mailbox  # noqa: F401  (the real SMTP server fixture)
from .test_sms import SID, TOKEN, FakeTwilio, event_body, twilio_callback

pytestmark = pytest.mark.broker

#: Customer A, customer B whose number and email mask the same as A's, and customer C who replies STOP.
A_PHONE, B_PHONE, C_PHONE = "98765 43210", "+91 91234 53210", "+91 99999 11111"
A_EMAIL, B_EMAIL = "Priya.Sharma@Example.com", "prixx.sharma@example.com"
LOG = "/v1/partners/acme/customer-messages"


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


@pytest.fixture
def customer_settings(vhost: str, sqlite_url: str, twilio: FakeTwilio, mailbox: tuple[Mailbox, int]) -> Settings:
    return make_settings(vhost, sqlite_url, twilio_account_sid=SID, twilio_auth_token=TOKEN,
                         twilio_api_url=twilio.url, twilio_content_url=twilio.url,
                         smtp_host="127.0.0.1", smtp_port=mailbox[1], public_url="https://track.example.com")


def doc(partner_id: str = "acme", **sms: Any) -> dict[str, Any]:
    return {"partners": [{"id": partner_id, "name": partner_id.title(), "channels": {
        "sms": {"events": ["OFD", "DEL", "FAIL"], "sender": "ACMEIN", **sms},
        "email": {"events": ["OFD", "DEL"], "from_address": "Acme <orders@acme.example.com>"}}}]}


def with_whatsapp(document: dict[str, Any]) -> dict[str, Any]:
    """The partner's customers get a WhatsApp message on OFD too, through its approved content template."""
    document["partners"][0]["channels"]["whatsapp"] = {"events": ["OFD"], "sender": "+14155238886",
                                                       "content_sids": {"OFD": "HX" + "a" * 32}}
    return document


def order_event(event_type: str, order_id: str, sequence: int, **customer: Any) -> dict[str, Any]:
    body = event_body(event_type, **customer)
    body["order"]["order_id"], body["sequence"] = order_id, sequence
    return body


async def post(shipcast: ShipcastProcess, event: dict[str, Any], statuses: tuple[str, ...] = ("delivered",),
               count: int = 1) -> None:
    assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
    await eventually(lambda: shipcast.services.store.get_event(event["event_id"]))
    await eventually(lambda: _count(shipcast, event["event_id"], statuses, count), timeout=20)


async def _count(shipcast: ShipcastProcess, event_id: str, statuses: tuple[str, ...], count: int) -> bool:
    return len(await settled(shipcast, event_id, statuses)()) >= count


async def log(shipcast: ShipcastProcess, **params: Any) -> Any:
    response = await shipcast.http.get(LOG, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def ids(page: dict[str, Any]) -> set[tuple[str, str]]:
    return {(row["event_id"], row["channel"]) for row in page["messages"]}


def shown_rows(page: str) -> list[dict[str, str]]:
    """The rows of the portal's customer messages page, each cell's text by its column."""
    columns = ("changed", "order_id", "event_type", "channel", "address", "status", "why", "provider_status",
               "attempts", "event_id")
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", page, flags=re.DOTALL):
        cells = [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)]
        if len(cells) == len(columns):
            rows.append(dict(zip(columns, cells, strict=True)))
    return rows


async def sid_of(shipcast: ShipcastProcess, event_id: str, channel: str) -> str:
    """The id Twilio gave the message of ``event_id`` on ``channel``, as its attempt logged it."""
    [attempt] = await shipcast.services.store.list_attempts(event_id, channel)
    found = re.search(r"\bSM\w{32}\b", attempt["response"])
    assert found is not None, attempt
    return found.group(0)


async def test_the_log_shows_what_each_customer_got_and_why_found_by_order_phone_and_email(
        customer_settings: Settings, twilio: FakeTwilio) -> None:
    now = datetime.now(UTC)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"),
             "end": (now + timedelta(hours=2)).strftime("%H:%M"), "timezone": "UTC"}
    twilio.errors = [(400, 21610)]  # customer C's first text: they replied STOP
    async with ShipcastProcess(customer_settings, ["sms", "email", "archive"]) as shipcast:
        await shipcast.apply(doc(quiet_hours=quiet))  # a DEL's text waits out the quiet hours
        c_fail = order_event("FAIL", "ORD-C", 1, phone=C_PHONE, email=None)
        await post(shipcast, c_fail, ("dead",))
        c_ofd = order_event("OFD", "ORD-C", 2, phone=C_PHONE, email=None)
        await post(shipcast, c_ofd, ("skipped",))
        a_ofd = order_event("OFD", "ORD-A", 1, phone=A_PHONE, email=A_EMAIL)
        b_ofd = order_event("OFD", "ORD-B", 1, phone=B_PHONE, email=B_EMAIL)
        await post(shipcast, a_ofd, count=2)
        await post(shipcast, b_ofd, count=2)
        a_del = order_event("DEL", "ORD-A", 3, phone=A_PHONE, email=A_EMAIL)
        await post(shipcast, a_del, ("waiting", "delivered"), count=2)
        a_late = order_event("OFD", "ORD-A", 2, phone=A_PHONE, email=A_EMAIL)  # arrives after the DEL
        await post(shipcast, a_late, ("skipped",), count=2)
        sid = (await shipcast.services.store.list_attempts(a_ofd["event_id"], "sms"))[0]["response"].split(":")[0]
        assert await twilio_callback(shipcast, sid, "delivered") == 204

        # By phone: A's texts, sent, waiting and skipped with why; never B's, whose number masks the same.
        by_phone = await log(shipcast, phone=A_PHONE)
        rows = {row["event_id"]: row for row in by_phone["messages"]}
        assert set(rows) == {a_ofd["event_id"], a_del["event_id"], a_late["event_id"]}
        assert {row["channel"] for row in rows.values()} == {"sms"}
        assert all(row["address"] == "+91******3210" for row in rows.values())
        assert rows[a_ofd["event_id"]]["status"] == "delivered"
        assert rows[a_ofd["event_id"]]["provider_status"] == "delivered" and rows[a_ofd["event_id"]]["attempts"] == 1
        assert rows[a_del["event_id"]]["status"] == "waiting" and rows[a_del["event_id"]]["held"] == "quiet hours"
        assert rows[a_late["event_id"]]["status"] == "skipped" and rows[a_late["event_id"]]["held"] == "stale"
        assert by_phone["scanned"] >= 4 and by_phone["capped"] is False  # B's text was read, and left out
        for written in ("+919876543210", "+91 98765-43210", "09876543210"):  # the same number, written otherwise
            assert ids(await log(shipcast, phone=written)) == ids(by_phone), written
        assert ids(await log(shipcast, phone=B_PHONE)) == {(b_ofd["event_id"], "sms")}

        # By email, in any case: A's emails, not B's (the same mask).
        by_email = await log(shipcast, email="priya.sharma@EXAMPLE.com")
        assert ids(by_email) == {(a_ofd["event_id"], "email"), (a_del["event_id"], "email"),
                                 (a_late["event_id"], "email")}
        assert ids(await log(shipcast, email=B_EMAIL)) == {(b_ofd["event_id"], "email")}

        # By order: every customer channel's message of it, paged by key.
        whole = await log(shipcast, order_id="ORD-A")
        assert len(whole["messages"]) == 6 and whole["next"] is None
        first = await log(shipcast, order_id="ORD-A", limit=4)
        assert len(first["messages"]) == 4 and first["next"]
        rest = await log(shipcast, order_id="ORD-A", limit=4, before=first["next"])
        assert rest["next"] is None and ids(first) | ids(rest) == ids(whole) and not ids(first) & ids(rest)
        # Sent rows carry their order and type (a claimed row had neither until its attempt was logged).
        assert all(row["order_id"] == "ORD-A" and row["event_type"] for row in whole["messages"])

        skipped = await log(shipcast, channel="sms", status="skipped")
        held = {row["event_id"]: row["held"] for row in skipped["messages"]}
        assert held == {a_late["event_id"]: "stale", c_ofd["event_id"]: "opted out"}
        [dead] = (await log(shipcast, phone=C_PHONE, status="dead"))["messages"]
        assert dead["event_id"] == c_fail["event_id"] and "21610" in dead["last_error"]

        # Forgotten, A is found by their phone no more; B still is. A stays opted out, without a mask shown.
        await shipcast.services.store.add_opt_out("sms", "acme", "+919876543210", "unsubscribed (one-click)")
        forgot = await shipcast.http.post("/v1/customers/forget", json={"phone": "+919876543210",
                                                                         "partner_id": "acme"})
        assert forgot.status_code == 200, forgot.text
        assert (await log(shipcast, phone=A_PHONE))["messages"] == []
        assert (await log(shipcast, email=A_EMAIL))["messages"] == []
        assert ids(await log(shipcast, phone=B_PHONE)) == {(b_ofd["event_id"], "sms")}
        [kept] = (await shipcast.http.get("/v1/partners/acme/opt-outs", params={"phone": A_PHONE})).json()["opt_outs"]
        assert kept["address"] is None and kept["reason"] == "unsubscribed (one-click)"
        [c_stop] = (await shipcast.http.get("/v1/partners/acme/opt-outs", params={"phone": C_PHONE})).json()["opt_outs"]
        assert c_stop["address"] == "+91******1111"  # another customer's is untouched


#: Searches refused, and the field each names.
BAD_SEARCHES = [
    ({"phone": "12"}, "phone"), ({"phone": "x" * 41}, "phone"), ({"email": "nope"}, "email"),
    ({"email": "a@b.example", "phone": A_PHONE}, "email"), ({"channel": "webhook"}, "channel"),
    ({"status": "lost"}, "status"), ({"before": "garbage"}, "before"), ({"order_id": "o" * 101}, "order_id"),
    ({"order_id": "ORD\x00"}, "order_id"),
]


async def test_bad_searches_limits_and_other_partners_are_refused(customer_settings: Settings) -> None:
    async with ShipcastProcess(customer_settings, workers=False) as shipcast:
        await eventually(lambda: shipcast.services.broker.connected)
        await shipcast.apply(doc())
        await shipcast.apply(doc("globex"))
        for params, field in BAD_SEARCHES:
            response = await shipcast.http.get(LOG, params=params)
            assert response.status_code == 422, (params, response.text)
            assert list(response.json()["errors"]) == [field], params
        for limit in ("0", "201", "ten"):
            response = await shipcast.http.get(LOG, params={"limit": limit})
            assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "limit"]
        token = (await shipcast.http.post("/v1/partners/globex/tokens", params={"name": "t"})).json()["token"]
        for method, path in (("GET", LOG), ("GET", "/v1/partners/acme/opt-outs"),
                             ("DELETE", f"/v1/partners/acme/opt-outs/sms/{'0' * 16}")):
            response = await shipcast.http.request(method, path, headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 403, (path, response.text)
        own = await shipcast.http.get("/v1/partners/globex/customer-messages",
                                      headers={"authorization": f"Bearer {token}"})
        assert own.status_code == 200 and own.json()["messages"] == []


async def test_opt_outs_are_listed_looked_up_and_lifted_through_the_api(customer_settings: Settings,
                                                                         twilio: FakeTwilio) -> None:
    twilio.errors = [(400, 21610)]
    async with ShipcastProcess(customer_settings, ["sms", "archive"]) as shipcast:
        await shipcast.apply(doc())
        await post(shipcast, order_event("FAIL", "ORD-C", 1, phone=C_PHONE, email=None), ("dead",))
        store = shipcast.services.store
        await eventually(lambda: store.opted_out("sms", "acme", "+919999911111"))
        await store.add_opt_out("whatsapp", "acme", "+919876543210", f"{UNREACHABLE}{twilio_reason(63003)}")

        listed = (await shipcast.http.get("/v1/partners/acme/opt-outs")).json()
        stop, = [row for row in listed["opt_outs"] if row["channel"] == "sms"]
        assert stop["address"] == "+91******1111" and "21610" in stop["reason"]
        assert stop["asked_by_customer"] is True and "START" in stop["note"]
        unreachable, = [row for row in listed["opt_outs"] if row["channel"] == "whatsapp"]
        assert unreachable["asked_by_customer"] is False and unreachable["note"] == ""
        assert "9999911111" not in str(listed)  # the full number is nowhere

        found = (await shipcast.http.get("/v1/partners/acme/opt-outs", params={"phone": "99999 11111"})).json()
        assert [row["id"] for row in found["opt_outs"]] == [stop["id"]]
        assert (await shipcast.http.get("/v1/partners/acme/opt-outs",
                                        params={"phone": B_PHONE})).json()["opt_outs"] == []
        bad = await shipcast.http.get("/v1/partners/acme/opt-outs", params={"email": "not-an-address"})
        assert bad.status_code == 422 and list(bad.json()["errors"]) == ["email"]

        lift = f"/v1/partners/acme/opt-outs/sms/{stop['id']}"
        refused = await shipcast.http.delete(lift)
        assert refused.status_code == 422 and list(refused.json()["errors"]) == ["customer_asked"]
        assert await store.opted_out("sms", "acme", "+919999911111") is not None
        assert (await shipcast.http.delete(f"/v1/partners/acme/opt-outs/sms/{'f' * 16}",
                                           params={"customer_asked": "true"})).status_code == 404
        assert (await shipcast.http.delete(f"/v1/partners/acme/opt-outs/webhook/{stop['id']}",
                                           params={"customer_asked": "true"})).status_code == 404
        lifted = await shipcast.http.delete(lift, params={"customer_asked": "true"})
        assert lifted.status_code == 200 and lifted.json()["lifted"]["id"] == stop["id"]
        assert await store.opted_out("sms", "acme", "+919999911111") is None
        assert (await shipcast.http.delete(lift, params={"customer_asked": "true"})).status_code == 404
        # Unreachable on WhatsApp: lifted without the confirmation.
        assert (await shipcast.http.delete(f"/v1/partners/acme/opt-outs/whatsapp/{unreachable['id']}")).status_code \
            == 200
        [entry, *_] = await store.list_audit("acme", action="opt_out.lift")
        assert entry["actor"] == "operator token" and entry["before"]["address"] == "+91******3210"
        audit = orjson.dumps(await store.list_audit("acme")).decode()
        assert "9999911111" not in audit and "9876543210" not in audit


async def test_the_portal_pages_show_the_log_and_let_only_an_admin_lift(customer_settings: Settings,
                                                                        twilio: FakeTwilio) -> None:
    plain = customer_settings.model_copy(update={"public_url": "http://track.example.com"})  # cookies not Secure
    async with ShipcastProcess(plain, ["sms", "whatsapp", "email", "archive"]) as shipcast:
        await shipcast.apply(with_whatsapp(doc()))
        await shipcast.apply(doc("globex"))
        # A's order out for delivery: a text, a WhatsApp message and an email; B's, whose masks are the same.
        a_ofd = order_event("OFD", "ORD-A", 1, phone=A_PHONE, email=A_EMAIL)
        await post(shipcast, a_ofd, count=3)
        b_ofd = order_event("OFD", "ORD-B", 1, phone=B_PHONE, email=B_EMAIL)
        await post(shipcast, b_ofd, count=3)
        # Twilio reports later that A read the WhatsApp message, on that message's SID.
        assert await twilio_callback(shipcast, await sid_of(shipcast, a_ofd["event_id"], "whatsapp"), "read") == 204
        store = shipcast.services.store
        await store.add_opt_out("sms", "acme", "+919999911111", twilio_reason(21610))
        await store.add_opt_out("whatsapp", "acme", "+919876543210", f"{UNREACHABLE}{twilio_reason(63003)}")

        viewer = await signed_in(shipcast, "reader@acme.example.com", "acme", "viewer")
        admin = await signed_in(shipcast, "dev@acme.example.com", "acme", "admin")
        other = await signed_in(shipcast, "dev@globex.example.com", "globex", "admin")
        try:
            shown = await viewer.get("/portal/p/acme/customers", params={"phone": "+91 98765 43210"})
            assert shown.status_code == 200
            assert f'href="/portal/p/acme/messages/{a_ofd["event_id"]}"' in shown.text
            assert "+91******3210" in shown.text and "ORD-A" in shown.text
            assert 'href="/portal/p/acme/customers"' in shown.text  # in the navigation
            assert (await viewer.get("/portal/p/acme/customers", params={"phone": B_PHONE})).text.count(
                a_ofd["event_id"]) == 0
            wrong = await viewer.get("/portal/p/acme/customers", params={"phone": "12"})
            assert wrong.status_code == 422 and 'id="phone-error"' in wrong.text

            # By order: A's three messages, the WhatsApp one with what Twilio said last.
            by_order = shown_rows((await viewer.get("/portal/p/acme/customers", params={"order_id": "ORD-A"})).text)
            assert {(row["event_id"], row["channel"]) for row in by_order} == {
                (a_ofd["event_id"], channel) for channel in ("sms", "whatsapp", "email")}, by_order
            [whatsapp] = [row for row in by_order if row["channel"] == "whatsapp"]
            assert whatsapp["provider_status"] == "read" and whatsapp["address"] == "+91******3210", whatsapp
            assert whatsapp["status"] == "delivered" and whatsapp["order_id"] == "ORD-A"
            # By email, in any case: A's email only, never B's (the same mask).
            by_email = shown_rows((await viewer.get("/portal/p/acme/customers",
                                                    params={"email": "priya.sharma@EXAMPLE.com"})).text)
            assert [(row["event_id"], row["channel"]) for row in by_email] == [(a_ofd["event_id"], "email")], by_email
            assert "*" in by_email[0]["address"] and "sharma" not in by_email[0]["address"].lower()  # masked
            b_email = shown_rows((await viewer.get("/portal/p/acme/customers", params={"email": B_EMAIL})).text)
            assert [(row["event_id"], row["channel"]) for row in b_email] == [(b_ofd["event_id"], "email")], b_email

            page = await viewer.get("/portal/p/acme/opt-outs")
            assert page.status_code == 200 and "+91******1111" in page.text and "Lift" not in page.text
            stop = (await shipcast.http.get("/v1/partners/acme/opt-outs", params={"channel": "sms"})).json()
            stop_id = stop["opt_outs"][0]["id"]
            assert (await viewer.post("/portal/p/acme/opt-outs/lift",
                                      {"channel": "sms", "id": stop_id, "customer_asked": "on"})).status_code == 403
            assert (await other.get("/portal/p/acme/customers")).status_code == 404
            assert (await other.get("/portal/p/acme/opt-outs")).status_code == 404
            await other.get("/portal/p/globex/opt-outs")  # its own page, for its CSRF token
            assert (await other.post("/portal/p/acme/opt-outs/lift",
                                     {"channel": "sms", "id": stop_id, "customer_asked": "on"})).status_code == 404
            assert await store.opted_out("sms", "acme", "+919999911111") is not None

            listed = await admin.get("/portal/p/acme/opt-outs")
            assert "The customer asked not to get these messages" in listed.text and "texts START" in listed.text
            unticked = await admin.post("/portal/p/acme/opt-outs/lift", {"channel": "sms", "id": stop_id})
            assert unticked.status_code == 422 and 'id="customer_asked-error"' in unticked.text
            assert await store.opted_out("sms", "acme", "+919999911111") is not None
            lifted = await admin.post("/portal/p/acme/opt-outs/lift",
                                      {"channel": "sms", "id": stop_id, "customer_asked": "on"})
            assert lifted.status_code == 303 and lifted.headers["location"] == "/portal/p/acme/opt-outs"
            assert await store.opted_out("sms", "acme", "+919999911111") is None
            after = await admin.get("/portal/p/acme/opt-outs", params={"phone": "+91 99999 11111"})
            assert "Lifted: sms messages go to +91******1111 again." in after.text
            assert "This customer has not opted out" in after.text
            [entry] = await store.list_audit("acme", action="opt_out.lift")
            assert entry["actor"] == "dev@acme.example.com (admin)" and entry["via"] == "portal"
        finally:
            for visitor in (viewer, admin, other):
                await visitor.aclose()


async def test_the_portal_log_shows_why_each_held_message_was_held_on_its_orders_row(
        customer_settings: Settings) -> None:
    now = datetime.now(UTC)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"),
             "end": (now + timedelta(hours=2)).strftime("%H:%M"), "timezone": "UTC"}
    plain = customer_settings.model_copy(update={"public_url": "http://track.example.com"})  # cookies not Secure
    async with ShipcastProcess(plain, ["sms", "archive"]) as shipcast:
        await shipcast.apply(doc(quiet_hours=quiet))
        await shipcast.services.store.add_opt_out("sms", "acme", "+919999911111", twilio_reason(21610))
        c_ofd = order_event("OFD", "ORD-C", 1, phone=C_PHONE, email=None)
        await post(shipcast, c_ofd, ("skipped",))
        a_del = order_event("DEL", "ORD-A", 2, phone=A_PHONE, email=None)
        await post(shipcast, a_del, ("waiting",))
        a_late = order_event("OFD", "ORD-A", 1, phone=A_PHONE, email=None)  # arrives after the DEL
        await post(shipcast, a_late, ("skipped",))

        async with await signed_in(shipcast, "reader@acme.example.com", "acme", "viewer") as viewer:
            for order_id, expected in (("ORD-A", {a_del["event_id"]: ("waiting", "quiet hours"),
                                                  a_late["event_id"]: ("skipped", "stale")}),
                                       ("ORD-C", {c_ofd["event_id"]: ("skipped", "opted out")})):
                page = await viewer.get("/portal/p/acme/customers", params={"order_id": order_id})
                shown = {row["event_id"]: row for row in shown_rows(page.text) if row["channel"] == "sms"}
                assert {event_id: row["status"] for event_id, row in shown.items()} == {
                    event_id: status for event_id, (status, _) in expected.items()}, order_id
                api = {row["event_id"]: row for row in (await log(shipcast, order_id=order_id))["messages"]}
                for event_id, (_, held) in expected.items():
                    assert api[event_id]["held"] == held, api[event_id]
                    assert shown[event_id]["order_id"] == order_id and shown[event_id]["event_type"], shown[event_id]
                    # The badge naming why, then the rules' own words.
                    assert html.unescape(shown[event_id]["why"]) == f"{held} {api[event_id]['last_error']}"


def test_the_rules_reasons_read_as_why() -> None:
    assert held_because("the customer opted out of sms: Twilio 21610: …") == "opted out"
    assert held_because("whatsapp cannot reach the customer: Twilio 63003: …") == "unreachable"
    assert held_because("stale: a later DEL/RET of this order (e1) was received first") == "stale"
    assert held_because("quiet hours until 08:00 Asia/Kolkata") == "quiet hours"
    assert held_because("Twilio 21211: invalid 'To' phone number") is None
    assert held_because(None) is None
