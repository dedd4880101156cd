"""Webhooks against the real broker: registration refusals, payload limits,
secrets at rest and their rotation, Ed25519 signatures, per-endpoint limits,
the circuit breaker, auto-disable with operator events, and ordered delivery."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.bound import example
from shipcast.exceptions import ConfigError
from tests.bound import load_partners
from shipcast.security.signing import generate_secret

from .conftest import make_settings
from .helpers import Receiver, ShipcastProcess, eventually, partners_doc, run_cli, serve, settled

pytestmark = pytest.mark.broker


def body_of(event_type: str, partner_id: str = "acme", **kwargs: Any) -> dict[str, Any]:
    return orjson.loads(example(event_type, partner_id=partner_id, **kwargs).to_json())


def headers_of(request: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


async def post(shipcast: ShipcastProcess, *events: dict[str, Any]) -> None:
    response = await shipcast.http.post("/v1/events", json=list(events))
    assert response.status_code == 202, response.text


async def secret_of(shipcast: ShipcastProcess, partner_id: str = "acme", endpoint: str = "main") -> str:
    response = await shipcast.http.get(f"/v1/partners/{partner_id}/endpoints/{endpoint}/secret")
    assert response.status_code == 200, response.text
    return str(response.json()["secret"])


# -- registration: the destination, HTTPS, the payload -------------------------------

@pytest.mark.parametrize(("url", "reason"), [
    ("http://10.1.2.3/hook", "10.0.0.0/8 (private)"),
    ("http://169.254.169.254/latest/meta-data", "169.254.0.0/16 (link-local)"),
    ("http://100.64.0.1/hook", "carrier-grade NAT"),
    # A name: the rule, never the address it resolved to (an oracle for internal DNS).
    ("http://localhost:9/hook", "localhost: resolves to an address that is in 127.0.0.0/8 (loopback)"),
])
async def test_a_refused_destination_is_refused_at_registration(vhost: str, sqlite_url: str, url: str,
                                                                reason: str) -> None:
    async with ShipcastProcess(make_settings(vhost, sqlite_url, webhook_allowed_networks=""),
                               channels=[]) as shipcast:
        with pytest.raises(ConfigError) as caught:
            await shipcast.apply(partners_doc("acme", url))
        assert "partner 'acme': channels.webhook.endpoints.0.url" in str(caught.value)
        assert reason in str(caught.value)
        assert "localhost" not in url or "127.0.0.1" not in str(caught.value)
        assert await shipcast.services.store.get_partner("acme") is None  # nothing stored

        # The partner API refuses it too, with the field named.
        await shipcast.apply(partners_doc("acme", "https://hooks.acme.example/x"))
        response = await shipcast.http.post("/v1/partners/acme/endpoints", json={"id": "bad", "url": url})
        assert response.status_code == 422 and reason in response.json()["detail"]["errors"]["url"][0]
        assert "localhost" not in url or "127.0.0.1" not in response.text


async def test_https_can_be_required_at_registration_and_at_send(vhost: str, sqlite_url: str,
                                                                 receiver: Receiver) -> None:
    async with ShipcastProcess(make_settings(vhost, sqlite_url)) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url))  # accepted: HTTPS not required yet
    strict = make_settings(vhost, sqlite_url, webhook_require_https=True)
    async with ShipcastProcess(strict) as shipcast:
        with pytest.raises(ConfigError, match="HTTPS is required"):
            await shipcast.apply(partners_doc("globex", receiver.url))
        await post(shipcast, event := body_of("OFD"))
        rows = await eventually(settled(shipcast, event["event_id"]))
        assert rows[0]["status"] == "dead" and "HTTPS is required" in rows[0]["last_error"]
    assert receiver.requests == []


async def test_an_event_over_the_size_limit_is_refused_at_ingest(vhost: str, sqlite_url: str) -> None:
    settings = make_settings(vhost, sqlite_url, max_event_bytes=1024, max_batch=3)
    async with ShipcastProcess(settings, channels=[]) as shipcast:
        small, big = body_of("RET"), body_of("OFD")
        big["order"]["address"]["line2"] = "x" * 500
        response = await shipcast.http.post("/v1/events", json=[small, big])
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == [1] and "the limit is 1024 (SHIPCAST_MAX_EVENT_BYTES)" in error["msg"]
        assert big["event_id"] in error["msg"]
        response = await shipcast.http.post("/v1/events", content=b"[" + b" " * 4000 + b"]",
                                            headers={"content-type": "application/json"})
        assert response.status_code == 413 and "at most 3072" in response.json()["detail"]


# -- secrets at rest, rotation, asymmetric signatures -----------------------------------

async def test_secrets_are_encrypted_at_rest_and_never_printed(vhost: str, sqlite_url: str) -> None:
    secret = generate_secret()
    settings = make_settings(vhost, sqlite_url)
    async with ShipcastProcess(settings, channels=[]) as shipcast:
        await shipcast.apply(partners_doc("acme", "https://hooks.acme.example/x", secret=secret))
        engine = sa.create_engine(sqlite_url.replace("+aiosqlite", ""))
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT config FROM partners")).scalar_one()
        engine.dispose()
        assert secret not in stored and secret.removeprefix("whsec_") not in stored and '"enc:' in stored
        for path in ("/v1/partners", "/v1/partners/acme", "/v1/partners/acme/endpoints"):
            response = await shipcast.http.get(path)
            assert response.status_code == 200 and secret not in response.text and "enc:" not in response.text
        assert await secret_of(shipcast) == secret  # only the secret route shows it
    listed = run_cli(settings, "partners", "list", "--json")
    assert listed.returncode == 0 and secret not in listed.stdout and "enc:" not in listed.stdout

    # Under another key, the stored secret cannot be read, and the error says why.
    other = make_settings(vhost, sqlite_url, secret_key=base64.urlsafe_b64encode(b"k" * 32).decode())
    async with ShipcastProcess(other, channels=[]) as shipcast:
        response = await shipcast.http.get("/v1/partners/acme/endpoints/main/secret")
        assert response.status_code == 422 and "SHIPCAST_SECRET_KEY is not the key" in response.text


async def test_a_rotated_secret_overlaps_then_only_the_new_one_verifies(shipcast: ShipcastProcess,
                                                                        receiver: Receiver) -> None:
    await shipcast.apply(partners_doc("acme", receiver.url))
    old = await secret_of(shipcast)
    response = await shipcast.http.post("/v1/partners/acme/endpoints/main/secret/rotate",
                                        json={"overlap_seconds": 8})  # room for a slow delivery within it
    assert response.status_code == 200, response.text
    new = response.json()["secret"]
    assert new != old and response.json()["previous_secret_valid_until"]
    assert await secret_of(shipcast) == new

    await post(shipcast, body_of("OFD"))
    [during] = await eventually(lambda: receiver.requests)
    assert during.headers["webhook-signature"].count("v1,") == 2
    for secret in (old, new):  # the standardwebhooks verifier accepts either secret
        Webhook(secret).verify(during.body, headers_of(during))

    await asyncio.sleep(8.2)
    await post(shipcast, body_of("DEL"))
    await eventually(lambda: len(receiver.requests) == 2)
    after = receiver.requests[1]
    assert after.headers["webhook-signature"].count("v1,") == 1
    Webhook(new).verify(after.body, headers_of(after))
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, headers_of(after))


async def test_rotating_through_the_partners_file_keeps_the_old_secret_for_the_overlap(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    first, second = generate_secret(), generate_secret()
    await shipcast.apply(partners_doc("acme", receiver.url, secret=first))
    await shipcast.apply(partners_doc("acme", receiver.url, secret=first))  # the same file again: no rotation
    listed = (await shipcast.http.get("/v1/partners/acme/endpoints/main")).json()
    assert listed["previous_secret_valid_until"] is None
    await shipcast.apply(partners_doc("acme", receiver.url, secret=second))
    await post(shipcast, body_of("OFD"))
    [request] = await eventually(lambda: receiver.requests)
    for secret in (first, second):
        Webhook(secret).verify(request.body, headers_of(request))


async def test_a_partners_file_applied_again_keeps_api_rotations_and_api_endpoints(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    first, third = generate_secret(), generate_secret()
    doc = partners_doc("acme", receiver.url, secret=first)
    await shipcast.apply(doc)
    rotated = await shipcast.http.post("/v1/partners/acme/endpoints/main/secret/rotate", json={"overlap_seconds": 0})
    second = rotated.json()["secret"]
    created = await shipcast.http.post("/v1/partners/acme/endpoints", json={"id": "mine", "url": receiver.url})
    assert created.status_code == 201, created.text

    await shipcast.apply(doc)  # the same file again, as at every start
    assert await secret_of(shipcast) == second
    listed = {e["id"] for e in (await shipcast.http.get("/v1/partners/acme/endpoints")).json()}
    assert listed == {"main", "mine"}

    doc["partners"][0]["channels"]["webhook"]["endpoints"][0]["secret"] = third  # the file rotates it
    await shipcast.apply(doc)
    assert await secret_of(shipcast) == third


async def test_asymmetric_signatures_verify_against_the_published_jwks(shipcast: ShipcastProcess,
                                                                       receiver: Receiver) -> None:
    await shipcast.apply(partners_doc("acme", receiver.url, asymmetric=True))
    await post(shipcast, body_of("FAIL"))
    [request] = await eventually(lambda: receiver.requests)
    Webhook(await secret_of(shipcast)).verify(request.body, headers_of(request))  # v1 still there

    jwks = (await shipcast.http.get("/.well-known/jwks.json", headers={"authorization": ""})).json()
    [key] = jwks["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["alg"] == "EdDSA"
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(key["x"] + "=="))
    [v1a] = [s.split(",", 1)[1] for s in request.headers["webhook-signature"].split() if s.startswith("v1a,")]
    signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode() + request.body
    public.verify(base64.b64decode(v1a), signed)
    with pytest.raises(InvalidSignature):
        public.verify(base64.b64decode(v1a), signed + b" ")


# -- isolation: limits, the circuit breaker, auto-disable -------------------------------

async def test_an_endpoint_never_gets_more_than_its_concurrency_and_nothing_is_lost(
        shipcast: ShipcastProcess) -> None:
    async with Receiver(delay=0.2) as slow:
        await shipcast.apply(partners_doc("acme", slow.url, max_concurrency=2))
        events = [body_of("OFD") for _ in range(12)]
        await post(shipcast, *events)
        await eventually(lambda: {r.headers["webhook-id"] for r in slow.delivered} == {e["event_id"] for e in events},
                         timeout=30)
        assert slow.max_inflight == 2
    # The attempt is written once the response is in, a moment after the receiver counted the request.
    delivered = await eventually(lambda: _attempts(shipcast, "acme", "delivered", 12))
    everything = await shipcast.services.store.list_attempts(partner_id="acme")
    assert len(everything) == len(delivered) == 12  # one attempt each: waiting for a slot is not an attempt


async def test_a_rate_limited_endpoint_is_paced_and_gets_everything(shipcast: ShipcastProcess,
                                                                    receiver: Receiver) -> None:
    await shipcast.apply(partners_doc("acme", receiver.url, rate_limit=4))
    events = [body_of("OFD") for _ in range(10)]
    await post(shipcast, *events)
    await eventually(lambda: len(receiver.delivered) == 10, timeout=30)
    first = receiver.requests[0].at
    # A bucket of 4 per second: at most 4 at once, then 4 more each second.
    assert sum(1 for r in receiver.requests if r.at - first < 0.5) <= 6
    assert sorted(receiver.ids) == sorted(e["event_id"] for e in events)


async def test_the_circuit_opens_on_failures_skips_the_endpoint_and_a_probe_closes_it(
        vhost: str, sqlite_url: str) -> None:
    settings = make_settings(vhost, sqlite_url, retry_schedule="1,1,1,1,1,1,1,1", breaker_window=4,
                             breaker_min_requests=3, breaker_cooldown=2.0)
    async with Receiver(default=500) as receiver, ShipcastProcess(settings) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url))
        events = [body_of("OFD") for _ in range(3)]
        await post(shipcast, *events)
        # Three failures open the circuit; the retries that follow are not sent.
        await eventually(lambda: _has_attempt(shipcast, "circuit open"), timeout=20)
        sent_while_open = len(receiver.requests)
        assert sent_while_open == 3
        receiver.default = 200
        # After the cool-down one probe goes out, succeeds and closes the circuit; all arrive.
        await eventually(lambda: {r.headers["webhook-id"] for r in receiver.delivered}
                         == {e["event_id"] for e in events}, timeout=30)
        attempts = await shipcast.services.store.list_attempts(partner_id="acme")
        skipped = [a for a in attempts if a["error"] and "circuit open" in a["error"]]
        assert skipped and all(a["status"] is None for a in skipped)
        assert len(receiver.requests) == 3 + 3  # no request while open: 3 failures, then the 3 successes


async def _attempts(shipcast: ShipcastProcess, partner_id: str, outcome: str, count: int) -> list[dict[str, Any]]:
    rows = await shipcast.services.store.list_attempts(partner_id=partner_id, outcome=outcome)
    return rows if len(rows) >= count else []


async def _has_attempt(shipcast: ShipcastProcess, text: str) -> bool:
    attempts = await shipcast.services.store.list_attempts(partner_id="acme")
    return any(a["error"] and text in a["error"] for a in attempts)


async def test_an_endpoint_failing_for_too_long_is_disabled_and_the_operator_is_told(
        vhost: str, sqlite_url: str) -> None:
    operator_secret = generate_secret()
    async with Receiver() as operator, Receiver(script=[500], default=200) as flaky, \
            Receiver(default=503) as dead:
        settings = make_settings(vhost, sqlite_url, retry_schedule="1,1,1,1,1,1", endpoint_disable_after=2.0,
                                 operator_webhook_url=operator.url, operator_webhook_secret=operator_secret)
        async with ShipcastProcess(settings) as shipcast:
            doc = partners_doc("acme", dead.url)
            doc["partners"][0]["channels"]["webhook"]["endpoints"].append(
                {"id": "flaky", "url": flaky.url, "events": ["*"]})
            await shipcast.apply(doc)
            await post(shipcast, body_of("OFD"))

            def kinds() -> list[tuple[str, str]]:
                verifier = Webhook(operator_secret)
                payloads = [verifier.verify(r.body, headers_of(r)) for r in operator.requests]
                return [(p["type"], p["data"]["endpoint_id"]) for p in payloads]

            # flaky fails once then recovers; main fails on and on and is disabled after 2 s.
            await eventually(lambda: ("endpoint.disabled", "main") in kinds(), timeout=30)
            assert kinds().count(("endpoint.failing", "main")) == 1
            assert ("endpoint.failing", "flaky") in kinds() and ("endpoint.recovered", "flaky") in kinds()
            assert kinds().index(("endpoint.failing", "flaky")) < kinds().index(("endpoint.recovered", "flaky"))
            assert ("endpoint.disabled", "flaky") not in kinds()

            view = (await shipcast.http.get("/v1/partners/acme/endpoints/main")).json()
            assert view["disabled"] is True
            listed = (await shipcast.http.get("/v1/operator/events")).json()
            assert {e["type"] for e in listed} == {"endpoint.failing", "endpoint.recovered", "endpoint.disabled"}
            assert all(e["sent_at"] for e in listed)

            # Disabled means not sent to, but logged as failed: once the endpoint is
            # fixed and enabled again, "recover since T" sends what it missed.
            sent = len(dead.requests)
            since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
            await post(shipcast, missed := body_of("DEL"))
            await eventually(lambda: len(flaky.delivered) == 2)
            [row] = await eventually(lambda: shipcast.services.store.list_deliveries(
                event_id=missed["event_id"], target="main"))
            assert row["status"] == "dead" and "disabled" in row["last_error"]
            assert len(dead.requests) == sent
            dead.default = 200
            response = await shipcast.http.post("/v1/partners/acme/endpoints/main/enable")
            assert response.status_code == 200 and response.json()["disabled"] is False
            response = await shipcast.http.post("/v1/partners/acme/recover", params={"since": since,
                                                                                      "endpoint": "main"})
            assert response.json()["recovered"] >= 1  # the OFD too, if its last retry came after T
            await eventually(lambda: missed["event_id"] in {r.headers["webhook-id"] for r in dead.delivered})
            await post(shipcast, ret := body_of("RET"))
            await eventually(lambda: ret["event_id"] in {r.headers["webhook-id"] for r in dead.delivered})


# -- ordering ---------------------------------------------------------------------------

async def test_an_ordered_endpoint_never_lets_del_overtake_a_failed_ofd(shipcast: ShipcastProcess) -> None:
    async with Receiver(script=[503]) as receiver:
        await shipcast.apply(partners_doc("acme", receiver.url, ordered=True))
        ofd = body_of("OFD", order_id="ORD-1", sequence=1)
        deliv = body_of("DEL", order_id="ORD-1", sequence=2)
        other = body_of("OFD", order_id="ORD-2", sequence=1)
        await post(shipcast, ofd)
        await eventually(lambda: receiver.answered == [503])  # OFD's first delivery failed
        await post(shipcast, deliv, other)
        await eventually(lambda: len(receiver.delivered) == 3, timeout=20)
        order = [r.headers["webhook-id"] for r in receiver.delivered]
        assert order.index(ofd["event_id"]) < order.index(deliv["event_id"])
        # Another order is not held up behind ORD-1's retry.
        assert order[0] == other["event_id"]
        # The attempt is recorded just after the receiver answers.
        rows = await eventually(lambda: shipcast.services.store.list_attempts(deliv["event_id"]))
        assert [r["outcome"] for r in rows] == ["delivered"]  # waiting was not an attempt


async def test_an_unordered_endpoint_does_not_wait(shipcast: ShipcastProcess) -> None:
    async with Receiver(script=[503]) as receiver:
        await shipcast.apply(partners_doc("acme", receiver.url))
        ofd = body_of("OFD", order_id="ORD-1", sequence=1)
        deliv = body_of("DEL", order_id="ORD-1", sequence=2)
        await post(shipcast, ofd)
        await eventually(lambda: receiver.answered == [503])
        await post(shipcast, deliv)
        await eventually(lambda: len(receiver.delivered) == 2, timeout=20)
        assert [r.headers["webhook-id"] for r in receiver.delivered] == [deliv["event_id"], ofd["event_id"]]


async def test_a_worker_beside_another_on_its_queue_says_an_ordered_endpoints_order_is_per_process(
        shipcast: ShipcastProcess, caplog: pytest.LogCaptureFixture) -> None:
    """Two webhook workers on one queue, as two replicas of `shipcast worker`
    are: the one that delivers to an ordered endpoint counts the queue's
    consumers on RabbitMQ and says the order holds within a process only."""
    from shipcast.app.runtime import start_workers, stop_workers

    second = await start_workers(shipcast.services, ["webhook"])
    try:
        async with Receiver() as receiver:
            await shipcast.apply(partners_doc("acme", receiver.url, ordered=True))
            events = [body_of("OFD", order_id=f"ORD-{i}", sequence=1) for i in range(4)]
            await post(shipcast, *events)
            await eventually(lambda: len(receiver.delivered) == len(events), timeout=20)
            # Counted beside the deliveries: said once the count is in, before the stop cancels it.
            await eventually(lambda: "target acme/main is ordered" in caplog.text, timeout=20)
    finally:
        await stop_workers(second)
    warned = [r.getMessage() for r in caplog.records if "target acme/main is ordered" in r.getMessage()]
    assert warned and len(warned) <= 2, warned  # once by each worker that delivered
    assert all("2 consumers deliver from shipcast.webhook" in message for message in warned), warned


def test_endpoint_options_are_validated() -> None:
    doc = partners_doc("acme", "https://hooks.acme.example/x", rate_limit=0, max_concurrency=0, ordered="maybe")
    with pytest.raises(ConfigError) as caught:
        load_partners(doc, "p.yaml")
    text = str(caught.value)
    for field in ("rate_limit", "max_concurrency", "ordered"):
        assert f"channels.webhook.endpoints.0.{field}" in text


async def test_an_endless_response_is_read_only_up_to_the_cap(shipcast: ShipcastProcess) -> None:
    """A 2xx whose body never ends still counts as delivered at once: shipcast
    stops reading at 64 KiB (reading on would hit the 2 s timeout and retry)."""
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        await request.read()
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        try:
            while sent < 512 * 1024 * 1024:
                await response.write(b"x" * 65536)
                sent += 65536
        except (ConnectionError, RuntimeError):
            pass  # shipcast hung up
        return response

    app = web.Application()
    app.router.add_post("/hook", endless)
    runner, port = await serve(app)
    try:
        await shipcast.apply(partners_doc("acme", f"http://127.0.0.1:{port}/hook"))
        await post(shipcast, event := body_of("OFD"))
        [row] = await eventually(settled(shipcast, event["event_id"]))
        assert row["status"] == "delivered" and row["attempts"] == 1
        [attempt] = await shipcast.services.store.list_attempts(event["event_id"])
        assert attempt["response"] == "x" * 1024
        assert sent < 512 * 1024 * 1024  # it stopped reading long before the server stopped sending
    finally:
        await runner.cleanup()


async def test_credentials_in_an_endpoint_url_are_kept_encrypted_and_never_shown(vhost: str, sqlite_url: str,
                                                                                receiver: Receiver) -> None:
    """``https://user:password@host/…`` still authenticates to the partner,
    but the credentials are stored like a secret and shown nowhere."""
    settings = make_settings(vhost, sqlite_url)
    password = "p4ss-w0rd-kept-secret"
    url = receiver.url.replace("http://", f"http://erp-user:{password}@")
    async with ShipcastProcess(settings) as shipcast:
        await shipcast.apply(partners_doc("acme", url))
        event = example("OFD", partner_id="acme")
        assert (await shipcast.http.post("/v1/events", content=event.to_json(),
                                         headers={"content-type": "application/json"})).status_code == 202
        await eventually(lambda: receiver.ids == [event.event_id])
        expected = "Basic " + base64.b64encode(f"erp-user:{password}".encode()).decode()
        assert receiver.requests[0].headers["Authorization"] == expected
        # The delivery is logged just after the receiver answers.
        await eventually(lambda: shipcast.services.store.list_deliveries(event_id=event.event_id, status="delivered"))
        engine = sa.create_engine(sqlite_url.replace("+aiosqlite", ""))
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT config FROM partners")).scalar_one()
            addresses = [row[0] for row in conn.execute(sa.text("SELECT address FROM deliveries"))]
        engine.dispose()
        assert password not in stored and "erp-user" not in stored and '"userinfo_secret":"enc:' in stored
        assert addresses and not any("erp-user" in address for address in addresses)
        [listed] = (await shipcast.http.get("/v1/partners/acme/endpoints")).json()
        assert listed["url"] == receiver.url and listed["url_credentials"] is True
        for path in ("/v1/partners", "/v1/partners/acme", "/v1/deliveries", f"/v1/events/{event.event_id}"):
            text = (await shipcast.http.get(path)).text
            assert password not in text and "erp-user" not in text, path
        # An edit of another field keeps the credentials; a new URL without them drops them.
        patched = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json={"description": "ERP"})
        assert patched.status_code == 200 and patched.json()["url_credentials"] is True
        moved = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json={"url": receiver.url + "v2"})
        assert moved.status_code == 200 and moved.json()["url_credentials"] is False
    listed_cli = run_cli(settings, "partners", "list", "--json")
    assert listed_cli.returncode == 0 and password not in listed_cli.stdout
