"""A partner's own pages in the portal, on the real broker with real
deliveries: the overview's figures against the attempt log, the deliveries'
search and keyset paging, a message's attempts arriving live, resend, retry
all failed and recover re-delivering to a real receiver (and audited), the
event catalog (a plugin's type too), API tokens, the audit log; and nobody
reaching what is not theirs."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jsonschema
import orjson
import pytest

from shipcast import hookimpl
from shipcast.app.portal.partner import CIRCUIT_REFUSED, Health, advice_for, circuit_state, decode_cursor
from shipcast.model.envelope import parse_event
from shipcast.model.event_types import EventType
from shipcast.model.examples import example
from shipcast.settings import Settings
from shipcast.store import Attempt, Store, attempt_stats
from shipcast.store.deliveries import delivery_key

from .conftest import make_settings
from .helpers import Receiver, ShipcastProcess, eventually, partners_doc
from .portal import Visitor, signed_in

pytestmark = pytest.mark.broker


class PickupPlugin:
    """A plugin adding an event type, as a third party would."""

    @hookimpl
    def shipcast_event_types(self) -> list[EventType]:
        return [EventType("PICKED_UP", "Picked up from the merchant.", frozenset({"order", "rider"}),
                          frozenset({"otp", "failure", "return", "delivery_confirmation"}))]


@pytest.fixture
async def acme_receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as server:
        yield server


@pytest.fixture
async def globex_receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as server:
        yield server


async def start(settings: Settings, acme: Receiver, globex: Receiver, **options: Any) -> ShipcastProcess:
    running = ShipcastProcess(settings, plugins=[PickupPlugin()], **options)
    await running.__aenter__()
    await eventually(lambda: running.services.broker.connected)
    await running.apply(partners_doc("acme", acme.url))
    await running.apply(partners_doc("globex", globex.url))
    return running


@pytest.fixture
async def portal(vhost: str, sqlite_url: str, acme_receiver: Receiver,
                 globex_receiver: Receiver) -> AsyncIterator[ShipcastProcess]:
    """shipcast with its workers, a plugin's event type, and two partners, each with its own receiver."""
    # The circuit breaker stays out of these tests (it has its own): failures are counted, never refused.
    settings = make_settings(vhost, sqlite_url, retry_schedule="1", breaker_min_requests=1000, breaker_window=1000)
    running = await start(settings, acme_receiver, globex_receiver)
    try:
        yield running
    finally:
        await running.__aexit__(None, None, None)


def body_of(shipcast: ShipcastProcess, event_type: str, partner_id: str = "acme", **options: Any) -> dict[str, Any]:
    event = example(event_type, shipcast.services.registry.event_types, partner_id=partner_id, **options)
    return dict(orjson.loads(event.to_json()))


async def publish(shipcast: ShipcastProcess, *bodies: dict[str, Any]) -> list[str]:
    response = await shipcast.http.post("/v1/events", json=list(bodies))
    assert response.status_code == 202, response.text
    return list(response.json()["ids"])


async def settled(shipcast: ShipcastProcess, ids: list[str], status: str = "delivered") -> None:
    async def check() -> bool:
        rows = await shipcast.services.store.list_deliveries(partner_id="acme", status=status, limit=10000)
        return set(ids) <= {row["event_id"] for row in rows}
    await eventually(check, timeout=30)


def shown(response: httpx.Response) -> str:
    return html.unescape(response.text)


def error_beside(response: httpx.Response, field: str) -> str:
    """The error shown beside a form field (the macro's ``<span id="FIELD-error">``)."""
    found = re.search(rf'id="{field}-error">(.*?)</', response.text, re.S)
    assert found, f"no error beside {field!r} in:\n{response.text[:3000]}"
    return html.unescape(found.group(1))


def listed_ids(response: httpx.Response) -> list[str]:
    """The event ids of a deliveries page, in its order."""
    return re.findall(r'href="/portal/p/acme/messages/([^"?/]+)"', response.text)


def older_link(response: httpx.Response) -> str | None:
    found = re.search(r'<a class="button" href="([^"]+)" rel="next">Older</a>', response.text)
    return html.unescape(found.group(1)) if found else None


# -- the overview -----------------------------------------------------------------


