"""The development outbox and development mode: with no Twilio credentials
or SMTP server, SMS, WhatsApp and email are kept, rendered as sent, under the
same rules; with them, never; ``SHIPCAST_DEV_OUTBOX=off`` fails as before.
The command line and the portal show the outbox; the development webhook
receiver verifies signatures, and the guard lets through that receiver only."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from shipcast.app.retention import prune
from shipcast.exceptions import ConfigError
from shipcast.messaging import outbox
from shipcast.plugins.email import EmailChannel
from shipcast.plugins.sms import SmsChannel
from shipcast.plugins.whatsapp import WhatsAppChannel
from shipcast.security.links import identifiers
from shipcast.security.signing import generate_secret, sign, verify
from shipcast.settings import Settings
from shipcast.store import OutboxMessage, Store

from .conftest import make_settings
from .helpers import ShipcastProcess, eventually, run_cli, settled
from .portal import signed_in
from .test_email import Mailbox, mailbox  # noqa: F401 (fixtures)
from .test_sms import SID, TOKEN, FakeTwilio, event_body, twilio  # noqa: F401 (fixtures)

pytestmark = pytest.mark.broker
OFD_SID = "HX" + "a" * 32
CUSTOMER_CHANNELS = ("sms", "whatsapp", "email")


def customers_doc(**branding: Any) -> dict[str, Any]:
    """acme with SMS, WhatsApp and email on OFD."""
    return {"partners": [{"id": "acme", "name": "Acme Retail",
                          "branding": {"primary_color": "#123456", **branding}, "channels": {
        "sms": {"events": ["OFD"], "sender": "ACMEIN"},
        "whatsapp": {"events": ["OFD"], "sender": "+14155238886", "content_sids": {"OFD": OFD_SID}},
        "email": {"events": ["OFD"], "from_address": "Acme Retail <orders@acme.example.com>"}}}]}


def receiver_doc(url: str, secret: str) -> dict[str, Any]:
    return {"partners": [{"id": "acme", "name": "Acme Retail", "channels": {
        "webhook": {"endpoints": [{"id": "orders", "url": url, "events": ["*"], "secret": secret}]}}}]}


async def delivered(shipcast: ShipcastProcess, event_id: str, channels: tuple[str, ...]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await eventually(_all(shipcast, event_id, channels), timeout=20)
    return rows


def _all(shipcast: ShipcastProcess, event_id: str, channels: tuple[str, ...]) -> Any:
    async def check() -> list[dict[str, Any]] | None:
        rows = await settled(shipcast, event_id)()
        return rows if {row["channel"] for row in rows} >= set(channels) else None
    return check


async def one_event_kept(shipcast: ShipcastProcess) -> dict[str, int]:
    """Post an OFD for acme; once delivered, each channel's message's number in the outbox."""
    event = event_body("OFD")
    await shipcast.http.post("/v1/events", json=event)
    await delivered(shipcast, event["event_id"], CUSTOMER_CHANNELS)
    return {row["channel"]: row["id"] for row in await shipcast.services.store.list_outbox()}


@pytest.fixture
async def development(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    """shipcast in development mode, no Twilio or SMTP settings, acme's customers on three channels."""
    settings = make_settings(vhost, sqlite_url, development=True)
    async with ShipcastProcess(settings) as shipcast:
        await shipcast.apply(customers_doc())
        yield shipcast


