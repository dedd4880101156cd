"""Payload filters, an endpoint's own headers and its authentication,
against the real broker and real receivers: an event a filter keeps out
reaches no receiver and records no attempt while a matching one is
delivered; headers and Authorization arrive beside a signature that still
verifies, stored encrypted and shown masked everywhere; what is wrong is
refused when applied, from the partners file and the partner API, naming
the path or the header; ``shipcast endpoints list`` shows it all."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from shipcast import metrics
from shipcast.exceptions import ConfigError
from shipcast.plugins.webhook.headers import MASK
from shipcast.settings import Settings
from tests.bound import example

from .helpers import Receiver, ShipcastProcess, eventually, run_cli, settled

pytestmark = pytest.mark.broker

COD = {"order.payment.method": "cod"}


def event_of(event_type: str = "OFD", *, method: str = "cod", city: str = "Bengaluru",
             order_id: str = "ORD-1") -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(example(event_type, partner_id="acme", order_id=order_id).to_json())
    body["order"]["payment"]["method"] = method
    body["order"]["address"]["city"] = city
    return body


def two_endpoints(filtered: str, every: str, **endpoint: Any) -> dict[str, Any]:
    """acme with ``main`` (``endpoint``'s settings) and ``every``, which takes every event unfiltered."""
    return {"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
        {"id": "main", "url": filtered, **endpoint}, {"id": "every", "url": every}]}}}]}


async def post(shipcast: ShipcastProcess, *events: dict[str, Any]) -> None:
    response = await shipcast.http.post("/v1/events", json=list(events))
    assert response.status_code == 202, response.text


def stored_config(settings: Settings) -> str:
    engine = sa.create_engine(settings.database_url.replace("+aiosqlite", ""))
    with engine.connect() as conn:
        config = str(conn.execute(sa.text("SELECT config FROM partners")).scalar_one())
    engine.dispose()
    return config


async def finished(shipcast: ShipcastProcess, event_id: str) -> None:
    """Wait until the worker is done with ``event_id``: the unfiltered
    endpoint's attempt is recorded with every other target's, after all of them."""
    await eventually(lambda: _attempted(shipcast, event_id))


async def _attempted(shipcast: ShipcastProcess, event_id: str) -> bool:
    return any(row["target"] == "every" for row in await shipcast.services.store.list_attempts(event_id))


# -- filters -----------------------------------------------------------------------