async def test_the_overview_matches_the_attempt_log(portal: ShipcastProcess, acme_receiver: Receiver) -> None:
    acme_receiver.script = [500, 500]  # two failures, then every answer is a 200
    ids = await publish(portal, *(body_of(portal, "OFD", order_id=f"ORD-{n}") for n in range(4)))
    await settled(portal, ids)
    rows = await portal.services.store.list_attempts(partner_id="acme", channel="webhook", target="main")
    expected = attempt_stats(rows)
    assert expected["attempts"] == 6 and expected["delivered"] == 4

    async with await signed_in(portal, "viewer@acme.example.com", "acme", "viewer") as viewer:
        page = await viewer.get("/portal/p/acme/")
        assert page.status_code == 200, page.text
        text = shown(page)
        assert f"{expected['success_rate'] * 100:.1f}%" in text and "4 of 6 attempts" in text
        p50, p95 = expected["latency_ms"]["p50"], expected["latency_ms"]["p95"]
        assert f"{p50} ms / {p95} ms" in text
        assert expected["last_error"]["error"] == "HTTP 500" and "HTTP 500 (HTTP" not in text
        assert f"{datetime.fromisoformat(expected['last_error']['at']):%Y-%m-%d %H:%M:%S} UTC" in text
        assert "circuit closed" in text and "enabled" in text
        assert "Nothing: every target's latest attempt was delivered" in text
        # The counts by status are the store's.
        counts = re.findall(r'<div class="stat">(\d+)</div><a href="[^"]*status=(\w+)', page.text)
        assert {status: int(n) for n, status in counts} == {
            "delivered": 4, "retrying": 0, "waiting": 0, "skipped": 0, "dead": 0}

        # The endpoint starts refusing signatures: the advice says what to check.
        acme_receiver.default = 401
        [failed] = await publish(portal, body_of(portal, "DEL", order_id="ORD-9"))
        await settled(portal, [failed], "dead")
        text = shown(await viewer.get("/portal/p/acme/"))
        assert "check your signature verification" in text.lower()
        assert "HTTP 401" in text and "circuit unknown" in text
        key = ("webhook", "acme", "main")
        failing = portal.services.partners.failing.get(key)
        if failing is not None:
            assert "failing" in text and f"{failing:%Y-%m-%d %H:%M:%S}" in text

        # Disabled: fix, then enable.
        await portal.services.health.disable("webhook", "acme", "main", acme_receiver.url, "HTTP 410 Gone")
        text = shown(await viewer.get("/portal/p/acme/"))
        assert "disabled" in text and "enable it on the Endpoints page" in text


async def test_the_overview_of_a_partner_without_an_endpoint_says_to_add_one(portal: ShipcastProcess) -> None:
    await portal.apply({"partners": [{"id": "initech", "name": "Initech", "channels": {}}]})
    async with await signed_in(portal, "dev@initech.example.com", "initech") as admin:
        page = await admin.get("/portal/p/initech/")
        assert page.status_code == 200, page.text
        assert "no webhook endpoint yet: add one" in shown(page)
        assert 'href="/portal/p/initech/endpoints"' in page.text


async def test_an_unreachable_endpoint_is_called_unreachable(portal: ShipcastProcess) -> None:
    from .conftest import free_port

    await portal.apply(partners_doc("acme", f"http://127.0.0.1:{free_port()}/hook"))  # nothing listens there
    [event_id] = await publish(portal, body_of(portal, "OFD"))
    await settled(portal, [event_id], "dead")
    async with await signed_in(portal, "dev@acme.example.com", "acme") as admin:
        text = shown(await admin.get("/portal/p/acme/"))
        assert "connection failed" in text and "the host is unreachable" in text


async def test_an_open_circuit_is_read_from_what_the_workers_recorded(
        vhost: str, sqlite_url: str, acme_receiver: Receiver, globex_receiver: Receiver) -> None:
    settings = make_settings(vhost, sqlite_url, retry_schedule="1,1,1", breaker_window=2, breaker_min_requests=2,
                             breaker_failure_ratio=0.5, breaker_cooldown=60)
    acme_receiver.default = 503
    running = await start(settings, acme_receiver, globex_receiver)
    try:
        ids = await publish(running, *(body_of(running, "OFD", order_id=f"ORD-{n}") for n in range(4)))

        async def refused() -> list[dict[str, Any]]:
            rows = await running.services.store.list_attempts(partner_id="acme", target="main")
            return [row for row in rows if CIRCUIT_REFUSED in (row["error"] or "")]
        # The worker's breaker opens after two failures; what it keeps back is logged so.
        [newest, *_] = await eventually(refused, timeout=30)
        assert newest["status"] is None and newest["outcome"] in ("retry", "dead")
        async with await signed_in(running, "dev@acme.example.com", "acme") as admin:
            text = shown(await admin.get("/portal/p/acme/"))
            assert "circuit open" in text and "kept back by a worker's open circuit breaker" in text
            assert "paused by its circuit breaker" in text
        await settled(running, ids, "dead")
        attempts = await running.services.store.list_attempts(partner_id="acme", target="main")
        assert len(acme_receiver.requests) == len([a for a in attempts if a["status"] is not None]) < len(attempts)
        assert {a["event_id"] for a in attempts} == set(ids)
    finally:
        await running.__aexit__(None, None, None)