async def test_without_credentials_each_message_is_kept_as_it_would_have_been_sent(
        development: ShipcastProcess) -> None:
    shipcast = development
    event = event_body("OFD", name="Ann O'Brien & <Co>")
    assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
    rows = await delivered(shipcast, event["event_id"], CUSTOMER_CHANNELS)
    assert {row["channel"]: row["status"] for row in rows} == {c: "delivered" for c in CUSTOMER_CHANNELS}
    kept = {row["channel"]: row for row in await shipcast.services.store.list_outbox(partner_id="acme")}
    assert set(kept) == set(CUSTOMER_CHANNELS)
    # The delivery log names the message it was kept as.
    attempts = {a["channel"]: a for a in await shipcast.services.store.list_attempts(event["event_id"])}
    for channel in CUSTOMER_CHANNELS:
        assert f"development outbox #{kept[channel]['id']}" in attempts[channel]["response"], attempts[channel]
        assert kept[channel]["event_id"] == event["event_id"] and kept[channel]["order_id"] == "ORD-10023"

    sms = kept["sms"]
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None
    channel = SmsChannel(shipcast.services)
    # The same rendering as a real send: the text the SMS channel renders for this event.
    from tests.bound import parse_event
    assert sms["text"] == channel.render(parse_event(event), partner, partner.channels["sms"])
    assert sms["recipient"] == "+919876543210" and sms["subject"] == "from ACMEIN"
    assert "4821" in sms["text"] and f"{shipcast.settings.public_url}/t/" in sms["text"]
    assert sms["detail"].endswith("segments (GSM-7)")

    whatsapp = kept["whatsapp"]
    assert whatsapp["content_sid"] == OFD_SID and whatsapp["recipient"] == "whatsapp:+919876543210"
    variables = orjson.loads(whatsapp["variables"])
    assert variables["1"] == "Acme Retail" and variables["4"] == "4821"
    assert "{{4}} = 4821" in whatsapp["text"] and whatsapp["detail"] == f"content template {OFD_SID}, 5 variables"

    email = await shipcast.services.store.outbox_message(kept["email"]["id"])
    assert email is not None and email["recipient"] == "priya@example.com"
    assert email["subject"] == "Your order ORD-10023 is out for delivery"
    assert "Ann O'Brien & <Co>" in email["text"] and "4821" in email["text"]
    assert "&lt;Co&gt;" in email["html"] and "<Co>" not in email["html"] and "#123456" in email["html"]
    assert "text and HTML parts, without List-Unsubscribe" in email["detail"]

    # A second copy of the event sends (keeps) nothing more: the claim holds as for a real send.
    assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
    await eventually(lambda: shipcast.services.store.list_deliveries(event_id=event["event_id"]))
    assert len(await shipcast.services.store.list_outbox(partner_id="acme")) == 3


async def test_an_opted_out_customer_gets_nothing_in_the_outbox_either(development: ShipcastProcess) -> None:
    shipcast = development
    await shipcast.services.store.add_opt_out("sms", "acme", "+919876543210", "replied STOP")
    event = event_body("OFD")
    await shipcast.http.post("/v1/events", json=event)
    rows = await delivered(shipcast, event["event_id"], ("email",))
    await eventually(settled(shipcast, event["event_id"], ("skipped",)))
    assert {row["channel"] for row in await shipcast.services.store.list_outbox()} == {"whatsapp", "email"}
    assert any(row["channel"] == "email" for row in rows)


async def test_with_credentials_nothing_goes_to_the_outbox(vhost: str, sqlite_url: str, twilio: FakeTwilio,  # noqa: F811
                                                            mailbox: tuple[Mailbox, int]) -> None:  # noqa: F811
    settings = make_settings(vhost, sqlite_url, development=True, twilio_account_sid=SID, twilio_auth_token=TOKEN,
                             twilio_api_url=twilio.url, twilio_content_url=twilio.url, smtp_host="127.0.0.1",
                             smtp_port=mailbox[1])
    assert outbox.reasons(settings, {"sms": SmsChannel, "whatsapp": WhatsAppChannel, "email": EmailChannel}) == {}
    async with ShipcastProcess(settings) as shipcast:
        await shipcast.apply(customers_doc())
        event = event_body("OFD")
        await shipcast.http.post("/v1/events", json=event)
        await delivered(shipcast, event["event_id"], CUSTOMER_CHANNELS)
        visitor = await signed_in(shipcast, "dev@acme.example.com", "acme", "viewer")
        try:
            page = await visitor.get("/portal/p/acme/outbox")
        finally:
            await visitor.aclose()
        assert await shipcast.services.store.list_outbox() == []
    # The stand-ins received them (the mailbox the viewer's invitation too).
    assert len(twilio.received) == 2 and [m["To"] for m in mailbox[0].messages].count("priya@example.com") == 1
    assert page.status_code == 200 and "dev-banner" not in page.text
    assert "messages are sent, not kept here" in page.text