async def test_an_event_the_filter_keeps_out_reaches_no_receiver_and_costs_no_attempt(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    async with Receiver() as every:
        await shipcast.apply(two_endpoints(receiver.url, every.url, filter={
            "any": [{"order.payment.method": "cod"}, {"event_type": "RET"}]}))
        before = metrics.value("shipcast_webhook_filtered_total", partner="acme", endpoint="main")
        cod, prepaid, returned = (event_of(method="cod", order_id="ORD-1"), event_of(method="prepaid", order_id="ORD-2"),
                                  event_of("RET", method="prepaid", order_id="ORD-3"))
        await post(shipcast, prepaid, cod, returned)
        for event in (cod, prepaid, returned):
            await finished(shipcast, event["event_id"])
        assert sorted(every.ids) == sorted(e["event_id"] for e in (cod, prepaid, returned))
        assert sorted(receiver.ids) == sorted([cod["event_id"], returned["event_id"]])

        store = shipcast.services.store
        assert {row["target"] for row in await store.list_attempts(prepaid["event_id"])} == {"every"}
        assert {row["target"] for row in await store.list_deliveries(event_id=prepaid["event_id"])} == {"every"}
        assert {row["target"] for row in await store.list_attempts(cod["event_id"])} == {"main", "every"}
        stats = (await shipcast.http.get("/v1/partners/acme/endpoints/main/stats")).json()
        assert (stats["attempts"], stats["delivered"], stats["failed"]) == (2, 2, 0)
        assert metrics.value("shipcast_webhook_filtered_total", partner="acme", endpoint="main") == before + 1
        assert receiver.ids.count(cod["event_id"]) == 1  # nothing retried or parked for the filtered one

        # A test send goes to the endpoint whatever its filter, as whatever its event types.
        sent = await shipcast.http.post("/v1/partners/acme/endpoints/main/test", json={"event_type": "DEL"})
        assert sent.status_code == 202, sent.text
        await eventually(lambda: sent.json()["event_id"] in receiver.ids)


async def test_an_event_kept_out_is_counted_once_while_another_endpoint_retries_it(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    async with Receiver(script=[500, 500]) as every:  # answered on the third attempt
        await shipcast.apply(two_endpoints(receiver.url, every.url, filter=COD))
        before = metrics.value("shipcast_webhook_filtered_total", partner="acme", endpoint="main")
        await post(shipcast, prepaid := event_of(method="prepaid"))
        await eventually(settled(shipcast, prepaid["event_id"], ("delivered",)))
        assert every.answered == [500, 500, 200] and not receiver.requests
        assert metrics.value("shipcast_webhook_filtered_total", partner="acme", endpoint="main") == before + 1


async def test_a_stored_filter_that_does_not_compile_parks_the_event_for_its_endpoint_only(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    async with Receiver() as every:
        await shipcast.apply(two_endpoints(receiver.url, every.url, filter=COD))
        # Stored by another version, say: a filter this one does not read.
        store = shipcast.services.store
        partner = await store.get_partner("acme")
        assert partner is not None
        endpoints = [{**e, "filter": {"order.foo": "x"}} if e["id"] == "main" else e
                     for e in partner.channels["webhook"]["endpoints"]]
        await store.put_partners([dataclasses.replace(partner, channels={"webhook": {"endpoints": endpoints}},
                                                      file_fields=partner.owned())], reenable=False)
        await shipcast.services.partners.reload()
        await post(shipcast, cod := event_of(method="cod"))
        [parked] = await eventually(settled(shipcast, cod["event_id"], ("dead",)))
        assert parked["target"] == "main" and "stored filter is not valid" in parked["last_error"]
        await eventually(lambda: every.ids == [cod["event_id"]])  # the partner's other endpoint has it, once
        assert not receiver.requests
        dead = run_cli(shipcast.settings, "dead", "list", "--channel", "webhook")
        assert "stored filter is not valid" in dead.stdout and cod["event_id"] in dead.stdout, dead.stdout


async def test_a_filter_changed_through_the_api_applies_to_the_next_event(shipcast: ShipcastProcess,
                                                                          receiver: Receiver) -> None:
    async with Receiver() as every:
        await shipcast.apply(two_endpoints(receiver.url, every.url, filter=COD))
        patched = await shipcast.http.patch("/v1/partners/acme/endpoints/main",
                                            json={"filter": {"order.address.city": ["Mysuru"]}})
        assert patched.status_code == 200 and patched.json()["filter"] == {"order.address.city": ["Mysuru"]}
        bengaluru, mysuru = event_of(city="Bengaluru", order_id="ORD-1"), event_of(city="Mysuru", order_id="ORD-2")
        await post(shipcast, bengaluru, mysuru)
        for event in (bengaluru, mysuru):
            await finished(shipcast, event["event_id"])
        assert receiver.ids == [mysuru["event_id"]]
        cleared = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json={"filter": None})
        assert cleared.status_code == 200 and cleared.json()["filter"] is None
        await post(shipcast, other := event_of(method="prepaid", order_id="ORD-3"))
        await finished(shipcast, other["event_id"])
        assert receiver.ids == [mysuru["event_id"], other["event_id"]]


async def test_a_filter_naming_a_missing_field_is_refused_everywhere(shipcast: ShipcastProcess) -> None:
    wrong = {"any": [{"event_type": "RET"}, {"order.foo": "x"}]}
    with pytest.raises(ConfigError) as caught:
        await shipcast.apply(two_endpoints("https://93.184.216.34/a", "https://93.184.216.34/b", filter=wrong))
    assert caught.value.errors["partner 'acme': channels.webhook.endpoints.0.filter.any.1.order.foo"][0] \
        .startswith("no such field; order has order_id")
    assert await shipcast.services.store.get_partner("acme") is None  # nothing stored

    await shipcast.apply(two_endpoints("https://93.184.216.34/a", "https://93.184.216.34/b"))
    created = await shipcast.http.post("/v1/partners/acme/endpoints",
                                       json={"id": "new", "url": "https://93.184.216.34/c", "filter": wrong})
    assert created.status_code == 422, created.text
    errors = created.json()["detail"]["errors"]
    assert list(errors) == ["filter.any.1.order.foo"] and errors["filter.any.1.order.foo"][0].startswith("no such")
    for body, where, words in [
        ({"filter": {"order.payment.method": "card"}}, "filter.order.payment.method", "must be one of 'prepaid'"),
        ({"filter": {"event_type": "LOST"}}, "filter.event_type", "unknown event type 'LOST'"),
        ({"filter": {"order.item_count": {"gt": "many"}}}, "filter.order.item_count.gt", "must be a whole number"),
        ({"filter": "cod"}, "filter", "must be an object"),
    ]:
        patched = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json=body)
        assert patched.status_code == 422, patched.text
        assert words in patched.json()["detail"]["errors"][where][0], patched.json()
    assert (await shipcast.http.get("/v1/partners/acme/endpoints/main")).json()["filter"] is None  # unchanged


async def test_a_filter_that_never_matches_the_endpoint_s_events_is_refused(shipcast: ShipcastProcess) -> None:
    await shipcast.apply(two_endpoints("https://93.184.216.34/a", "https://93.184.216.34/b", events=["OFD", "RET"],
                                       filter={"any": [{"otp": {"exists": True}}, {"return.reason": "damaged"}]}))
    created = await shipcast.http.post("/v1/partners/acme/endpoints", json={
        "id": "new", "url": "https://93.184.216.34/c", "events": ["OFD"], "filter": {"event_type": "RET"}})
    assert created.status_code == 422, created.text
    assert created.json()["detail"]["errors"] == {
        "filter.event_type": ["never matches: only OFD events come here"]}
    patched = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json={"filter": {"return.reason": "x"},
                                                                                   "events": ["OFD", "DEL"]})
    assert patched.status_code == 422, patched.text
    assert patched.json()["detail"]["errors"] == {
        "filter.return.reason": ["never matches: OFD and DEL events have no return"]}
    # Changing the events alone judges the stored filter against them.
    narrowed = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json={"events": ["DEL"]})
    assert narrowed.status_code == 422, narrowed.text
    assert narrowed.json()["detail"]["errors"] == {"filter.any.0.otp": ["never matches: DEL events have no otp"],
                                                   "filter.any.1.return.reason": [
                                                       "never matches: DEL events have no return"]}
    shown = (await shipcast.http.get("/v1/partners/acme/endpoints/main")).json()
    assert shown["events"] == ["OFD", "RET"] and shown["filter"]["any"][1] == {"return.reason": "damaged"}
    # Events the filter may match are taken, and so is any filter once it is removed.
    assert (await shipcast.http.patch("/v1/partners/acme/endpoints/main",
                                      json={"events": ["RET"]})).status_code == 200
    assert (await shipcast.http.patch("/v1/partners/acme/endpoints/main",
                                      json={"events": ["DEL"], "filter": None})).status_code == 200


