"""The tracking page over HTTP, on the real broker and store: its token, what
it shows and hides, its live stream, and what a customer sends back, which
reaches a partner's webhook as an event of its own. The browser's view is in
tests/test_tracking_browser.py."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import orjson
import pytest

from tests.bound import example
from shipcast.plugins.tracking.links import read_tracking_token, tracking_token
from shipcast.plugins.tracking.live import LIVE_EXCHANGE, MAX_PINGED, pinged
from shipcast.plugins.tracking.routes import Limiter
from shipcast.plugins.tracking.words import pick_language
from shipcast.settings import Settings

from .helpers import Receiver, ShipcastProcess, eventually
from .test_email import Mailbox, email_doc, mail_settings, mailbox  # noqa: F401 (fixtures)
from .test_sms import FakeTwilio, sms_doc, sms_settings, twilio  # noqa: F401 (fixtures)

pytestmark = pytest.mark.broker

ORDER = "ORD-10023"


def doc(receiver: Receiver | None = None, partner: str = "acme", **tracking: Any) -> dict[str, Any]:
    channels: dict[str, Any] = {"tracking": tracking}
    if receiver is not None:
        channels["webhook"] = {"endpoints": [{"id": "oms", "url": receiver.url, "events": ["*"]}]}
    return {"partners": [{"id": partner, "name": "Acme Retail", "channels": channels, "branding": {
        "primary_color": "#aa3300", "logo_url": "https://cdn.example.com/acme.png",
        "support_phone": "+918000000000", "support_email": "help@acme.example.com"}}]}


def event(event_type: str, sequence: int, partner: str = "acme", **customer: Any) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(example(event_type, partner_id=partner, order_id=ORDER,
                                                sequence=sequence).to_json())
    body["order"]["customer"].update(customer)
    return body


def page_url(settings: Settings, partner: str = "acme", order: str = ORDER) -> str:
    return f"/t/{tracking_token(settings, partner, order, 30)}"


@pytest.fixture
async def shipcast(settings: Settings) -> AsyncIterator[ShipcastProcess]:
    async with ShipcastProcess(settings) as process:
        process.http.headers.pop("authorization")  # the page is public: its token is its key
        yield process


async def post_events(shipcast: ShipcastProcess, *events: dict[str, Any]) -> None:
    token = {"authorization": f"Bearer {shipcast.settings.api_token}"}
    response = await shipcast.http.post("/v1/events", json=list(events), headers=token)
    assert response.status_code == 202, response.text
    for body in events:
        await eventually(lambda body=body: shipcast.services.store.get_event(body["event_id"]))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "the page has a form with a CSRF token"
    return found.group(1)


def test_every_token_verifies_whatever_bytes_its_mac_holds(settings: Settings) -> None:
    """A MAC is binary: some hold the byte of the separator (ORD-22's did)."""
    orders = [f"ORD-{i}" for i in range(2000)]
    assert all(read_tracking_token(settings, tracking_token(settings, "acme", order, 30)) == ("acme", order)
               for order in orders)


def test_a_token_names_one_order_and_expires(settings: Settings) -> None:
    token = tracking_token(settings, "acme", "ORD-1:with:colons", 2, now=0)
    assert read_tracking_token(settings, token, now=0) == ("acme", "ORD-1:with:colons")
    assert read_tracking_token(settings, token, now=2 * 86400) == ("acme", "ORD-1:with:colons")
    assert read_tracking_token(settings, token, now=3 * 86400) is None  # expired
    assert read_tracking_token(settings, token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], now=0) is None
    assert read_tracking_token(settings, "not-a-token") is None