def test_the_advice_names_the_cause() -> None:
    settings = Settings(webhook_timeout=7)

    def advice(status: int | None, error: str, **health: Any) -> str:
        found = Health("webhook", "main", "https://a.example/hook", True, attempt_stats([]), {}, False, None,
                       failure={"status": status, "error": error}, **health)
        return " ".join(advice_for(found, settings))

    assert "signature verification" in advice(401, "HTTP 401")
    assert "signature verification" in advice(403, "HTTP 403")
    assert "your server is erroring" in advice(502, "HTTP 502")
    assert "within SHIPCAST_WEBHOOK_TIMEOUT (7 s)" in advice(None, "timed out after 7s")
    assert "queue the work" in advice(None, "timed out after 7s")
    assert "does not resolve (DNS)" in advice(None, "connection failed: ClientConnectorDNSError: Cannot connect "
                                                    "to host x.invalid:443 ssl:default [Name or service not known]")
    assert "connection refused" in advice(None, "connection failed: ClientConnectorError: Cannot connect to host "
                                                "127.0.0.1:9 ssl:default [Connect call failed ('127.0.0.1', 9)]")
    assert "redirect" in advice(301, "HTTP 301 redirect to https://b.example (redirects are not followed)")
    assert "public address" in advice(None, "destination refused: 10.0.0.1 is in 10.0.0.0/8 (private)")
    assert "paused by its circuit breaker" in advice(None, "circuit open: 2 of the last 2 requests failed; "
                                                           "not attempted")
    disabled = Health("webhook", "main", None, True, attempt_stats([]), {}, True, None)
    assert "enable it on the Endpoints page" in " ".join(advice_for(disabled, settings))
    healthy = Health("webhook", "main", None, True, attempt_stats([]), {}, False, None)
    assert advice_for(healthy, settings) == []


def test_the_circuit_state_comes_from_the_newest_attempt() -> None:
    settings = Settings()
    now = datetime.now(UTC)

    def row(outcome: str, error: str | None = None) -> dict[str, Any]:
        return {"outcome": outcome, "error": error, "at": now, "status": None, "latency_ms": 1.0}

    assert circuit_state([], settings)["state"] == "unknown"
    assert circuit_state([row("retry", "circuit open: 5 of the last 10 requests failed; not attempted"),
                          row("delivered")], settings)["state"] == "open"
    assert circuit_state([row("dead", "retries exhausted after 3 attempts: circuit open: 5 of the last 10 "
                                      "requests failed; not attempted")], settings)["state"] == "open"
    assert circuit_state([row("skipped"), row("delivered"), row("retry", "circuit open: x")],
                         settings)["state"] == "closed"
    assert circuit_state([row("retry", "HTTP 500")], settings)["state"] == "unknown"


# -- deliveries -------------------------------------------------------------------


async def test_deliveries_are_searched_and_paged_by_key(portal: ShipcastProcess) -> None:
    bodies = [body_of(portal, "DEL" if n % 10 == 0 else "OFD", order_id=f"ORD-{n}") for n in range(60)]
    ids = await publish(portal, *bodies)
    await settled(portal, ids)
    newest_first = [row["event_id"] for row in await portal.services.store.list_deliveries(partner_id="acme",
                                                                                           limit=1000)]
    async with await signed_in(portal, "viewer@acme.example.com", "acme", "viewer") as viewer:
        first = await viewer.get("/portal/p/acme/messages")
        assert first.status_code == 200, first.text
        pages = [listed_ids(first)]
        link = older_link(first)
        # New rows arrive while the partner pages: they are newer, and never show on the older pages.
        late = await publish(portal, *(body_of(portal, "OFD", order_id=f"LATE-{n}") for n in range(5)))
        await settled(portal, late)
        while link:
            assert "before=" in link and "offset" not in link
            response = await viewer.get(link)
            assert response.status_code == 200, response.text
            pages.append(listed_ids(response))
            link = older_link(response)
        assert [len(p) for p in pages] == [25, 25, 10]
        seen = [event_id for p in pages for event_id in p]
        assert len(seen) == len(set(seen)) == 60 and set(seen) == set(ids)
        assert seen == newest_first  # newest first, no gap, no repeat
        assert not set(late) & set(seen)
        again = await viewer.get("/portal/p/acme/messages")
        assert set(listed_ids(again)[:5]) == set(late)

        async def search(**params: str) -> set[str]:
            response = await viewer.get("/portal/p/acme/messages", params=params)
            assert response.status_code == 200, (params, response.text)
            return set(listed_ids(response))

        assert await search(order_id="ORD-7") == {ids[7]}
        assert await search(event_id=ids[12]) == {ids[12]}
        assert await search(event_type="DEL") == {ids[n] for n in range(0, 60, 10)}
        assert await search(event_type="DEL", order_id="ORD-10") == {ids[10]}
        assert await search(status="dead") == set()
        assert len(await search(status="delivered", channel="webhook", endpoint="main")) == 25
        assert await search(endpoint="elsewhere") == set()
        future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        assert await search(since=future) == set()
        assert await search(until=past) == set()
        assert await search(since=past, until=future, order_id="ORD-3") == {ids[3]}
        # A filter is kept in the link to the older page.
        filtered = await viewer.get("/portal/p/acme/messages", params={"event_type": "OFD"})
        link = older_link(filtered)
        assert link is not None and "event_type=OFD" in link
        older = await viewer.get(link)
        assert set(listed_ids(older)).isdisjoint(listed_ids(filtered))
        assert all(event_id not in {ids[n] for n in range(0, 60, 10)} for event_id in listed_ids(older))


