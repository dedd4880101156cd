"""The webhook channel's pages in the portal, on the real broker: a partner's
admin adds, edits, disables, enables and deletes endpoints, and the store
and the partner API agree; errors show beside their field (an SSRF refusal
in words); a viewer changes nothing, another partner finds nothing; a
secret shows only after a POST; a test event sent from the portal reaches a
real receiver and its attempts keep the request that was sent; every change
is audited, without a secret. And the API's own disable route."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from shipcast.plugins.webhook import admin
from shipcast.plugins.webhook.headers import request_headers
from shipcast.security.crypto import secret_box
from shipcast.store.tables import disabled_targets

from .conftest import make_settings
from .helpers import Receiver, ShipcastProcess, eventually, partners_doc
from .portal import Visitor, signed_in, two_partners
from .test_verify_snippets import DOCS, LANGUAGES, code_blocks

pytestmark = pytest.mark.broker

#: A public address, judged without a DNS lookup; nothing is sent to it in these tests.
PUBLIC = "https://93.184.216.34"
BASE = "/portal/p/acme/endpoints"


@pytest.fixture
async def portal(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    async with two_partners(make_settings(vhost, sqlite_url), f"{PUBLIC}/hooks", f"{PUBLIC}/globex",
                            events=["OFD"]) as running:
        yield running


@pytest.fixture
async def delivering(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    """With the channel workers running: test events are delivered."""
    async with ShipcastProcess(make_settings(vhost, sqlite_url)) as running:
        await eventually(lambda: running.services.broker.connected)
        await running.apply(partners_doc("acme", f"{PUBLIC}/hooks", events=["OFD"]))
        yield running


def field_error(page: str, name: str) -> str | None:
    """The error shown beside field ``name`` (its ``…-error`` span), as text."""
    found = re.search(rf'<span class="field-error" id="{re.escape(name)}-error">(.*?)</span>', page, re.S)
    return html.unescape(found.group(1)) if found else None


def secret_on(page: str) -> str:
    found = re.search(r'<code id="secret" class="secret">(whsec_[^<]+)</code>', page)
    assert found, page
    return found.group(1)


def form(**fields: Any) -> dict[str, Any]:
    """The add/edit form as a browser posts it: ticked checkboxes only, every text field."""
    data: dict[str, Any] = {"url": "", "events": ["*"], "description": "", "rate_limit": "", "max_concurrency": ""}
    data.update(fields)
    for box in ("ordered", "asymmetric"):
        if data.pop(box, False):
            data[box] = "on"
    return data


async def stored(shipcast: ShipcastProcess, partner_id: str = "acme") -> list[dict[str, Any]]:
    partner = await shipcast.services.store.get_partner(partner_id)
    assert partner is not None
    return admin.endpoints_of(partner)


async def changes(shipcast: ShipcastProcess) -> list[dict[str, Any]]:
    """The audit log's records of endpoint changes to acme, newest first (inviting people is there too)."""
    return [row for row in await shipcast.services.store.list_audit("acme") if row["action"].startswith("endpoint.")]


async def disabled_reason(shipcast: ShipcastProcess, endpoint_id: str) -> str | None:
    rows = await shipcast.services.store._rows(
        sa.select(disabled_targets.c.reason).where((disabled_targets.c.partner_id == "acme")
                                                   & (disabled_targets.c.target == endpoint_id)))
    return rows[0].reason if rows else None


