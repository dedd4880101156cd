"""The partner API on the real broker: partner-scoped tokens, endpoints,
secrets, test events, messages and attempts with filters, resend, recover,
stats; and docs/partners.md's walk-through run as written."""

from __future__ import annotations

import asyncio
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from tests.bound import example

from .conftest import make_settings
from .helpers import Receiver, ShipcastProcess, eventually, partners_doc, run_cli

pytestmark = pytest.mark.broker
DOCS = Path(__file__).parents[1] / "docs" / "partners.md"


def body_of(event_type: str, partner_id: str = "acme", **kwargs: Any) -> dict[str, Any]:
    return orjson.loads(example(event_type, partner_id=partner_id, **kwargs).to_json())


async def partner_client(shipcast: ShipcastProcess, partner_id: str) -> httpx.AsyncClient:
    response = await shipcast.http.post(f"/v1/partners/{partner_id}/tokens", params={"name": "tests"})
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    assert token.startswith("scp_")
    return httpx.AsyncClient(base_url=shipcast.base_url, headers={"authorization": f"Bearer {token}"})


async def test_a_partner_token_sees_only_its_own_partner(shipcast: ShipcastProcess, receiver: Receiver) -> None:
    await shipcast.apply(partners_doc("acme", receiver.url))
    await shipcast.apply(partners_doc("globex", receiver.url))
    await shipcast.http.post("/v1/events", json=(theirs := body_of("OFD", partner_id="globex")))
    await eventually(lambda: shipcast.services.store.get_event(theirs["event_id"]))
    async with await partner_client(shipcast, "acme") as acme:
        assert (await acme.get("/v1/partners/acme/endpoints")).status_code == 200
        # Another partner's message is not found, even by its id.
        missing = await acme.get(f"/v1/partners/acme/messages/{theirs['event_id']}")
        assert missing.status_code == 404 and "globex" not in missing.text
        for method, path in [("GET", "/v1/partners/acme"), ("GET", "/v1/partners/globex"),
                             ("GET", "/v1/partners/globex/endpoints"),
                             ("GET", "/v1/partners/globex/messages"),
                             ("GET", "/v1/partners/globex/endpoints/main/secret"),
                             ("POST", "/v1/partners/globex/endpoints/main/secret/rotate"),
                             ("GET", "/v1/partners"), ("POST", "/v1/events"), ("GET", "/v1/deliveries"),
                             ("POST", "/v1/partners/acme/tokens"), ("DELETE", "/v1/partners/acme")]:
            response = await acme.request(method, path)
            assert response.status_code == 403, (method, path, response.text)
            assert "scoped to partner 'acme'" in response.json()["detail"]
    async with httpx.AsyncClient(base_url=shipcast.base_url,
                                 headers={"authorization": "Bearer scp_not-a-token"}) as stranger:
        assert (await stranger.get("/v1/partners/acme")).status_code == 401
    # The operator's token reaches every partner, and lists and revokes tokens.
    assert (await shipcast.http.get("/v1/partners/globex/endpoints")).status_code == 200
    async with await partner_client(shipcast, "globex") as globex:
        assert (await globex.get("/v1/partners/globex/endpoints")).status_code == 200
        tokens = (await shipcast.http.get("/v1/partners/globex/tokens")).json()
        assert [t["name"] for t in tokens] == ["tests"] and "token" not in tokens[0]
        revoked = await shipcast.http.delete(f"/v1/partners/globex/tokens/{tokens[0]['id']}")
        assert revoked.status_code == 200
        assert (await globex.get("/v1/partners/globex/endpoints")).status_code == 401
    assert (await shipcast.http.delete("/v1/partners/globex/tokens/0123456789abcdef")).status_code == 404
    long_name = await shipcast.http.post("/v1/partners/globex/tokens", params={"name": "x" * 201})
    assert long_name.status_code == 422
    # Deleting the partner revokes its tokens.
    assert (await shipcast.http.delete("/v1/partners/acme")).status_code == 200
    response = await shipcast.http.post("/v1/partners/acme/tokens")
    assert response.status_code == 404


