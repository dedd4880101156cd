"""The operator's pages: partners with their health (created and invited
from the page), people and sessions, queues and parking lots (replayed from
the page), operator events and the audit log; and nobody but an operator
reaches any of them."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shipcast.amqp.management import Management
from shipcast.amqp.parking import list_dead
from shipcast.app.audit import Actor, record
from shipcast.app.portal import operator_pages
from shipcast.store import Attempt, Store

from .bound import example
from .conftest import free_port, make_settings
from .helpers import Receiver, ShipcastProcess, eventually, partners_doc, run_cli
from .portal import Visitor, signed_in, two_partners

pytestmark = pytest.mark.broker

LINK = re.compile(r'<code id="invite-link" class="secret">([^<]+)</code>')


@pytest.fixture
async def portal(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    async with two_partners(make_settings(vhost, sqlite_url)) as running:
        yield running


def error_beside(page: str, element_id: str) -> str:
    """The error shown in the element ``element_id`` (beside its field), or ''."""
    found = re.search(rf'id="{re.escape(element_id)}">([^<]*)<', page)
    return html.unescape(found.group(1)) if found else ""


def operator_routes() -> list[tuple[str, str]]:
    """Every route of the operator's pages, path parameters filled in."""
    routes = []
    for route in operator_pages.router.routes:
        path = re.sub(r"\{[^}]+\}", "abc123", route.path)  # type: ignore[attr-defined]
        for method in sorted(route.methods):  # type: ignore[attr-defined]
            routes.append((method, path))
    return routes


async def test_nobody_but_an_operator_reaches_an_operator_page(portal: ShipcastProcess) -> None:
    routes = operator_routes()
    assert {path for _, path in routes} >= {"/portal/operator/", "/portal/operator/queues", "/portal/operator/events",
                                            "/portal/operator/people", "/portal/operator/audit"}
    assert any(method == "POST" for method, _ in routes)
    for role in ("admin", "viewer"):
        async with await signed_in(portal, f"{role}@acme.example.com", "acme", role) as visitor:
            for method, path in routes:
                data = {"id": "evil", "name": "Evil", "email": "x@evil.example", "partner_id": "acme",
                        "role": "admin", "channel": "*"}
                answer = await (visitor.get(path) if method == "GET" else visitor.post(path, data))
                assert answer.status_code == 404, (role, method, path, answer.status_code)
                assert "There is no such page here." in answer.text
    # Nothing happened for all those POSTs.
    assert await portal.services.store.get_partner("evil") is None
    assert not [i for i in await portal.services.store.list_invitations() if i["email"] == "x@evil.example"]
    # A stranger is sent to sign in.
    async with Visitor(portal) as stranger:
        for method, path in routes:
            if method == "GET":
                answer = await stranger.get(path)
                assert answer.status_code == 303 and answer.headers["location"] == "/portal/signin", path
            else:
                assert (await stranger.post(path, {"csrf": "x"})).status_code in (303, 401, 403), path
    # An operator without the form's token is refused.
    async with await signed_in(portal, "ops@example.com") as ops:
        refused = await ops.post("/portal/operator/partners", {"id": "x", "name": "X", "csrf": "wrong"})
        assert refused.status_code == 403
        assert await portal.services.store.get_partner("x") is None