async def test_a_bad_query_parameter_is_shown_beside_its_field(portal: ShipcastProcess) -> None:
    async with await signed_in(portal, "viewer@acme.example.com", "acme", "viewer") as viewer:
        cases = [({"status": "lost"}, "status", "must be one of"),
                 ({"event_type": "NOPE"}, "event_type", "unknown event type"),
                 ({"channel": "pigeon"}, "channel", "unknown channel"),
                 ({"since": "yesterday"}, "since", "must be a date and time"),
                 ({"until": "2026-13-45T99:00"}, "until", "must be a date and time"),
                 ({"since": "2026-05-02T10:00", "until": "2026-05-01T10:00"}, "until", "must be later"),
                 ({"order_id": "x" * 500}, "order_id", "at most 100 characters"),
                 ({"event_id": "<script>"}, "event_id", "letters, digits"),
                 ({"endpoint": "e" * 201}, "endpoint", "at most 200 characters"),
                 ({"before": "not-a-cursor"}, "before", "damaged"),
                 ({"before": "W10"}, "before", "damaged"),  # valid base64 of [] but no cursor
                 ({"before": "x" * 5000}, "before", "damaged")]
        for params, field, message in cases:
            response = await viewer.get("/portal/p/acme/messages", params=params)
            assert response.status_code == 422, (params, response.status_code, response.text[:500])
            assert message in error_beside(response, field), params
            assert "<script>" not in response.text
        # What was typed stays in the form.
        kept = await viewer.get("/portal/p/acme/messages", params={"since": "yesterday", "order_id": "ORD-1"})
        assert 'value="yesterday"' in kept.text and 'value="ORD-1"' in kept.text
        # The audit log's page link is checked too.
        audit = await viewer.get("/portal/p/acme/audit", params={"before": "abc"})
        assert audit.status_code == 422 and "damaged" in shown(audit)


async def test_a_message_shows_its_attempts_live_until_final(portal: ShipcastProcess,
                                                             acme_receiver: Receiver) -> None:
    acme_receiver.script = [500]
    [event_id] = await publish(portal, body_of(portal, "OFD", order_id="ORD-LIVE"))
    async with await signed_in(portal, "viewer@acme.example.com", "acme", "viewer") as viewer:
        page = await viewer.get(f"/portal/p/acme/messages/{event_id}")
        assert page.status_code == 200, page.text
        assert f'data-live="/portal/p/acme/messages/{event_id}/attempts"' in page.text
        # The event as sent, pretty.
        assert f'"event_id": "{event_id}"' in shown(page) and '"order_id": "ORD-LIVE"' in shown(page)

        async def final() -> httpx.Response | None:
            response = await viewer.get(f"/portal/p/acme/messages/{event_id}/attempts",
                                        headers={"x-shipcast-fragment": "1"})
            assert response.status_code == 200
            return response if "data-final" in response.text else None
        fragment = await eventually(final, timeout=30)
        assert fragment.text.lstrip().startswith('<div id="live-attempts"')
        text = shown(fragment)
        attempts = await portal.services.store.list_attempts(event_id, partner_id="acme")
        assert [a["outcome"] for a in attempts] == ["retry", "delivered"]
        assert "answer 500" in text and "HTTP 500" in text  # the response's start, and the error
        assert text.count("<tr>") == 1 + 2 + 2  # a header row each; one delivery, two attempts
        for attempt in attempts:
            assert f"{attempt['latency_ms']:.0f} ms" in text
        sent = acme_receiver.requests[-1].json
        assert sent["event_id"] == event_id
        # Reloaded, the page is final too: no more polling.
        assert "data-final" in (await viewer.get(f"/portal/p/acme/messages/{event_id}")).text