async def test_endpoints_are_registered_updated_and_deleted_by_the_partner(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme"}]})
    async with await partner_client(shipcast, "acme") as acme:
        response = await acme.post("/v1/partners/acme/endpoints",
                                   json={"id": "orders", "url": receiver.url, "events": ["OFD"]})
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["secret"].startswith("whsec_") and created["events"] == ["OFD"]

        bad = await acme.post("/v1/partners/acme/endpoints", json={"id": "x", "url": "ftp://nope", "events": ["NOPE"]})
        assert bad.status_code == 422
        assert set(bad.json()["detail"]["errors"]) == {"url", "events"}
        again = await acme.post("/v1/partners/acme/endpoints", json={"id": "orders", "url": receiver.url})
        assert again.status_code == 409

        refused = await acme.post("/v1/events", json=body_of("OFD"))  # and nothing else happens
        assert refused.status_code == 403 and "scoped to partner 'acme'" in refused.json()["detail"], refused.text
        await shipcast.http.post("/v1/events", json=[body_of("OFD"), body_of("DEL")])
        await eventually(lambda: len(receiver.requests) == 1)
        assert receiver.requests[0].json["event_type"] == "OFD"

        response = await acme.patch("/v1/partners/acme/endpoints/orders", json={"events": ["DEL"]})
        assert response.status_code == 200 and response.json()["events"] == ["DEL"]
        assert (await acme.patch("/v1/partners/acme/endpoints/orders", json={"secret": "x"})).status_code == 422
        await shipcast.http.post("/v1/events", json=[body_of("OFD"), body_of("DEL")])
        await eventually(lambda: len(receiver.requests) == 2)
        assert receiver.requests[1].json["event_type"] == "DEL"
        Webhook(created["secret"]).verify(receiver.requests[1].body, {k.lower(): v for k, v in receiver.requests[1].headers.items()})

        assert (await acme.delete("/v1/partners/acme/endpoints/orders")).status_code == 200
        assert (await acme.get("/v1/partners/acme/endpoints/orders")).status_code == 404
        assert (await acme.get("/v1/partners/acme/endpoints")).json() == []


async def test_a_test_event_of_any_type_reaches_only_that_endpoint(shipcast: ShipcastProcess) -> None:
    async with Receiver() as chosen, Receiver() as other:
        doc = partners_doc("acme", chosen.url, events=["OFD"])
        doc["partners"][0]["channels"]["webhook"]["endpoints"].append({"id": "other", "url": other.url})
        await shipcast.apply(doc)
        response = await shipcast.http.post("/v1/partners/acme/endpoints/main/test", json={"event_type": "RET"})
        assert response.status_code == 202, response.text
        event_id = response.json()["event_id"]
        [request] = await eventually(lambda: chosen.requests)
        payload = request.json
        assert payload["event_id"] == event_id and payload["event_type"] == "RET"
        assert payload["return"]["reason"] and payload["rider"] is None
        message = await eventually(lambda: _delivered(shipcast, f"/v1/partners/acme/messages/{event_id}"))
        assert message["event"]["event_id"] == event_id and message["attempts"][0]["status"] == 200
        unknown = await shipcast.http.post("/v1/partners/acme/endpoints/main/test", json={"event_type": "NOPE"})
        assert unknown.status_code == 422 and "NOPE" not in unknown.json()["detail"]["errors"]["event_type"][0]
        await asyncio.sleep(0.3)
        assert other.requests == []


async def _delivered(shipcast: ShipcastProcess, path: str) -> dict[str, Any] | None:
    response = await shipcast.http.get(path)
    body: dict[str, Any] = response.json()
    return body if response.status_code == 200 and body["deliveries"] and \
        body["deliveries"][0]["status"] == "delivered" else None


async def test_messages_and_attempts_filter_resend_recover_and_stats(vhost: str, sqlite_url: str) -> None:
    settings = make_settings(vhost, sqlite_url, retry_schedule="1")
    async with Receiver(script=[200, 200, 200, 500, 500]) as receiver, ShipcastProcess(settings) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url))
        started = datetime.now(UTC) - timedelta(seconds=1)
        ofd1, del1, ofd2 = body_of("OFD", order_id="ORD-1"), body_of("DEL", order_id="ORD-1", sequence=2), \
            body_of("OFD", order_id="ORD-2")
        for event in (ofd1, del1, ofd2):  # one at a time: the script's order is the events' order
            await shipcast.http.post("/v1/events", json=event)
            await eventually(lambda: len(receiver.requests) >= 1 + [ofd1, del1, ofd2].index(event))
        failed = body_of("FAIL", order_id="ORD-3")
        await shipcast.http.post("/v1/events", json=failed)
        rows = await eventually(lambda: _messages(shipcast, status="dead"))
        assert [r["event_id"] for r in rows] == [failed["event_id"]]

        async with await partner_client(shipcast, "acme") as acme:
            def ids(response: httpx.Response) -> set[str]:
                assert response.status_code == 200, response.text
                return {row["event_id"] for row in response.json()}

            base = "/v1/partners/acme/messages"
            assert ids(await acme.get(base, params={"event_type": "OFD"})) == {ofd1["event_id"], ofd2["event_id"]}
            assert ids(await acme.get(base, params={"order_id": "ORD-1"})) == {ofd1["event_id"], del1["event_id"]}
            assert ids(await acme.get(base, params={"status": "delivered", "order_id": "ORD-3"})) == set()
            assert ids(await acme.get(base, params={"since": started.isoformat()})) >= {ofd1["event_id"]}
            future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            assert ids(await acme.get(base, params={"since": future})) == set()
            bad = await acme.get(base, params={"status": "lost"})
            assert bad.status_code == 422 and "status" in str(bad.json()["detail"][0]["loc"])

            attempts = (await acme.get("/v1/partners/acme/attempts", params={"event_id": failed["event_id"]})).json()
            assert [a["outcome"] for a in attempts] == ["retry", "dead"] and attempts[0]["status"] == 500
            only_dead = (await acme.get("/v1/partners/acme/attempts", params={"outcome": "dead"})).json()
            assert [a["event_id"] for a in only_dead] == [failed["event_id"]]

            stats = (await acme.get("/v1/partners/acme/endpoints/main/stats")).json()
            assert stats["attempts"] == 5 and stats["delivered"] == 3 and stats["success_rate"] == 0.6
            assert stats["latency_ms"]["p50"] > 0 and stats["last_error"]["status"] == 500

            # Resend one delivered message; recover everything that failed since T.
            response = await acme.post(f"{base}/{ofd1['event_id']}/resend")
            assert response.status_code == 202 and response.json() == {"resent": 1}
            await eventually(lambda: receiver.ids.count(ofd1["event_id"]) == 2)
            response = await acme.post("/v1/partners/acme/recover", params={"since": future})
            assert response.json() == {"recovered": 0}
            response = await acme.post("/v1/partners/acme/recover", params={"since": started.isoformat()})
            assert response.json() == {"recovered": 1}
            await eventually(lambda: receiver.ids.count(failed["event_id"]) == 3)
            await eventually(lambda: _messages(shipcast, status="delivered", order_id="ORD-3"))
            missing = await acme.post(f"{base}/no-such-event/resend")
            assert missing.status_code == 404

        # The operator's CLI shows the same, across partners.
        listed = run_cli(settings, "deliveries", "list", "--type", "OFD", "--order", "ORD-2")
        assert listed.returncode == 0 and ofd2["event_id"] in listed.stdout and ofd1["event_id"] not in listed.stdout
        table = run_cli(settings, "endpoints", "list")
        assert table.returncode == 0 and re.search(r"acme\s+main\s+.*127\.0\.0\.1", table.stdout), table.stdout
        stats_out = run_cli(settings, "endpoints", "stats", "acme", "main")
        assert stats_out.returncode == 0 and "success rate" in stats_out.stdout
        recovered = run_cli(settings, "deliveries", "recover", "--partner", "acme", "--since",
                            started.isoformat())
        assert recovered.returncode == 0 and "recovered 0" in recovered.stdout, recovered.stdout + recovered.stderr

        # Secrets and test sends, as the partner API offers them.
        old_secret = run_cli(settings, "endpoints", "secret", "acme", "main").stdout.strip()
        rotated = run_cli(settings, "endpoints", "rotate-secret", "acme", "main", "--overlap", "600")
        new_secret = rotated.stdout.strip()
        assert rotated.returncode == 0 and new_secret.startswith("whsec_") and new_secret != old_secret
        assert "keeps signing until" in rotated.stderr
        sent = run_cli(settings, "endpoints", "test", "acme", "main", "--type", "RET")
        assert sent.returncode == 0, sent.stderr
        event_id = sent.stdout.strip()
        await shipcast.services.partners.reload()
        [request] = await eventually(lambda: [r for r in receiver.requests if r.headers["webhook-id"] == event_id])
        for secret in (old_secret, new_secret):
            assert Webhook(secret).verify(request.body, {k.lower(): v for k, v in request.headers.items()})
        unknown = run_cli(settings, "endpoints", "test", "acme", "nope")
        assert unknown.returncode == 1 and "partner 'acme' has no endpoint 'nope'" in unknown.stderr


