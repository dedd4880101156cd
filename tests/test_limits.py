"""Bodies are bounded before they are read, deep nesting is a 422, and a
failing store tells callers nothing about itself: on a real shipcast."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shipcast.settings import Settings

from .helpers import ShipcastProcess, partners_doc

pytestmark = pytest.mark.broker

MiB = 1024 * 1024


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A body sent without a Content-Length (chunked), ``total`` bytes of JSON-ish text."""
    yield b'{"id": "big", "description": "'
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}'


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_40_mib_body_to_a_partner_route_is_a_413(shipcast: ShipcastProcess, declared: bool) -> None:
    await shipcast.apply(partners_doc("acme", "http://127.0.0.1:9/hook"))
    path = "/v1/partners/acme/endpoints"
    if declared:
        response = await shipcast.http.post(path, content=b"{" + b" " * (40 * MiB) + b"}",
                                            headers={"content-type": "application/json"})
    else:
        response = await shipcast.http.post(path, content=chunks(40 * MiB), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert "at most 1048576" in response.json()["detail"]


async def test_the_partners_document_is_bounded_too(shipcast: ShipcastProcess) -> None:
    response = await shipcast.http.post("/v1/partners", content=chunks(2 * MiB),
                                        headers={"content-type": "application/yaml"})
    assert response.status_code == 413
    small = await shipcast.http.post("/v1/partners", json=partners_doc("acme", "https://hooks.example.com/x"))
    assert small.status_code == 200, small.text


async def test_every_operation_that_takes_a_body_documents_its_413(shipcast: ShipcastProcess) -> None:
    """The bound holds on every route, so the document says so on every one
    that reads a body; the route the fuzzer found it missing on answers it."""
    await shipcast.apply(partners_doc("acme", "https://hooks.example.com/x"))
    document = (await shipcast.http.get("/openapi.json")).json()
    taking = {f"{method.upper()} {path}": operation["responses"]
              for path, operations in document["paths"].items() for method, operation in operations.items()
              if "requestBody" in operation}
    assert "PUT /v1/partners/{partner_id}/config/channels/{channel}" in taking and "POST /v1/events" in taking
    undocumented = sorted(label for label, responses in taking.items() if "413" not in responses)
    assert not undocumented
    assert taking["POST /v1/events"]["413"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    response = await shipcast.http.put("/v1/partners/acme/config/channels/sms", content=chunks(2 * MiB),
                                       headers={"content-type": "application/json"})
    assert response.status_code == 413 and "at most 1048576" in response.json()["detail"]


@pytest.mark.parametrize(("path", "body", "content_type"), [
    ("/v1/partners", b"[" * 5000, "application/yaml"),
    ("/v1/partners", b"{a: " * 3000 + b"1" + b"}" * 3000, "application/yaml"),
    ("/v1/partners/acme/endpoints", b"[" * 5000 + b"]" * 5000, "application/json"),
    ("/v1/events", b"[" * 5000 + b"]" * 5000, "application/json"),
])
async def test_deep_nesting_is_a_422_never_a_500(shipcast: ShipcastProcess, path: str, body: bytes,
                                                 content_type: str) -> None:
    await shipcast.apply(partners_doc("acme", "https://hooks.example.com/x"))
    response = await shipcast.http.post(path, content=body, headers={"content-type": content_type})
    assert response.status_code == 422, response.text


async def test_a_twilio_callback_without_a_signature_or_a_token_is_refused(shipcast: ShipcastProcess) -> None:
    """Refused before the form is read: no signature, or no Twilio token to check one with."""
    callback = "/callbacks/sms/twilio"
    form = {"content-type": "application/x-www-form-urlencoded"}
    unsigned = await shipcast.http.post(callback, content=b"MessageSid=SM1&MessageStatus=sent", headers=form)
    assert unsigned.status_code == 403
    # This instance has no SHIPCAST_TWILIO_AUTH_TOKEN: a signed one of 8 MiB is refused, not read to 413.
    huge = await shipcast.http.post(callback, content=chunks(8 * MiB), headers={**form, "X-Twilio-Signature": "x"})
    assert huge.status_code == 403


async def test_a_signed_twilio_callback_past_the_bound_is_a_413(vhost: str, sqlite_url: str) -> None:
    from .conftest import make_settings

    settings: Settings = make_settings(vhost, sqlite_url, twilio_account_sid="AC1", twilio_auth_token="tok",
                                       max_body_bytes=64 * 1024)
    async with ShipcastProcess(settings, channels=[]) as shipcast:
        response = await shipcast.http.post("/callbacks/sms/twilio", content=chunks(MiB),
                                            headers={"content-type": "application/x-www-form-urlencoded",
                                                     "X-Twilio-Signature": "forged"})
        assert response.status_code == 413


async def test_a_failing_store_tells_the_caller_nothing_about_itself(shipcast: ShipcastProcess) -> None:
    import sqlalchemy as sa

    await shipcast.apply(partners_doc("acme", "https://hooks.example.com/x"))
    assert shipcast.services.store.engine is not None
    async with shipcast.services.store.engine.begin() as connection:
        await connection.execute(sa.text("DROP TABLE events"))  # a store that has lost a table
    from shipcast.plugins.tracking.links import tracking_token

    page = f"/t/{tracking_token(shipcast.settings, 'acme', 'ORD-1', 30)}"  # the public tracking page
    for path in ("/v1/events/evt_1", "/v1/partners/acme/messages/evt_1", page):
        response = await shipcast.http.get(path)
        assert response.status_code == 503, (path, response.text)
        text = response.text.lower()
        assert "select" not in text and "events" not in text and "sqlite" not in text and "no such table" not in text
        assert response.json() == {"detail": "the store is unavailable right now: try again shortly"}


async def test_a_partner_cannot_fill_the_shared_queues_with_sends_again(vhost: str, sqlite_url: str) -> None:
    """Test sends, resends and recovers draw on one quota per partner; past it, 429 with Retry-After."""
    from shipcast.model.examples import example
    from tests.bound import REGISTRY

    from .conftest import make_settings
    from .helpers import Receiver, eventually

    settings = make_settings(vhost, sqlite_url, retry_schedule="", partner_resend_quota=3)
    async with Receiver(default=500) as failing, ShipcastProcess(settings) as shipcast:
        await shipcast.apply(partners_doc("acme", failing.url))
        events = [example("OFD", REGISTRY.event_types, order_id=f"ORD-{i}") for i in range(5)]
        for event in events:
            assert (await shipcast.http.post("/v1/events", content=event.to_json(),
                                             headers={"content-type": "application/json"})).status_code == 202
        await eventually(lambda: shipcast.services.store.list_deliveries(partner_id="acme", status="dead"))

        async def all_dead() -> bool:
            return len(await shipcast.services.store.list_deliveries(partner_id="acme", status="dead")) == 5
        await eventually(all_dead)

        recovered = await shipcast.http.post("/v1/partners/acme/recover", params={"since": "2000-01-01T00:00:00Z"})
        assert recovered.status_code == 202 and recovered.json() == {"recovered": 3}
        assert recovered.headers["X-Shipcast-Remaining"] == "2"
        for refused in (await shipcast.http.post("/v1/partners/acme/recover", params={"since": "2000-01-01"}),
                        await shipcast.http.post(f"/v1/partners/acme/messages/{events[0].event_id}/resend"),
                        await shipcast.http.post("/v1/partners/acme/endpoints/main/test", json={})):
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["Retry-After"]) >= 1 and "SHIPCAST_PARTNER_RESEND_QUOTA" in refused.text
        # Another partner's quota is its own.
        await shipcast.apply(partners_doc("globex", failing.url))
        test = await shipcast.http.post("/v1/partners/globex/endpoints/main/test", json={})
        assert test.status_code == 202, test.text


@pytest.mark.parametrize("body", [b"\xff\xfe not utf-8 \x80", b"{not json", b'{"phone": "+91'])
async def test_a_body_that_is_not_json_is_a_422_naming_it(shipcast: ShipcastProcess, body: bytes) -> None:
    for path in ("/v1/customers/forget", "/v1/partners/acme/endpoints"):
        response = await shipcast.http.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.text)
        assert response.json()["detail"][0]["loc"][0] == "body", response.text


async def test_an_ingest_body_over_the_bound_is_a_413_and_not_counted_as_a_500(vhost: str, sqlite_url: str) -> None:
    from shipcast import metrics

    from .conftest import make_settings

    async with ShipcastProcess(make_settings(vhost, sqlite_url, max_batch=2, max_event_bytes=1024),
                               workers=False) as shipcast:
        failed = metrics.value("shipcast_ingest_requests_total", code="500")
        response = await shipcast.http.post("/v1/events", content=chunks(MiB), headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text
        assert metrics.value("shipcast_ingest_requests_total", code="500") == failed