async def test_the_request_sent_is_shown_without_credentials(portal: ShipcastProcess) -> None:
    store = portal.services.store
    event = example("OFD", portal.services.registry.event_types, partner_id="acme")
    await store.save_events([event])
    await store.record([Attempt(event.event_id, "webhook", "main", "acme", "https://acme.example.com/hooks",
                                "delivered", 1, 42.0, status=200, response="ok",
                                request={"method": "POST", "url": "https://user:pw@acme.example.com/hooks",
                                         "headers": {"webhook-id": event.event_id, "content-type": "application/json"}}),
                        Attempt(event.event_id, "sms", "customer", "acme", "+91…", "skipped", 1, 0.0,
                                error="opted out")])
    async with await signed_in(portal, "viewer@acme.example.com", "acme", "viewer") as viewer:
        text = shown(await viewer.get(f"/portal/p/acme/messages/{event.event_id}"))
        assert "POST https://…redacted…@acme.example.com/hooks" in text and "user:pw" not in text
        assert f"webhook-id: {event.event_id}" in text
        assert "opted out" in text and "—" in text  # the SMS attempt sent no HTTP request
        # The overview lists the SMS target too: it is in the attempt log, though no endpoint of the config.
        overview = shown(await viewer.get("/portal/p/acme/"))
        assert "customer" in overview and "sms · seen in the attempt log" in overview


async def test_resend_retry_all_and_recover_send_again_for_real(portal: ShipcastProcess,
                                                                acme_receiver: Receiver) -> None:
    acme_receiver.default = 500
    failed = await publish(portal, *(body_of(portal, "OFD", order_id=f"ORD-{n}") for n in range(3)))
    await settled(portal, failed, "dead")
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as admin:
        page = await admin.get("/portal/p/acme/messages")
        assert "Retry all failed" in page.text
        acme_receiver.default = 200  # the partner fixed its server
        done = await admin.post("/portal/p/acme/messages/retry-failed")
        assert done.status_code == 303 and done.headers["location"] == "/portal/p/acme/messages"
        await settled(portal, failed)
        assert {r.json["event_id"] for r in acme_receiver.delivered} == set(failed)
        assert "3 failed messages sent again." in shown(await admin.get("/portal/p/acme/messages"))

        # Resend one delivered message, to its one endpoint.
        before = acme_receiver.ids.count(failed[0])
        page = await admin.get(f"/portal/p/acme/messages/{failed[0]}")
        assert "Resend to every target" in page.text and "Resend to main" in page.text
        resent = await admin.post(f"/portal/p/acme/messages/{failed[0]}/resend",
                                  {"channel": "webhook", "endpoint": "main"})
        assert resent.status_code == 303
        watched = resent.headers["location"]
        assert watched.startswith(f"/portal/p/acme/messages/{failed[0]}?watch=")
        await eventually(lambda: acme_receiver.ids.count(failed[0]) == before + 1, timeout=30)
        # The watching page stays live until the new attempt is logged.
        watch_url = f"/portal/p/acme/messages/{failed[0]}/attempts?watch={watched.split('=')[1]}"

        async def final() -> bool:
            return "data-final" in (await admin.get(watch_url)).text
        await eventually(final, timeout=30)
        assert (await admin.post(f"/portal/p/acme/messages/{failed[0]}/resend")).status_code == 303
        await eventually(lambda: acme_receiver.ids.count(failed[0]) == before + 2, timeout=30)
        # A target the message never had, or a channel not installed: not found.
        assert (await admin.post(f"/portal/p/acme/messages/{failed[0]}/resend",
                                 {"endpoint": "elsewhere"})).status_code == 404
        assert (await admin.post(f"/portal/p/acme/messages/{failed[0]}/resend",
                                 {"channel": "pigeon"})).status_code == 404

        # Recover what failed since a time.
        acme_receiver.default = 500
        since = datetime.now(UTC) - timedelta(minutes=1)
        later = await publish(portal, *(body_of(portal, "DEL", order_id=f"ORD-R{n}") for n in range(2)))
        await settled(portal, later, "dead")
        acme_receiver.default = 200
        bad = await admin.post("/portal/p/acme/messages/recover", {"recover_since": "last tuesday"})
        assert bad.status_code == 422 and "must be a date and time" in error_beside(bad, "recover_since")
        assert 'value="last tuesday"' in bad.text
        future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
        ahead = await admin.post("/portal/p/acme/messages/recover", {"recover_since": future})
        assert ahead.status_code == 422 and "in the future" in error_beside(ahead, "recover_since")
        missing = await admin.post("/portal/p/acme/messages/recover", {})
        assert missing.status_code == 422 and "since when" in error_beside(missing, "recover_since")
        recovered = await admin.post("/portal/p/acme/messages/recover",
                                     {"recover_since": since.strftime("%Y-%m-%dT%H:%M")})
        assert recovered.status_code == 303
        await settled(portal, later)
        assert {r.json["event_id"] for r in acme_receiver.delivered} >= set(later)

        # Each sending is in the audit log, made by this person through the portal.
        entries = await portal.services.store.list_audit("acme")
        actions = [(e["action"], e["actor"], e["via"]) for e in entries]
        me = "dev@acme.example.com (admin)"
        assert ("messages.retry_failed", me, "portal") in actions
        assert ("message.resend", me, "portal") in actions
        assert ("messages.recover", me, "portal") in actions
        recover = next(e for e in entries if e["action"] == "messages.recover")
        assert recover["after"]["recovered"] == 2
        audit = shown(await admin.get("/portal/p/acme/audit"))
        assert "messages.recover" in audit and "message.resend" in audit and '"recovered": 2' in audit