async def test_an_admin_adds_edits_disables_enables_and_deletes_an_endpoint(portal: ShipcastProcess) -> None:
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as browser:
        listing = await browser.get(BASE)
        assert listing.status_code == 200, listing.text
        assert f'href="{BASE}"' in listing.text and ">Endpoints</a>" in listing.text  # in the navigation
        assert "main" in listing.text and f"{PUBLIC}/hooks" in listing.text and "Add endpoint" in listing.text
        for name in portal.services.registry.event_types:  # every type of the catalog, as a checkbox
            assert f'id="f-events-{name}" name="events" type="checkbox" value="{name}"' in listing.text

        created = await browser.post(BASE, form(id="orders", url=f"{PUBLIC}/orders", events=["OFD", "DEL"],
                                                description="ERP", ordered=True, rate_limit="5",
                                                max_concurrency="3"))
        assert created.status_code == 201, created.text
        secret = secret_on(created.text)
        assert secret == (await admin.current_secret(portal.services, "acme", "orders"))["secret"]
        assert created.text.count(secret) == 1  # shown once, and inside no code
        assert 'data-copy="#secret"' in created.text and "Send a test event" in created.text
        assert re.search(rf'<form method="post" action="{BASE}/orders/test">', created.text)

        # The store and the API agree with what was typed.
        api = (await portal.http.get("/v1/partners/acme/endpoints/orders")).json()
        assert {key: api[key] for key in ("url", "events", "description", "ordered", "asymmetric", "rate_limit",
                                          "max_concurrency", "disabled")} == {
            "url": f"{PUBLIC}/orders", "events": ["OFD", "DEL"], "description": "ERP", "ordered": True,
            "asymmetric": False, "rate_limit": 5.0, "max_concurrency": 3, "disabled": False}
        [kept] = [e for e in await stored(portal) if e["id"] == "orders"]
        assert kept["origin"] == "api" and kept["secret"] != secret  # stored encrypted

        # An id left empty is made from the URL's host, unique among the partner's.
        unnamed = await browser.post(BASE, form(url=f"{PUBLIC}/more"))
        assert unnamed.status_code == 201, unnamed.text
        assert {e["id"] for e in await stored(portal)} == {"main", "orders", "93-184-216-34"}

        # Edited: the cleared fields go back to the defaults, the unticked boxes are off.
        page = await browser.get(f"{BASE}/orders")
        assert page.status_code == 200 and 'value="ERP"' in page.text and secret not in page.text
        edited = await browser.post(f"{BASE}/orders", form(url=f"{PUBLIC}/v2", events=["*"], max_concurrency="7"))
        assert edited.status_code == 303 and edited.headers["location"] == f"{BASE}/orders", edited.text
        api = (await portal.http.get("/v1/partners/acme/endpoints/orders")).json()
        assert (api["url"], api["events"], api["description"], api["ordered"], api["rate_limit"],
                api["max_concurrency"]) == (f"{PUBLIC}/v2", ["*"], None, False, None, 7)
        assert (await admin.current_secret(portal.services, "acme", "orders"))["secret"] == secret  # kept
        shown = await browser.get(f"{BASE}/orders")
        assert "Endpoint orders saved." in shown.text  # the notice, once

        # Disabled and enabled: the store, the API and the page say so; the reason names who.
        assert (await browser.post(f"{BASE}/orders/disable")).status_code == 303
        assert ("webhook", "acme", "orders") in await portal.services.store.get_disabled_targets()
        assert "dev@acme.example.com" in (await disabled_reason(portal, "orders") or "")
        assert (await portal.http.get("/v1/partners/acme/endpoints/orders")).json()["disabled"] is True
        assert 'class="badge bad">disabled<' in (await browser.get(BASE)).text
        assert "/orders/enable" in (await browser.get(f"{BASE}/orders")).text
        assert (await browser.post(f"{BASE}/orders/enable")).status_code == 303
        assert ("webhook", "acme", "orders") not in await portal.services.store.get_disabled_targets()
        assert (await portal.http.get("/v1/partners/acme/endpoints/orders")).json()["disabled"] is False

        # Deleting asks on a page of its own, with no script.
        asking = await browser.get(f"{BASE}/orders/delete")
        assert asking.status_code == 200 and "confirm(" not in asking.text
        assert f'action="{BASE}/orders/delete"' in asking.text
        assert ("orders" in {e["id"] for e in await stored(portal)})
        deleted = await browser.post(f"{BASE}/orders/delete")
        assert deleted.status_code == 303 and deleted.headers["location"] == BASE
        assert (await portal.http.get("/v1/partners/acme/endpoints/orders")).status_code == 404
        assert {e["id"] for e in await stored(portal)} == {"main", "93-184-216-34"}
        assert (await browser.get(f"{BASE}/orders")).status_code == 404

    log = await changes(portal)
    actions = [row["action"] for row in log]
    assert actions[:6] == ["endpoint.delete", "endpoint.enable", "endpoint.disable", "endpoint.update",
                           "endpoint.create", "endpoint.create"], actions
    assert {(row["actor"], row["via"]) for row in log[:6]} == {("dev@acme.example.com (admin)", "portal")}
    update = log[3]
    assert update["subject"] == "orders"
    assert update["before"]["url"] == f"{PUBLIC}/orders" and update["after"]["url"] == f"{PUBLIC}/v2"
    assert update["before"]["rate_limit"] == 5.0 and update["after"]["rate_limit"] is None
    assert log[2]["after"]["disabled"] is True and log[1]["after"]["disabled"] is False
    assert secret not in str(log) and "whsec_" not in str(log)


