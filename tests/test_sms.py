"""The SMS channel end to end on the real broker: templates rendered for every
event type and language, texts sent through the real twilio SDK to a local
server that speaks Twilio's Messages API, and Twilio's errors mapped to retry
or dead letter."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from shipcast import metrics
from shipcast.plugin.channel import Target
from tests.bound import example
from shipcast.exceptions import ConfigError
from shipcast.messaging.templates import LANGUAGES, sparse_event
from tests.bound import check_templates, render
from shipcast.model.partners import Partner
from tests.bound import event_types
from shipcast.plugins.sms.segments import encoding, segments
from shipcast.settings import Settings

from .conftest import make_settings
from .helpers import ShipcastProcess, TcpProxy, eventually, serve, settled

pytestmark = pytest.mark.broker
SID, TOKEN = "AC" + "0" * 32, "twilio-test-token"


@dataclass
class FakeTwilio:
    """Twilio's REST API for Messages, as far as the SDK uses it: basic auth,
    form fields in, a message resource or a Twilio error out."""

    #: Twilio error codes to answer, in order (then success); the second list
    #: only for WhatsApp messages.
    errors: list[tuple[int, int]] = field(default_factory=list)
    whatsapp_errors: list[tuple[int, int]] = field(default_factory=list)
    received: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    #: Awaited once a message is received, before Twilio answers it.
    before_answer: Callable[[], Awaitable[None]] | None = None
    #: Content templates' WhatsApp (status, category) by sid; any other sid is an
    #: approved utility template, and a sid mapped to None is unknown (404).
    templates: dict[str, tuple[str, str] | None] = field(default_factory=dict)

    async def _messages(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != expected or request.match_info["sid"] != SID:
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        form = dict(await request.post())
        self.received.append({k: str(v) for k, v in form.items()})
        if self.before_answer is not None:
            await self.before_answer()
        script = self.whatsapp_errors if str(form.get("To", "")).startswith("whatsapp:") else self.errors
        if script:
            status, code = script.pop(0)
            return web.json_response({"code": code, "message": f"error {code}", "status": status,
                                      "more_info": f"https://www.twilio.com/docs/errors/{code}"}, status=status)
        return web.json_response({"sid": f"SM{len(self.received):032d}", "status": "queued", "to": form["To"],
                                  "from": form["From"], "body": form.get("Body", ""), "account_sid": SID,
                                  "num_segments": "1", "direction": "outbound-api"}, status=201)

    async def _approval(self, request: web.Request) -> web.Response:
        """The Content API's ``GET /v1/Content/{sid}/ApprovalRequests``."""
        expected = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        sid = request.match_info["sid"]
        approval = self.templates.get(sid, ("approved", "UTILITY"))
        if approval is None:
            return web.json_response({"code": 20404, "message": "Not found", "status": 404}, status=404)
        status, category = approval
        return web.json_response({"sid": sid, "account_sid": SID, "url": f"{self.url}/v1/Content/{sid}/ApprovalRequests",
                                  "whatsapp": {"type": "whatsapp", "name": "order_update", "category": category,
                                               "content_type": "twilio/text", "status": status,
                                               "rejection_reason": "", "allow_category_change": False}})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeTwilio:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._messages)
        app.router.add_get("/v1/Content/{sid}/ApprovalRequests", self._approval)
        self._runner, self.port = await serve(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


def sms_doc(**sms: Any) -> dict[str, Any]:
    return {"partners": [{"id": "acme", "name": "Acme Retail", "branding": {"support_phone": "+919876543210"},
                          "channels": {"sms": {"events": ["OFD", "FAIL"], "sender": "ACMEIN", **sms}}}]}


def event_body(event_type: str, **customer: Any) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(example(event_type).to_json())
    body["order"]["customer"].update(customer)
    return body


@pytest.fixture
def sms_settings(vhost: str, sqlite_url: str, twilio: FakeTwilio) -> Settings:
    return make_settings(vhost, sqlite_url, twilio_account_sid=SID, twilio_auth_token=TOKEN,
                         twilio_api_url=twilio.url, twilio_content_url=twilio.url,
                         public_url="https://track.example.com")


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("event_type", ["OFD", "DEL", "FAIL", "RET"])
def test_every_template_renders_for_every_event_type_and_language(event_type: str, language: str) -> None:
    settings = Settings(api_token="t", public_url="https://track.example.com")
    partner = Partner("acme", "Acme Retail", {"support_phone": "+919876543210"}, {})
    text = render(settings, "sms", example(event_type), partner, None, language)
    assert "ORD-10023" in text and "Acme Retail" in text and "{{" not in text
    assert text.startswith("Acme Retail:") and segments(text) <= 6
    if event_type == "OFD":
        assert "4821" in text  # the OTP
    if event_type == "FAIL":  # the reason, the OMS's reschedule link and the tracking page
        assert "Customer not reachable" in text and "reschedule" in text
    assert "https://track.example.com/t/" in text  # every message carries the tracking link
    assert encoding(text) == ("UCS-2" if language == "hi" else "GSM-7")
    sparse = render(settings, "sms", sparse_event(example(event_type)), partner, None, language)
    assert "None" not in sparse and "https://track.example.com/t/" in sparse


def test_text_is_sent_as_written_and_a_printed_null_is_refused() -> None:
    """Text templates are not HTML: an ampersand or an apostrophe reaches the
    customer as written. A template printing a field the event left null is
    refused at apply time, never sent as "None"."""
    settings = Settings(api_token="t", public_url="https://track.example.com")
    body = orjson.loads(example("OFD").to_json())
    body["order"]["customer"]["name"] = "Ann O'Brien & Co <3"
    from tests.bound import parse_event

    partner = Partner("acme", "Tom & Jerry's", {}, {})
    text = render(settings, "sms", parse_event(body), partner, {"OFD": "{{ partner.name }}: hi {{ customer.name }}"})
    assert text == "Tom & Jerry's: hi Ann O'Brien & Co <3"
    errors = check_templates(settings, "sms", "acme", "Acme", {},
                             {"events": ["OFD"], "templates": {"OFD": "Call {{ rider.phone }}: {{ tracking_url }}"}})
    assert list(errors) == ["templates.OFD"] and "null" in errors["templates.OFD"][0]


def test_a_broken_override_is_refused_naming_the_field() -> None:
    settings = Settings(api_token="t")
    errors = check_templates(settings, "sms", "acme", "Acme", {},
                             {"events": ["OFD", "DEL"], "templates": {"OFD": "Hi {{ customer.nmae }}"}})
    assert list(errors) == ["templates.OFD"] and "nmae" in errors["templates.OFD"][0]
    assert check_templates(settings, "sms", "acme", "Acme", {}, {"events": ["*"]}) == {}
    # Listed by name, the types with no template (the customer's own) are refused, each named.
    errors = check_templates(settings, "sms", "acme", "Acme", {}, {"events": list(event_types())})
    assert sorted(errors) == ["events (INSTRUCTIONS_ADDED)", "events (RATED)", "events (RESCHEDULE_REQUESTED)"]


@pytest.mark.parametrize(("text", "expected"), [
    ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3),
    ("[" * 80, 1), ("[" * 81, 2),                      # extension characters count twice
    ("a" * 152 + "[" + "a" * 152, 3),                  # ...and are never split across two segments
    ("😀" * 35, 1), ("a" + "😀" * 34 + "a" * 2, 2),       # an emoji is two UCS-2 units, never split
    ("आ" * 70, 1), ("आ" * 71, 2), ("आ" * 134, 2), ("आ" * 135, 3),
])
def test_segments_are_counted_per_encoding(text: str, expected: int) -> None:
    assert segments(text) == expected