async def test_an_operator_creates_a_partner_through_the_form(portal: ShipcastProcess) -> None:
    store = portal.services.store
    async with await signed_in(portal, "ops@example.com") as ops:
        listed = await ops.get("/portal/operator/")
        assert listed.status_code == 200
        assert 'href="/portal/p/acme/"' in listed.text and 'href="/portal/p/globex/"' in listed.text
        assert "applied again from that file at every start-up" in listed.text

        # Each mistake is named beside its field; what was typed stays.
        bad_id = await ops.post("/portal/operator/partners", {"id": "Not An Id!", "name": "Initech", "url": ""})
        assert bad_id.status_code == 422 and "must match [a-z0-9_-]+" in error_beside(bad_id.text, "id-error")
        assert 'value="Initech"' in bad_id.text and 'value="Not An Id!"' in bad_id.text
        taken = await ops.post("/portal/operator/partners",
                               {"id": "acme", "name": "Someone else", "url": "http://127.0.0.1:9/other"})
        assert taken.status_code == 422 and "exists already" in error_beside(taken.text, "id-error")
        acme = await store.get_partner("acme")
        assert acme is not None and acme.name == "Acme"  # not overwritten
        assert acme.channels["webhook"]["endpoints"][0]["url"] == "https://acme.example.com/hooks"
        bad_url = await ops.post("/portal/operator/partners", {"id": "initech", "name": "Initech", "url": "not a url"})
        assert bad_url.status_code == 422 and "Not a valid URL" in error_beside(bad_url.text, "url-error")
        refused = await ops.post("/portal/operator/partners",
                                 {"id": "initech", "name": "Initech", "url": "http://10.1.2.3/hooks"})
        assert refused.status_code == 422 and error_beside(refused.text, "url-error"), refused.text
        no_name = await ops.post("/portal/operator/partners", {"id": "initech", "name": "", "url": ""})
        assert no_name.status_code == 422 and error_beside(no_name.text, "name-error")
        too_long = await ops.post("/portal/operator/partners", {"id": "initech", "name": "x" * 5000, "url": ""})
        assert too_long.status_code == 422 and "at most 200" in error_beside(too_long.text, "name-error")
        assert await store.get_partner("initech") is None

        made = await ops.post("/portal/operator/partners",
                              {"id": "initech", "name": "Initech", "url": "http://127.0.0.1:9/hooks"})
        assert made.status_code == 303 and made.headers["location"] == "/portal/operator/"
        shown = await ops.get("/portal/operator/")
        assert "Partner initech created" in shown.text and 'href="/portal/p/initech/"' in shown.text
    partner = await store.get_partner("initech")
    assert partner is not None and partner.name == "Initech"
    [endpoint] = partner.channels["webhook"]["endpoints"]
    assert endpoint["id"] == "main" and endpoint["url"] == "http://127.0.0.1:9/hooks" and endpoint["secret"]
    async with Management(portal.settings) as management:
        assert "initech.*" in await management.queue_bindings("shipcast.webhook")
    [entry] = await store.list_audit("initech", action="partner.create")
    assert entry["actor"] == "ops@example.com (operator)" and entry["via"] == "portal"
    assert entry["before"] is None and entry["after"]["id"] == "initech"
    assert "whsec_" not in json.dumps(entry["after"])  # the endpoint's secret is never recorded

    # A partner without an endpoint is fine too.
    async with await signed_in(portal, "ops2@example.com") as ops:
        assert (await ops.post("/portal/operator/partners", {"id": "hooli", "name": "Hooli"})).status_code == 303
    hooli = await store.get_partner("hooli")
    assert hooli is not None and not hooli.channels