async def test_sending_again_stops_at_the_quota_with_a_notice(vhost: str, sqlite_url: str,
                                                              acme_receiver: Receiver,
                                                              globex_receiver: Receiver) -> None:
    running = await start(make_settings(vhost, sqlite_url, partner_resend_quota=2), acme_receiver,
                          globex_receiver, workers=False)
    try:
        store = running.services.store
        for n in range(3):
            event = example("OFD", running.services.registry.event_types, partner_id="acme", order_id=f"Q-{n}")
            await store.save_events([event])
            await store.record([Attempt(event.event_id, "webhook", "main", "acme", acme_receiver.url, "dead", 3,
                                        5.0, status=500, error="HTTP 500")])
        async with await signed_in(running, "dev@acme.example.com", "acme") as admin:
            await admin.post("/portal/p/acme/messages/retry-failed")
            text = shown(await admin.get("/portal/p/acme/messages"))
            assert "2 failed messages sent again. 1 more matched beyond this hour's quota" in text
            spent = await admin.post("/portal/p/acme/messages/retry-failed")
            assert spent.status_code == 303
            assert "Nothing was sent again: partner 'acme' has had 2 messages sent again" in shown(
                await admin.get("/portal/p/acme/messages"))
    finally:
        await running.__aexit__(None, None, None)


# -- who may do what ---------------------------------------------------------------


async def test_a_viewer_may_not_change_anything(portal: ShipcastProcess) -> None:
    [event_id] = await publish(portal, body_of(portal, "OFD"))
    await settled(portal, [event_id])
    made = await portal.http.post("/v1/partners/acme/tokens", params={"name": "ci"})
    token_id = made.json()["id"]
    async with await signed_in(portal, "viewer@acme.example.com", "acme", "viewer") as viewer:
        page = await viewer.get(f"/portal/p/acme/messages/{event_id}")
        assert "Resend" not in page.text
        assert "Retry all failed" not in (await viewer.get("/portal/p/acme/messages")).text
        assert "Make the token" not in (await viewer.get("/portal/p/acme/tokens")).text
        for path, form in [("/portal/p/acme/messages/retry-failed", {}),
                           ("/portal/p/acme/messages/recover", {"recover_since": "2026-01-01T00:00"}),
                           (f"/portal/p/acme/messages/{event_id}/resend", {}),
                           ("/portal/p/acme/tokens", {"name": "mine"}),
                           (f"/portal/p/acme/tokens/{token_id}/revoke", {})]:
            response = await viewer.post(path, form)
            assert response.status_code == 403, (path, response.status_code)
    assert [t["id"] for t in await portal.services.store.list_partner_tokens("acme")] == [token_id]
    assert not [e for e in await portal.services.store.list_audit("acme") if e["via"] == "portal"]


async def test_another_partners_admin_finds_nothing(portal: ShipcastProcess) -> None:
    [ours] = await publish(portal, body_of(portal, "OFD"))
    [theirs] = await publish(portal, body_of(portal, "OFD", partner_id="globex"))
    await settled(portal, [ours])
    await eventually(lambda: portal.services.store.list_deliveries(event_id=theirs, status="delivered"))
    token_id = (await portal.http.post("/v1/partners/acme/tokens", params={"name": "ci"})).json()["id"]
    gets = ["/portal/p/acme/", "/portal/p/acme/messages", f"/portal/p/acme/messages/{ours}",
            f"/portal/p/acme/messages/{ours}/attempts", "/portal/p/acme/catalog", "/portal/p/acme/catalog/OFD",
            "/portal/p/acme/tokens", "/portal/p/acme/audit", "/portal/p/acme/messages?status=lost"]
    posts = [("/portal/p/acme/messages/retry-failed", {}),
             ("/portal/p/acme/messages/recover", {"recover_since": "2026-01-01T00:00"}),
             (f"/portal/p/acme/messages/{ours}/resend", {}), ("/portal/p/acme/tokens", {"name": "x"}),
             (f"/portal/p/acme/tokens/{token_id}/revoke", {})]
    async with await signed_in(portal, "dev@globex.example.com", "globex", "admin") as globex:
        for path in gets:
            response = await globex.get(path)
            assert response.status_code == 404, (path, response.status_code)
            assert ours not in response.text and token_id not in response.text
        for path, form in posts:
            assert (await globex.post(path, form)).status_code == 404, path
        # globex's own message, asked for under acme's pages: acme's admin cannot see it either.
        assert (await globex.get(f"/portal/p/globex/messages/{theirs}")).status_code == 200
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as acme:
        for path in (f"/portal/p/acme/messages/{theirs}", f"/portal/p/acme/messages/{theirs}/attempts"):
            assert (await acme.get(path)).status_code == 404, path
        assert (await acme.post(f"/portal/p/acme/messages/{theirs}/resend")).status_code == 404
        assert (await acme.get("/portal/p/nobody/")).status_code == 404
    assert [t["id"] for t in await portal.services.store.list_partner_tokens("acme")] == [token_id]
    # Nobody signed in: to the sign-in page; a live fragment: 401.
    async with Visitor(portal) as stranger:
        for path in gets:
            response = await stranger.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/portal/signin", path
        fragment = await stranger.get(f"/portal/p/acme/messages/{ours}/attempts", headers={"x-shipcast-fragment": "1"})
        assert fragment.status_code == 401
        for path, form in posts:
            assert (await stranger.post(path, form, csrf=False)).status_code in (401, 403), path