#: What is typed wrong, the field whose error shows beside it, and words of that error.
WRONG = [
    ({"url": "not a url"}, "url", "Not a valid URL"),
    ({"url": "ftp://93.184.216.34/x"}, "url", "Not a valid URL"),
    ({"url": "http://10.1.2.3/hook"}, "url",
     "10.1.2.3 is in 10.0.0.0/8 (private): that is a private network, which shipcast does not send to"),
    ({"url": "http://169.254.169.254/latest"}, "url", "link-local network (where cloud metadata services answer)"),
    ({"events": ["NOPE"]}, "events", "unknown event types ['NOPE']"),
    ({"events": []}, "events", "must list at least one event type"),
    ({"events": ["*", "OFD"]}, "events", "'*' already means every event type"),
    ({"rate_limit": "fast"}, "rate_limit", "Not a valid number"),
    ({"rate_limit": "0"}, "rate_limit", "greater than or equal to 0.1"),
    ({"max_concurrency": "2.5"}, "max_concurrency", "Not a valid integer"),
    ({"max_concurrency": "1000"}, "max_concurrency", "less than or equal to 256"),
    ({"description": "x" * 501}, "description", "Longer than maximum length 500"),
    ({"id": "Not An Id!"}, "id", "must match [a-z0-9_-]+"),
    ({"id": "main"}, "id", "an endpoint with that id already"),
]


@pytest.mark.parametrize(("fields", "field", "words"), WRONG)
async def test_what_is_wrong_is_said_beside_its_field(portal: ShipcastProcess, fields: dict[str, Any], field: str,
                                                    words: str) -> None:
    typed = form(**{"id": "new", "url": f"{PUBLIC}/new", "description": "typed by hand", **fields})
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as browser:
        answer = await browser.post(BASE, typed)
    assert answer.status_code == 422, answer.text
    shown = field_error(answer.text, field)
    assert shown is not None and words in shown, (shown, answer.text[-3000:])
    assert 'role="alert"' in answer.text
    # What was typed is still there, to be mended.
    if field != "description":
        assert 'value="typed by hand"' in answer.text
    assert f'value="{html.escape(str(typed["url"]), quote=True)}"' in answer.text
    assert {e["id"] for e in await stored(portal)} == {"main"}  # nothing stored
    # The API says the same of the same fields: one validation.
    body = {key: value for key, value in typed.items() if value not in ("", [])} | {
        "events": typed["events"], "id": typed["id"]}
    api = await portal.http.post("/v1/partners/acme/endpoints", json=body)
    assert api.status_code in (409, 422), api.text
    if api.status_code == 422:
        assert words in " ".join(api.json()["detail"]["errors"][field]), api.text
    assert not await changes(portal)


async def test_the_edit_form_refuses_the_same_and_keeps_the_endpoint(portal: ShipcastProcess) -> None:
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as browser:
        answer = await browser.post(f"{BASE}/main", form(url="http://192.168.1.20/hook", events=["OFD"],
                                                         rate_limit="lots"))
        assert answer.status_code == 422
        assert "192.168.1.20" in answer.text and 'value="lots"' in answer.text
        # The schema speaks first: the rate limit; the URL is checked once the fields load.
        assert "Not a valid number" in (field_error(answer.text, "rate_limit") or "")
        again = await browser.post(f"{BASE}/main", form(url="http://192.168.1.20/hook", events=["OFD"]))
        assert again.status_code == 422
        assert "a private network, which shipcast does not send to" in (field_error(again.text, "url") or "")
    [main] = await stored(portal)
    assert main["url"] == f"{PUBLIC}/hooks"