async def test_invitations_made_on_the_pages_sign_people_in(portal: ShipcastProcess) -> None:
    async with await signed_in(portal, "ops@example.com") as ops:
        wrong = await ops.post("/portal/operator/invitations",
                               {"partner_id": "acme", "email": "not-an-address", "role": "viewer"})
        assert wrong.status_code == 422 and "email address" in error_beside(wrong.text, "invite-acme-email-error")
        assert 'value="not-an-address"' in wrong.text
        owner = await ops.post("/portal/operator/invitations",
                               {"partner_id": "acme", "email": "new@acme.example.com", "role": "owner"})
        assert owner.status_code == 422 and "admin, viewer" in error_beside(owner.text, "invite-acme-role-error")

        nobody = await ops.post("/portal/operator/invitations",
                                {"partner_id": "nobody", "email": "new@nobody.example.com", "role": "viewer"})
        assert nobody.status_code == 422 and "no partner &#39;nobody&#39;" in nobody.text
        assert not [i for i in await portal.services.store.list_invitations() if i["email"] == "new@nobody.example.com"]

        made = await ops.post("/portal/operator/invitations",
                              {"partner_id": "acme", "email": "new@acme.example.com", "role": "viewer"})
        assert made.status_code == 200
        assert "not emailed" in made.text and 'data-copy="#invite-link"' in made.text
        link = html.unescape(LINK.search(made.text).group(1))  # type: ignore[union-attr]

        operator = await ops.post("/portal/operator/people/invite", {"email": "second-op@example.com"})
        assert operator.status_code == 200 and "as an <strong>operator</strong>" in operator.text
        operator_link = html.unescape(LINK.search(operator.text).group(1))  # type: ignore[union-attr]
        bad = await ops.post("/portal/operator/people/invite", {"email": "nobody"})
        assert bad.status_code == 422 and error_beside(bad.text, "email-error")

        people = await ops.get("/portal/operator/people")
        assert "new@acme.example.com" in people.text and "second-op@example.com" in people.text

    for url, home in ((link, "/portal/p/acme/"), (operator_link, "/portal/operator/")):
        path = url.removeprefix(portal.settings.public_url.rstrip("/"))
        async with Visitor(portal) as newcomer:
            assert (await newcomer.get(path)).status_code == 200
            signed = await newcomer.post("/portal/signin", {"token": path.split("token=", 1)[1]}, csrf=False)
            assert signed.status_code == 303
            assert (await newcomer.get("/portal/")).headers["location"] == home
    [session] = [s for s in await portal.services.store.list_sessions("acme") if s["email"] == "new@acme.example.com"]
    assert session["role"] == "viewer"
    actions = [(e["action"], e["subject"], e["via"]) for e in await portal.services.store.list_audit(None)]
    assert ("person.invite", "new@acme.example.com", "portal") in actions
    assert ("person.invite", "second-op@example.com", "portal") in actions


async def test_an_operator_ends_a_session_from_the_people_page(portal: ShipcastProcess) -> None:
    developer = await signed_in(portal, "dev@acme.example.com", "acme")
    try:
        assert (await developer.get("/portal/")).headers["location"] == "/portal/p/acme/"
        [session] = await portal.services.store.list_sessions("acme")
        async with await signed_in(portal, "ops@example.com") as ops:
            people = await ops.get("/portal/operator/people")
            assert "dev@acme.example.com" in people.text and session["id"] in people.text
            ended = await ops.post(f"/portal/operator/people/sessions/{session['id']}/revoke")
            assert ended.status_code == 303 and ended.headers["location"] == "/portal/operator/people"
            after = await ops.get("/portal/operator/people")
            assert f"Session {session['id']} ended" in after.text and "dev@acme.example.com" not in after.text.split(
                "Recent invitations")[0]
            again = await ops.post(f"/portal/operator/people/sessions/{session['id']}/revoke")
            assert again.status_code == 303
            assert "ended already" in (await ops.get("/portal/operator/people")).text
        assert (await developer.get("/portal/signin")).status_code == 200  # still a browser with the cookie
        home = await developer.get("/portal/")
        assert home.status_code == 303 and home.headers["location"] == "/portal/signin"
        assert await portal.services.store.list_sessions("acme") == []
        [entry] = await portal.services.store.list_audit(None, action="session.revoke")
        assert entry["subject"] == session["id"] and entry["actor"] == "ops@example.com (operator)"
    finally:
        await developer.aclose()


def queue_row(page: str, queue: str) -> dict[str, Any] | None:
    """A queue's row on the Queues page: its numbers and problems."""
    found = re.search(rf"<td><code>{re.escape(queue)}</code></td>(.*?)</tr>", page, re.S)
    if not found:
        return None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", found.group(1), re.S)
    problems = [html.unescape(p) for p in re.findall(r'<div class="problem">.*?</span> ([^<]*)</div>', cells[6])]
    return {"role": cells[0], "ready": int(cells[1]), "unacked": int(cells[2]), "consumers": int(cells[3]),
            "problems": problems}


