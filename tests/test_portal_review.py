"""What a review of the portal found: odd input that made a 500 (or a 503
blaming the store), sign-in from another site, sessions left behind, and
quota spent on sends that never happened. Each test failed before its fix."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import orjson
import pytest

from shipcast.model.examples import example
from shipcast.store import Attempt

from .conftest import make_settings
from .helpers import ShipcastProcess
from .portal import Visitor, invitation, signed_in, two_partners

pytestmark = pytest.mark.broker


@pytest.fixture
async def portal(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    async with two_partners(make_settings(vhost, sqlite_url)) as running:
        yield running


async def a_message(shipcast: ShipcastProcess) -> str:
    """An event of acme's, delivered once, as the workers would have logged it."""
    event = example("OFD", shipcast.services.registry.event_types, partner_id="acme")
    await shipcast.services.store.save_events([event])
    await shipcast.services.store.record([Attempt(event.event_id, "webhook", "main", "acme",
                                                  "https://acme.example.com/hooks", "delivered", 1, 12.0,
                                                  status=200, response="ok")])
    return event.event_id


async def test_digits_that_are_not_ascii_are_no_500(portal: ShipcastProcess) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` fails: the ``watch`` and ``before`` parameters."""
    event_id = await a_message(portal)
    async with await signed_in(portal, "dev@acme.example.com", "acme", "viewer") as viewer:
        page = await viewer.get(f"/portal/p/acme/messages/{event_id}?watch=%C2%B2")
        assert page.status_code == 200 and "data-final" in page.text  # as if no watch was asked
        live = await viewer.get(f"/portal/p/acme/messages/{event_id}/attempts?watch=%C2%B2")
        assert live.status_code == 200 and "data-final" in live.text
        audit = await viewer.get("/portal/p/acme/audit?before=%C2%B2")
        assert audit.status_code == 422 and "link is damaged" in audit.text


async def test_an_operator_audit_cursor_beyond_any_id_is_no_500(portal: ShipcastProcess) -> None:
    async with await signed_in(portal, "op@example.com", None) as operator:
        found = await operator.get("/portal/operator/audit?before=99999999999999999999999999")
        assert found.status_code == 422 and "before" in found.text
        assert (await operator.get("/portal/operator/audit?before=9223372036854775807")).status_code == 200


@pytest.fixture(params=["sqlite", "postgresql"])
async def either_store(request: pytest.FixtureRequest, vhost: str, sqlite_url: str,
                       pg_database: str) -> AsyncIterator[ShipcastProcess]:
    """The two-partner portal on SQLite and on PostgreSQL (emptied first)."""
    url = sqlite_url
    if request.param == "postgresql":
        from sqlalchemy.ext.asyncio import create_async_engine

        from shipcast.store import metadata

        url = pg_database
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
        await engine.dispose()
    async with two_partners(make_settings(vhost, url)) as running:
        yield running


def cursor(*items: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(items))).decode().rstrip("=")


async def test_a_nul_character_is_refused_as_input_not_failed_as_a_store_outage(
        either_store: ShipcastProcess) -> None:
    """PostgreSQL stores no NUL: each was a 503 ("the store is unavailable") there."""
    portal = either_store
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as admin:
        found = await admin.get("/portal/p/acme/messages?order_id=a%00b")
        assert found.status_code == 422 and 'id="order_id-error">holds a NUL character' in found.text
        found = await admin.get("/portal/p/acme/messages?endpoint=a%00b")
        assert found.status_code == 422 and 'id="endpoint-error">holds a NUL character' in found.text
        found = await admin.get("/portal/p/acme/messages?before=" + cursor("2026-01-01T00:00:00", "a\0", "b", "c"))
        assert found.status_code == 422 and "link is damaged" in found.text
        assert (await admin.get("/portal/p/acme/messages/a%00b")).status_code == 404
        assert (await admin.get("/portal/p/acme/messages/a%00b/attempts")).status_code == 404
        made = await admin.post("/portal/p/acme/tokens", {"name": "a\0b"})
        assert made.status_code == 422 and "NUL" in made.text
        assert await portal.services.store.list_partner_tokens("acme") == []
    # The partner API reads a message through the same function.
    api = await portal.http.get("/v1/partners/acme/messages/a%00b")
    assert api.status_code == 404
    async with await signed_in(portal, "op@example.com", None) as operator:
        assert (await operator.get("/portal/p/acme%00/")).status_code == 404
        invited = await operator.post("/portal/operator/invitations",
                                      {"partner_id": "acme", "email": "a\0@b.example.com", "role": "viewer"})
        assert invited.status_code == 422 and "email" in invited.text
        ended = await operator.post("/portal/operator/people/sessions/a%00/revoke")
        assert ended.status_code == 303 and ended.headers["location"] == "/portal/operator/people"


async def test_an_invitation_posted_from_another_site_signs_nobody_in(portal: ShipcastProcess) -> None:
    """Login CSRF: another site's page must not sign this browser in as whoever's link it holds."""
    link = await invitation(portal, "mallory@globex.example.com", "globex", "admin")
    token = link.split("token=", 1)[1]
    async with Visitor(portal) as browser:
        for headers in ({"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
                        {"origin": "https://evil.example"}, {"origin": "null"}):
            refused = await browser.http.post("/portal/signin", data={"token": token}, headers=headers)
            assert refused.status_code == 403, headers
            assert "shipcast_portal" not in refused.headers.get("set-cookie", "")
        # The link is not used up: its owner signs in from the portal's page.
        own = portal.base_url.rstrip("/")
        signed = await browser.http.post("/portal/signin", data={"token": token},
                                         headers={"sec-fetch-site": "same-origin", "origin": own})
        assert signed.status_code == 303 and "shipcast_portal=" in signed.headers["set-cookie"]


async def test_signing_in_again_ends_the_session_it_replaces(portal: ShipcastProcess) -> None:
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as browser:
        [first] = await portal.services.store.list_sessions("acme")
        link = await invitation(portal, "dev@acme.example.com", "acme", "viewer")
        signed = await browser.post("/portal/signin", {"token": link.split("token=", 1)[1]}, csrf=False)
        assert signed.status_code == 303
        live = await portal.services.store.list_sessions("acme")
        assert [s["role"] for s in live] == ["viewer"] and first["id"] not in {s["id"] for s in live}


async def test_a_test_send_that_sends_nothing_spends_no_quota(vhost: str, sqlite_url: str) -> None:
    async with two_partners(make_settings(vhost, sqlite_url, partner_resend_quota=1)) as portal:
        wrong = await portal.http.post("/v1/partners/acme/endpoints/main/test", json={"event_type": "NOPE"})
        assert wrong.status_code == 422, wrong.text
        missing = await portal.http.post("/v1/partners/acme/endpoints/nowhere/test", json={})
        assert missing.status_code == 404, missing.text
        sent = await portal.http.post("/v1/partners/acme/endpoints/main/test", json={"event_type": "OFD"})
        assert sent.status_code == 202, sent.text  # the one send of the hour is still there
        again = await portal.http.post("/v1/partners/acme/endpoints/main/test", json={"event_type": "OFD"})
        assert again.status_code == 429


async def test_the_api_refuses_a_nul_in_a_token_name_or_an_invitations_email(either_store: ShipcastProcess) -> None:
    portal = either_store
    made = await portal.http.post("/v1/partners/acme/tokens", params={"name": "a\0b"})
    assert made.status_code == 422 and "name" in made.text, made.text
    invited = await portal.http.post("/v1/portal/invitations",
                                     json={"email": "a\0@b.example.com", "partner_id": "acme"})
    assert invited.status_code == 422 and "email" in invited.text, invited.text
    ended = await portal.http.delete("/v1/portal/sessions/a%00b")
    assert ended.status_code == 404, ended.text


async def test_a_url_whose_port_is_past_65535_is_refused_beside_the_field(portal: ShipcastProcess) -> None:
    """The URL validator took it, then the HTTP client's parser raised: a 500 everywhere an endpoint is made."""
    url = "https://hooks.acme.example.com:99999/in"
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as admin:
        added = await admin.post("/portal/p/acme/endpoints", {"url": url, "events": "*"})
        assert added.status_code == 422 and "Port out of range" in added.text
        edited = await admin.post("/portal/p/acme/endpoints/main", {"url": url, "events": "*"})
        assert edited.status_code == 422 and "Port out of range" in edited.text
    api = await portal.http.post("/v1/partners/acme/endpoints", json={"id": "far", "url": url})
    assert api.status_code == 422 and "url" in api.text, api.text
    async with await signed_in(portal, "op@example.com", None) as operator:
        made = await operator.post("/portal/operator/partners", {"id": "initech", "name": "Initech", "url": url})
        assert made.status_code == 422 and "Port out of range" in made.text
    assert await portal.services.store.get_partner("initech") is None
    main = (await portal.services.store.get_partner("acme")).channels["webhook"]["endpoints"]  # type: ignore[union-attr]
    assert [e["url"] for e in main] == ["https://acme.example.com/hooks"]


async def test_the_overviews_count_links_to_the_same_deliveries(portal: ShipcastProcess) -> None:
    """The card counts deliveries changed in the last 24 h; its link's ``since``
    was cut to the minute, so the page it opened listed up to 59 s more of them."""
    import asyncio
    import re
    from datetime import UTC, datetime, timedelta

    while not 3 <= datetime.now(UTC).second <= 50:  # the old link's minute holds the row below
        await asyncio.sleep(0.5)
    event = example("OFD", portal.services.registry.event_types, partner_id="acme")
    await portal.services.store.record([Attempt(event.event_id, "webhook", "main", "acme", "https://a.example",
                                                "delivered", 1, 3.0, status=200,
                                                at=datetime.now(UTC) - timedelta(days=1, seconds=2))])
    async with await signed_in(portal, "dev@acme.example.com", "acme", "viewer") as viewer:
        overview = await viewer.get("/portal/p/acme/")
        card = re.search(r'<div class="stat">(\d+)</div><a href="([^"]+)">delivered</a>', overview.text)
        assert card is not None and card.group(1) == "0"
        listed = await viewer.get(card.group(2).replace("&amp;", "&"))
        assert listed.status_code == 200 and event.event_id not in listed.text
        # A time to the second is a valid value of the search form's inputs (else the browser blocks the form).
        assert 'name="since" type="datetime-local"' in listed.text
        assert re.search(r'name="since" type="datetime-local" value="[0-9T:-]+:[0-9]{2}"[^>]* step=1', listed.text)


async def test_a_resend_cut_short_by_the_quota_says_so(vhost: str, sqlite_url: str) -> None:
    async with two_partners(make_settings(vhost, sqlite_url, partner_resend_quota=1)) as portal:
        event = example("OFD", portal.services.registry.event_types, partner_id="acme")
        await portal.services.store.save_events([event])
        await portal.services.store.record([
            Attempt(event.event_id, "webhook", target, "acme", "https://acme.example.com/hooks", "dead", 3, 5.0,
                    status=500, error="HTTP 500") for target in ("main", "second")])
        async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as admin:
            sent = await admin.post(f"/portal/p/acme/messages/{event.event_id}/resend")
            assert sent.status_code == 303
            page = await admin.get(sent.headers["location"])
            assert "Sent again to 1 of its 2 targets" in page.text and "quota" in page.text