async def test_a_viewer_reads_and_changes_nothing(portal: ShipcastProcess) -> None:
    before = await stored(portal)
    async with await signed_in(portal, "viewer@acme.example.com", "acme", "viewer") as browser:
        listing = await browser.get(BASE)
        assert listing.status_code == 200 and "main" in listing.text
        assert f'<form method="post" action="{BASE}">' not in listing.text
        page = await browser.get(f"{BASE}/main")
        assert page.status_code == 200 and f"{PUBLIC}/hooks" in page.text and "/main/disable" not in page.text
        for path in ("/main/secret", "/main/delete", "/main/test"):
            assert (await browser.get(BASE + path)).status_code == 403, path
        posts = {"": form(id="mine", url=f"{PUBLIC}/mine"), "/main": form(url=f"{PUBLIC}/moved"),
                 "/main/disable": {}, "/main/enable": {}, "/main/delete": {}, "/main/secret/reveal": {},
                 "/main/secret/rotate": {"overlap_hours": "1"}, "/main/test": {"event_type": "OFD"}}
        for path, data in posts.items():
            answer = await browser.post(BASE + path, data)
            assert answer.status_code == 403, (path, answer.text)
            assert "whsec_" not in answer.text
    assert await stored(portal) == before
    assert await portal.services.store.get_disabled_targets() == set()
    assert not await changes(portal)
    assert await portal.services.store.list_deliveries(partner_id="acme") == []


async def test_another_partner_finds_nothing(portal: ShipcastProcess) -> None:
    gets = ["", "/main", "/main/delete", "/main/secret", "/main/test"]
    posts = ["", "/main", "/main/disable", "/main/enable", "/main/delete", "/main/secret/reveal",
             "/main/secret/rotate", "/main/test"]
    before = await stored(portal)
    async with await signed_in(portal, "dev@globex.example.com", "globex", "admin") as browser:
        for path in gets:
            assert (await browser.get(BASE + path)).status_code == 404, path
        for path in posts:
            answer = await browser.post(BASE + path, form(id="x", url=f"{PUBLIC}/x") | {
                "overlap_hours": "1", "event_type": "OFD"})
            assert answer.status_code == 404, (path, answer.text)
        # Its own pages work, and an endpoint it lacks is a 404 there too.
        assert (await browser.get("/portal/p/globex/endpoints")).status_code == 200
        assert (await browser.get("/portal/p/globex/endpoints/nope")).status_code == 404
        assert (await browser.post("/portal/p/globex/endpoints/nope/disable")).status_code == 404
        assert (await browser.get("/portal/p/nobody/endpoints")).status_code == 404
    assert await stored(portal) == before and not await changes(portal)
    # Nobody signed in: pages send to the sign-in page, forms are refused.
    async with Visitor(portal) as stranger:
        answer = await stranger.get(BASE)
        assert answer.status_code == 303 and answer.headers["location"] == "/portal/signin"
        assert (await stranger.post(f"{BASE}/main/disable", csrf=False)).status_code == 401