async def test_the_queues_page_shows_the_broker_numbers_and_flags_as_status_does(portal: ShipcastProcess) -> None:
    # No worker runs here: what is published to acme waits in shipcast.webhook.
    for _ in range(3):
        await portal.services.publisher.publish(example("OFD", partner_id="acme"))
    async with await signed_in(portal, "ops@example.com") as ops:
        async def webhook_row() -> dict[str, Any] | None:
            row = queue_row((await ops.get("/portal/operator/queues")).text, "shipcast.webhook")
            return row if row is not None and row["ready"] == 3 else None

        row = await eventually(webhook_row, timeout=30)  # the management API refreshes every 5 s
        assert row["role"] == "work" and row["consumers"] == 0
        assert "no consumer: start `shipcast worker --channel webhook`" in row["problems"]
        page = (await ops.get("/portal/operator/queues")).text
        assert "shipcast.webhook.dead" in page and "Parking lots" in page
    # `shipcast status` flags each queue exactly so.
    status = {r["queue"]: r for r in json.loads(run_cli(portal.settings, "status", "--json").stdout)}
    assert status["shipcast.webhook"]["ready"] == 3
    for queue, cli_row in status.items():
        shown = queue_row(page, queue)
        assert shown is not None, queue
        assert shown["problems"] == cli_row["problems"], queue


async def test_the_queues_page_says_when_the_management_api_is_unreachable(vhost: str, sqlite_url: str) -> None:
    settings = make_settings(vhost, sqlite_url, management_url=f"http://guest:guest@127.0.0.1:{free_port()}")
    async with ShipcastProcess(settings, workers=False) as portal:
        await eventually(lambda: portal.services.broker.connected)
        async with await signed_in(portal, "ops@example.com") as ops:
            page = await ops.get("/portal/operator/queues")
            assert page.status_code == 200
            assert "The RabbitMQ management API cannot be reached" in page.text
            assert "guest:guest" not in page.text
            # The parking lots are read without it.
            assert "<h3 id=\"lot-webhook\">" in page.text


async def test_a_parked_message_is_shown_with_its_reason_and_replayed_from_the_page(
        vhost: str, sqlite_url: str) -> None:
    settings = make_settings(vhost, sqlite_url)
    async with Receiver(default=400) as receiver, ShipcastProcess(settings) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url))
        event = example("OFD", partner_id="acme")
        await shipcast.services.publisher.publish(event)
        topology = shipcast.services.registry.channel("webhook").topology(settings.retry_delays)
        [letter] = await eventually(lambda: list_dead(shipcast.services.broker, topology), timeout=30)
        reason = "retries exhausted after 3 attempts: HTTP 400"
        assert letter.reason == reason
        async with await signed_in(shipcast, "ops@example.com") as ops:
            for _ in range(3):  # looking, again and again, leaves it parked
                page = await ops.get("/portal/operator/queues")
                assert page.status_code == 200
                assert event.event_id in page.text and reason in page.text
            assert len(await list_dead(shipcast.services.broker, topology)) == 1
            lot = page.text.split('id="lot-webhook"', 1)[1].split("</section>", 1)[0]
            assert 'href="/portal/p/acme/"' in lot and "<td>main</td>" in lot

            # The partners page shows the failing endpoint and the dead delivery.
            partners = (await ops.get("/portal/operator/")).text
            row = partners.split('href="/portal/p/acme/"', 1)[1].split("</tr>", 1)[0]
            assert ">failing</span> <span class=\"muted\">since " in row and "dead 1" in row

            events = (await ops.get("/portal/operator/events")).text
            assert "endpoint.failing" in events and 'href="/portal/p/acme/"' in events and "HTTP 400" in events

            # The form's mistakes are named; then the replay, once the receiver answers 200.
            wrong = await ops.post("/portal/operator/queues/replay", {"channel": "carrier-pigeon"})
            assert wrong.status_code == 422 and "no channel 'carrier-pigeon'" in html.unescape(wrong.text)
            receiver.default = 200
            replayed = await ops.post("/portal/operator/queues/replay", {"channel": "webhook",
                                                                          "event_id": event.event_id})
            assert replayed.status_code == 303 and replayed.headers["location"] == "/portal/operator/queues"
            await eventually(lambda: receiver.answered[-1:] == [200])
            assert receiver.ids[-1] == event.event_id

            async def delivered() -> bool:
                rows = await shipcast.services.store.list_deliveries(event_id=event.event_id)
                return bool(rows) and rows[0]["status"] == "delivered"

            await eventually(delivered)
            after = (await ops.get("/portal/operator/queues")).text
            assert "Replayed 1 parked message: 1 into shipcast.webhook." in after
            assert event.event_id not in after
            await eventually(lambda: _has(ops, "/portal/operator/events", "endpoint.recovered"))
        assert await list_dead(shipcast.services.broker, topology) == []
        [entry] = await shipcast.services.store.list_audit(None, action="dead.replay")
        assert entry["subject"] == "webhook" and entry["after"] == {"replayed": {"webhook": 1},
                                                                   "event_id": event.event_id}