async def test_endpoints_list_shows_the_filter_and_what_authenticates(shipcast: ShipcastProcess) -> None:
    await shipcast.apply(two_endpoints("https://93.184.216.34/a", "https://93.184.216.34/b", filter=COD,
                                       headers={"X-Api-Key": "k-listed-secret"},
                                       auth={"type": "basic", "username": "erp", "password": "pw-listed-secret"}))
    table = run_cli(shipcast.settings, "endpoints", "list")
    assert table.returncode == 0, table.stderr
    [main] = [line for line in table.stdout.splitlines() if " main " in line]
    assert '{"order.payment.method":"cod"}' in main and "auth=basic" in main and "headers=X-Api-Key" in main
    assert "secret" not in table.stdout and "enc:" not in table.stdout
    listed = orjson.loads(run_cli(shipcast.settings, "endpoints", "list", "--json").stdout)
    [shown] = [row for row in listed if row["id"] == "main"]
    assert shown["filter"] == COD and shown["headers"] == {"X-Api-Key": MASK}
    assert shown["auth"] == {"type": "basic", "username": "erp", "password": MASK}
    [every] = [row for row in listed if row["id"] == "every"]
    assert (every["filter"], every["headers"], every["auth"]) == (None, {}, None)


# -- headers and authentication ----------------------------------------------------