async def test_a_secret_shows_only_after_a_post_with_the_forms_token(portal: ShipcastProcess) -> None:
    current = (await admin.current_secret(portal.services, "acme", "main"))["secret"]
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as browser:
        asking = await browser.get(f"{BASE}/main/secret")
        assert asking.status_code == 200 and current not in asking.text
        assert f'action="{BASE}/main/secret/reveal"' in asking.text
        assert 'name="overlap_hours" type="text" value="24"' in asking.text  # SHIPCAST_WEBHOOK_SECRET_OVERLAP
        got = await browser.get(f"{BASE}/main/secret/reveal")
        assert got.status_code == 405 and current not in got.text
        assert (await browser.post(f"{BASE}/main/secret/reveal", csrf=False)).status_code == 403
        forged = await browser.post(f"{BASE}/main/secret/reveal", {"csrf": "forged"})
        assert forged.status_code == 403 and current not in forged.text
        assert not await changes(portal)

        revealed = await browser.post(f"{BASE}/main/secret/reveal")
        assert revealed.status_code == 200 and secret_on(revealed.text) == current
        assert revealed.headers["cache-control"] == "no-store"
        assert 'data-copy="#secret"' in revealed.text

        # Rotating: the hours are checked, the new secret shown once, the old one verifies until then.
        wrong = await browser.post(f"{BASE}/main/secret/rotate", {"overlap_hours": "a day"})
        assert wrong.status_code == 422 and "hours from 0 to 720" in (field_error(wrong.text, "overlap_hours") or "")
        too_long = await browser.post(f"{BASE}/main/secret/rotate", {"overlap_hours": "1000"})
        assert too_long.status_code == 422 and field_error(too_long.text, "overlap_hours")
        assert (await admin.current_secret(portal.services, "acme", "main"))["secret"] == current
        rotated = await browser.post(f"{BASE}/main/secret/rotate", {"overlap_hours": "2"})
        assert rotated.status_code == 200, rotated.text
        new = secret_on(rotated.text)
        assert new != current and new == (await admin.current_secret(portal.services, "acme", "main"))["secret"]
        until = (await admin.current_secret(portal.services, "acme", "main"))["previous_secret_valid_until"]
        assert until and f"The old secret still verifies until {until[:10]}" in rotated.text
        [main] = await stored(portal)
        from shipcast.plugins.webhook import valid_secrets
        from shipcast.security.crypto import secret_box
        assert valid_secrets(secret_box(portal.settings), main) == [new, current]

    log = await changes(portal)
    assert [row["action"] for row in log] == ["endpoint.secret_rotate", "endpoint.secret_reveal"]
    assert log[0]["after"]["overlap_seconds"] == 7200.0
    assert current not in str(log) and new not in str(log) and "whsec_" not in str(log)


async def test_the_pages_show_the_docs_programs_with_a_placeholder(portal: ShipcastProcess) -> None:
    """The five programs of docs/partners.md (run for real by
    test_verify_snippets.py), word for word, and a call with a placeholder
    where the secret goes: never the secret inside code."""
    blocks = code_blocks(DOCS.read_text(encoding="utf-8"))
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as browser:
        revealed = await browser.post(f"{BASE}/main/secret/reveal")
    secret = secret_on(revealed.text)
    for language in LANGUAGES:
        shown = re.search(rf'<code id="snippet-{language}"[^>]*>(.*?)</code>', revealed.text, re.S)
        assert shown is not None, language
        assert html.unescape(shown.group(1)) == blocks[language][0], language
        call = re.search(rf'<code id="call-{language}">(.*?)</code>', revealed.text, re.S)
        assert call is not None and "whsec_…your secret…" in html.unescape(call.group(1)), language
        assert f'data-copy="#snippet-{language}"' in revealed.text
    codes = " ".join(re.findall(r"<code[^>]*>(.*?)</code>", revealed.text, re.S))
    assert secret in codes and revealed.text.count(secret) == 1  # in the secret's own box, nowhere else