@pytest.mark.parametrize(("choice", "accept", "order", "expected"), [
    ("hi", "en-US,en;q=0.9", "en", "hi"),          # the customer's choice first
    (None, "hi-IN,hi;q=0.9,en;q=0.8", "en", "hi"),  # then the browser's
    (None, "fr-FR,en;q=0.5,hi;q=0.4", "hi", "en"),  # its first language we speak
    (None, "fr-FR", "hi", "hi"),                    # then the order's
    ("xx", None, None, "en"),
])
def test_the_language_is_the_customers_choice_or_the_browsers(choice: str | None, accept: str | None,
                                                               order: str | None, expected: str) -> None:
    assert pick_language(choice, accept, order) == expected


def test_dates_numbers_and_names_as_the_page_shows_them() -> None:
    from datetime import date, datetime

    from shipcast.plugins.tracking.page import dialable, masked_name
    from shipcast.plugins.tracking.words import day_words, moment_words

    assert day_words(date(2026, 12, 1), "en") == "Tue 01 Dec" and day_words(date(2026, 12, 1), "hi") == "मंगल 01 दिस॰"
    assert moment_words(datetime(2026, 11, 29, 14, 5), "hi") == "29 नव॰ 2026, 14:05"
    assert dialable("+91 (98) 123-45678") == "+919812345678" and dialable("+91 98XXXX5678") is None
    assert masked_name("Priya Devi Sharma") == "Priya D. S." and masked_name("   ") == ""


def test_a_tracking_config_is_checked() -> None:
    from shipcast.exceptions import ConfigError
    from tests.bound import load_partners

    with pytest.raises(ConfigError, match="channels.tracking.timezone.*unknown time zone 'Mars/Olympus'"):
        load_partners(doc(timezone="Mars/Olympus"), "test")
    with pytest.raises(ConfigError, match="channels.tracking.reschedule_days"):
        load_partners(doc(reschedule_days=0), "test")