@pytest.mark.parametrize("channel", [SmsChannel, WhatsAppChannel, EmailChannel])
def test_the_outbox_is_used_only_without_a_provider_and_never_when_off(channel: Any) -> None:
    bare = Settings(api_token="t", development=True)
    assert channel.development_outbox(bare)  # says why
    assert channel.development_outbox(bare.model_copy(update={"dev_outbox": "off"})) is None
    # Not in development mode: a missing provider fails deliveries, as in production, unless asked for.
    production = Settings(api_token="t")
    assert channel.development_outbox(production) is None
    assert channel.development_outbox(production.model_copy(update={"dev_outbox": "on"}))
    configured = Settings(api_token="t", twilio_account_sid=SID, twilio_auth_token=TOKEN, smtp_host="mail.local")
    assert channel.development_outbox(configured) is None
    with pytest.raises(ValueError, match="dev_outbox"):
        Settings(api_token="t", dev_outbox="sometimes")


def test_half_a_credential_is_never_taken_for_none(sqlite_url: str) -> None:
    """The outbox is for a provider with no credentials at all: one of
    Twilio's two is a mistake refused at start, naming the one missing, and
    an SMTP user or password with no host still sends (to localhost)."""
    with pytest.raises(ValueError, match="SHIPCAST_TWILIO_AUTH_TOKEN is not set, but SHIPCAST_TWILIO_ACCOUNT_SID is"):
        Settings(api_token="t", development=True, twilio_account_sid=SID)
    with pytest.raises(ValueError, match="SHIPCAST_TWILIO_ACCOUNT_SID is not set, but SHIPCAST_TWILIO_AUTH_TOKEN is"):
        Settings(api_token="t", development=True, twilio_auth_token=TOKEN)
    for given in ({"smtp_username": "mailer"}, {"smtp_password": "secret"}):
        assert EmailChannel.development_outbox(Settings(api_token="t", development=True, **given)) is None
    settings = Settings(api_token="secret-api-token-123", development=True, database_url=sqlite_url)
    refused = run_cli(settings, "run", env={"SHIPCAST_TWILIO_ACCOUNT_SID": SID}, timeout=30)
    assert refused.returncode == 2
    assert "SHIPCAST_TWILIO_AUTH_TOKEN is not set, but SHIPCAST_TWILIO_ACCOUNT_SID is" in refused.stderr
    assert SID not in refused.stderr and (settings.api_token or "") not in refused.stderr  # no value given is shown


async def test_off_fails_as_production_does(vhost: str, sqlite_url: str) -> None:
    settings = make_settings(vhost, sqlite_url, dev_outbox="off", retry_schedule="")
    async with ShipcastProcess(settings, channels=["sms"]) as shipcast:
        await shipcast.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {
            "sms": {"events": ["OFD"], "sender": "ACMEIN"}}}]})
        event = event_body("OFD")
        await shipcast.http.post("/v1/events", json=event)
        [row] = await eventually(settled(shipcast, event["event_id"], ("dead",)), timeout=20)
        assert "SHIPCAST_TWILIO_ACCOUNT_SID" in row["last_error"]
        assert await shipcast.services.store.list_outbox() == []


async def test_the_command_line_lists_and_shows_the_outbox(development: ShipcastProcess) -> None:
    shipcast = development
    kept = await one_event_kept(shipcast)
    settings = shipcast.settings
    listed = run_cli(settings, "outbox", "list", "--partner", "acme")
    assert listed.returncode == 0, listed.stderr
    for channel in CUSTOMER_CHANNELS:
        assert f"\n{kept[channel]}  " in listed.stdout and channel in listed.stdout
    only = run_cli(settings, "outbox", "list", "--channel", "sms", "--json")
    assert [row["id"] for row in orjson.loads(only.stdout)] == [kept["sms"]]
    assert "the outbox is empty" in run_cli(settings, "outbox", "list", "--partner", "globex").stdout
    shown = run_cli(settings, "outbox", "show", str(kept["sms"]))
    assert shown.returncode == 0 and "segments (GSM-7)" in shown.stdout and "OTP 4821" in shown.stdout
    html = run_cli(settings, "outbox", "show", str(kept["email"]), "--html")
    assert html.stdout.lstrip().startswith("<!doctype html>") and "#123456" in html.stdout
    missing = run_cli(settings, "outbox", "show", "99999")
    assert missing.returncode == 2 and "no message #99999 in the outbox" in missing.stderr
    assert "NUMBER" in missing.stderr
    no_html = run_cli(settings, "outbox", "show", str(kept["sms"]), "--html")
    assert no_html.returncode == 2 and "--html" in no_html.stderr
    huge = run_cli(settings, "outbox", "show", "9" * 30)
    assert huge.returncode == 2 and "NUMBER" in huge.stderr
    bad_limit = run_cli(settings, "outbox", "list", "--limit", "0")
    assert bad_limit.returncode == 2 and "--limit" in bad_limit.stderr