async def test_a_test_event_sent_from_the_portal_reaches_the_receiver_with_its_request_logged(
        delivering: ShipcastProcess) -> None:
    async with Receiver(script=[503]) as receiver:
        # The URL carries credentials: they are sent, and never logged or shown.
        url = receiver.url.replace("http://", "http://hookuser:pa55word@")
        async with await signed_in(delivering, "dev@acme.example.com", "acme", "admin") as browser:
            created = await browser.post(BASE, form(id="local", url=url, events=["OFD"]))
            assert created.status_code == 201, created.text
            secret = secret_on(created.text)
            assert "pa55word" not in created.text
            event_type = re.search(r'name="event_type" value="([A-Z_]+)"', created.text)
            assert event_type is not None and event_type.group(1) == "OFD"  # a type it receives
            # The test page offers every registered type.
            chooser = await browser.get(f"{BASE}/local/test")
            for name in delivering.services.registry.event_types:
                assert f'<option value="{name}"' in chooser.text
            unknown = await browser.post(f"{BASE}/local/test", {"event_type": "NOPE"})
            assert unknown.status_code == 422 and field_error(unknown.text, "event_type")
            # The button on the page after adding it, whatever type: here a DEL, which the endpoint does not take.
            sent = await browser.post(f"{BASE}/local/test", {"event_type": "DEL"})
            assert sent.status_code == 303, sent.text
            location = sent.headers["location"]
            assert location.startswith("/portal/p/acme/messages/")
            event_id = location.rsplit("/", 1)[1]

            # The first answer is a 503, the retry a 200: both attempts keep what was sent.
            await eventually(lambda: len(receiver.delivered) == 1, timeout=20)
            first, second = receiver.requests
            assert first.headers["webhook-id"] == second.headers["webhook-id"] == event_id
            assert second.json["event_type"] == "DEL"
            Webhook(secret).verify(second.body, {k.lower(): v for k, v in second.headers.items()})
            assert second.headers["Authorization"].startswith("Basic ")  # the credentials were used

            attempts = await eventually(lambda: _attempts(delivering, event_id, 2))
            assert [a["status"] for a in attempts] == [503, 200]
            for attempt, received in zip(attempts, receiver.requests, strict=True):
                request = attempt["request"]
                assert request["method"] == "POST"
                assert request["url"] == receiver.url.replace("http://", "http://…:…@")
                headers = request["headers"]
                assert set(headers) == {"content-type", "user-agent", "webhook-id", "webhook-timestamp",
                                        "webhook-signature"}
                assert headers["webhook-id"] == event_id
                assert headers["webhook-signature"] == received.headers["webhook-signature"]
                assert headers["webhook-timestamp"] == received.headers["webhook-timestamp"]
                text = str(request).lower()
                assert "pa55word" not in text and "hookuser" not in text and "authorization" not in text
                assert "basic " not in text

            # The list shows the endpoint's health from those attempts.
            listing = await browser.get(BASE)
            row = listing.text.split(f'href="{BASE}/local"', 1)[1].split("</tr>", 1)[0]
            assert '<td class="num">2</td>' in row and "50.0 %" in row and "HTTP 503" in row

    [test] = [row for row in await changes(delivering) if row["action"] == "endpoint.test"]
    assert test["after"] == {"event_id": event_id, "event_type": "DEL"} and test["subject"] == "local"
    assert secret not in str(await delivering.services.store.list_audit("acme"))


async def _attempts(shipcast: ShipcastProcess, event_id: str, count: int) -> list[dict[str, Any]] | None:
    rows = await shipcast.services.store.list_attempts(event_id)
    return rows if len(rows) >= count else None


async def test_the_api_disables_and_enables_an_endpoint(delivering: ShipcastProcess) -> None:
    http = delivering.http
    async with Receiver() as receiver:
        created = await http.post("/v1/partners/acme/endpoints", json={"id": "local", "url": receiver.url})
        assert created.status_code == 201, created.text
        disabled = await http.post("/v1/partners/acme/endpoints/local/disable")
        assert disabled.status_code == 200 and disabled.json()["disabled"] is True
        assert await disabled_reason(delivering, "local") == "disabled by operator token through the api"
        assert (await http.get("/v1/partners/acme/endpoints/local")).json()["disabled"] is True
        assert (await http.post("/v1/partners/acme/endpoints/nope/disable")).status_code == 404
        await delivering.apply(partners_doc("globex", f"{PUBLIC}/globex"))
        globex = (await http.post("/v1/partners/globex/tokens")).json()["token"]
        async with httpx.AsyncClient(base_url=delivering.base_url,
                                     headers={"authorization": f"Bearer {globex}"}) as other:
            assert (await other.post("/v1/partners/acme/endpoints/local/disable")).status_code == 403

        # Nothing reaches a disabled endpoint; after enabling, a test event does.
        held = await http.post("/v1/partners/acme/endpoints/local/test", json={"event_type": "OFD"})
        assert held.status_code == 202
        rows = await eventually(lambda: _attempts(delivering, held.json()["event_id"], 1))
        assert rows[0]["error"] == "target disabled; not attempted" and receiver.requests == []
        enabled = await http.post("/v1/partners/acme/endpoints/local/enable")
        assert enabled.status_code == 200 and enabled.json()["disabled"] is False
        sent = await http.post("/v1/partners/acme/endpoints/local/test", json={"event_type": "OFD"})
        await eventually(lambda: receiver.delivered)
        assert receiver.requests[0].headers["webhook-id"] == sent.json()["event_id"]

        # The API's changes are audited as the operator's, without the secret; so is reading it.
        patched = await http.patch("/v1/partners/acme/endpoints/local", json={"rate_limit": 9})
        assert patched.status_code == 200 and patched.json()["rate_limit"] == 9.0
        cleared = await http.patch("/v1/partners/acme/endpoints/local", json={"rate_limit": None})
        assert cleared.status_code == 200 and cleared.json()["rate_limit"] is None
        assert (await http.get("/v1/partners/acme/endpoints/local/secret")).status_code == 200
        assert (await http.post("/v1/partners/acme/endpoints/local/secret/rotate",
                                json={"overlap_seconds": 60})).status_code == 200
        assert (await http.delete("/v1/partners/acme/endpoints/local")).status_code == 200
    log = await changes(delivering)
    assert [row["action"] for row in log] == [
        "endpoint.delete", "endpoint.secret_rotate", "endpoint.secret_reveal", "endpoint.update", "endpoint.update",
        "endpoint.test", "endpoint.enable", "endpoint.test", "endpoint.disable", "endpoint.create"]
    assert {(row["actor"], row["via"]) for row in log} == {("operator token", "api")}
    assert created.json()["secret"] not in str(log) and "whsec_" not in str(log)