async def test_partners_apply_refuses_a_template_that_would_break(sms_settings: Settings) -> None:
    async with ShipcastProcess(sms_settings, channels=[]) as shipcast:
        with pytest.raises(ConfigError) as caught:
            await shipcast.apply(sms_doc(templates={"FAIL": "{{ failure.reasn }}"}))
        assert "partner 'acme': channels.sms.templates.FAIL" in str(caught.value) and "reasn" in str(caught.value)
        with pytest.raises(ConfigError, match="dlt_template_ids"):
            await shipcast.apply(sms_doc(dlt_template_ids={"OFD": "123"}))


GOOD_FAIL = "{{ partner.name }}: missed you, {{ failure.reason }}. Pick a new time: {{ tracking_url }}"


@pytest.mark.parametrize(("templates", "field", "missing"), [
    ({"OFD": "{{ partner.name }}: out today, OTP {{ otp.code }}"}, "templates.OFD", "the tracking link"),
    ({"DEL": "Delivered, thank you!"}, "templates.DEL", "the tracking link"),
    ({"FAIL": "We missed you. Pick a new time: {{ tracking_url }}"}, "templates.FAIL", "the failure's reason"),
    ({"FAIL": "We missed you: {{ failure.reason }}"}, "templates.FAIL", "the tracking link"),
    ({"FAIL": {"en": GOOD_FAIL, "hi": "हम आपसे नहीं मिल सके: {{ tracking_url }}"}}, "templates.FAIL",
     "(hi) must give the failure's reason"),
])
async def test_apply_refuses_an_override_that_drops_what_every_message_carries(
        sms_settings: Settings, templates: dict[str, Any], field: str, missing: str) -> None:
    """Every message carries the tracking link (where a DEL's customer rates
    the delivery and a FAIL's picks a new time), and a FAIL its reason: an
    override without them is refused at apply, naming the field."""
    async with ShipcastProcess(sms_settings, channels=[]) as shipcast:
        with pytest.raises(ConfigError) as caught:
            await shipcast.apply(sms_doc(events=["OFD", "DEL", "FAIL"], templates=templates))
        assert list(caught.value.errors or {}) == [f"partner 'acme': channels.sms.{field}"]
        assert missing in str(caught.value)