async def _messages(shipcast: ShipcastProcess, **params: str) -> list[dict[str, Any]]:
    response = await shipcast.http.get("/v1/partners/acme/messages", params=params)
    rows: list[dict[str, Any]] = response.json()
    return rows


def shell_steps(text: str) -> str:
    """The walk-through's ``sh`` blocks, in order, as one script."""
    section = text.split("## Walk-through", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL))


async def test_the_partner_walk_through_runs_as_written(shipcast: ShipcastProcess, receiver: Receiver) -> None:
    script = shell_steps(DOCS.read_text(encoding="utf-8"))
    assert script.count("curl") >= 5
    env = {**os.environ, "SHIPCAST_URL": shipcast.base_url, "SHIPCAST_API_TOKEN": shipcast.settings.api_token or "",
           "ENDPOINT_URL": receiver.url}
    process = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script + '\necho "SECRET=$SECRET"\n', env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    secret = re.search(r"SECRET=(whsec_\S+)", out.decode())
    assert secret, out.decode()
    [request] = receiver.requests
    payload = Webhook(secret.group(1)).verify(request.body, {k.lower(): v for k, v in request.headers.items()})
    assert payload["event_type"] == "DEL" and payload["partner_id"] == "acme"


async def test_a_resend_that_fails_is_retried_though_the_event_was_delivered(shipcast: ShipcastProcess,
                                                                            receiver: Receiver) -> None:
    """A resend's first try failing must not lose it: its retry is still a
    resend, not skipped as "delivered already" (which the first send was)."""
    await shipcast.apply(partners_doc("acme", receiver.url))
    body = body_of("DEL")
    assert (await shipcast.http.post("/v1/events", json=body)).status_code == 202
    await eventually(lambda: receiver.delivered)
    # A resend sends the archived event: the archive, a channel of its own, may store it after the webhook.
    await eventually(lambda: shipcast.services.store.get_event(body["event_id"]))
    receiver.script = [503]  # the partner's server stumbles once on the resend
    resent = await shipcast.http.post(f"/v1/partners/acme/messages/{body['event_id']}/resend")
    assert resent.status_code == 202 and resent.json() == {"resent": 1}
    await eventually(lambda: len(receiver.delivered) == 2, timeout=20)
    assert receiver.answered == [200, 503, 200]

    async def logged() -> list[dict[str, Any]] | None:  # the last attempt is logged just after its answer
        found = (await shipcast.http.get(f"/v1/partners/acme/messages/{body['event_id']}")).json()["attempts"]
        return found if len(found) == 3 else None

    attempts = await eventually(logged)
    assert [(a["outcome"], a["status"]) for a in attempts] == [("delivered", 200), ("retry", 503), ("delivered", 200)]
