"""The WhatsApp channel through the real twilio SDK and a local server that
speaks Twilio's Messages API: approved content templates with their
variables, and the fallback to SMS for a customer WhatsApp cannot reach."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from shipcast import metrics
from shipcast.exceptions import ConfigError
from shipcast.settings import Settings

from .helpers import ShipcastProcess, eventually, settled
from .test_sms import (FakeTwilio, event_body, sent_once_across_a_stop_past_the_grace, sms_settings,  # noqa: F401
                       twilio, twilio_callback)  # (fixtures)

pytestmark = pytest.mark.broker
OFD_SID, FAIL_SID = "HX" + "a" * 32, "HX" + "b" * 32


def wa_doc(**config: Any) -> dict[str, Any]:
    return {"partners": [{"id": "acme", "name": "Acme Retail", "channels": {"whatsapp": {
        "events": ["OFD", "FAIL"], "sender": "+14155238886",
        "content_sids": {"OFD": OFD_SID, "FAIL": FAIL_SID}, **config}}}]}


async def test_a_content_template_goes_with_its_variables(sms_settings: Settings, twilio: FakeTwilio) -> None:
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(wa_doc(variables={"FAIL": ["{{ customer.name }}", "{{ failure.reason }}",
                                                        "{{ tracking_url }}"]}))
        await shipcast.http.post("/v1/events", json=[event_body("OFD"), event_body("FAIL", name="Ann O'Brien & Co")])
        await eventually(lambda: len(twilio.received) == 2)
    by_sid = {sent["ContentSid"]: sent for sent in twilio.received}
    ofd = by_sid[OFD_SID]
    assert ofd["To"] == "whatsapp:+919876543210" and ofd["From"] == "whatsapp:+14155238886"
    assert set(ofd) == {"To", "From", "ContentSid", "ContentVariables", "StatusCallback"}
    variables = orjson.loads(ofd["ContentVariables"])
    assert variables["1"] == "Acme Retail" and variables["2"] == "ORD-10023" and variables["4"] == "4821"
    assert variables["5"].startswith("https://track.example.com/t/")
    fail = orjson.loads(by_sid[FAIL_SID]["ContentVariables"])
    assert (fail["1"], fail["2"]) == ("Ann O'Brien & Co", "Customer not reachable on phone; door locked")  # not HTML
    assert fail["3"].startswith("https://track.example.com/t/")


async def test_a_message_twilio_took_from_a_worker_stopped_past_its_grace_is_not_sent_again(
        sms_settings: Settings, twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    await sent_once_across_a_stop_past_the_grace(sms_settings, twilio, monkeypatch, caplog, "whatsapp", wa_doc())


@pytest.mark.parametrize("code", [63016, 63003, 63014])
async def test_a_customer_whatsapp_cannot_reach_gets_a_text_when_the_merchant_allows(
        sms_settings: Settings, twilio: FakeTwilio, code: int) -> None:
    twilio.whatsapp_errors = [(400, code)]
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(wa_doc(fallback_sms_sender="ACMEIN"))
        event = event_body("OFD")
        await shipcast.http.post("/v1/events", json=event)
        await eventually(lambda: len(twilio.received) == 2)
        await eventually(lambda: shipcast.services.store.list_deliveries(
            event_id=event["event_id"], channel="whatsapp", status="delivered"))
        [attempt] = await shipcast.services.store.list_attempts(event["event_id"], "whatsapp")
    whatsapp, text = twilio.received
    assert whatsapp["To"] == "whatsapp:+919876543210"
    assert text["To"] == "+919876543210" and text["From"] == "ACMEIN" and "4821" in text["Body"]
    assert f"(Twilio {code}" in attempt["response"] and "sent as SMS SM" in attempt["response"]


async def test_a_failure_twilio_reports_later_falls_back_too_and_is_remembered(sms_settings: Settings,
                                                                                twilio: FakeTwilio) -> None:
    """Twilio usually accepts a WhatsApp message and reports later that the
    customer is not on WhatsApp: the signed status callback sends the text
    instead, and that customer's next message goes straight to SMS."""
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(wa_doc(fallback_sms_sender="ACMEIN"))
        first = event_body("OFD")
        await shipcast.http.post("/v1/events", json=first)
        await eventually(settled(shipcast, first["event_id"], ("delivered",)))
        await eventually(lambda: shipcast.services.store.get_event(first["event_id"]))  # archived
        [accepted] = twilio.received
        sid = (await shipcast.services.store.list_attempts(first["event_id"], "whatsapp"))[0]["response"]
        assert await twilio_callback(shipcast, sid, "failed", ErrorCode="63003", To=accepted["To"]) == 204
        await eventually(lambda: len(twilio.received) == 2)
        text = twilio.received[1]
        assert text["To"] == "+919876543210" and text["From"] == "ACMEIN" and "4821" in text["Body"]
        # The text settles the SMS claim; the WhatsApp row is written again with what happened.
        async def both() -> list[dict[str, Any]] | None:
            rows = await settled(shipcast, first["event_id"], ("delivered",))()
            return rows if len(rows) == 2 else None

        rows = await eventually(both)
        assert sorted(row["channel"] for row in rows) == ["sms", "whatsapp"]
        attempts = await shipcast.services.store.list_attempts(first["event_id"], "whatsapp")
        assert "Twilio 63003" in attempts[-1]["response"] and "sent as SMS" in attempts[-1]["response"]
        second = event_body("FAIL")
        await shipcast.http.post("/v1/events", json=second)
        await eventually(lambda: len(twilio.received) == 3)
        assert twilio.received[2]["From"] == "ACMEIN"  # no second try on WhatsApp
        await asyncio.sleep(0.5)
        assert len(twilio.received) == 3