def test_posts_are_limited_per_token() -> None:
    limiter = Limiter(burst=3, every=10)
    assert [limiter.allow("a", now=0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", now=0)  # another page is not held back
    assert limiter.allow("a", now=10) and not limiter.allow("a", now=10)  # one more after 10 s


async def test_a_wrong_or_expired_token_is_a_plain_404(shipcast: ShipcastProcess) -> None:
    await shipcast.apply(doc())
    settings = shipcast.settings
    valid = tracking_token(settings, "acme", ORDER, 30)
    for path in ("/t/nope", f"/t/{tracking_token(settings, 'acme', ORDER, 1, now=time.time() - 3 * 86400)}",
                 f"/t/{valid}~", f"/t/{valid}=",  # one spelling per token: none with stray characters
                 f"/t/{tracking_token(settings, 'ghost', ORDER, 30)}", "/t/nope/live"):
        response = await shipcast.http.get(path)
        assert response.status_code == 404 and response.text == "Not found", path
    assert (await shipcast.http.post("/t/nope", data={"action": "otp"})).status_code == 404


async def test_the_page_shows_the_order_and_hides_what_the_customer_does_not_need(
        shipcast: ShipcastProcess) -> None:
    await shipcast.apply(doc())
    await post_events(shipcast, event("OFD", 1, name="Priya Sharma"))
    response = await shipcast.http.get(page_url(shipcast.settings))
    html = response.text
    assert response.status_code == 200 and "Out for delivery" in html and "ACME-88213" in html
    assert "Ravi Kumar" in html and 'href="tel:+919812345678"' in html  # the rider and the call button
    assert "#aa3300" in html and "https://cdn.example.com/acme.png" in html and "+918000000000" in html
    # No OTP in the page's HTML, a masked phone number, no address after the street.
    assert "4821" not in html and "show-otp" in html
    assert "9876543210" not in html and "+91******3210" in html
    assert "42, 3rd Cross, Indiranagar" in html and "Near the metro" not in html and "560038" not in html
    assert "Priya S." in html and "Sharma" not in html
    headers = response.headers
    assert "script-src 'nonce-" in headers["content-security-policy"] and headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    # The OTP comes only when asked for, with the form's CSRF token.
    token = csrf_of(html)
    shown = await shipcast.http.post(page_url(shipcast.settings), data={"action": "otp", "csrf": token},
                                     headers={"accept": "application/json"})
    assert shown.status_code == 200 and shown.json() == {"otp": "4821"}
    forged = await shipcast.http.post(page_url(shipcast.settings), data={"action": "otp", "csrf": "0" * 32})
    assert forged.status_code == 403 and "4821" not in forged.text
    # Once delivered, the OTP is gone for good.
    await post_events(shipcast, event("DEL", 2))
    gone = await shipcast.http.post(page_url(shipcast.settings), data={"action": "otp", "csrf": token},
                                    headers={"accept": "application/json"})
    assert gone.status_code == 409 and "otp" not in gone.json()


async def test_hindi_by_the_browser_and_english_by_choice(shipcast: ShipcastProcess) -> None:
    await shipcast.apply(doc())
    await post_events(shipcast, event("FAIL", 1))
    url = page_url(shipcast.settings)
    hindi = await shipcast.http.get(url, headers={"accept-language": "hi-IN,hi;q=0.9"})
    assert 'lang="hi"' in hindi.text and "डिलीवरी नहीं हो सकी" in hindi.text
    assert "राइडर के आने पर आप उपलब्ध नहीं थे" in hindi.text  # the failure in plain words
    chosen = await shipcast.http.get(url + "?lang=en", headers={"accept-language": "hi-IN"})
    assert 'lang="en"' in chosen.text and "We missed you" in chosen.text
    assert chosen.cookies.get("shipcast_lang") == "en"
    kept = await shipcast.http.get(url, headers={"accept-language": "hi-IN"})  # the choice is remembered
    assert 'lang="en"' in kept.text


async def test_hostile_order_data_is_shown_as_text(shipcast: ShipcastProcess) -> None:
    await shipcast.apply(doc())
    hostile = event("FAIL", 1, name="<script>alert(1)</script> Mallory")
    hostile["failure"]["code"] = "OTHER"
    hostile["failure"]["reason"] = '"><img src=x onerror=alert(2)>{{ 7*7 }}'
    await post_events(shipcast, hostile)
    html = (await shipcast.http.get(page_url(shipcast.settings))).text
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;{{ 7*7 }}" in html  # not evaluated


async def test_a_reschedule_reaches_the_partners_webhook_as_its_own_event(shipcast: ShipcastProcess,
                                                                         receiver: Receiver) -> None:
    """With JavaScript off, the forms are plain posts: the page after a post says what was done."""
    await shipcast.apply(doc(receiver, reschedule_days=2))
    failed = event("FAIL", 3)
    await post_events(shipcast, failed)
    url = page_url(shipcast.settings)
    html = (await shipcast.http.get(url)).text
    dates = re.findall(r'<option value="(\d{4}-\d\d-\d\d)"', html)
    assert len(dates) == 2
    token = csrf_of(html)
    wrong = await shipcast.http.post(url, data={"action": "reschedule", "csrf": token, "date": "2001-01-01"})
    assert wrong.status_code == 422 and "Pick one of the offered dates" in wrong.text
    empty = await shipcast.http.post(url, data={"action": "instructions", "csrf": token, "instructions": "  "})
    assert empty.status_code == 422 and "Write your instructions" in empty.text
    rating = await shipcast.http.post(url, data={"action": "rating", "csrf": token, "rating": "5"})
    assert rating.status_code == 409  # nothing to rate before delivery
    done = await shipcast.http.post(url, data={"action": "reschedule", "csrf": token, "date": dates[1]})
    assert done.status_code == 303 and done.headers["location"].endswith("?done=reschedule")
    note = await shipcast.http.post(url, data={"action": "instructions", "csrf": token,
                                               "instructions": "Leave it with the guard <b>at gate 2</b>"})
    assert note.status_code == 303
    await eventually(lambda: len(receiver.delivered) == 3)
    got = {b["event_type"]: b for b in (orjson.loads(r.body) for r in receiver.delivered)}
    asked, told = got["RESCHEDULE_REQUESTED"], got["INSTRUCTIONS_ADDED"]
    assert asked["customer_input"]["requested_date"] == dates[1]
    # It answers the FAIL, and has its sequence: the OMS's next event keeps the next number.
    assert asked["order"]["order_id"] == ORDER and asked["sequence"] == failed["sequence"]
    assert asked["otp"] is None and asked["customer_input"]["submitted_via"] == "tracking_page"
    assert told["customer_input"]["instructions"] == "Leave it with the guard <b>at gate 2</b>"
    # Both customer events archived (each in its own time): the page shows both.
    await eventually(lambda: _page_with(shipcast, url, "Requested delivery on"))
    after = await eventually(lambda: _page_with(shipcast, url, "&lt;b&gt;at gate 2&lt;/b&gt;"))  # as text
    assert "done" not in after and "Requested delivery on" in after


async def _page_with(shipcast: ShipcastProcess, url: str, text: str) -> str | None:
    html = (await shipcast.http.get(url)).text
    return html if text in html else None


async def test_a_rating_after_delivery_is_sent_once(shipcast: ShipcastProcess, receiver: Receiver) -> None:
    await shipcast.apply(doc(receiver))
    await post_events(shipcast, event("OFD", 1), event("DEL", 2))
    url = page_url(shipcast.settings)
    html = (await shipcast.http.get(url)).text
    assert "How was your delivery?" in html and "Priya (self)" in html
    token = csrf_of(html)
    bad = await shipcast.http.post(url, data={"action": "rating", "csrf": token, "rating": "9"})
    assert bad.status_code == 422 and "from 1 to 5" in bad.text
    rating = {"action": "rating", "csrf": token, "rating": "4", "comment": "Polite rider"}
    # A double tap: two posts at once, before either is stored.
    first, second = await asyncio.gather(shipcast.http.post(url, data=rating), shipcast.http.post(url, data=rating))
    assert {first.status_code, second.status_code} <= {303, 409}
    rated = await eventually(lambda: [b for b in (orjson.loads(r.body) for r in receiver.delivered)
                                      if b["event_type"] == "RATED"])
    assert rated[0]["customer_input"]["rating"] == 4 and rated[0]["customer_input"]["comment"] == "Polite rider"
    await eventually(lambda: _page_with(shipcast, url, "Thank you for your rating"))
    again = await shipcast.http.post(url, data={"action": "rating", "csrf": token, "rating": "1"})
    assert again.status_code == 409
    await post_events(shipcast, event("RET", 3))  # a later event, delivered after any second RATED would be
    await eventually(lambda: [r for r in receiver.delivered if orjson.loads(r.body)["event_type"] == "RET"])
    # One rating: however many copies a double tap made, they are one event, with one webhook-id to
    # deduplicate on (and one row in the archive).
    ratings = [orjson.loads(r.body) for r in receiver.delivered if orjson.loads(r.body)["event_type"] == "RATED"]
    assert len({r["event_id"] for r in ratings}) == 1
    assert len([e for e in await shipcast.services.store.order_events("acme", ORDER) if e["event_type"] == "RATED"]) == 1


async def test_forms_need_the_csrf_token_and_are_rate_limited(shipcast: ShipcastProcess) -> None:
    await shipcast.apply(doc())
    await post_events(shipcast, event("FAIL", 1))
    url = page_url(shipcast.settings)
    token = csrf_of((await shipcast.http.get(url)).text)
    stranger = httpx.AsyncClient(base_url=shipcast.base_url)  # another browser, with a cookie of its own
    try:
        forged = await stranger.post(url, data={"action": "reschedule", "csrf": token, "date": "2030-01-01"})
        assert forged.status_code == 403 and "This form has expired" in forged.text
        await stranger.get(url)  # now it has its own cookie: this page's token is still not its
        assert stranger.cookies.get("shipcast_csrf") not in (None, shipcast.http.cookies.get("shipcast_csrf"))
        forged = await stranger.post(url, data={"action": "reschedule", "csrf": token, "date": "2030-01-01"})
        assert forged.status_code == 403
    finally:
        await stranger.aclose()
    statuses = [(await shipcast.http.post(url, data={"action": "reschedule", "csrf": token, "date": "x"})).status_code
                for _ in range(12)]
    assert statuses[0] == 422 and statuses[-1] == 429


async def test_the_live_stream_sends_the_page_then_every_new_event(shipcast: ShipcastProcess) -> None:
    await shipcast.apply(doc())
    await post_events(shipcast, event("OFD", 1))
    updates: list[str] = []
    listening = asyncio.create_task(_live_stream(shipcast, ORDER, updates))
    try:
        await eventually(lambda: updates)
        assert 'data-state="OFD"' in updates[0] and 'name="csrf" value=""' in updates[0] and "4821" not in updates[0]
        await shipcast.http.post("/v1/events", json=event("FAIL", 2),
                                 headers={"authorization": f"Bearer {shipcast.settings.api_token}"})
        await eventually(lambda: len(updates) >= 2)
        assert 'data-state="FAIL"' in updates[-1] and "Pick a new delivery date" in updates[-1]
    finally:
        listening.cancel()
    hub = shipcast.services.extensions["tracking.live"]
    await eventually(lambda: hub.watching == 0)  # a viewer who leaves is forgotten


async def _live_stream(shipcast: ShipcastProcess, order: str, updates: list[str]) -> None:
    """Each page the live stream of ``order``'s page sends, appended to ``updates``."""
    async with shipcast.http.stream("GET", page_url(shipcast.settings, order=order) + "/live?lang=en") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        data: list[str] = []
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                updates.append("\n".join(data))
                data = []


async def test_one_ping_names_every_order_of_a_stored_batch_and_each_open_page_updates(
        shipcast: ShipcastProcess, caplog: pytest.LogCaptureFixture) -> None:
    """The tracking channel pings once per batch it stores, naming each order
    in it: fewer messages than events, every order named, and a page open on
    any of them updated. A ping in the earlier one-order form still updates a
    page; a malformed one is logged and dropped, and the next still works."""
    await shipcast.apply(doc())
    orders = [f"ORD-B{i:03d}" for i in range(40)]
    first = [orjson.loads(example("OFD", partner_id="acme", order_id=order, sequence=1).to_json())
             for order in orders]
    await post_events(shipcast, *first)
    channel = await shipcast.services.broker.require().channel()
    spy = await channel.declare_queue(exclusive=True)
    await spy.bind(LIVE_EXCHANGE)
    pings: list[bytes] = []

    async def heard(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        pings.append(message.body)

    await spy.consume(heard, no_ack=True)
    watched = {order: [] for order in (orders[0], orders[-1], ORDER)}
    streams = [asyncio.create_task(_live_stream(shipcast, order, updates)) for order, updates in watched.items()]
    try:
        await eventually(lambda: all(watched[order] for order in orders[::39]))
        second = [orjson.loads(example("FAIL", partner_id="acme", order_id=order, sequence=2).to_json())
                  for order in orders]
        await post_events(shipcast, *second)
        for order in orders[::39]:
            await eventually(lambda order=order: 'data-state="FAIL"' in watched[order][-1])
        everyone = {("acme", order) for order in orders}
        await eventually(lambda: {key for body in pings for key in pinged(body)} >= everyone)
        assert {key for body in pings for key in pinged(body)} == everyone and len(pings) < len(orders), pings

        # An earlier worker's ping, for one order: the page open on it is rendered again.
        await post_events(shipcast, event("OFD", 1))
        await eventually(lambda: watched[ORDER] and 'data-state="OFD"' in watched[ORDER][-1])
        await asyncio.sleep(0.5)  # the OFD's own ping, and its page, are past
        shown = len(watched[ORDER])
        exchange = await channel.get_exchange(LIVE_EXCHANGE)
        with caplog.at_level("WARNING"):
            for body in (b"[1, 2]", orjson.dumps({"orders": [["acme", ORDER]] * (MAX_PINGED + 1)}),
                         orjson.dumps({"orders": [["acme"]]})):
                await exchange.publish(aio_pika.Message(body), routing_key="")
            await exchange.publish(aio_pika.Message(orjson.dumps({"partner_id": "acme", "order_id": ORDER})),
                                   routing_key="")
            await eventually(lambda: len(watched[ORDER]) > shown)
        assert caplog.text.count("ignored a malformed live ping") == 3, caplog.text
    finally:
        for stream in streams:
            stream.cancel()
        await channel.close()


async def test_the_customers_own_events_text_nobody(shipcast: ShipcastProcess, receiver: Receiver) -> None:
    """Customer channels on every event type ('*') send for the types they
    have templates for: a rating reaches the partner's webhook, not the
    customer's phone or inbox."""
    config = doc(receiver)
    config["partners"][0]["channels"].update({
        "sms": {"events": ["*"], "sender": "ACMEIN"},
        "email": {"events": ["*"], "from_address": "Acme <orders@acme.example.com>"},
        "whatsapp": {"events": ["*"], "sender": "+14155238886", "content_sids": {"OFD": "HX" + "a" * 32}}})
    await shipcast.apply(config)
    rated, then = event("RATED", 5), event("OFD", 6)
    await post_events(shipcast, rated)
    await eventually(lambda: receiver.delivered)
    assert orjson.loads(receiver.delivered[0].body)["event_type"] == "RATED"
    # An OFD after it does reach the customer channels (here failing: no provider is set up)...
    await post_events(shipcast, then)
    await eventually(lambda: _channels(shipcast, then["event_id"], {"webhook", "sms", "email", "whatsapp"}))
    # ...by which time the rating would have too, had it been sent to them.
    rows = await shipcast.services.store.list_deliveries(event_id=rated["event_id"])
    assert [row["channel"] for row in rows] == ["webhook"]


async def _channels(shipcast: ShipcastProcess, event_id: str, wanted: set[str]) -> bool:
    rows = await shipcast.services.store.list_deliveries(event_id=event_id)
    return {row["channel"] for row in rows} >= wanted


def _customer_events(receiver: Receiver) -> list[dict[str, Any]]:
    return [b for b in (orjson.loads(r.body) for r in receiver.delivered) if "customer_input" in b
            and b["customer_input"] is not None]


@pytest.mark.parametrize(("state", "fields", "accept", "said"), [
    ("FAIL", {"action": "instructions", "instructions": "a\x00b"}, "text/html", "characters we cannot send"),
    ("FAIL", {"action": "instructions", "instructions": "gate\x1b[2J 2"}, "text/html", "characters we cannot send"),
    ("FAIL", {"action": "instructions", "instructions": "a\x00b"}, "application/json", "characters we cannot send"),
    ("FAIL", {"action": "instructions", "instructions": "x" * 501}, "text/html", "up to 500 characters"),
    ("DEL", {"action": "rating", "rating": "4", "comment": "Polite\x00 rider"}, "text/html",
     "characters we cannot send"),
    ("DEL", {"action": "rating", "rating": "4", "comment": "Polite\x85 rider"}, "application/json",
     "characters we cannot send"),
    ("DEL", {"action": "rating", "rating": "4", "comment": "x" * 1001}, "text/html", "1,000 characters or fewer"),
])
async def test_text_a_customer_could_not_have_typed_is_refused_and_never_published(
        shipcast: ShipcastProcess, receiver: Receiver, state: str, fields: dict[str, str], accept: str,
        said: str) -> None:
    """A NUL (or another control character) in a form is the customer's
    error, told as one (422), never a 500; the form's limits are the
    envelope's (500 for instructions, 1,000 for a comment); and nothing
    refused reaches the partner."""
    await shipcast.apply(doc(receiver))
    await post_events(shipcast, event(state, 1))
    url = page_url(shipcast.settings)
    token = csrf_of((await shipcast.http.get(url)).text)
    refused = await shipcast.http.post(url, data={**fields, "csrf": token}, headers={"accept": accept})
    assert refused.status_code == 422
    if accept == "application/json":
        assert said in refused.json()["error"]
    else:  # the page again, saying what was wrong, with its forms
        assert said in refused.text and 'name="csrf"' in refused.text
    # The same form with text a person types (line breaks and tabs are kept), at the limit, goes through:
    # had the refused one been published, it would have reached the webhook before this one.
    prefix = "Gate 2,\r\n\tthe guard " if state == "FAIL" else ""
    text = prefix + "x" * ((500 if state == "FAIL" else 1000) - len(prefix))
    field = "instructions" if state == "FAIL" else "comment"
    taken = await shipcast.http.post(url, data={**fields, field: text, "csrf": token})
    assert taken.status_code == 303, taken.text
    await eventually(lambda: _customer_events(receiver))
    # And an event after it, so that anything published with it has had its time to arrive too.
    await post_events(shipcast, event("RET", 2))
    await eventually(lambda: [r for r in receiver.delivered if orjson.loads(r.body)["event_type"] == "RET"])
    assert [b["customer_input"][field] for b in _customer_events(receiver)] == [text.strip()]


def _timeline(html: str) -> list[str]:
    found = re.findall(r'<li data-type="([A-Z_]+)">', html)
    assert found, "the page has a timeline"
    return found


async def test_each_status_shows_its_panel_and_the_timeline_is_newest_first(shipcast: ShipcastProcess) -> None:
    """What the issue asks the page to show for each status, one order through
    OFD, FAIL, DEL and RET."""
    await shipcast.apply(doc())
    url = page_url(shipcast.settings)
    ofd = event("OFD", 1)
    ofd["rider"].update({"name": "Ravi Kumar", "photo_url": "https://cdn.example.com/riders/ravi.jpg",
                         "phone": "+91 98XXXX5678"})
    await post_events(shipcast, ofd)
    html = (await shipcast.http.get(url)).text
    assert 'id="panel-ofd"' in html and '<strong id="rider-name">Ravi Kumar</strong>' in html
    assert '<img src="https://cdn.example.com/riders/ravi.jpg" alt="Ravi Kumar">' in html
    assert "+91 98XXXX5678" in html and 'id="call"' not in html  # shown; a masked number cannot be dialled
    assert "Keep your OTP ready" in html and "4821" not in html

    await post_events(shipcast, event("FAIL", 2))
    html = (await shipcast.http.get(url)).text
    assert 'id="panel-fail"' in html and "You were not available when the rider came" in html

    delivered = event("DEL", 3)
    delivered["delivery_confirmation"].update({"delivered_at": "2026-11-29T08:35:00Z", "received_by": "Priya (self)"})
    await post_events(shipcast, delivered)
    html = (await shipcast.http.get(url)).text
    assert '<strong id="delivered-at">29 Nov 2026, 14:05</strong>' in html  # in the partner's time zone (IST)
    assert '<strong id="received-by">Priya (self)</strong>' in html and 'id="rating-form"' in html

    returned = event("RET", 4)
    returned["return"]["initiated_at"] = "2026-11-30T04:30:00Z"
    await post_events(shipcast, returned)
    html = (await shipcast.http.get(url)).text
    assert '<h1 id="status" data-state="RET">Being returned</h1>' in html
    assert '<strong id="return-id">RTN-5531</strong>' in html and '<time id="return-since">30 Nov 2026, 10:00' in html
    assert '<strong id="return-reason">Customer refused the delivery</strong>' in html
    assert "Acme Warehouse, Peenya, Bengaluru" in html
    assert 'id="panel-del"' not in html and 'id="rating-form"' not in html
    assert _timeline(html) == ["RET", "DEL", "FAIL", "OFD"]


async def _opens_the_orders_page(shipcast: ShipcastProcess, message: str) -> None:
    """The /t/ link in a customer's message, opened as a customer's phone would (no API token)."""
    found = re.search(r"https://track\.example\.com(/t/[^\s\"<>]+)", message)
    assert found, message
    async with httpx.AsyncClient(base_url=shipcast.base_url) as phone:
        response = await phone.get(found.group(1))
    assert response.status_code == 200 and '<strong id="order-ref">ACME-77001</strong>' in response.text


def _with_page(config: dict[str, Any]) -> dict[str, Any]:
    config["partners"][0]["channels"]["tracking"] = {}
    return config


def _numbered(event_type: str) -> dict[str, Any]:
    body = event(event_type, 1)
    body["order"]["merchant_order_ref"] = "ACME-77001"
    return body


async def test_the_link_in_a_text_opens_the_orders_page(sms_settings: Settings, twilio: FakeTwilio) -> None:
    """From a real message to the page: the SMS channel sends a text through
    the twilio SDK to the local Twilio, and the link in it is this order's page."""
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(_with_page(sms_doc()))
        await post_events(shipcast, _numbered("OFD"))
        [sent] = await eventually(lambda: twilio.received)
        await _opens_the_orders_page(shipcast, sent["Body"])


async def test_the_link_in_an_email_opens_the_orders_page(mail_settings: Settings,
                                                          mailbox: tuple[Mailbox, int]) -> None:
    """The same from an email, sent over SMTP to a real (local) SMTP server."""
    box, _ = mailbox
    async with ShipcastProcess(mail_settings) as shipcast:
        await shipcast.apply(_with_page(email_doc()))
        await post_events(shipcast, _numbered("DEL"))
        [message] = await eventually(lambda: box.messages)
        plain = message.get_body(("plain",))
        assert plain is not None
        await _opens_the_orders_page(shipcast, plain.get_content())


async def test_cookies_are_secure_when_the_public_url_is_https(vhost: str, sqlite_url: str) -> None:
    """Behind a proxy that ends TLS shipcast sees plain http: the public URL decides."""
    from .conftest import make_settings

    settings = make_settings(vhost, sqlite_url, public_url="https://track.example.com")
    async with ShipcastProcess(settings) as process:
        await process.apply(doc())
        await post_events(process, event("OFD", 1))
        process.http.headers.pop("authorization")
        response = await process.http.get(page_url(settings) + "?lang=hi")
        assert response.status_code == 200
        cookies = response.headers.get_list("set-cookie")
        assert len(cookies) == 2 and all("; secure" in cookie.lower() for cookie in cookies), cookies


async def test_a_ping_for_an_order_no_page_shows_is_dropped_quietly(shipcast: ShipcastProcess,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """No page open: the ping reaches no queue, and the broker drops it without
    sending it back (a returned message would be an error line for every event)."""
    await shipcast.apply(doc())
    before = _tracked()
    with caplog.at_level("WARNING"):
        await post_events(shipcast, *(event("OFD", sequence) for sequence in range(1, 6)))
        await eventually(lambda: _tracked() >= before + 5, timeout=30)
        await asyncio.sleep(0.5)  # a returned ping would arrive after its publish
    # (Only returned messages: another test's connection in this process may log its own retries.)
    assert not [record for record in caplog.records if "Basic.Return" in record.getMessage()], caplog.text


def _tracked() -> float:
    """OFD events the tracking channel has handled in this process (each one's ping sent)."""
    from shipcast import metrics

    return metrics.value("shipcast_deliveries_total", channel="tracking", event_type="OFD", outcome="delivered")