# -- filter, headers and authentication ------------------------------------------------

#: The filter, headers and authentication fields typed wrong: the field the error shows beside, and its words.
WRONG_EXTRAS = [
    ({"filter": '{"any": [{"event_type": "RET"}, {"order.foo": 1}]}'}, "filter",
     "any.1.order.foo: no such field; order has order_id"),
    ({"filter": "order.payment.method: card"}, "filter", "order.payment.method: must be one of 'prepaid', 'cod'"),
    ({"filter": "event_type: [OFD, LOST]"}, "filter", "event_type.1: unknown event type 'LOST'"),
    ({"filter": "{unclosed"}, "filter", "not JSON or YAML"),
    ({"filter": "cod only"}, "filter", "must be an object"),
    ({"filter": "a: &x [1]\nb: *x"}, "filter", "aliases (*name) are not taken here"),
    ({"filter": "order.address.city: !!bool Pune"}, "filter", "tags (!!name) are not taken here"),
    ({"filter": "order.promised_date: 2024-02-30"}, "filter", "not JSON or YAML: day is out of range"),
    ({"headers": "X-Api-Key k-1"}, "headers", "line 1: write one header a line, as Name: value"),
    ({"headers": "X-Api-Key: k\nHost: internal"}, "headers", "Host: reserved"),
    ({"headers": "webhook-signature: v1,forged"}, "headers", "webhook-signature: reserved"),
    ({"headers": "X-Api-Key: ••••"}, "headers", "X-Api-Key: no value is stored to keep"),
    ({"auth_type": "basic", "auth_username": "erp"}, "auth_secret", "required: no password is stored to keep"),
    ({"auth_type": "basic", "auth_username": "", "auth_secret": "pw"}, "auth_username", "Length must be between 1 and 256"),
    ({"auth_type": "basic", "auth_username": "a:b", "auth_secret": "pw"}, "auth_username", "must not hold ':'"),
    ({"auth_type": "bearer", "auth_secret": "has space"}, "auth_secret", "not a bearer token"),
    ({"auth_type": "digest"}, "auth_type", "Must be one of: basic, bearer"),
    ({"auth_type": "bearer", "auth_secret": "t", "headers": "Authorization: Token t"}, "headers",
     "Authorization: reserved while auth is set"),
]


@pytest.mark.parametrize(("fields", "field", "words"), WRONG_EXTRAS, ids=[str(f)[:50] for f, _, _ in WRONG_EXTRAS])
async def test_a_wrong_filter_header_or_authentication_is_said_beside_its_field(
        portal: ShipcastProcess, fields: dict[str, Any], field: str, words: str) -> None:
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as browser:
        answer = await browser.post(BASE, form(id="new", url=f"{PUBLIC}/new", **fields))
        assert answer.status_code == 422, answer.text
        shown = field_error(answer.text, field)
        assert shown is not None and words in shown, (shown, answer.text[-3000:])
        if "filter" in fields:  # what was typed is still there, to be mended
            assert fields["filter"] in html.unescape(answer.text)
        # The edit form says the same of the same fields.
        edited = await browser.post(f"{BASE}/main", form(url=f"{PUBLIC}/hooks", **fields))
        assert edited.status_code == 422 and words in (field_error(edited.text, field) or ""), edited.text[-3000:]
    assert {e["id"] for e in await stored(portal)} == {"main"}
    assert not await changes(portal)