async def test_without_fallback_it_is_a_dead_letter_with_twilios_code(sms_settings: Settings,
                                                                       twilio: FakeTwilio) -> None:
    twilio.whatsapp_errors = [(400, 63016)]
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(wa_doc())
        event = event_body("FAIL")
        await shipcast.http.post("/v1/events", json=event)
        [row] = await eventually(lambda: shipcast.services.store.list_deliveries(event_id=event["event_id"],
                                                                                 status="dead"))
        assert row["last_error"].startswith("Twilio 63016") and len(twilio.received) == 1


async def test_a_whatsapp_opt_out_is_recorded_and_honoured(sms_settings: Settings, twilio: FakeTwilio) -> None:
    """Twilio 21610 (the customer replied STOP) is a dead letter, recorded:
    nothing more goes to that customer on WhatsApp, and no fallback text."""
    twilio.whatsapp_errors = [(400, 21610)]
    async with ShipcastProcess(sms_settings, channels=["whatsapp"]) as shipcast:
        await shipcast.apply(wa_doc(fallback_sms_sender="ACMEIN"))
        first, second = event_body("OFD"), event_body("FAIL")
        await shipcast.http.post("/v1/events", json=first)
        [row] = await eventually(settled(shipcast, first["event_id"]))
        assert row["status"] == "dead" and row["last_error"].startswith("Twilio 21610")
        await shipcast.http.post("/v1/events", json=second)
        [row] = await eventually(settled(shipcast, second["event_id"], ("delivered", "dead", "skipped")))
        assert row["status"] == "skipped" and "opted out" in row["last_error"]
    assert len(twilio.received) == 1


async def test_the_fallback_never_texts_twice_when_sms_is_on_too(sms_settings: Settings,
                                                                  twilio: FakeTwilio) -> None:
    twilio.whatsapp_errors = [(400, 63016)]
    doc = wa_doc(fallback_sms_sender="ACMEIN")
    doc["partners"][0]["channels"]["sms"] = {"events": ["OFD"], "sender": "ACMEIN"}
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(doc)
        event = event_body("OFD")
        await shipcast.http.post("/v1/events", json=event)

        async def settled() -> bool:
            rows = await shipcast.services.store.list_deliveries(event_id=event["event_id"])
            return len(rows) == 2 and all(r["status"] in ("delivered", "skipped") for r in rows)

        await eventually(settled, timeout=20)
    texts = [sent for sent in twilio.received if not sent["To"].startswith("whatsapp:")]
    assert len(texts) == 1


async def test_a_missing_template_or_a_broken_variable_is_refused(sms_settings: Settings) -> None:
    async with ShipcastProcess(sms_settings, channels=[]) as shipcast:
        with pytest.raises(ConfigError, match=r"content_sids.*\['FAIL'\]"):
            await shipcast.apply(wa_doc(content_sids={"OFD": OFD_SID}))
        with pytest.raises(ConfigError, match=r"channels.whatsapp.variables.OFD.*otpp"):
            await shipcast.apply(wa_doc(variables={"OFD": ["{{ otpp.code }}"]}))