# -- the catalog -------------------------------------------------------------------


async def test_the_catalog_lists_every_registered_type_with_a_valid_example(portal: ShipcastProcess) -> None:
    types = portal.services.registry.event_types
    assert "PICKED_UP" in types and "OFD" in types
    async with await signed_in(portal, "viewer@acme.example.com", "acme", "viewer") as viewer:
        listing = await viewer.get("/portal/p/acme/catalog")
        assert listing.status_code == 200
        assert re.findall(r'href="/portal/p/acme/catalog/(\w+)"', listing.text) == list(types)
        assert "Picked up from the merchant." in shown(listing)
        for name in types:
            page = await viewer.get(f"/portal/p/acme/catalog/{name}")
            assert page.status_code == 200, (name, page.text)
            example_json = re.search(r'<pre id="example" tabindex="0">(.*?)</pre>', page.text, re.S)
            schema_json = re.search(r'<pre id="schema" tabindex="0">(.*?)</pre>', page.text, re.S)
            assert example_json and schema_json
            sample = orjson.loads(html.unescape(example_json.group(1)))
            # The example is valid for the very registry the API validates with, and for the type's schema.
            event = parse_event(sample, types)
            assert event.event_type == name and event.partner_id == "acme"
            schema = orjson.loads(html.unescape(schema_json.group(1)))
            jsonschema.Draft202012Validator(schema).validate(sample)
            row = types[name]
            for group in row.forbidden:
                assert schema["properties"][group] == {"type": "null"}
                assert f'<th scope="row"><code>{group}</code></th><td>always null</td>' in page.text
            for group in row.required - {"order"}:
                wrong = {**sample, group: None}
                with pytest.raises(jsonschema.ValidationError):
                    jsonschema.Draft202012Validator(schema).validate(wrong)
        picked = shown(await viewer.get("/portal/p/acme/catalog/PICKED_UP"))
        fields = dict(re.findall(r'<th scope="row"><code>([\w.]+)</code></th>\s*<td>[^<]*</td>\s*<td>([^<]*)</td>',
                                 picked))
        assert fields["order.customer.name"] == "required" and fields["rider"] == "required"
        assert fields["otp"] == "always null" and fields["customer_input"] == "optional (may be null)"
        assert fields["order.customer.phone"] == "optional (may be null)"
        assert "otp.code" not in fields and "rider.rider_id" in fields
        assert fields["event_type"] == "required"
        assert 'string, always "PICKED_UP"' in picked and "one of DEL" not in picked
        assert "in a PICKED_UP event: otp, failure, return, delivery_confirmation." in picked
        assert (await viewer.get("/portal/p/acme/catalog/NOPE")).status_code == 404


# -- API tokens and the audit log ---------------------------------------------------