async def test_headers_and_authorization_arrive_beside_a_signature_that_verifies(shipcast: ShipcastProcess,
                                                                                 receiver: Receiver) -> None:
    key, password = "k-3b1f-plaintext", "pw-9c2e-plaintext"
    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
        {"id": "main", "url": receiver.url, "headers": {"X-Api-Key": key, "X-Tenant": "acme"},
         "auth": {"type": "basic", "username": "erp", "password": password}}]}}}]})
    await post(shipcast, event := event_of())
    [request] = await eventually(lambda: receiver.requests)
    assert request.headers["X-Api-Key"] == key and request.headers["X-Tenant"] == "acme"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"erp:{password}".encode()).decode()
    secret = (await shipcast.http.get("/v1/partners/acme/endpoints/main/secret")).json()["secret"]
    assert Webhook(secret).verify(request.body, {k.lower(): v for k, v in request.headers.items()})

    # Stored encrypted; shown masked by the API, the partners routes and the attempt log.
    config = stored_config(shipcast.settings)
    assert key not in config and password not in config and '"header_secrets":{"X-Api-Key":"enc:' in config
    shown = (await shipcast.http.get("/v1/partners/acme/endpoints/main")).json()
    assert shown["headers"] == {"X-Api-Key": MASK, "X-Tenant": MASK}
    assert shown["auth"] == {"type": "basic", "username": "erp", "password": MASK}
    [attempt] = await eventually(lambda: shipcast.services.store.list_attempts(event["event_id"]))
    assert attempt["request"]["headers"]["X-Api-Key"] == MASK
    assert attempt["request"]["headers"]["authorization"] == f"Basic {MASK}"
    assert attempt["request"]["headers"]["webhook-id"] == event["event_id"]
    for path in ("/v1/partners", "/v1/partners/acme", "/v1/partners/acme/endpoints",
                 f"/v1/partners/acme/messages/{event['event_id']}", f"/v1/partners/acme/attempts",
                 "/v1/partners/acme/config"):
        text = (await shipcast.http.get(path)).text
        assert key not in text and password not in text and "enc:" not in text, path
    audit = str(await shipcast.services.store.list_audit("acme"))
    assert key not in audit and password not in audit


