"""Nobody reaches another partner's anything through the portal. Every
portal route the app has (plugins' too, found by walking the app, so a new
route is walked the day it is added) is tried as a stranger, as another
partner's admin, as the partner's viewer trying to write, and (operator
pages) as a partner's admin; and nothing changed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shipcast.store import OutboxMessage
from tests.bound import example

from .conftest import make_settings
from .helpers import Receiver, ShipcastProcess, eventually, partners_doc, settled
from .portal import Visitor, signed_in
from .test_hostile import every_route

pytestmark = pytest.mark.broker

#: Routes anyone may reach: signing in, the portal's own files, its home (which redirects to one's own).
OPEN = {"/portal/signin", "/portal/static/{name}", "/portal/", "/portal/signout"}


@pytest.fixture
async def two_partners(vhost: str, sqlite_url: str, receiver: Receiver) -> AsyncIterator[dict[str, Any]]:
    async with ShipcastProcess(make_settings(vhost, sqlite_url)) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url))
        await shipcast.apply(partners_doc("globex", receiver.url))
        event = example("OFD", partner_id="acme")
        assert (await shipcast.http.post("/v1/events", content=event.to_json(),
                                         headers={"content-type": "application/json"})).status_code == 202
        await eventually(lambda: shipcast.services.store.get_event(event.event_id))
        await eventually(settled(shipcast, event.event_id))  # delivered: the log does not move under the walk
        token = (await shipcast.http.post("/v1/partners/acme/tokens", params={"name": "walk"})).json()
        operator = await signed_in(shipcast, "ops@example.com")
        sessions = await shipcast.services.store.list_sessions(operators=True)
        # An email in acme's development outbox: its page, and its HTML part's own document.
        number = await shipcast.services.store.add_outbox(OutboxMessage(
            channel="email", partner_id="acme", recipient="priya@example.com", text="Hello",
            subject="Your order", html='<p style="color:#123456">Hello</p>'))
        yield {"shipcast": shipcast, "params": {
            "partner_id": "acme", "endpoint_id": "main", "event_id": event.event_id, "event_type": "OFD",
            "token_id": token["id"], "channel": "webhook", "session_id": sessions[0]["id"],
            "customer_channel": "email", "number": str(number)}}
        await operator.aclose()


def portal_routes(shipcast: ShipcastProcess) -> list[tuple[str, str]]:
    found = []
    for route in every_route(shipcast.server.config.app):
        if getattr(route, "methods", None) and route.path.startswith("/portal") and route.path not in OPEN:
            found += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


def no_inline_code(url: str, response: Any) -> None:
    """A page under the portal's CSP: a nonce, and no script, handler or style
    it would refuse. A preview of what customers see (the tracking page, an
    email's HTML, styled inline) is a document of its own, sandboxed so that
    nothing may run in it whatever it holds, and shown only in a frame of the portal's."""
    policy = response.headers["content-security-policy"]
    if policy.startswith("sandbox;"):
        assert "allow-" not in policy and "script-src" not in policy, (url, policy)
        assert "default-src 'none'" in policy and "frame-ancestors 'self'" in policy, (url, policy)
        return
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce and "unsafe-inline" not in policy and "style-src 'self'" in policy, (url, policy)
    page = response.text
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert all(f'nonce="{nonce.group(1)}"' in tag and " src=" in tag for tag in scripts), (url, scripts)
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=|javascript:", page, re.IGNORECASE), url


def filled(path: str, params: dict[str, str]) -> str:
    names = re.findall(r"{(\w+)(?::\w+)?}", path)
    unknown = [name for name in names if name not in params]
    assert not unknown, f"{path}: the walk does not know what to put for {unknown}: add it to the fixture"
    for name in names:
        path = re.sub(r"{" + name + r"(?::\w+)?}", params[name], path)
    return path


async def snapshot(shipcast: ShipcastProcess) -> Any:
    store = shipcast.services.store
    return (await store.list_audit(limit=1000), [p.to_dict() for p in await store.get_partners()],
            await store.list_partner_tokens("acme"), await store.list_deliveries(channel="webhook", limit=1000),
            await store.list_attempts(channel="webhook"))


async def test_every_portal_route_keeps_to_its_own(two_partners: dict[str, Any]) -> None:
    shipcast: ShipcastProcess = two_partners["shipcast"]
    params = two_partners["params"]
    routes = portal_routes(shipcast)
    partner_routes = [(m, p) for m, p in routes if p.startswith("/portal/p/{partner_id}")]
    operator_routes = [(m, p) for m, p in routes if p.startswith("/portal/operator")]
    assert not [r for r in routes if r not in partner_routes + operator_routes], "a portal route of neither kind"
    # The pages the issue names are all here: the walk covers them.
    paths = {p for _, p in partner_routes}
    for expected in ("/portal/p/{partner_id}/", "/portal/p/{partner_id}/messages", "/portal/p/{partner_id}/catalog",
                     "/portal/p/{partner_id}/tokens", "/portal/p/{partner_id}/audit",
                     "/portal/p/{partner_id}/endpoints"):
        assert expected in paths, (expected, sorted(paths))
    assert any(p == "/portal/operator/" for _, p in operator_routes)
    writes = [(m, p) for m, p in partner_routes if m != "GET"]
    assert len(writes) >= 10, writes

    before = await snapshot(shipcast)
    async with Visitor(shipcast) as stranger:
        for method, path in routes:
            response = await stranger.http.request(method, filled(path, params))
            if method == "GET":
                assert response.status_code == 303, (path, response.status_code)
                assert response.headers["location"] == "/portal/signin", path
            else:
                assert response.status_code in (401, 403), (method, path, response.status_code)

    other = await signed_in(shipcast, "dev@globex.example.com", "globex", "admin")
    try:
        for method, path in partner_routes + operator_routes:
            response = await (other.get(filled(path, params)) if method == "GET"
                              else other.post(filled(path, params), {}))
            assert response.status_code == 404, (method, path, response.status_code, response.text[:300])
            assert "acme" not in response.text.replace("dev@globex", ""), (method, path)
    finally:
        await other.aclose()

    viewer = await signed_in(shipcast, "reader@acme.example.com", "acme", "viewer")
    try:
        for method, path in partner_routes:
            url = filled(path, params)
            if method == "GET":  # a page that only leads to a change (a form, a secret) may be refused
                response = await viewer.get(url)
                assert response.status_code in (200, 403), (path, response.status_code, response.text[:300])
                no_inline_code(url, response)
            else:
                response = await viewer.post(url, {})
                assert response.status_code == 403, (method, path, response.status_code, response.text[:300])
        for method, path in operator_routes:
            response = await (viewer.get(filled(path, params)) if method == "GET"
                              else viewer.post(filled(path, params), {}))
            assert response.status_code == 404, (method, path)
    finally:
        await viewer.aclose()

    admin = await signed_in(shipcast, "dev@acme.example.com", "acme", "admin")
    try:
        # An admin's form without the session's token changes nothing either.
        for method, path in writes:
            response = await admin.post(filled(path, params), {"csrf": "forged"})
            assert response.status_code == 403, (method, path, response.status_code)
        for method, path in operator_routes:
            response = await (admin.get(filled(path, params)) if method == "GET"
                              else admin.post(filled(path, params), {}))
            assert response.status_code == 404, (method, path)
    finally:
        await admin.aclose()

    after = await snapshot(shipcast)
    assert after[1:] == before[1:], "nothing was changed by any of them"
    assert [row for row in after[0] if row["action"] != "person.invite"] == \
        [row for row in before[0] if row["action"] != "person.invite"]