async def test_tokens_are_made_shown_once_and_revoked(portal: ShipcastProcess) -> None:
    async with await signed_in(portal, "dev@acme.example.com", "acme", "admin") as admin:
        empty = await admin.post("/portal/p/acme/tokens", {"name": "   "})
        assert empty.status_code == 422 and "1 to 200 characters" in error_beside(empty, "name")
        long = await admin.post("/portal/p/acme/tokens", {"name": "n" * 250})
        assert long.status_code == 422 and 'value="' + "n" * 250 + '"' in long.text
        made = await admin.post("/portal/p/acme/tokens", {"name": "order system"})
        assert made.status_code == 200
        token = re.search(r'<p class="secret" id="new-token">(scp_[\w-]+)</p>', made.text)
        assert token and 'data-copy="#new-token"' in made.text
        secret = token.group(1)
        listing = await admin.get("/portal/p/acme/tokens")
        assert "order system" in listing.text and secret not in listing.text  # shown once
        [row] = await portal.services.store.list_partner_tokens("acme")
        assert row["id"] in listing.text

        async with httpx.AsyncClient(base_url=portal.base_url,
                                     headers={"authorization": f"Bearer {secret}"}) as api:
            assert (await api.get("/v1/partners/acme/messages")).status_code == 200
            assert (await api.get("/v1/partners/globex/messages")).status_code == 403
            revoked = await admin.post(f"/portal/p/acme/tokens/{row['id']}/revoke")
            assert revoked.status_code == 303
            assert "revoked" in shown(await admin.get("/portal/p/acme/tokens"))
            assert (await api.get("/v1/partners/acme/messages")).status_code == 401
        assert (await admin.post(f"/portal/p/acme/tokens/{row['id']}/revoke")).status_code == 404
        assert (await admin.post("/portal/p/acme/tokens/not-a-token/revoke")).status_code == 404

        audit = await admin.get("/portal/p/acme/audit")
        text = shown(audit)
        assert "token.create" in text and "token.revoke" in text and "dev@acme.example.com (admin)" in text
        assert secret not in text and "<details>" in audit.text and '"name": "order system"' in text


async def test_the_audit_log_pages_by_key_and_shows_only_this_partner(portal: ShipcastProcess) -> None:
    from shipcast.app.audit import Actor, record

    actor = Actor("tests", "cli")
    for n in range(30):
        await record(portal.services, actor, "thing.change", partner_id="acme", subject=f"s{n}",
                     before={"n": n, "gone": True}, after={"n": n + 1, "new": "yes"})
    await record(portal.services, actor, "thing.change", partner_id="globex", subject="theirs")
    async with await signed_in(portal, "viewer@acme.example.com", "acme", "viewer") as viewer:
        first = await viewer.get("/portal/p/acme/audit")
        assert first.text.count("<tr>") == 1 + 25
        assert "added new, removed gone, changed n" in shown(first)
        link = re.search(r'<a class="button" href="([^"]+)" rel="next">Older</a>', first.text)
        assert link
        second = await viewer.get(html.unescape(link.group(1)))
        # Every entry once, newest first (the invitation that signed the viewer in is the newest).
        subjects = re.findall(r"<td>(s\d+)</td>", first.text + second.text)
        assert subjects == [f"s{n}" for n in range(29, -1, -1)]
        assert len(await portal.services.store.list_audit("acme")) == first.text.count("<tr>") - 1 + \
            second.text.count("<tr>") - 1
        assert "Older</a>" not in second.text
        assert "theirs" not in first.text + second.text


# -- the store's keyset, on both stores ---------------------------------------------


@pytest.mark.store
async def test_deliveries_page_by_key_through_ties(database_url: str) -> None:
    store = await Store(database_url).open()
    try:
        stamp = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
        items = [Attempt(f"evt_{n:03d}", "webhook", target, "acme", "https://a.example", "delivered", 1, 3.0,
                         at=stamp + timedelta(seconds=n // 7))  # seven events share each second
                 for n in range(60) for target in ("a", "b")]
        items.append(Attempt("evt_x", "webhook", "a", "globex", "https://g.example", "delivered", 1, 3.0, at=stamp))
        await store.record(items)
        seen: list[tuple[str, str]] = []
        after = None
        while True:
            page = await store.page_deliveries("acme", after=after, limit=25)
            seen += [(row["event_id"], row["target"]) for row in page]
            if len(page) < 25:
                break
            after = delivery_key(page[-1])
        assert len(seen) == len(set(seen)) == 120
        expected = sorted(((n // 7, f"evt_{n:03d}", t) for n in range(60) for t in ("a", "b")), reverse=True)
        assert seen == [(event_id, target) for _, event_id, target in expected]
        dead = await store.page_deliveries("acme", status="dead")
        assert dead == []
        counts = await store.delivery_counts("acme", stamp - timedelta(days=1))
        assert counts == {"delivered": 120}
        assert await store.attempted_targets("acme", stamp - timedelta(days=1)) == [("webhook", "a"),
                                                                                   ("webhook", "b")]
        # A cursor survives its trip through a link.
        from shipcast.app.portal.partner import encode_cursor

        key = delivery_key((await store.page_deliveries("acme", limit=1))[0])
        assert decode_cursor(encode_cursor(key)) == key
    finally:
        await store.close()


def test_a_cursor_not_made_by_the_portal_is_refused() -> None:
    for text in ("", "!!!", "W10", "WyJhIiwiYiIsImMiLCJkIl0", "x" * 2000):
        with pytest.raises(ValueError):
            decode_cursor(text)