async def test_apply_accepts_overrides_that_carry_the_link_and_the_reason(sms_settings: Settings,
                                                                           tmp_path: Any) -> None:
    (tmp_path / "sms").mkdir()
    (tmp_path / "sms" / "DEL.en.j2").write_text("Delivered! Rate us: {{ tracking_url }}")
    async with ShipcastProcess(sms_settings, channels=[]) as shipcast:
        await shipcast.apply(sms_doc(events=["OFD", "DEL", "FAIL"], template_dir=str(tmp_path), templates={
            "OFD": "OTP {{ otp.code if otp else '-' }}, track: {{ tracking_url }}",
            "FAIL": {"en": GOOD_FAIL, "hi": "{{ failure.reason }}। नया समय चुनें: {{ tracking_url }}"}}))
        [partner] = await shipcast.services.store.get_partners()
        assert partner.channels["sms"]["templates"]["FAIL"]["en"] == GOOD_FAIL
        # A partner's own directory is held to the same rule.
        (tmp_path / "sms" / "DEL.en.j2").write_text("Delivered! Thank you.")
        with pytest.raises(ConfigError) as caught:
            await shipcast.apply(sms_doc(events=["OFD", "DEL", "FAIL"], template_dir=str(tmp_path)))
        assert list(caught.value.errors or {}) == ["partner 'acme': channels.sms.template_dir"]
        assert "DEL (en) must give the tracking link" in str(caught.value)


async def test_a_text_goes_through_the_twilio_sdk_with_the_exact_fields(sms_settings: Settings,
                                                                        twilio: FakeTwilio) -> None:
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(sms_doc())
        ofd = event_body("OFD", phone="98765 43210", language="hi")  # a local number, in Hindi
        response = await shipcast.http.post("/v1/events", json=[ofd, event_body("DEL")])
        assert response.status_code == 202
        [sent] = await eventually(lambda: twilio.received)
        assert sent["To"] == "+919876543210" and sent["From"] == "ACMEIN"
        assert sent["StatusCallback"] == "https://track.example.com/callbacks/sms/twilio"
        assert "4821" in sent["Body"] and "डिलीवरी" in sent["Body"]
        assert set(sent) == {"To", "From", "Body", "StatusCallback"}
        [row] = await eventually(settled(shipcast, ofd["event_id"]))  # a row reads "sending" first
        assert row["status"] == "delivered" and row["address"] == "+91******3210"  # masked in the log
        [attempt] = await shipcast.services.store.list_attempts(ofd["event_id"], "sms")
        assert attempt["response"].startswith("SM") and "segments" in attempt["response"]