async def test_after_a_fallback_text_the_sms_channel_sends_nothing_more(sms_settings: Settings,
                                                                        twilio: FakeTwilio) -> None:
    """WhatsApp's fallback texts first; the SMS channel's copy of the event
    (here published to it later) finds the text sent and sends nothing."""
    twilio.whatsapp_errors = [(400, 63016)]
    async with ShipcastProcess(sms_settings, channels=["whatsapp"]) as shipcast:
        doc = wa_doc(fallback_sms_sender="ACMEIN")
        doc["partners"][0]["channels"]["sms"] = {"events": ["OFD"], "sender": "ACMEIN"}
        await shipcast.apply(doc)
        event = event_body("OFD")
        await shipcast.http.post("/v1/events", json=event)
        await eventually(lambda: shipcast.services.store.list_deliveries(
            event_id=event["event_id"], channel="sms", status="delivered"))
        [attempt] = await shipcast.services.store.list_attempts(event["event_id"], "sms")
        assert attempt["response"].startswith("sent as WhatsApp's fallback: SM")
    skipped = metrics.value("shipcast_targets_skipped_total", channel="sms", reason="delivered")
    async with ShipcastProcess(sms_settings, channels=["sms"]):  # now the SMS worker takes its copy
        await eventually(lambda: metrics.value("shipcast_targets_skipped_total", channel="sms",
                                               reason="delivered") > skipped)
    texts = [sent for sent in twilio.received if not sent["To"].startswith("whatsapp:")]
    assert len(texts) == 1


#: One approved content template per event type and language: Meta approves each language's text apart.
SIDS = {event_type: {"en": "HX" + f"{index}e" * 16, "hi": "HX" + f"{index}f" * 16}
        for index, event_type in enumerate(["OFD", "DEL", "FAIL", "RET"])}


def customer_event(event_type: str, language: str, sparse: bool) -> dict[str, Any]:
    """An event for a customer in ``language``; ``sparse``: every optional field null."""
    from tests.bound import example
    from shipcast.messaging.templates import sparse_event

    event = example(event_type)
    body: dict[str, Any] = orjson.loads((sparse_event(event) if sparse else event).to_json())
    body["order"]["customer"].update(phone="+919876543210", language=language)
    return body


@pytest.mark.parametrize("language", ["en", "hi"])
@pytest.mark.parametrize("event_type", ["OFD", "DEL", "FAIL", "RET"])
async def test_each_language_gets_its_own_content_template(sms_settings: Settings, twilio: FakeTwilio,
                                                           event_type: str, language: str) -> None:
    """``content_sids`` may give one template per language: a Hindi customer
    gets the Hindi template, with the default variables rendered from a full
    event and from one with every optional field null."""
    async with ShipcastProcess(sms_settings, channels=["whatsapp"]) as shipcast:
        await shipcast.apply(wa_doc(events=[event_type], content_sids=SIDS))
        full, sparse = customer_event(event_type, language, False), customer_event(event_type, language, True)
        await shipcast.http.post("/v1/events", json=[full, sparse])
        for event in (full, sparse):
            [row] = await eventually(settled(shipcast, event["event_id"]))
            assert row["status"] == "delivered"
    assert [sent["ContentSid"] for sent in twilio.received] == [SIDS[event_type][language]] * 2
    for sent in twilio.received:
        values = list(orjson.loads(sent["ContentVariables"]).values())
        assert values[:2] == ["Acme Retail", "ORD-10023"] and all(values), values
        assert not any("None" in value or "{{" in value for value in values), values
        assert values[-1].startswith("https://track.example.com/t/")  # every message carries the link
        if event_type == "FAIL":
            assert "Customer not reachable on phone; door locked" in values
    if event_type == "OFD":  # the OTP, and the rider, where the event has them
        full_values, sparse_values = (orjson.loads(sent["ContentVariables"]) for sent in twilio.received)
        assert full_values["4"] == "4821" and full_values["3"] != "-"


def test_a_language_without_its_own_template_gets_englishs() -> None:
    from tests.bound import parse_event
    from shipcast.messaging.fields import id_for
    from shipcast.messaging.templates import language_of

    sids = {"OFD": {"en": OFD_SID}, "FAIL": FAIL_SID}
    for language in ("hi", "ta", "hi-IN"):
        assert id_for(sids, "OFD", language_of(parse_event(customer_event("OFD", language, False)))) == OFD_SID
    assert id_for(sids, "FAIL", "hi") == FAIL_SID
    assert id_for(SIDS, "FAIL", language_of(parse_event(customer_event("FAIL", "hi-IN", True)))) == SIDS["FAIL"]["hi"]