async def _has(visitor: Visitor, path: str, text: str) -> bool:
    return text in (await visitor.get(path)).text


async def test_the_audit_log_shows_every_partners_entries_a_page_at_a_time(portal: ShipcastProcess) -> None:
    services = portal.services
    tests = Actor("tests", "cli")
    for n in range(60):
        await record(services, tests, "test.step", partner_id="acme" if n % 2 else "globex", subject=f"step-{n}",
                     before={"n": n - 1}, after={"n": n, "secret": "whsec_hidden"})
    async with await signed_in(portal, "ops@example.com") as ops:
        first = await ops.get("/portal/operator/audit", params={"action": "test.step"})
        assert first.status_code == 200
        subjects = re.findall(r"<td>(step-\d+)</td>", first.text)
        assert subjects == [f"step-{n}" for n in range(59, 9, -1)]  # newest first, 50 of them
        assert "<summary>Before and after</summary>" in first.text and "&#34;n&#34;: 59" in first.text
        assert "whsec_hidden" not in first.text
        older = re.search(r'href="/portal/operator/audit\?([^"]+)">Older entries', first.text)
        assert older is not None
        second = await ops.get(f"/portal/operator/audit?{html.unescape(older.group(1))}")
        assert re.findall(r"<td>(step-\d+)</td>", second.text) == [f"step-{n}" for n in range(9, -1, -1)]
        assert "Older entries" not in second.text

        acme = await ops.get("/portal/operator/audit", params={"partner": "acme", "action": "test.step"})
        assert re.findall(r"<td>(step-\d+)</td>", acme.text) == [f"step-{n}" for n in range(59, 0, -2)]
        # Every partner's entries, and the operator's own, on the unfiltered page.
        everything = (await ops.get("/portal/operator/audit")).text
        assert 'href="/portal/p/acme/"' in everything and 'href="/portal/p/globex/"' in everything
        bad = await ops.get("/portal/operator/audit", params={"partner": "<script>"})
        assert bad.status_code == 422 and "<script>" not in bad.text


@pytest.mark.store
async def test_deliveries_are_counted_by_partner_and_status(database_url: str) -> None:
    """What the Partners page shows of each partner's deliveries, on both stores."""
    store = await Store(database_url).open()
    try:
        old = datetime.now(UTC) - timedelta(days=3)

        def attempt(event_id: str, partner_id: str, outcome: str, at: datetime | None = None) -> Attempt:
            return Attempt(event_id=event_id, channel="webhook", target="main", partner_id=partner_id,
                           address="https://x.example.com/", outcome=outcome, attempt=1, latency_ms=5.0, at=at)

        await store.record([attempt("e1", "acme", "delivered"), attempt("e2", "acme", "delivered"),
                            attempt("e3", "acme", "dead"), attempt("e4", "acme", "dead", old),
                            attempt("e5", "globex", "retry"), attempt("e6", "globex", "delivered", old)])
        day = await store.count_deliveries(since=datetime.now(UTC) - timedelta(hours=24))
        assert day == {"acme": {"delivered": 2, "dead": 1}, "globex": {"retrying": 1}}
        assert await store.count_deliveries(status="dead") == {"acme": {"dead": 2}}
        assert (await store.count_deliveries())["globex"] == {"retrying": 1, "delivered": 1}
    finally:
        await store.close()