async def test_the_portal_shows_the_outbox_and_a_banner_on_every_page(development: ShipcastProcess) -> None:
    shipcast = development
    kept = await one_event_kept(shipcast)
    viewer = await signed_in(shipcast, "reader@acme.example.com", "acme", "viewer")
    try:
        for path in ("/portal/p/acme/", "/portal/p/acme/messages", "/portal/p/acme/outbox"):
            page = await viewer.get(path)
            assert page.status_code == 200 and 'class="dev-banner"' in page.text, path
            assert "email, sms, whatsapp messages go to the development outbox" in page.text, path
        listing = await viewer.get("/portal/p/acme/outbox")
        for number in kept.values():
            assert f'href="/portal/p/acme/outbox/{number}"' in listing.text
        filtered = await viewer.get("/portal/p/acme/outbox", params={"channel": "email"})
        assert f"outbox/{kept['email']}\"" in filtered.text and f"outbox/{kept['sms']}\"" not in filtered.text
        too_long = await viewer.get("/portal/p/acme/outbox", params={"channel": "x" * 65})
        assert too_long.status_code == 422 and "channel" in too_long.text

        sms = await viewer.get(f"/portal/p/acme/outbox/{kept['sms']}")
        assert sms.status_code == 200 and "segments (GSM-7)" in sms.text and "OTP 4821" in sms.text
        email = await viewer.get(f"/portal/p/acme/outbox/{kept['email']}")
        assert f'<iframe class="email-frame" sandbox src="/portal/p/acme/outbox/{kept["email"]}/html"' in email.text
        assert "frame-src 'self'" in email.headers["content-security-policy"]
        framed = await viewer.get(f"/portal/p/acme/outbox/{kept['email']}/html")
        policy = framed.headers["content-security-policy"]
        assert framed.status_code == 200 and policy.startswith("sandbox;") and "script-src" not in policy
        assert "allow-scripts" not in policy and "frame-ancestors 'self'" in policy and "#123456" in framed.text
        assert (await viewer.get(f"/portal/p/acme/outbox/{kept['sms']}/html")).status_code == 404
        assert (await viewer.get("/portal/p/acme/outbox/99999")).status_code == 404
        for hostile in ("/portal/p/acme/outbox/" + "9" * 30, "/portal/p/acme/outbox?before=" + "9" * 30):
            refused = await viewer.get(hostile)  # bounded, and named: never a 500
            assert refused.status_code == 422 and ("number" in refused.text or "before" in refused.text), hostile
    finally:
        await viewer.aclose()

    await shipcast.apply({"partners": [{"id": "globex", "name": "Globex", "channels": {"tracking": {}}}]})
    other = await signed_in(shipcast, "dev@globex.example.com", "globex", "admin")
    try:  # another partner's message is not found through its own pages either
        assert (await other.get(f"/portal/p/globex/outbox/{kept['sms']}")).status_code == 404
        mine = await other.get("/portal/p/globex/outbox")
        assert mine.status_code == 200 and "no message has been kept for globex" in mine.text
    finally:
        await other.aclose()

    operator = await signed_in(shipcast, "ops@example.com")
    try:
        every = await operator.get("/portal/operator/outbox")
        assert every.status_code == 200 and 'href="/portal/p/acme/outbox"' in every.text
        assert 'href="/portal/operator/outbox">See the outbox' in every.text
        none = await operator.get("/portal/operator/outbox", params={"partner": "globex"})
        assert "The outbox is empty for this filter" in none.text
    finally:
        await operator.aclose()