async def test_a_patch_keeps_masked_values_and_changes_given_ones(shipcast: ShipcastProcess,
                                                                  receiver: Receiver) -> None:
    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
        {"id": "main", "url": receiver.url, "headers": {"X-Api-Key": "k-1", "X-Gone": "g"},
         "auth": {"type": "bearer", "token": "t-1"}}]}}}]})
    shown = (await shipcast.http.get("/v1/partners/acme/endpoints/main")).json()
    # The endpoint as shown, sent back with one header changed: the masked values keep theirs.
    patched = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json={
        "headers": {"X-Api-Key": shown["headers"]["X-Api-Key"], "X-New": "n-1"}, "auth": shown["auth"]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["headers"] == {"X-Api-Key": MASK, "X-New": MASK}
    # An edit of another field keeps them too.
    assert (await shipcast.http.patch("/v1/partners/acme/endpoints/main",
                                      json={"description": "ERP"})).status_code == 200
    await post(shipcast, first := event_of(order_id="ORD-1"))
    [request] = await eventually(lambda: [r for r in receiver.requests if r.headers["webhook-id"] == first["event_id"]])
    assert (request.headers["X-Api-Key"], request.headers["X-New"], request.headers["Authorization"]) == (
        "k-1", "n-1", "Bearer t-1")
    assert "X-Gone" not in request.headers

    # A new token, then credentials in the URL instead of auth, then none at all.
    assert (await shipcast.http.patch("/v1/partners/acme/endpoints/main",
                                      json={"auth": {"type": "bearer", "token": "t-2"}})).status_code == 200
    await post(shipcast, second := event_of(order_id="ORD-2"))
    [request] = await eventually(lambda: [r for r in receiver.requests if r.headers["webhook-id"] == second["event_id"]])
    assert request.headers["Authorization"] == "Bearer t-2"
    moved = await shipcast.http.patch("/v1/partners/acme/endpoints/main",
                                      json={"url": receiver.url.replace("http://", "http://erp:pw@")})
    assert moved.status_code == 200 and moved.json()["auth"] is None and moved.json()["url_credentials"] is True
    cleared = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json={"headers": None, "auth": None})
    assert cleared.status_code == 200 and cleared.json()["headers"] == {}
    nothing_kept = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json={"headers": {"X-Api-Key": MASK}})
    assert nothing_kept.status_code == 422
    assert nothing_kept.json()["detail"]["errors"] == {
        "headers.X-Api-Key": ["no value is stored to keep: give the value"]}


async def test_an_auth_without_its_type_or_a_value_ending_in_a_line_break_is_refused(
        shipcast: ShipcastProcess) -> None:
    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
        {"id": "main", "url": "https://93.184.216.34/a",
         "auth": {"type": "basic", "username": "erp", "password": "p"}}]}}}]})
    for body, where, words in [
        ({"auth": {}}, "auth.type", "Missing data for required field"),
        ({"auth": {"username": "other"}}, "auth.type", "Missing data for required field"),
        ({"headers": {"X-Api-Key\n": "k"}}, "headers.X-Api-Key\n", "not a header name"),
        ({"auth": {"type": "bearer", "token": "t-1\n"}}, "auth.token", "not a bearer token"),
    ]:
        patched = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json=body)
        assert patched.status_code == 422, (body, patched.text)
        assert words in patched.json()["detail"]["errors"][where][0], patched.text
    shown = (await shipcast.http.get("/v1/partners/acme/endpoints/main")).json()
    assert (shown["auth"], shown["headers"]) == ({"type": "basic", "username": "erp", "password": MASK}, {})


async def test_credentials_stay_behind_when_the_url_moves_to_another_host(shipcast: ShipcastProcess,
                                                                        receiver: Receiver) -> None:
    async with Receiver() as elsewhere:  # another port: another origin
        await shipcast.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
            {"id": "main", "url": receiver.url, "headers": {"X-Api-Key": "k-for-the-first-host"},
             "auth": {"type": "bearer", "token": "t-for-the-first-host"}}]}}}]})
        shown = (await shipcast.http.get("/v1/partners/acme/endpoints/main")).json()
        # The endpoint as shown, sent back with the new URL: its masked values are not taken there.
        refused = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json={
            "url": elsewhere.url, "headers": shown["headers"], "auth": shown["auth"]})
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"]["errors"] == {"headers.X-Api-Key": ["give it again: the URL's host changed"],
                                                      "auth.token": ["give it again: the URL's host changed"]}
        moved = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json={"url": elsewhere.url})
        assert moved.status_code == 200, moved.text
        assert (moved.json()["headers"], moved.json()["auth"]) == ({}, None)
        await post(shipcast, event := event_of())
        [request] = await eventually(lambda: elsewhere.requests)
        assert request.headers["webhook-id"] == event["event_id"] and not receiver.requests
        assert "X-Api-Key" not in request.headers and "Authorization" not in request.headers
        assert "for-the-first-host" not in stored_config(shipcast.settings)


