"""A merchant's own settings through the partner API: branding and the
customer channels, validated as the partners file is, taking effect at once
(bindings and workers), beside the operator's file, which wins for the
fields it sets; previews of a draft; test messages through the provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from .conftest import make_settings
from .helpers import ShipcastProcess, eventually
from .test_sms import SID, TOKEN, FakeTwilio, event_body

pytestmark = pytest.mark.broker

GOOD_FAIL = "{{ partner.name }}: we missed you, {{ failure.reason }}. Pick a new time: {{ tracking_url }}"
#: The operator's file: the partner, its name and its SMS sender (the DLT header is the operator's business).
FILE = {"partners": [{"id": "acme", "name": "Acme Retail", "branding": {"primary_color": "#0a7cff"},
                      "channels": {"sms": {"sender": "ACMEIN", "events": ["OFD", "FAIL"]}}}]}


@pytest.fixture
async def shipcast(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    async with FakeTwilio() as twilio:
        settings = make_settings(vhost, sqlite_url, twilio_account_sid=SID, twilio_auth_token=TOKEN,
                                 twilio_api_url=twilio.url, twilio_content_url=twilio.url,
                                 public_url="https://track.example.com")
        async with ShipcastProcess(settings, channels=["sms", "email", "tracking"]) as running:
            running.twilio = twilio  # type: ignore[attr-defined]
            await running.apply(FILE)
            yield running


async def partner_client(shipcast: ShipcastProcess, partner_id: str = "acme") -> httpx.AsyncClient:
    made = await shipcast.http.post(f"/v1/partners/{partner_id}/tokens", params={"name": "merchant"})
    assert made.status_code == 201, made.text
    return httpx.AsyncClient(base_url=shipcast.base_url, timeout=30,
                             headers={"authorization": f"Bearer {made.json()['token']}"})


async def bindings(shipcast: ShipcastProcess, queue: str) -> set[str]:
    from shipcast.amqp.management import Management

    async with Management(shipcast.settings) as management:
        found: set[str] = await management.queue_bindings(queue)
        return found


async def test_the_config_says_what_the_file_owns_and_what_the_merchant_changes(shipcast: ShipcastProcess) -> None:
    async with await partner_client(shipcast) as merchant:
        shown = (await merchant.get("/v1/partners/acme/config")).json()
    assert shown["channels"]["sms"]["sender"] == "ACMEIN"
    assert {"name", "branding.primary_color", "channels.sms", "channels.sms.sender",
            "channels.sms.events"} == set(shown["file_fields"])
    assert shown["editable"][0] == "branding" and {"sms", "email", "whatsapp", "tracking"} <= set(shown["editable"])
    assert "webhook" not in shown["editable"] and "archive" not in shown["editable"]


async def test_a_merchant_turns_email_on_and_its_bindings_and_workers_follow_at_once(
        shipcast: ShipcastProcess) -> None:
    assert await bindings(shipcast, "shipcast.email") == set()
    async with await partner_client(shipcast) as merchant:
        turned_on = await merchant.put("/v1/partners/acme/config/channels/email", json={
            "events": ["DEL"], "from_address": "Acme <orders@acme.example.com>"})
        assert turned_on.status_code == 200, turned_on.text
        assert turned_on.json()["channels"]["email"]["events"] == ["DEL"]
        assert await bindings(shipcast, "shipcast.email") == {"acme.DEL"}
        # The SMS channel's templates, set by the merchant: the worker sends the new text without a restart.
        patched = await merchant.patch("/v1/partners/acme/config/channels/sms",
                                       json={"templates": {"FAIL": {"en": GOOD_FAIL}}})
        assert patched.status_code == 200, patched.text
        posted = await shipcast.http.post("/v1/events", json=event_body("FAIL", phone="+919812345678"))
        assert posted.status_code == 202, posted.text
        twilio: FakeTwilio = shipcast.twilio  # type: ignore[attr-defined]
        await eventually(lambda: twilio.received)
        assert twilio.received[0]["Body"].startswith("Acme Retail: we missed you, Customer not reachable")
        # Off again: the binding goes.
        off = await merchant.delete("/v1/partners/acme/config/channels/email")
        assert off.status_code == 200 and "email" not in off.json()["channels"]
        assert await bindings(shipcast, "shipcast.email") == set()
    audit = await shipcast.services.store.list_audit(partner_id="acme", limit=10)
    actions = [(row["action"], row["subject"]) for row in audit]
    assert ("partner.config", "channels.email") in actions and ("partner.config", "channels.sms") in actions


SMS = {"sender": "ACMEIN", "events": ["OFD", "FAIL"]}


@pytest.mark.parametrize(("path", "body", "field", "says"), [
    ("channels/sms", {**SMS, "templates": {"FAIL": "We missed you: {{ failure.reason }}"}},
     "channels.sms.templates.FAIL", "tracking link"),
    ("channels/sms", {**SMS, "templates": {"OFD": "Hi {{ customer.nmae }} {{ tracking_url }}"}},
     "channels.sms.templates.OFD", "nmae"),
    ("channels/sms", {**SMS, "templates": {"OFD": "{{ ''.__class__ }} {{ tracking_url }}"}},
     "channels.sms.templates.OFD", "'__class__' is not allowed"),
    ("channels/sms", {**SMS, "quiet_hours": {"start": "21:00", "end": "08:00", "timezone": "Mars/Olympus"}},
     "channels.sms.quiet_hours.timezone", "unknown time zone"),
    ("channels/email", {"from_address": "nobody"}, "channels.email.from_address", "must be an address"),
    ("channels/sms", {**SMS, "template_dir": "/etc"}, "channels.sms.template_dir", "only the operator's partners file"),
    ("branding", {"primary_color": "blue"}, "branding.primary_color", "colour like #0a7cff"),
    ("branding", {"logo": "x"}, "branding.logo", "Unknown field"),
])
async def test_a_wrong_field_is_a_422_naming_it_and_nothing_changes(
        shipcast: ShipcastProcess, path: str, body: dict[str, Any], field: str, says: str) -> None:
    before = (await shipcast.http.get("/v1/partners/acme/config")).json()
    async with await partner_client(shipcast) as merchant:
        answer = await merchant.put(f"/v1/partners/acme/config/{path}", json=body)
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert field in errors and says in " ".join(errors[field]), errors
    assert (await shipcast.http.get("/v1/partners/acme/config")).json() == before


async def test_the_file_wins_for_what_it_sets_and_keeps_what_the_merchant_set(shipcast: ShipcastProcess) -> None:
    async with await partner_client(shipcast) as merchant:
        # The sender is the file's: changing it here is refused, naming it; keeping it is fine.
        refused = await merchant.patch("/v1/partners/acme/config/channels/sms", json={"sender": "OTHERS"})
        assert refused.status_code == 422 and "partners file" in refused.json()["errors"]["channels.sms.sender"][0]
        refused = await merchant.delete("/v1/partners/acme/config/channels/sms")
        assert refused.status_code == 422 and "channels.sms" in refused.json()["errors"]
        kept = await merchant.patch("/v1/partners/acme/config/channels/sms",
                                    json={"templates": {"FAIL": GOOD_FAIL}, "quiet_hours": {
                                        "start": "22:00", "end": "07:00", "timezone": "Asia/Kolkata"}})
        assert kept.status_code == 200, kept.text
        branded = await merchant.patch("/v1/partners/acme/config/branding", json={"support_email": "help@acme.in"})
        assert branded.status_code == 200, branded.text
        refused = await merchant.patch("/v1/partners/acme/config/branding", json={"primary_color": "#000000"})
        assert refused.status_code == 422 and "branding.primary_color" in refused.json()["errors"]
    # The operator applies the file again (a restart does): the merchant's fields stay.
    await shipcast.apply(FILE)
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None
    assert partner.channels["sms"]["templates"] == {"FAIL": GOOD_FAIL}
    assert partner.channels["sms"]["quiet_hours"]["start"] in ("22:00", "22:00:00")
    assert partner.branding == {"primary_color": "#0a7cff", "support_email": "help@acme.in"}
    # The file stops setting the colour and sets the templates itself: the colour goes, the file's text wins.
    file_text = "{{ partner.name }}: missed you ({{ failure.reason }}) {{ tracking_url }}"
    changed = {"partners": [{"id": "acme", "name": "Acme Retail", "channels": {"sms": {
        "sender": "ACMEIN", "events": ["OFD", "FAIL"], "templates": {"FAIL": file_text}}}}]}
    await shipcast.apply(changed)
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and partner.branding == {"support_email": "help@acme.in"}
    assert partner.channels["sms"]["templates"] == {"FAIL": file_text}
    # The file stops listing SMS: it is off.
    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme Retail"}]})
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and "sms" not in partner.channels
    assert await bindings(shipcast, "shipcast.sms") == set()


async def test_another_partner_token_sees_and_changes_nothing(shipcast: ShipcastProcess) -> None:
    await shipcast.apply({"partners": [{"id": "globex", "name": "Globex"}]})
    async with await partner_client(shipcast, "globex") as other:
        assert (await other.get("/v1/partners/acme/config")).status_code == 403
        assert (await other.put("/v1/partners/acme/config/branding", json={})).status_code == 403
    async with await partner_client(shipcast) as merchant:
        missing = await merchant.put("/v1/partners/acme/config/channels/webhook", json={})
        assert missing.status_code == 404 and "sms" in missing.json()["detail"]


async def test_a_preview_renders_the_draft_and_names_each_problem_at_its_line(shipcast: ShipcastProcess) -> None:
    async with await partner_client(shipcast) as merchant:
        good = await merchant.post("/v1/partners/acme/config/channels/sms/preview", json={
            "event_type": "FAIL", "language": "hi",
            "config": {"sender": "ACMEIN", "events": ["FAIL"]}})
        assert good.status_code == 200, good.text
        shown = good.json()
        assert shown["ok"] and shown["problems"] == []
        realistic, sparse = shown["samples"]
        assert realistic["encoding"] == "UCS-2" and realistic["segments"] >= 1
        assert "Customer not reachable" in realistic["text"] and shown["tracking_url"] in realistic["text"]
        assert sparse["sample"] == "every optional field null" and sparse["error"] is None
        broken = await merchant.post("/v1/partners/acme/config/channels/sms/preview", json={
            "event_type": "OFD", "config": {"sender": "ACMEIN", "events": ["OFD"], "templates": {
                "OFD": "{{ partner.name }}: on its way.\nCall {{ rider.phone }}"}}})
        problems = broken.json()["problems"]
        assert not broken.json()["ok"]
        assert {p["field"] for p in problems} == {"templates.OFD"}
        assert any("tracking link" in p["message"] for p in problems)
        null = await merchant.post("/v1/partners/acme/config/channels/sms/preview", json={
            "event_type": "OFD", "config": {"sender": "ACMEIN", "events": ["OFD"], "templates": {
                "OFD": "{{ partner.name }} {{ tracking_url }}\nCall {{ rider.phone }}"}}})
        lines = [(p["line"], p["language"]) for p in null.json()["problems"]]
        assert (2, "en") in lines, null.json()
        email = await merchant.post("/v1/partners/acme/config/channels/email/preview", json={
            "event_type": "DEL", "config": {"from_address": "Acme <orders@acme.example.com>"}})
        realistic = email.json()["samples"][0]
        assert realistic["subject"] and "<html" in realistic["html"].lower() and "#0a7cff" in realistic["html"]
        invalid = await merchant.post("/v1/partners/acme/config/channels/email/preview", json={
            "event_type": "DEL", "config": {"from_address": "nobody"}})
        assert invalid.status_code == 200 and invalid.json()["problems"][0]["field"] == "from_address"
        unknown = await merchant.post("/v1/partners/acme/config/channels/sms/preview", json={"event_type": "NOPE"})
        assert unknown.status_code == 422 and "event_type" in unknown.json()["errors"]


async def test_a_test_message_goes_through_the_provider_to_the_merchants_own_number(
        shipcast: ShipcastProcess) -> None:
    twilio: FakeTwilio = shipcast.twilio  # type: ignore[attr-defined]
    async with await partner_client(shipcast) as merchant:
        sent = await merchant.post("/v1/partners/acme/config/channels/sms/test",
                                   json={"to": "9812345678", "event_type": "FAIL", "language": "hi"})
        assert sent.status_code == 202, sent.text
        assert sent.json()["response"].startswith("SM") and sent.json()["to"] == "981***5678"  # masked
        assert twilio.received[-1]["To"] == "+919812345678" and "ACMEIN" == twilio.received[-1]["From"]
        bad = await merchant.post("/v1/partners/acme/config/channels/sms/test", json={"to": "12"})
        assert bad.status_code == 422 and "to" in str(bad.json())
        bad = await merchant.post("/v1/partners/acme/config/channels/sms/test", json={"to": "+1 000"})
        assert bad.status_code == 422 and "to" in bad.json()["errors"]
        twilio.errors.append((400, 21211))
        refused = await merchant.post("/v1/partners/acme/config/channels/sms/test", json={"to": "+919812345678"})
        assert refused.status_code == 502 and "21211" in refused.json()["detail"]
        unused = await merchant.post("/v1/partners/acme/config/channels/email/test", json={"to": "me@acme.in"})
        assert unused.status_code == 404
    audit = await shipcast.services.store.list_audit(partner_id="acme", limit=10)
    tests = [row for row in audit if row["action"] == "channel.test"]
    assert tests and tests[-1]["after"]["to"] == "981***5678" and "9812345678" not in str(tests)



async def test_what_the_merchant_adds_survives_the_file_and_what_it_needs_is_not_dropped(
        shipcast: ShipcastProcess) -> None:
    async with await partner_client(shipcast) as merchant:
        added = await merchant.put("/v1/partners/acme/config/channels/email", json={
            "events": ["DEL"], "from_address": "Acme <orders@acme.example.com>"})
        assert added.status_code == 200, added.text
        kept = await merchant.patch("/v1/partners/acme/config/channels/sms", json={"templates": {"FAIL": GOOD_FAIL}})
        assert kept.status_code == 200, kept.text
    await shipcast.apply(FILE)  # a restart applies the file: the merchant's email channel stays
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and partner.channels["email"]["events"] == ["DEL"]
    # A file listing SMS without the sender it needs is refused, naming it, whatever the merchant set.
    from shipcast.exceptions import ConfigError

    with pytest.raises(ConfigError) as refused:
        await shipcast.apply({"partners": [{"id": "acme", "name": "Acme Retail", "channels": {
            "sms": {"events": ["OFD", "FAIL"]}}}]})
    assert "partner 'acme': channels.sms.sender" in str(refused.value)
    after = await shipcast.services.store.get_partner("acme")
    assert after is not None and after.channels["sms"]["sender"] == "ACMEIN"


async def test_a_partner_stored_before_fields_were_marked_keeps_what_its_merchant_adds(
        shipcast: ShipcastProcess) -> None:
    from shipcast.model.partners import Partner

    # As an older shipcast stored it: no file_fields, so the whole config was the file's.
    await shipcast.services.store.put_partners([Partner("legacy", "Legacy", {"primary_color": "#0a7cff"}, {
        "sms": {"sender": "LEGACY", "events": ["OFD"], "provider": "twilio", "country": "IN"}})])
    async with await partner_client(shipcast, "legacy") as merchant:
        shown = (await merchant.get("/v1/partners/legacy/config")).json()
        assert "channels.sms.sender" in shown["file_fields"] and "branding.primary_color" in shown["file_fields"]
        refused = await merchant.patch("/v1/partners/legacy/config/branding", json={"primary_color": "#000000"})
        assert refused.status_code == 422 and "branding.primary_color" in refused.json()["errors"]
        added = await merchant.patch("/v1/partners/legacy/config/branding", json={"support_email": "help@legacy.in"})
        assert added.status_code == 200, added.text
    await shipcast.apply({"partners": [{"id": "legacy", "name": "Legacy", "branding": {"primary_color": "#0a7cff"},
                                        "channels": {"sms": {"sender": "LEGACY", "events": ["OFD"]}}}]})
    partner = await shipcast.services.store.get_partner("legacy")
    assert partner is not None and partner.branding == {"primary_color": "#0a7cff", "support_email": "help@legacy.in"}


async def test_endpoints_registered_through_the_api_stay_when_the_file_drops_the_webhook_channel(
        shipcast: ShipcastProcess) -> None:
    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme Retail", "channels": {"webhook": {"endpoints": [
        {"id": "file", "url": "https://hooks.acme.example.com/file"}]}}}]})
    async with await partner_client(shipcast) as merchant:
        made = await merchant.post("/v1/partners/acme/endpoints", json={"id": "own", "url": "https://own.example.com/h"})
        assert made.status_code == 201, made.text
    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme Retail"}]})
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and [e["id"] for e in partner.channels["webhook"]["endpoints"]] == ["own"]


async def test_the_config_shows_each_endpoints_own_fields_never_what_is_stored_beside_them(
        shipcast: ShipcastProcess) -> None:
    """A webhook endpoint's secret, credentials, headers and authentication
    are shown masked, by name; its secret's fingerprint, rotated-out
    secrets and encrypted values are not shown at all."""
    import hashlib

    secret, rotated = "whsec_" + "C" * 43 + "=", "whsec_" + "D" * 43 + "="

    def doc(given: str) -> dict[str, Any]:
        return {"partners": [{"id": "acme", "name": "Acme Retail", "channels": {**FILE["partners"][0]["channels"],
                "webhook": {"endpoints": [
                    {"id": "orders", "url": "https://erp-user:erp-pass-31@hooks.acme.example.com/in", "secret": given,
                     "headers": {"X-Api-Key": "key-value-31"}},
                    {"id": "returns", "url": "https://hooks.acme.example.com/returns",
                     "auth": {"type": "bearer", "token": "token-value-31"}}]}}}]}

    await shipcast.apply(doc(secret))
    await shipcast.apply(doc(rotated))  # the first secret rotated out, signing beside the new one for a while
    async with await partner_client(shipcast) as merchant:
        shown = await merchant.get("/v1/partners/acme/config")
    orders, returns = shown.json()["channels"]["webhook"]["endpoints"]
    assert orders == {"id": "orders", "url": "https://hooks.acme.example.com/in", "events": ["*"],
                      "secret": "…redacted…", "ordered": False, "asymmetric": False, "headers": {"X-Api-Key": "••••"}}
    assert returns["auth"] == {"type": "bearer", "token": "••••"}
    for hidden in ("given_fingerprint", hashlib.sha256(rotated.encode()).hexdigest()[:16], "previous_secrets",
                   "userinfo_secret", "header_secrets", "enc:", "erp-pass-31", "key-value-31", "token-value-31",
                   secret, rotated):
        assert hidden not in shown.text, hidden


async def test_drafts_are_bounded_and_refused_constructs_never_run(shipcast: ShipcastProcess) -> None:
    async with await partner_client(shipcast) as merchant:
        huge = await merchant.put("/v1/partners/acme/config/channels/sms", json={
            **SMS, "templates": {f"T{i}": "x" * 30_000 for i in range(10)}})
        assert huge.status_code == 422 and "KiB as JSON" in huge.json()["errors"]["channels.sms"][0]
        nested = "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}x{% endfor %}" \
                 "{% endfor %}{% endfor %} {{ tracking_url }} {{ failure.reason }}"
        shown = await merchant.post("/v1/partners/acme/config/channels/sms/preview", json={
            "event_type": "FAIL", "config": {**SMS, "templates": {"FAIL": nested}}}, timeout=10)
        assert shown.status_code == 200
        assert any("a loop inside a loop" in p["message"] for p in shown.json()["problems"])
        samples = shown.json()["samples"]
        assert samples and all("text" not in sample for sample in samples)  # refused: never rendered
        assert all("not allowed" in (sample["error"] or "") for sample in shown.json()["samples"])
        grows = "{% for i in range(1000) %}{{ 'x' * 9999 }}{% endfor %} {{ tracking_url }} {{ failure.reason }}"
        refused = await merchant.put("/v1/partners/acme/config/channels/sms", json={
            **SMS, "templates": {"FAIL": grows}})
        assert refused.status_code == 422 and "grows past" in str(refused.json()["errors"])
        # A draft names no directory of the server: the file's (none here) is used, and nothing is read.
        elsewhere = await merchant.post("/v1/partners/acme/config/channels/sms/preview", json={
            "event_type": "OFD", "config": {**SMS, "template_dir": "/etc"}})
        assert elsewhere.json()["ok"] and "/etc" not in elsewhere.text