@pytest.mark.parametrize(("config", "field", "says"), [
    ({"content_sids": {"OFD": {"hi": OFD_SID}, "FAIL": FAIL_SID}}, "content_sids.OFD.en", "English is the fallback"),
    ({"content_sids": {"OFD": {"en": OFD_SID, "hi": "HX1"}, "FAIL": FAIL_SID}}, "content_sids.OFD.hi",
     "approved content template's sid"),
    ({"content_sids": {"OFD": {"en": OFD_SID, "fr": OFD_SID}, "FAIL": FAIL_SID}}, "content_sids.OFD.fr",
     "unknown language"),
    ({"variables": {"OFD": ["{{ customer.name }}", "{{ otp.code if otp else '-' }}"]}}, "variables.OFD",
     "must give the tracking link"),
    ({"variables": {"FAIL": ["{{ customer.name }}", "{{ tracking_url }}"]}}, "variables.FAIL",
     "must give the failure's reason"),
])
async def test_apply_refuses_a_content_template_config_naming_the_field(sms_settings: Settings,
                                                                        config: dict[str, Any], field: str,
                                                                        says: str) -> None:
    async with ShipcastProcess(sms_settings, channels=[]) as shipcast:
        with pytest.raises(ConfigError) as caught:
            await shipcast.apply(wa_doc(**config))
        assert list(caught.value.errors or {}) == [f"partner 'acme': channels.whatsapp.{field}"]
        assert says in str(caught.value)
        # Variables that carry the link (and a FAIL's reason) are accepted.
        await shipcast.apply(wa_doc(content_sids={"OFD": {"en": OFD_SID, "hi": FAIL_SID}, "FAIL": FAIL_SID},
                                    variables={"FAIL": ["{{ failure.reason }}", "{{ tracking_url }}"]}))


@pytest.mark.parametrize(("approval", "says"), [
    (("approved", "MARKETING"), f"{OFD_SID} is a MARKETING template: customers' order messages must use UTILITY"),
    (("pending", "UTILITY"), f"{OFD_SID} is not approved for WhatsApp (status: pending)"),
    (("rejected", "UTILITY"), f"{OFD_SID} is not approved for WhatsApp (status: rejected)"),
    (None, f"Twilio has no content template {OFD_SID}"),
])
async def test_apply_refuses_a_template_twilio_has_not_approved_as_utility(
        sms_settings: Settings, twilio: FakeTwilio, approval: tuple[str, str] | None, says: str) -> None:
    """Twilio's Content API, through the SDK, says what each template is."""
    twilio.templates[OFD_SID] = approval
    async with ShipcastProcess(sms_settings, channels=[]) as shipcast:
        with pytest.raises(ConfigError) as caught:
            await shipcast.apply(wa_doc(content_sids={"OFD": {"en": FAIL_SID, "hi": OFD_SID}, "FAIL": FAIL_SID}))
        assert list(caught.value.errors or {}) == ["partner 'acme': channels.whatsapp.content_sids.OFD.hi"]
        assert says in str(caught.value)
        twilio.templates[OFD_SID] = ("approved", "UTILITY")  # approved since: accepted
        await shipcast.apply(wa_doc(content_sids={"OFD": {"en": FAIL_SID, "hi": OFD_SID}, "FAIL": FAIL_SID}))


async def test_a_template_twilio_cannot_be_asked_about_is_let_through(
        sms_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Twilio down must not stop shipcast from starting: apply goes on, and says so."""
    unreachable = sms_settings.model_copy(update={"twilio_content_url": "http://127.0.0.1:9"})
    async with ShipcastProcess(unreachable, channels=[]) as shipcast:
        await shipcast.apply(wa_doc(content_sids={"OFD": "HX" + "e" * 32, "FAIL": "HX" + "f" * 32}))
    assert any("could not check WhatsApp template" in r.getMessage() for r in caplog.records)


async def test_credentials_twilio_refuses_are_an_error_at_apply(sms_settings: Settings) -> None:
    wrong = sms_settings.model_copy(update={"twilio_auth_token": "not-the-token"})
    async with ShipcastProcess(wrong, channels=[]) as shipcast:
        with pytest.raises(ConfigError) as caught:
            await shipcast.apply(wa_doc(content_sids={"OFD": "HX" + "c" * 32, "FAIL": "HX" + "d" * 32}))
    assert "Twilio refused SHIPCAST_TWILIO_ACCOUNT_SID and _AUTH_TOKEN (401)" in str(caught.value)
    assert "not-the-token" not in str(caught.value)