async def test_a_refused_form_gives_back_no_header_value_password_or_token_typed(portal: ShipcastProcess) -> None:
    typed = {"headers": "X-Api-Key: k-typed-secret\nX-Tenant: acme-typed-secret", "auth_type": "bearer",
             "auth_secret": "t-typed-secret"}
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as browser:
        for path, fields in [(BASE, {"id": "new"}), (f"{BASE}/main", {})]:
            answer = await browser.post(path, form(url="http://10.1.2.3/hook", **fields, **typed))
            assert answer.status_code == 422, answer.text
            assert "a private network" in (field_error(answer.text, "url") or "")
            assert "typed-secret" not in answer.text, path
            assert "X-Api-Key: \nX-Tenant: </textarea>" in answer.text and 'value="http://10.1.2.3/hook"' in answer.text
            assert "type them again" in (field_error(answer.text, "headers") or "")
            assert "type it again" in (field_error(answer.text, "auth_secret") or "")
    assert {e["id"] for e in await stored(portal)} == {"main"}


async def test_a_filter_headers_and_authentication_are_set_kept_masked_and_cleared(portal: ShipcastProcess) -> None:
    key, password = "k-5d1a-plaintext", "pw-7e3b-plaintext"
    filter_yaml = "any:\n  - order.address.city: [Bengaluru, Mysuru]\n  - event_type: RET\n"
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as browser:
        created = await browser.post(BASE, form(id="erp", url=f"{PUBLIC}/erp", filter=filter_yaml,
                                                headers=f"X-Api-Key: {key}\r\nX-Tenant: acme\r\n",
                                                auth_type="basic", auth_username="erp", auth_secret=password))
        assert created.status_code == 201, created.text[-3000:]
        api = (await portal.http.get("/v1/partners/acme/endpoints/erp")).json()
        assert api["filter"] == {"any": [{"order.address.city": ["Bengaluru", "Mysuru"]}, {"event_type": "RET"}]}
        assert api["headers"] == {"X-Api-Key": "••••", "X-Tenant": "••••"}
        assert api["auth"] == {"type": "basic", "username": "erp", "password": "••••"}
        [erp] = [e for e in await stored(portal) if e["id"] == "erp"]
        assert key not in str(erp) and password not in str(erp)

        # The page shows the filter, the headers' names and the authentication, never a value.
        page = await browser.get(f"{BASE}/erp")
        assert page.status_code == 200 and key not in page.text and password not in page.text
        assert "X-Api-Key: ••••\nX-Tenant: ••••</textarea>" in page.text
        assert 'name="auth_secret" type="password" value="••••"' in page.text
        assert '<option value="basic" selected>' in page.text and 'value="erp"' in page.text
        assert '"order.address.city"' in html.unescape(page.text)

        # Saved again as shown, with a header changed: the masked ones keep their values.
        edited = await browser.post(f"{BASE}/erp", form(
            url=f"{PUBLIC}/erp", filter='{"order.payment.method": "cod"}', headers="X-Api-Key: ••••\nX-New: n-1",
            auth_type="basic", auth_username="erp2", auth_secret="••••"))
        assert edited.status_code == 303, edited.text[-3000:]
        [erp] = [e for e in await stored(portal) if e["id"] == "erp"]
        sent, _ = request_headers(secret_box(portal.settings), erp)
        assert sent == {"X-Api-Key": key, "X-New": "n-1",
                        "authorization": "Basic " + base64.b64encode(f"erp2:{password}".encode()).decode()}
        assert erp["filter"] == {"order.payment.method": "cod"}

        # Emptied: no filter, no headers, the signature only.
        cleared = await browser.post(f"{BASE}/erp", form(url=f"{PUBLIC}/erp"))
        assert cleared.status_code == 303, cleared.text[-3000:]
        api = (await portal.http.get("/v1/partners/acme/endpoints/erp")).json()
        assert (api["filter"], api["headers"], api["auth"]) == (None, {}, None)
    log = await changes(portal)
    assert key not in str(log) and password not in str(log)
    assert log[1]["after"]["headers"] == {"X-Api-Key": "••••", "X-New": "••••"}