@pytest.mark.parametrize(("headers", "auth", "where", "words"), [
    ({"Host": "internal"}, None, "headers.Host", "reserved"),
    ({"webhook-signature": "v1,forged"}, None, "headers.webhook-signature", "reserved"),
    ({"Content-Length": "0"}, None, "headers.Content-Length", "reserved"),
    ({"X-Key": "a\r\nX-Injected: 1"}, None, "headers.X-Key", "line break"),
    ({"Authorization": "Token t"}, {"type": "bearer", "token": "t"}, "headers.Authorization",
     "reserved while auth is set"),
])
async def test_a_reserved_or_unsafe_header_is_refused_naming_it(shipcast: ShipcastProcess, headers: dict[str, str],
                                                               auth: dict[str, str] | None, where: str,
                                                               words: str) -> None:
    endpoint = {"headers": headers, **({"auth": auth} if auth else {})}
    with pytest.raises(ConfigError) as caught:
        await shipcast.apply(two_endpoints("https://93.184.216.34/a", "https://93.184.216.34/b", **endpoint))
    assert words in caught.value.errors[f"partner 'acme': channels.webhook.endpoints.0.{where}"][0]
    assert await shipcast.services.store.get_partner("acme") is None

    await shipcast.apply(two_endpoints("https://93.184.216.34/a", "https://93.184.216.34/b"))
    created = await shipcast.http.post("/v1/partners/acme/endpoints",
                                       json={"id": "new", "url": "https://93.184.216.34/c", **endpoint})
    assert created.status_code == 422 and words in created.json()["detail"]["errors"][where][0], created.text
    patched = await shipcast.http.patch("/v1/partners/acme/endpoints/main", json=endpoint)
    assert patched.status_code == 422 and words in patched.json()["detail"]["errors"][where][0], patched.text


# -- docs/partners.md, run as written ------------------------------------------------

DOCS = Path(__file__).parents[1] / "docs" / "partners.md"


def section_commands(title: str) -> str:
    """The ``sh`` blocks of one section of docs/partners.md."""
    section = DOCS.read_text(encoding="utf-8").split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL))


async def test_the_partner_guide_s_filter_and_headers_run_as_written(shipcast: ShipcastProcess,
                                                                     receiver: Receiver) -> None:
    async with Receiver() as every:
        await shipcast.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
            {"id": "orders", "url": receiver.url}, {"id": "every", "url": every.url}]}}}]})
        await follow_the_guide(shipcast, receiver)


async def follow_the_guide(shipcast: ShipcastProcess, receiver: Receiver) -> None:
    token = (await shipcast.http.post("/v1/partners/acme/tokens")).json()["token"]
    script = section_commands("Send me only some events: filters") + "\n" + \
        section_commands("Headers and authentication")
    assert script.count("curl") == 2
    process = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SHIPCAST_URL": shipcast.base_url, "TOKEN": token})
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()

    # As the guide says: cash on delivery in Bengaluru or Mysuru, and every return; a key and a password.
    kept = event_of(method="cod", city="Mysuru", order_id="ORD-1")
    returned = event_of("RET", method="prepaid", city="Delhi", order_id="ORD-2")
    prepaid = event_of(method="prepaid", city="Mysuru", order_id="ORD-3")
    elsewhere = event_of(method="cod", city="Delhi", order_id="ORD-4")
    await post(shipcast, kept, returned, prepaid, elsewhere)
    for event in (kept, returned, prepaid, elsewhere):
        await finished(shipcast, event["event_id"])
    assert sorted(receiver.ids) == sorted([kept["event_id"], returned["event_id"]])
    for request in receiver.requests:
        assert request.headers["X-Api-Key"] == "k-123" and request.headers["Authorization"] == "Basic ZXJwOnMzY3JldA=="