async def test_the_dev_receiver_verifies_a_good_signature_and_records_a_bad_one(vhost: str,
                                                                                   sqlite_url: str) -> None:
    # No SHIPCAST_WEBHOOK_ALLOWED_NETWORKS: development mode lets through its own receiver, and only it.
    settings = make_settings(vhost, sqlite_url, development=True, webhook_allowed_networks="")
    secret = generate_secret()
    url = f"http://127.0.0.1:{settings.port}/dev/receiver/acme/orders"
    async with ShipcastProcess(settings) as shipcast:
        await shipcast.apply(receiver_doc(url, secret))
        event = event_body("OFD")
        await shipcast.http.post("/v1/events", json=event)
        [row] = await eventually(settled(shipcast, event["event_id"]), timeout=20)
        assert row["status"] == "delivered" and row["channel"] == "webhook"
        [received] = await shipcast.services.store.list_outbox(channel="webhook-receiver")
        assert received["verified"] is True and received["event_id"] == event["event_id"]
        assert received["event_type"] == "OFD" and received["recipient"] == "orders"
        assert orjson.loads(received["text"])["event_id"] == event["event_id"]

        body = b'{"event_id": "evt_forged"}'
        stamp = str(int(time.time()))
        forged = await shipcast.http.post("/dev/receiver/acme/orders", content=body, headers={
            "webhook-id": "evt_forged", "webhook-timestamp": stamp,
            "webhook-signature": sign([generate_secret()], "evt_forged", int(stamp), body)})
        assert forged.status_code == 401 and "no v1 signature matches" in forged.json()["detail"]
        # An endpoint that does not exist: nothing is filed (anyone may post here, but only to real endpoints).
        unknown = await shipcast.http.post("/dev/receiver/acme/nope", content=body)
        assert unknown.status_code == 404 and "no endpoint 'nope'" in unknown.json()["detail"]
        rows = await shipcast.services.store.list_outbox(channel="webhook-receiver")
        assert [(r["event_id"], r["verified"]) for r in rows] == [("evt_forged", False), (event["event_id"], True)]
        assert rows[0]["detail"].startswith("not verified: no v1 signature matches")

        # Loopback is otherwise still refused: another path, port or a query, and another
        # partner's or endpoint's receiver (its events would land in that partner's outbox).
        await shipcast.apply({"partners": [{"id": "globex", "name": "Globex"}]})
        for other in (f"http://127.0.0.1:{settings.port}/v1/events", f"http://127.0.0.1:{settings.port + 1}"
                      "/dev/receiver/acme/orders", url + "?to=elsewhere",
                      f"http://127.0.0.1:{settings.port}/dev/receiver/globex/orders",
                      f"http://127.0.0.1:{settings.port}/dev/receiver/acme/other"):
            with pytest.raises(ConfigError, match="loopback"):
                await shipcast.apply(receiver_doc(other, secret))

    outside = make_settings(vhost, sqlite_url, webhook_allowed_networks="")
    async with ShipcastProcess(outside) as shipcast:
        with pytest.raises(ConfigError, match="endpoints.0.url"):
            await shipcast.apply(receiver_doc(f"http://127.0.0.1:{outside.port}/dev/receiver/acme/orders", secret))
        assert (await shipcast.http.post("/dev/receiver/acme/orders", content=b"{}")).status_code == 404


def test_verify_agrees_with_the_standard_webhooks_library() -> None:
    secret, body, now = generate_secret(), b'{"a": 1}', int(time.time())
    header = sign([generate_secret(), secret], "msg_1", now, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": header}
    Webhook(secret).verify(body, headers)  # raises if it does not verify
    assert verify([secret], "msg_1", str(now), body, header) is None
    assert verify([secret], "msg_1", str(now), body + b" ", header) == "no v1 signature matches the endpoint's secret"
    assert "more than 300 s" in (verify([secret], "msg_1", str(now - 301), body, header) or "")
    assert "not a number" in (verify([secret], "msg_1", "soon", body, header) or "")
    assert "missing" in (verify([secret], "", str(now), body, header) or "")


async def test_the_outbox_is_bounded_and_pruned_with_the_attempt_log(database_url: str) -> None:
    settings = Settings(secret_key="ZmFrZS1rZXktZm9yLXRlc3RzLW9ubHktMzItYnl0ZXM=", retain_attempts_days=30)
    store = await Store(database_url, identifiers(settings)).open()
    try:
        number = await store.add_outbox(OutboxMessage(channel="sms", partner_id="acme", recipient="+91" * 200,
                                                      text="x" * 100_000, html="<p>" * 100_000, detail="d" * 900))
        kept = await store.outbox_message(number)
        assert kept is not None
        assert len(kept["text"]) == 64 * 1024 and len(kept["html"]) == 256 * 1024
        assert len(kept["recipient"]) == 320 and len(kept["detail"]) == 500
        now = datetime.now(UTC)
        assert (await prune(store, settings, dry_run=True, now=now + timedelta(days=29)))["outbox"] == 0
        assert (await prune(store, settings, now=now + timedelta(days=31)))["outbox"] == 1
        assert await store.outbox_message(number) is None
    finally:
        await store.close()