@pytest.mark.parametrize(("status", "code", "outcome", "reason"), [
    (400, 21211, "dead", "Twilio 21211: invalid 'To' phone number"),
    (400, 21610, "dead", "Twilio 21610: the customer has opted out"),
    (401, 20003, "delivered", None),      # wrong credentials: retried (the operator fixes them), then sent
    (429, 20429, "delivered", None),      # retried, then sent
    (503, 20503, "delivered", None),
    (500, 99999, "delivered", None),      # a 5xx with a code we do not know: Twilio's outage, retried
])
async def test_twilio_errors_are_retried_or_dead_lettered(sms_settings: Settings, twilio: FakeTwilio, status: int,
                                                          code: int, outcome: str, reason: str | None,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")  # every library's INFO lines (twilio's request log among them), shipcast's DEBUG
    caplog.set_level("DEBUG", logger="shipcast")
    twilio.errors = [(status, code)]
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(sms_doc())
        event = event_body("FAIL")
        await shipcast.http.post("/v1/events", json=event)
        [row] = await eventually(settled(shipcast, event["event_id"]), timeout=20)
        assert row["status"] == outcome
        attempts = await shipcast.services.store.list_attempts(event["event_id"], "sms")
        assert attempts[0]["status"] == status and str(code) in attempts[0]["error"]
        if reason:
            assert attempts[0]["error"].startswith(reason) and len(attempts) == 1
        else:
            assert [a["outcome"] for a in attempts] == ["retry", "delivered"] and len(twilio.received) == 2
    # Neither the auth token nor the customer's number reaches a log line.
    assert caplog.records and TOKEN not in caplog.text and "9876543210" not in caplog.text


async def test_an_invalid_number_is_a_permanent_failure_never_sent(sms_settings: Settings,
                                                                   twilio: FakeTwilio) -> None:
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(sms_doc())
        event = event_body("OFD", phone="+91 12345")
        await shipcast.http.post("/v1/events", json=event)
        [row] = await eventually(settled(shipcast, event["event_id"]))
        assert row["status"] == "dead" and row["last_error"].startswith("not a valid phone number")
        assert twilio.received == []


async def test_customers_bad_numbers_never_open_the_providers_circuit(sms_settings: Settings,
                                                                      twilio: FakeTwilio) -> None:
    """Every customer of a partner shares its provider's circuit breaker:
    a dozen numbers Twilio refuses are those customers' faults, not
    Twilio's, and the next customer's text goes straight out."""
    twilio.errors = [(400, 21211)] * 12
    async with ShipcastProcess(sms_settings, ["sms", "archive"]) as shipcast:
        await shipcast.apply(sms_doc())
        bad = [event_body("OFD") for _ in range(12)]
        await shipcast.http.post("/v1/events", json=bad)
        for event in bad:
            [row] = await eventually(settled(shipcast, event["event_id"]), timeout=20)
            assert row["status"] == "dead" and "21211" in row["last_error"]
        [worker] = [w for w in shipcast.workers if w.name == "sms"]
        assert worker.gates.get("acme", Target("customer", "")).breaker.state == "closed"
        good = event_body("FAIL")
        await shipcast.http.post("/v1/events", json=good)
        [row] = await eventually(settled(shipcast, good["event_id"]), timeout=20)
        assert row["status"] == "delivered"
        assert [a["outcome"] for a in await shipcast.services.store.list_attempts(good["event_id"])] == ["delivered"]
        assert await shipcast.services.store.list_operator_events() == []  # no endpoint.failing for Twilio


async def test_one_text_per_event_whatever_the_broker_redelivers(sms_settings: Settings,
                                                                  twilio: FakeTwilio) -> None:
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(sms_doc())
        event = event_body("OFD")
        for _ in range(3):  # the same event published again and again, as a redelivery would bring it
            assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
        await eventually(lambda: len(twilio.received) >= 1)
        await eventually(settled(shipcast, event["event_id"], ("delivered",)))
        await asyncio.sleep(1.5)  # the copy that found another in flight comes back from its retry tier
        assert len(twilio.received) == 1
        outcomes = sorted(a["outcome"] for a in await shipcast.services.store.list_attempts(event["event_id"]))
        assert outcomes.count("delivered") == 1


async def test_one_text_when_the_broker_redelivers_after_twilio_accepted_it(vhost: str, sqlite_url: str,
                                                                            twilio: FakeTwilio) -> None:
    """The worker's connection to RabbitMQ drops while Twilio is accepting
    the text: the handler goes on, logs the text delivered with Twilio's id,
    and its ack fails; the broker hands the message out again, and that copy
    finds it delivered and sends nothing. (When aiormq cancelled the handler
    with its channel, the copy found the text only through the claim's note,
    and a handler cut off before that note sent the text twice.)"""
    from shipcast.amqp.parking import list_dead

    proxy = await TcpProxy().start()
    settings = make_settings(vhost, sqlite_url, amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
                             twilio_account_sid=SID, twilio_auth_token=TOKEN, twilio_api_url=twilio.url,
                             twilio_content_url=twilio.url,
                             public_url="https://track.example.com")

    try:
        async with ShipcastProcess(settings, channels=["sms"]) as shipcast:
            async def drop_the_broker() -> None:  # once: while the worker waits for Twilio's answer
                twilio.before_answer = None
                await proxy.cut()
                await proxy.restore()

            await shipcast.apply(sms_doc())
            twilio.before_answer = drop_the_broker
            skipped = metrics.value("shipcast_targets_skipped_total", channel="sms", reason="delivered")
            event = event_body("OFD")
            assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
            [row] = await eventually(settled(shipcast, event["event_id"], ("delivered",)), timeout=30)
            assert row["attempts"] == 1
            # Logged once, by the copy that sent it, with the id Twilio gave it; the redelivered copy skipped.
            await eventually(lambda: metrics.value("shipcast_targets_skipped_total", channel="sms",
                                                   reason="delivered") - skipped == 1)
            [attempt] = await shipcast.services.store.list_attempts(event["event_id"])
            assert attempt["outcome"] == "delivered" and attempt["response"].startswith(f"SM{1:032d}")
            assert len(twilio.received) == 1
            [topology] = [worker.topology for worker in shipcast.workers]
            assert await list_dead(shipcast.services.broker, topology) == []
    finally:
        await proxy.close()


async def test_a_text_twilio_took_from_a_worker_stopped_past_its_grace_is_not_sent_again(
        sms_settings: Settings, twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    await sent_once_across_a_stop_past_the_grace(sms_settings, twilio, monkeypatch, caplog, "sms", sms_doc())


async def sent_once_across_a_stop_past_the_grace(settings: Settings, twilio: FakeTwilio,
                                                monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                channel: str, doc: dict[str, Any]) -> None:
    """The worker stops while Twilio is still answering a message: past its
    grace the delivery is cut short and its message goes back to the queue,
    unrecorded, but the worker waits for Twilio's answer before it closes
    its client, and notes the message's id. The next worker's copy finds
    the message sent and logs it delivered with that id, sending nothing:
    one message. (SMS here, WhatsApp in tests/test_whatsapp.py.)"""
    from shipcast.app.runtime import start_workers, stop_workers
    from shipcast.delivery import consumer

    monkeypatch.setattr(consumer, "STOP_GRACE", 0.3)
    answer = asyncio.Event()

    async def hold() -> None:  # the first message only
        twilio.before_answer = None
        await answer.wait()

    async with ShipcastProcess(settings, channels=[channel]) as shipcast:
        await shipcast.apply(doc)
        twilio.before_answer = hold
        event = event_body("OFD")
        assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
        await eventually(lambda: len(twilio.received) == 1)
        stopping = asyncio.create_task(stop_workers(shipcast.workers))
        shipcast.workers = []
        await eventually(lambda: "cancelling them (redelivered)" in caplog.text)  # past the grace
        answer.set()  # Twilio answers the message it took, while the worker is stopping
        await stopping
        store = shipcast.services.store
        assert await store.list_attempts(event["event_id"]) == []  # the copy cut short logged nothing
        sid = f"SM{1:032d}"
        assert await store.sent_message(event["event_id"], channel, "customer") == sid
        shipcast.workers = await start_workers(shipcast.services, [channel])
        [row] = await eventually(settled(shipcast, event["event_id"], ("delivered",)), timeout=30)
        [attempt] = await store.list_attempts(event["event_id"])
        assert attempt["outcome"] == "delivered" and sid in attempt["response"]
        assert len(twilio.received) == 1


async def test_an_ofd_after_the_orders_del_is_not_sent(sms_settings: Settings, twilio: FakeTwilio) -> None:
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(sms_doc(events=["OFD", "DEL"]))
        ofd, deliv = event_body("OFD"), event_body("DEL")
        ofd["sequence"], deliv["sequence"] = 1, 2
        await shipcast.http.post("/v1/events", json=deliv)
        await eventually(lambda: shipcast.services.store.get_event(deliv["event_id"]))  # archived
        await shipcast.http.post("/v1/events", json=ofd)  # arrives late
        [row] = await eventually(settled(shipcast, ofd["event_id"], ("delivered", "dead", "skipped")))
        assert row["status"] == "skipped" and row["last_error"].startswith("stale:")
        assert [r["Body"] for r in twilio.received if "delivered" in r["Body"]] and len(twilio.received) == 1


async def test_review_requests_wait_out_the_quiet_hours_but_otps_and_failures_go(sms_settings: Settings,
                                                                                  twilio: FakeTwilio) -> None:
    """A merchant's ``critical`` list only adds to OFD and FAIL: one that
    leaves them out still never makes an OTP or a failure wait."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"),
             "end": (now + timedelta(hours=2)).strftime("%H:%M"), "timezone": "UTC"}
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(sms_doc(events=["OFD", "DEL", "FAIL"], quiet_hours=quiet, critical=["RET"]))
        ofd, deliv, fail = event_body("OFD"), event_body("DEL"), event_body("FAIL")
        await shipcast.http.post("/v1/events", json=[ofd, deliv, fail])
        [row] = await eventually(settled(shipcast, deliv["event_id"], ("waiting", "delivered", "dead", "skipped")))
        assert row["status"] == "waiting" and row["last_error"].startswith("quiet hours until")
        await eventually(lambda: len(twilio.received) == 2)
        bodies = sorted(sent["Body"] for sent in twilio.received)
        assert any("4821" in body for body in bodies)  # the OTP went out
        assert any("Customer not reachable" in body for body in bodies)  # and the failure, with its reason
        for event in (ofd, fail):
            [row] = await eventually(settled(shipcast, event["event_id"], ("delivered",)))
            assert row["attempts"] == 1
        await asyncio.sleep(5)  # several deferrals through the retry tiers ("1,2"): none spends an attempt
        assert len(twilio.received) == 2
        # The quiet hours end (here: the merchant drops them): the review request goes, on its first attempt.
        await shipcast.apply(sms_doc(events=["OFD", "DEL", "FAIL"]))
        [row] = await eventually(settled(shipcast, deliv["event_id"], ("delivered",)), timeout=20)
        assert row["attempts"] == 1
        assert [a["outcome"] for a in await shipcast.services.store.list_attempts(deliv["event_id"])] == ["delivered"]
        assert len(twilio.received) == 3 and "Rate us" in twilio.received[2]["Body"]


@pytest.mark.parametrize("key", ["auth_token", "twilio_auth_token", "account_sid"])
def test_the_partners_file_refuses_twilio_credentials(key: str) -> None:
    """Secrets come from the environment, never the partners file."""
    from tests.bound import load_partners

    with pytest.raises(ConfigError) as caught:
        load_partners(sms_doc(**{key: "twilio-test-token"}), "test")
    assert list(caught.value.errors) == [f"partner 'acme': channels.sms.{key}"]
    assert "Unknown field" in str(caught.value)


def test_quiet_hours_that_never_end_are_refused() -> None:
    from tests.bound import load_partners

    with pytest.raises(ConfigError, match="quiet_hours.*start and end"):
        load_partners(sms_doc(quiet_hours={"start": "21:00", "end": "21:00"}), "test")
    with pytest.raises(ConfigError, match="quiet_hours.timezone.*unknown time zone 'Mars/Olympus'"):
        load_partners(sms_doc(quiet_hours={"start": "21:00", "end": "08:00", "timezone": "Mars/Olympus"}), "test")


async def test_an_opt_out_is_recorded_and_honoured(sms_settings: Settings, twilio: FakeTwilio) -> None:
    twilio.errors = [(400, 21610)]
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(sms_doc())
        first, second = event_body("OFD"), event_body("FAIL")
        await shipcast.http.post("/v1/events", json=first)
        # A row is written as "sending" first: wait for it to settle.
        [row] = await eventually(settled(shipcast, first["event_id"]))
        assert row["status"] == "dead" and "21610" in row["last_error"]
        await shipcast.http.post("/v1/events", json=second)
        [row] = await eventually(settled(shipcast, second["event_id"], ("delivered", "dead", "skipped")))
        assert row["status"] == "skipped" and "opted out" in row["last_error"]
        assert len(twilio.received) == 1  # only the first try reached Twilio


async def test_templates_preview_shows_the_partners_message(sms_settings: Settings) -> None:
    from .helpers import run_cli

    doc = sms_doc(templates={"FAIL": {"en": "Sorry {{ customer.name }}: {{ failure.reason }} {{ tracking_url }}",
                                      "hi": "क्षमा करें {{ customer.name }}: {{ failure.reason }} {{ tracking_url }}"}})
    doc["partners"][0]["channels"].update({
        "whatsapp": {"events": ["OFD"], "sender": "+14155238886", "content_sids": {"OFD": "HX" + "a" * 32}},
        "email": {"events": ["DEL"], "from_address": "Acme <orders@acme.example.com>"}})
    async with ShipcastProcess(sms_settings, channels=[]) as shipcast:
        await shipcast.apply(doc)

    def preview(event_type: str, channel: str, *more: str) -> Any:
        return run_cli(sms_settings, "templates", "preview", "--partner", "acme", "--event", event_type,
                       "--channel", channel, *more)

    shown = preview("FAIL", "sms")
    assert shown.returncode == 0 and shown.stdout.startswith(
        "Sorry Priya Sharma: Customer not reachable on phone; door locked https://track.example.com/t/")
    assert "1 segment (GSM-7)" in shown.stderr
    hindi = preview("OFD", "sms", "--lang", "hi")
    assert hindi.returncode == 0 and "डिलीवरी" in hindi.stdout and "https://track.example.com/t/" in hindi.stdout
    assert "(UCS-2)" in hindi.stderr
    whatsapp = preview("OFD", "whatsapp")
    assert whatsapp.returncode == 0 and "{{4}} = 4821" in whatsapp.stdout.splitlines()
    assert f"content template HX{'a' * 32}, 5 variables" in whatsapp.stderr
    mail = preview("DEL", "email")
    assert mail.returncode == 0 and mail.stdout.startswith("Subject: ") and "ORD-10023" in mail.stdout
    assert "with List-Unsubscribe" in mail.stderr
    assert "no approved content template for FAIL" in preview("FAIL", "whatsapp").stderr
    missing = preview("OFD", "webhook")
    assert missing.returncode == 1 and "does not use 'webhook'" in missing.stderr


async def test_signed_status_callbacks_update_the_delivery_in_any_order(sms_settings: Settings,
                                                                         twilio: FakeTwilio) -> None:
    async with ShipcastProcess(sms_settings) as shipcast:
        event, sid = await sent_text(shipcast, "OFD")

        async def callback(status: str, signature: str | None = None, **extra: str) -> int:
            return await twilio_callback(shipcast, sid, status, signature, **extra)

        async def provider_status() -> str | None:
            [row] = await shipcast.services.store.list_deliveries(event_id=event["event_id"])
            return row["provider_status"]

        assert await callback("sent") == 204
        assert await provider_status() == "sent"
        assert await callback("delivered") == 204
        assert await callback("sent") == 204        # late, and a duplicate: it does not move it back
        assert await callback("delivered") == 204
        assert await provider_status() == "delivered"
        assert await callback("undelivered", signature="forged", ErrorCode="30003") == 403
        assert await callback("undelivered", ErrorCode="30003", To="+910000000000") == 204  # already final
        assert await provider_status() == "delivered"
        assert await callback("exploded") == 400


async def sent_text(shipcast: ShipcastProcess, event_type: str) -> tuple[dict[str, Any], str]:
    """Text one event's customer, and wait until it is sent and archived: the event and Twilio's sid."""
    await shipcast.apply(sms_doc())
    event = event_body(event_type)
    await shipcast.http.post("/v1/events", json=event)
    await eventually(settled(shipcast, event["event_id"], ("delivered",)))
    await eventually(lambda: shipcast.services.store.get_event(event["event_id"]))
    return event, (await shipcast.services.store.list_attempts(event["event_id"]))[0]["response"].split(":")[0]


async def twilio_callback(shipcast: ShipcastProcess, sid: str, status: str, signature: str | None = None,
                          **extra: str) -> int:
    """Post a status callback as Twilio does, signed for the URL it was given."""
    from twilio.request_validator import RequestValidator

    path = "/callbacks/sms/twilio"
    form = {"MessageSid": sid, "MessageStatus": status, "AccountSid": SID, **extra}
    signed = signature or RequestValidator(TOKEN).compute_signature(shipcast.settings.public_url + path, form)
    response = await shipcast.http.post(path, data=form, headers={"X-Twilio-Signature": signed,
                                                                  "authorization": ""})
    return response.status_code


async def test_a_text_the_carrier_refuses_later_is_logged_dead_and_parked(sms_settings: Settings,
                                                                          twilio: FakeTwilio) -> None:
    from shipcast.amqp.parking import list_dead

    async with ShipcastProcess(sms_settings) as shipcast:
        event, sid = await sent_text(shipcast, "FAIL")
        assert await twilio_callback(shipcast, sid, "undelivered", ErrorCode="30005", To="+919876543210") == 204
        [row] = await shipcast.services.store.list_deliveries(event_id=event["event_id"])
        assert row["status"] == "dead" and row["last_error"].startswith("Twilio 30005: the number is unknown")
        assert "after it accepted" in row["last_error"] and row["provider_status"] == "undelivered 30005"
        [topology] = [worker.topology for worker in shipcast.workers if worker.name == "sms"]
        [parked] = await eventually(lambda: list_dead(shipcast.services.broker, topology))
        assert parked.event_id == event["event_id"] and parked.target == "customer"
        assert parked.reason is not None and parked.reason.startswith("Twilio 30005")
        # A duplicate of the callback changes nothing and parks nothing more.
        assert await twilio_callback(shipcast, sid, "failed", ErrorCode="30005", To="+919876543210") == 204
        assert len(await list_dead(shipcast.services.broker, topology)) == 1


def test_secrets_never_show_in_the_settings_repr() -> None:
    settings = Settings(api_token="tok-123", twilio_account_sid="AC1", twilio_auth_token="twilio-456",
                        smtp_password="smtp-789",
                        secret_key=base64.urlsafe_b64encode(b"k" * 32).decode(), operator_webhook_secret="whsec_x")
    shown = repr(settings) + str(settings)
    for secret in ("tok-123", "twilio-456", "smtp-789", settings.secret_key or "", "whsec_x"):
        assert secret not in shown
    assert settings.twilio_auth_token == "twilio-456"  # still there to use


async def test_a_partners_own_template_directory_is_used_and_checked(sms_settings: Settings, twilio: FakeTwilio,
                                                                      tmp_path: Any) -> None:
    (tmp_path / "sms").mkdir()
    (tmp_path / "sms" / "OFD.en.j2").write_text("Acme says: {{ order.order_id }} is on its way, OTP {{ otp.code }}: "
                                                "{{ tracking_url }}")
    async with ShipcastProcess(sms_settings) as shipcast:
        with pytest.raises(ConfigError, match="template_dir"):
            await shipcast.apply(sms_doc(template_dir=str(tmp_path / "missing")))
        await shipcast.apply(sms_doc(template_dir=str(tmp_path)))
        await shipcast.http.post("/v1/events", json=event_body("OFD"))
        [sent] = await eventually(lambda: twilio.received)
        assert sent["Body"].startswith("Acme says: ORD-10023 is on its way, OTP 4821: https://track.example.com/t/")
        # An edited file is read again (compiled templates are cached while the file is unchanged).
        template = tmp_path / "sms" / "OFD.en.j2"
        template.write_text("Acme, edited: {{ order.order_id }}")
        os.utime(template, ns=(time.time_ns() + 10**9,) * 2)
        await shipcast.http.post("/v1/events", json=event_body("OFD"))
        await eventually(lambda: len(twilio.received) == 2)
        assert twilio.received[1]["Body"] == "Acme, edited: ORD-10023"
    (tmp_path / "sms" / "FAIL.en.j2").write_text("{{ failure.resaon }}")
    async with ShipcastProcess(sms_settings, channels=[]) as shipcast:
        with pytest.raises(ConfigError, match="channels.sms.template_dir.*resaon"):
            await shipcast.apply(sms_doc(template_dir=str(tmp_path)))


EN_OFD, HI_OFD, EN_FAIL, HI_FAIL = "1107161234567890001", "1107161234567890002", "1107161234567890003", \
    "1107161234567890004"


@dataclass
class FakeMsg91:
    """MSG91's SendSMS API (``POST /api/v2/sendsms``, the ``authkey`` header,
    JSON ``{sender, route, country, DLT_TE_ID, sms: [{message, to}]}``,
    answering ``{"type": "success", "message": <request id>}``)."""

    received: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    #: The plugin that registers the provider (set by the fixture).
    plugin: Any = None

    async def _send(self, request: web.Request) -> web.Response:
        if request.headers.get("authkey") != "msg91-test-key":
            return web.json_response({"type": "error", "message": "Authentication failure", "code": "401"},
                                     status=401)
        self.received.append(await request.json())
        return web.json_response({"type": "success", "message": f"{len(self.received):024x}"})

    async def __aenter__(self) -> FakeMsg91:
        app = web.Application()
        app.router.add_post("/api/v2/sendsms", self._send)
        self._runner, self.port = await serve(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


@pytest.fixture
async def msg91() -> AsyncIterator[FakeMsg91]:
    """An Indian gateway as a plugin of its own: a provider class registered
    through ``shipcast_sms_providers``, as an installed package would, with
    nothing in the SMS channel knowing of it."""
    import aiohttp

    from shipcast import hookimpl
    from shipcast.exceptions import PermanentDelivery, RetryableDelivery
    from shipcast.plugins.sms.providers import SmsMessage, SmsProvider

    async with FakeMsg91() as server:
        class Msg91(SmsProvider):
            name = "msg91"

            async def start(self) -> None:
                self.http = aiohttp.ClientSession(f"http://127.0.0.1:{server.port}",
                                                  headers={"authkey": "msg91-test-key"})

            async def close(self) -> None:
                await self.http.close()

            async def send(self, message: SmsMessage) -> str:
                async with self.http.post("/api/v2/sendsms", json={
                        "sender": message.sender, "route": "4", "country": "91",
                        "DLT_TE_ID": message.dlt_template_id,
                        "sms": [{"message": message.body, "to": [message.to.lstrip("+")]}]}) as answer:
                    body = await answer.json()
                if answer.status >= 500 or answer.status == 429:
                    raise RetryableDelivery(f"MSG91 {answer.status}", status=answer.status)
                if body.get("type") != "success":
                    raise PermanentDelivery(f"MSG91 {body.get('code')}: {body.get('message')}", status=answer.status)
                return str(body["message"])

        class Plugin:
            @hookimpl
            def shipcast_sms_providers(self) -> list[type[SmsProvider]]:
                return [Msg91]

        server.plugin = Plugin()
        yield server


async def test_another_provider_gets_the_dlt_id_of_the_text_it_sends(sms_settings: Settings, twilio: FakeTwilio,
                                                                      msg91: FakeMsg91) -> None:
    """India's DLT registers each text with its own id: English and Hindi
    differ, and a partner's single text counts as English whatever the
    customer's language. The provider, a plugin the channel knows nothing
    of, gets the id of the text it sends."""
    async with ShipcastProcess(sms_settings, channels=["sms"], plugins=[msg91.plugin]) as shipcast:
        await shipcast.apply(sms_doc(provider="msg91", templates={"FAIL": {"en": GOOD_FAIL}}, dlt_template_ids={
            "OFD": {"en": EN_OFD, "hi": HI_OFD}, "FAIL": {"en": EN_FAIL, "hi": HI_FAIL}}))
        events = [event_body("OFD", language="en"), event_body("OFD", language="hi"),
                  event_body("FAIL", language="hi")]
        await shipcast.http.post("/v1/events", json=events)
        for event in events:
            [row] = await eventually(settled(shipcast, event["event_id"]))
            assert row["status"] == "delivered"
    by_id = {sent["DLT_TE_ID"]: sent for sent in msg91.received}
    assert sorted(by_id) == [EN_OFD, HI_OFD, EN_FAIL]
    assert "out for delivery" in by_id[EN_OFD]["sms"][0]["message"]
    assert "डिलीवरी" in by_id[HI_OFD]["sms"][0]["message"]
    assert by_id[EN_FAIL]["sms"][0]["message"].startswith("Acme Retail: missed you")  # the English text
    assert all(sent["sms"][0]["to"] == ["919876543210"] and sent["sender"] == "ACMEIN" for sent in msg91.received)
    assert twilio.received == []


@pytest.mark.parametrize(("ids", "field", "says"), [
    ({"OFD": "123"}, "dlt_template_ids.OFD", "19-digit"),
    ({"OFD": {"en": EN_OFD, "hi": "11071612345678900x2"}}, "dlt_template_ids.OFD.hi", "19-digit"),
    ({"OFD": {"hi": HI_OFD}}, "dlt_template_ids.OFD.en", "English is the fallback"),
    ({"OFD": {"en": EN_OFD}}, "dlt_template_ids.OFD.hi", "OFD texts are sent in 'hi'"),
    ({"OFD": {"en": EN_OFD, "ta": HI_OFD}}, "dlt_template_ids.OFD.ta", "unknown language"),
    ({"OFD": EN_OFD}, "dlt_template_ids.OFD", "one id, but OFD texts are also sent in 'hi'"),
    ({"OFD": ["1107161234567890001"]}, "dlt_template_ids.OFD", "19-digit"),
])
async def test_apply_refuses_a_dlt_id_naming_the_field(sms_settings: Settings, ids: dict[str, Any], field: str,
                                                       says: str) -> None:
    async with ShipcastProcess(sms_settings, channels=[]) as shipcast:
        with pytest.raises(ConfigError) as caught:
            await shipcast.apply(sms_doc(dlt_template_ids=ids))
        assert list(caught.value.errors or {}) == [f"partner 'acme': channels.sms.{field}"]
        assert says in str(caught.value)
