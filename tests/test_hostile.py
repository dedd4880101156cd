"""Hostile input (issue 8): the envelope under hypothesis, the ingest API
fuzzed from its own OpenAPI document, every route's auth, partners files
that are wrong in every way, messages on the broker that shipcast did not
publish, and order data written to be read as markup, headers, template
syntax or log lines.

What other files already cover is not repeated here: truncated JSON, binary
and unknown event types on the broker (test_pipeline.py), partners-file
errors by field (test_partners.py), partner-scoped tokens on the partner API
(test_partner_api.py), private webhook destinations (test_webhook_guard.py,
test_webhooks.py), and escaped HTML on the tracking page and in email
(test_tracking.py, test_email.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import hypothesis
import hypothesis.errors
import orjson
import pytest
import yaml
from hypothesis import strategies as st

from shipcast import metrics
from shipcast.amqp.parking import list_dead
from shipcast.app.api import partner_scope, require_token
from shipcast.app.portal import signed_in
from shipcast.app.reconcile import apply_partners
from shipcast.exceptions import ConfigError, InvalidEvent
from shipcast.logs import JsonFormatter, TextFormatter
from shipcast.model.envelope import Event
from shipcast.model.event_types import GROUPS
from shipcast.settings import Settings
from tests.bound import event_types, example, load_partners_file, parse_event, parse_events

from .conftest import make_settings
from .helpers import Receiver, ShipcastProcess, eventually, partners_doc, run_cli
from .test_partners import bindings

TYPES = sorted(event_types())
#: Top-level keys an error may name: the envelope's fields, by the names partners see.
FIELDS = {field.alias or name for name, field in Event.model_fields.items()}
#: Few examples, no example database: this file runs in seconds and writes nothing.
QUICK = hypothesis.settings(max_examples=300, deadline=None, database=None,
                            suppress_health_check=[hypothesis.HealthCheck.too_slow])


def body_of(event_type: str, partner_id: str = "acme", **kwargs: Any) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(example(event_type, partner_id=partner_id, **kwargs).to_json())
    return body


# -- the envelope under hypothesis ---------------------------------------------------

#: Values that have broken parsers before, by the kind of value they replace.
ODD = {
    "time": ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-02-30T10:00:00Z",
             "2026-11-29T10:00:00", "2026-11-29", "", 0, -1e20],
    "text": ["", " ", "\x00", "a\x00b", "\r\n", "{{ 7*7 }}", "<script>alert(1)</script>", "x" * 2001, "٣", "😀",
             "*", 7],
    "number": [float("inf"), float("-inf"), float("nan"), -1, 0.5, 2**63 - 1, 2**63, 2**64, "1e400", True, None],
}
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
json_ish = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
TIME = re.compile(r"^\d{4}-\d\d-\d\d")


def places(node: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a document, root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*here, key)
        yield from places(value, (*here, key))


def kind_of(value: Any) -> str | None:
    if isinstance(value, str):
        return "time" if TIME.match(value) else "text"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return None


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid example event with one to three changes: a value replaced by any
    JSON-ish value or by an odd one of its kind (a time, a text, a number), a
    key deleted, an unknown key added, or a group grafted from an event of
    another type."""
    doc = body_of(draw(st.sampled_from(TYPES)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["odd", "replace", "delete", "add", "graft"]))
        if kind == "graft":
            group = draw(st.sampled_from(GROUPS))
            doc[group] = body_of(draw(st.sampled_from(TYPES)))[group]
            continue
        paths = list(places(doc))
        odd = None
        if kind == "odd":
            odd = draw(st.sampled_from(sorted(ODD)))
            paths = [path for path in paths if kind_of(value_at(doc, path)) == odd] or paths
        path = draw(st.sampled_from(paths))
        parent = value_at(doc, path[:-1])
        if odd is not None:
            parent[path[-1]] = draw(st.sampled_from(ODD[odd]))
        elif kind == "replace":
            parent[path[-1]] = draw(json_ish)
        elif kind == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(json_ish)
    return doc


def value_at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def locations(exc: InvalidEvent) -> set[tuple[Any, ...]]:
    return {tuple(error["loc"]) for error in exc.errors}


@QUICK
@hypothesis.given(mutated_events())
def test_a_mutated_event_is_valid_or_refused_naming_its_fields(doc: dict[str, Any]) -> None:
    """Ingest and the Python SDK parse dicts; whatever is in one, the answer
    is an event or :class:`InvalidEvent` naming fields, never another error.
    An accepted event survives being published: the worker, which parses the
    JSON sent on, gets the same event back."""
    try:
        [event] = parse_events(doc)
    except InvalidEvent as exc:
        assert exc.errors
        for error in exc.errors:
            assert error["loc"] and (error["loc"][0] in FIELDS or error["loc"][0] in doc), error
            assert isinstance(error["msg"], str) and error["msg"] and error["type"], error
        orjson.dumps(exc.errors)  # a 422 body can carry them
        refused: set[tuple[Any, ...]] | None = locations(exc)
    else:
        assert parse_event(event.to_json()) == event
        refused = None
    try:
        raw = json.dumps(doc, allow_nan=False).encode()
    except ValueError:  # NaN or infinity: no JSON carries them, so no message can
        return
    # The worker's path (JSON bytes, a fast parse first) agrees about the same document.
    try:
        parse_event(raw)
    except InvalidEvent as exc:
        assert refused is not None, f"accepted as a dict, refused as JSON: {exc}"
        assert locations(exc) == refused
    else:
        assert refused is None, f"refused as a dict at {refused}, accepted as JSON"


@pytest.mark.parametrize(("change", "loc"), [
    ({"occurred_at": "0001-01-01T00:00:00+01:00"}, ("occurred_at",)),
    ({"occurred_at": "9999-12-31T23:59:59-01:00"}, ("occurred_at",)),
    ({"order": {"order_id": "ORD\x001"}}, ("order", "order_id")),
    ({"order": {"customer": {"name": "\x00"}}}, ("order", "customer", "name")),
    ({"order": {"payment": {"amount": float("inf")}}}, ("order", "payment", "amount")),
])
def test_what_hypothesis_found_is_refused_by_field(change: dict[str, Any], loc: tuple[str, ...]) -> None:
    """A time that leaves the calendar once in UTC (was an OverflowError: a
    500 at ingest); a NUL, which PostgreSQL cannot store (was accepted, then
    wedged the archive and the delivery log); an infinite amount, which JSON
    cannot carry (was accepted from the SDK and published as null)."""
    doc = body_of("OFD")

    def merge(into: dict[str, Any], change: dict[str, Any]) -> None:
        for key, value in change.items():
            if isinstance(value, dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(doc, change)
    with pytest.raises(InvalidEvent) as caught:
        parse_events(doc)
    assert locations(caught.value) == {loc}


# -- the ingest API, fuzzed from its own OpenAPI document ----------------------------

#: Examples per operation and mode: ingest gets the most; enough to reach every
#: refusal, few enough to keep this file quick.
FUZZ_EXAMPLES = {"POST /v1/events": 40}
FUZZ_OTHERS = 5
#: Runs of an operation's negative cases before a schema schemathesis cannot draw from fails the test.
NEGATIVE_TRIES = 3


@dataclass
class Answer:
    operation: str
    status: int
    sent: Any
    body: Any


def fuzz(document: dict[str, Any], base_url: str, token: str) -> list[Answer]:
    """Call every operation of ``document`` with cases schemathesis generates
    from it, valid by the schema and not, with the operator's token; check
    each answer: no 5xx, a documented status, the documented content type
    and schema. Runs in a thread: the server answers on the test's event loop."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.errors import InvalidSchema
    from schemathesis.core.result import Ok
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    # Not negative_data_rejection: pydantic coerces as it documents ("5" for an
    # integer, 0 for a time), and what it accepts it sends on normalised.
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=base_url, headers={"Authorization": f"Bearer {token}"})
    answers: list[Answer] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"shipcast's OpenAPI document is invalid: {result.err()}"
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @hypothesis.settings(QUICK, max_examples=FUZZ_EXAMPLES.get(label, FUZZ_OTHERS),
                                 suppress_health_check=list(hypothesis.HealthCheck))
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                response = case.call(timeout=30)
                try:
                    body = response.json()
                except ValueError:
                    body = None
                answers.append(Answer(label, response.status_code, case.body, body))
                case.validate_response(response, checks=checks)

            for tries_left in reversed(range(NEGATIVE_TRIES if mode is schemathesis.GenerationMode.NEGATIVE else 1)):
                try:
                    call()
                except hypothesis.errors.Unsatisfiable:
                    if mode is schemathesis.GenerationMode.POSITIVE:
                        raise
                    # Nothing to get wrong: an operation that takes no parameters and no body.
                except InvalidSchema:
                    # A mutation schemathesis made and then cannot draw from (seen once in
                    # many runs: "Cannot generate an array with 1 demanded elements"): the
                    # fuzzer's own limit, not the document's. Another run mutates afresh.
                    if not tries_left:
                        raise
                    continue
                break
    return answers


def event_ids(sent: Any) -> set[str]:
    """The event ids in a body sent to ``POST /v1/events``, whatever its shape."""
    items = sent if isinstance(sent, list) else [sent]
    return {item["event_id"] for item in items if isinstance(item, dict) and isinstance(item.get("event_id"), str)}


async def queue_depth(shipcast: ShipcastProcess, name: str) -> int:
    """Messages ready in a queue, as the broker counts them now."""
    channel = await shipcast.services.broker.require().channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


def published() -> float:
    return sum(metrics.value("shipcast_events_published_total", event_type=t) for t in TYPES)


@pytest.mark.broker
# schemathesis 4.32 draws from `random` inside its strategies; hypothesis deprecates that.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
# About a minute alone; past the suite's 120 s on a loaded machine, and a timeout
# here leaves its fuzzing thread running into the tests after it.
@pytest.mark.timeout(360)
async def test_the_api_fuzzed_from_its_openapi_document_never_fails_and_publishes_only_what_it_accepts(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    """Every operation of the OpenAPI document shipcast serves, fuzzed with
    the operator's token (auth itself is the next section's). Ingest publishes
    exactly the events it answered 202 for: the published-events counter
    moves by their number, and the archive, bound to every routing key,
    ends up holding those and nothing a refused request carried."""
    await shipcast.apply(partners_doc("acme", receiver.url))
    document = (await shipcast.http.get("/openapi.json")).json()
    before = published()
    answers = await asyncio.to_thread(fuzz, document, shipcast.base_url, shipcast.settings.api_token or "")

    ingest = [answer for answer in answers if answer.operation == "POST /v1/events"]
    accepted = {i for answer in ingest if answer.status == 202 for i in answer.body["ids"]}
    statuses = {answer.status for answer in ingest}
    assert accepted and 422 in statuses and statuses <= {202, 413, 422, 503}, statuses
    assert published() - before == sum(len(answer.body["ids"]) for answer in ingest if answer.status == 202)
    tested = {answer.body["event_id"] for answer in answers if answer.operation.endswith("/test")
              and answer.status == 202}  # a test send archives its sample event itself
    refused = {i for answer in ingest if answer.status != 202 for i in event_ids(answer.sent)} - accepted

    async def archived() -> set[str] | None:
        found = {event["event_id"] for event in await shipcast.services.store.list_events(limit=100_000)}
        return found if found >= accepted and await queue_depth(shipcast, "shipcast.archive") == 0 else None

    await eventually(archived, timeout=30)
    await asyncio.sleep(0.5)  # the archive writes behind: let a stray publish land if there were one
    found = await archived()
    assert found == accepted | tested
    assert not found & refused


# -- auth: every route, without a token, with a wrong one, with another partner's ----

#: The routes anyone may call, and why. Every other route must refuse a caller
#: without the operator's token, so a new route that forgets auth fails here.
PUBLIC = {
    ("GET", "/healthz"): "liveness probe",
    ("GET", "/readyz"): "readiness probe",
    ("GET", "/openapi.json"): "the API's documentation",
    ("GET", "/docs"): "the API's documentation",
    ("GET", "/docs/oauth2-redirect"): "the API's documentation",
    ("GET", "/redoc"): "the API's documentation",
    ("GET", "/.well-known/jwks.json"): "public keys that v1a webhook signatures verify against",
    ("GET", "/t/{token}"): "the tracking page: its link token, MAC-signed, is its key",
    ("GET", "/t/{token}/live"): "the tracking page's live updates: the same key",
    ("POST", "/t/{token}"): "the tracking page's forms: the same key, and a CSRF token",
    ("GET", "/u/{token}"): "one-click unsubscribe: its link token, MAC-signed, is its key",
    ("POST", "/u/{token}"): "one-click unsubscribe: the same key",
    ("POST", "/callbacks/sms/twilio"): "Twilio's status callbacks: believed only with a valid X-Twilio-Signature",
    ("POST", "/dev/receiver/{partner_id}/{endpoint_id}"): "development mode's webhook receiver (signature-checked); "
                                                          "a 404 outside development mode",
}
#: The portal's routes open without a session: signing in (an invitation's one-time token is the key) and its files.
PORTAL_OPEN = {("GET", "/portal/signin"), ("POST", "/portal/signin"), ("GET", "/portal/static/{name}")}
#: What a public route answers a stranger holding no key, or a forged one.
PUBLIC_ANSWERS = {"/t/{token}": 404, "/t/{token}/live": 404, "/u/{token}": 404, "/callbacks/sms/twilio": 403,
                  "/dev/receiver/{partner_id}/{endpoint_id}": 404}


def every_route(app: Any) -> list[Any]:
    """Every route the app serves, those of included routers too."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # a FastAPI that still copies included routes into app.routes
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


def guards(route: Any) -> set[Any]:
    """The callables among a route's dependencies, however deeply nested."""
    dependant = getattr(route, "dependant", None)
    found: set[Any] = set()
    stack = list(dependant.dependencies) if dependant is not None else []
    while stack:
        dependency = stack.pop()
        found.add(dependency.call)
        stack.extend(dependency.dependencies)
    return found


def fill(path: str, **values: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: values.get(match.group(1), "x"), path)


async def ask(client: httpx.AsyncClient, method: str, path: str, authorization: str | None) -> httpx.Response:
    """One request as a stranger would make it: a JSON body where one may go."""
    headers = {"authorization": authorization} if authorization is not None else {}
    body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return await client.request(method, path, headers=headers, **body)


@pytest.fixture
async def stranger(shipcast: ShipcastProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A client of shipcast's API that holds no token of its own."""
    async with httpx.AsyncClient(base_url=shipcast.base_url, timeout=30) as client:
        yield client


@pytest.mark.broker
async def test_every_route_refuses_a_stranger_and_a_partner_reaching_for_another(
        shipcast: ShipcastProcess, receiver: Receiver, stranger: httpx.AsyncClient) -> None:
    """Every route the app serves (walked, not listed), asked with no token,
    a wrong one, one a character off, an unknown partner token, a Basic
    credential and the bare token: a 401 each, unless the route is in
    :data:`PUBLIC`. acme's partner token gets a 403 from every route at
    globex's data and from every operator route, and nothing of globex's
    in the answer; at its own partner's routes it is let in, and globex's
    event, asked for by id, is not found there."""
    await shipcast.apply(partners_doc("acme", receiver.url))
    await shipcast.apply(partners_doc("globex", receiver.url))
    theirs = body_of("OFD", partner_id="globex")
    assert (await shipcast.http.post("/v1/events", json=theirs)).status_code == 202
    await eventually(lambda: shipcast.services.store.get_event(theirs["event_id"]))
    their_secret = (await shipcast.http.get("/v1/partners/globex/endpoints/main/secret")).json()["secret"]
    their_token = (await shipcast.http.post("/v1/partners/globex/tokens")).json()
    ours = (await shipcast.http.post("/v1/partners/acme/tokens")).json()["token"]
    secrets_of_globex = (their_secret, theirs["event_id"], their_token["token"])

    app = shipcast.server.config.app
    routes = [(method, route.path, guards(route)) for route in every_route(app)
              for method in sorted(route.methods or ()) if method != "HEAD"]
    # The portal's pages are guarded by its sessions (tests/test_portal_access.py walks them as everyone).
    portal = {(method, path) for method, path, found in routes if path.startswith("/portal") and signed_in not in found}
    assert portal == PORTAL_OPEN, "a portal route without a session that is not listed as open, or one gone"
    routes = [(method, path, found) for method, path, found in routes if not path.startswith("/portal")]
    unguarded = {(method, path) for method, path, found in routes if not found & {require_token, partner_scope}}
    assert unguarded == set(PUBLIC), "a route without auth that is not listed as public, or a listed one gone"

    strangers = [None, "", "Bearer wrong-token", f"Bearer {shipcast.settings.api_token}x",
                 "Bearer scp_" + "A" * 43, "Basic " + "eDp5", shipcast.settings.api_token or ""]
    seen: list[str] = []
    for method, path, found in routes:
        if (method, path) in PUBLIC:
            for authorization in (None, "Bearer wrong-token"):
                response = await ask(stranger, method, fill(path, token="forged"), authorization)
                assert response.status_code == PUBLIC_ANSWERS.get(path, 200), (method, path, response.text)
            continue
        where = fill(path, partner_id="globex", event_id=theirs["event_id"], endpoint_id="main",
                     token_id=their_token["id"])
        for authorization in strangers:
            response = await ask(stranger, method, where, authorization)
            assert response.status_code == 401, (method, where, authorization, response.text)
        # acme's own token, at globex's data, and at every operator route (its own partner's too).
        targets = [where] if partner_scope in found else [where, fill(path, partner_id="acme", endpoint_id="main")]
        for target in targets:
            response = await ask(stranger, method, target, f"Bearer {ours}")
            assert response.status_code == 403, (method, target, response.text)
            assert not any(secret in response.text for secret in secrets_of_globex), (method, target)
        seen.append(f"{method} {path}")
    # Routes of included routers and plugins' routers were walked too.
    assert {"POST /v1/events", "POST /v1/partners/{partner_id}/recover",
            "GET /v1/partners/{partner_id}/endpoints/{endpoint_id}/secret"} <= set(seen), seen

    # acme's token works on its own partner routes (so the refusals above are the scope's, not a broken
    # token's); reaching for globex's event by id from there finds nothing.
    for method, path, found in routes:
        if partner_scope in found:
            target = fill(path, partner_id="acme", event_id=theirs["event_id"], endpoint_id="main")
            response = await ask(stranger, method, target, f"Bearer {ours}")
            assert response.status_code not in (401, 403) and response.status_code < 500, (method, target)
            assert their_secret not in response.text and "globex" not in response.text, (method, target)
            if "{event_id}" in path:
                assert response.status_code == 404, (method, target, response.text)


@pytest.mark.broker
async def test_tokens_are_compared_in_constant_time_or_never_compared(
        shipcast: ShipcastProcess, stranger: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which comparison each secret meets, watched as requests are refused:

    * the operator's token, CSRF tokens and the signed link tokens of earlier
      versions (tracking, unsubscribe): :func:`hmac.compare_digest`;
    * sealed link tokens: AES-SIV's tag, checked inside the cryptography
      library's OpenSSL (constant-time by design); a forged one is refused;
    * partner tokens: never compared with a stored one in Python. The store
      is asked for the SHA-256 of what was presented, and holds only such
      digests: an index lookup's timing can tell at most about the digest of
      the caller's own guess, which the caller cannot steer towards a stored one.
    * Twilio's signature is checked by Twilio's SDK
      (``twilio.request_validator.compare``, constant-time by design).
    """
    import hmac
    import time

    import sqlalchemy as sa

    from shipcast.app.api import token_hash
    from shipcast.plugins.tracking.links import tracking_token
    from shipcast.security.links import sign_link
    from shipcast.store.tables import partner_tokens

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    api_token = (shipcast.settings.api_token or "").encode()

    assert (await stranger.get("/v1/partners", headers={"authorization": "Bearer wrong-token"})).status_code == 401
    assert (b"wrong-token", api_token) in compared

    other = shipcast.settings.model_copy(update={"secret_key": "another-key"})
    forged = tracking_token(other, "acme", "ORD-1", 30)
    assert (await stranger.get(f"/t/{forged}")).status_code == 404
    assert (await stranger.post(f"/u/{forged}")).status_code == 404
    compared.clear()
    # A token in the readable, signed form of earlier versions: its MAC meets compare_digest.
    legacy = sign_link(other, "tracking", f"acme:{int(time.time() // 86400) + 30}:ORD-1")
    assert (await stranger.get(f"/t/{legacy}")).status_code == 404
    assert (await stranger.post(f"/u/{sign_link(other, 'unsubscribe', 'email:acme:ab')}")).status_code == 404
    macs = [pair for pair in compared if len(pair[0]) == len(pair[1]) == 12]  # link MACs are 96 bits
    assert len(macs) >= 2, compared

    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {"tracking": {}}}]})
    await shipcast.http.post("/v1/events", json=body_of("OFD", order_id="ORD-1"))
    await eventually(lambda: shipcast.services.store.order_events("acme", "ORD-1"))
    page = f"/t/{tracking_token(shipcast.settings, 'acme', 'ORD-1', 30)}"
    assert (await stranger.get(page)).status_code == 200  # sets the CSRF cookie
    compared.clear()
    refused = await stranger.post(page, data={"action": "otp", "csrf": "0badc0de" * 4},
                                  headers={"accept": "application/json"})
    assert refused.status_code == 403
    assert any(a == b"0badc0de" * 4 for a, _ in compared), compared

    asked: list[str] = []
    lookup = shipcast.services.store.partner_for_token

    async def watched(digest: str) -> str | None:
        asked.append(digest)
        return await lookup(digest)

    monkeypatch.setattr(shipcast.services.store, "partner_for_token", watched)
    token = (await shipcast.http.post("/v1/partners/acme/tokens")).json()["token"]
    near = token[:-1] + ("A" if token[-1] != "A" else "B")
    compared.clear()
    assert (await stranger.get("/v1/partners/acme/messages", headers={"authorization": f"Bearer {near}"})
            ).status_code == 401
    assert (await stranger.get("/v1/partners/acme/messages", headers={"authorization": f"Bearer {token}"})
            ).status_code == 200
    assert asked == [token_hash(near), token_hash(token)]
    # Compared, in constant time, with the operator's token only: never with a stored one.
    assert {b for a, b in compared if a in (token.encode(), near.encode())} == {api_token}
    engine = shipcast.services.store.engine
    assert engine is not None
    async with engine.connect() as connection:
        stored = (await connection.execute(sa.select(partner_tokens))).all()
    assert [row.token_hash for row in stored] == [token_hash(token)]
    assert not any(token in str(value) for row in stored for value in row)


# -- partners files: each mistake one clear error, and nothing half-applied ---------

def hostile_file(zippy: dict[str, Any], *more: dict[str, Any]) -> str:
    """A partners file that renames acme (a good change) and adds zippy (a bad one)."""
    acme = {"id": "acme", "name": "Acme Renamed",
            "channels": {"webhook": {"endpoints": [{"id": "main", "url": "http://127.0.0.1:9/hook"}]}}}
    return yaml.safe_dump({"partners": [acme, zippy, *more]}, sort_keys=False)


def edited(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is not in the file to edit"
    return text.replace(old, new, 1)


def zippy_with(**endpoint: Any) -> dict[str, Any]:
    return {"id": "zippy", "name": "Zippy", "channels": {"webhook": {"endpoints": [
        {"id": "main", "url": "https://hooks.zippy.example.com/x", **endpoint}]}}}


ZIPPY_SMS = {"id": "zippy", "name": "Zippy", "channels": {"sms": {
    "events": ["OFD"], "sender": "ZIPPYS", "templates": {"OFD": "Hi {{ customer.name }, out today"}}}}

#: (file text, where the one error is, words it says): a YAML error can name only its line.
PARTNERS_FILES = {
    "malformed YAML": (edited(hostile_file(zippy_with()), "name: Zippy", "name: [Zippy"), None, "not valid YAML"),
    "a key given twice": (edited(hostile_file(zippy_with()), "  name: Zippy\n", "  name: Zippy\n  name: Z\n"),
                          None, "found the key 'name' twice"),
    "an unknown key": (hostile_file(zippy_with(colour="red")),
                       "partner 'zippy': channels.webhook.endpoints.0.colour", "Unknown field"),
    "a list for a name": (hostile_file({**zippy_with(), "name": ["Zip", "py"]}), "partner 'zippy': name",
                          "Not a valid string"),
    "a mapping for the endpoints": (hostile_file({"id": "zippy", "name": "Zippy", "channels": {"webhook": {
        "endpoints": {"id": "main"}}}}), "partner 'zippy': channels.webhook.endpoints", "Not a valid list"),
    "text for a number": (hostile_file(zippy_with(rate_limit="fast")),
                          "partner 'zippy': channels.webhook.endpoints.0.rate_limit", "Not a valid number"),
    "a webhook to a private address": (hostile_file(zippy_with(url="http://10.0.0.5/hook")),
                                       "partner 'zippy': channels.webhook.endpoints.0.url", "10.0.0.0/8 (private)"),
    "a duplicate partner id": (hostile_file(zippy_with(), zippy_with()), "partner 'zippy': id",
                               "duplicate partner id"),
    "half a surrogate pair": (edited(hostile_file(zippy_with()), "name: Zippy", 'name: "Zip\\ud800py"'), None,
                              "half a UTF-16 surrogate pair"),
    "a template that is not Jinja": (hostile_file(ZIPPY_SMS), "partner 'zippy': channels.sms.templates.OFD",
                                     "not valid Jinja: line 1"),
}


@pytest.mark.broker
@pytest.mark.parametrize("case", sorted(PARTNERS_FILES))
async def test_a_bad_partners_file_gets_one_error_naming_file_partner_and_field_and_changes_nothing(
        case: str, vhost: str, sqlite_url: str, tmp_path: Path) -> None:
    text, location, words = PARTNERS_FILES[case]
    path = tmp_path / "partners.yaml"
    path.write_text(text)
    settings = make_settings(vhost, sqlite_url)
    async with ShipcastProcess(settings, channels=[]) as shipcast:
        await shipcast.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {
            "webhook": {"endpoints": [{"id": "main", "url": "http://127.0.0.1:9/hook", "events": ["OFD"]}]}}}]})
        before = [p.to_dict() for p in await shipcast.services.store.get_partners()]
        bound = await bindings(settings, "shipcast.webhook")
        with pytest.raises(ConfigError) as caught:
            # What `shipcast partners apply -f` and `shipcast run` do with a file.
            await apply_partners(shipcast.services, load_partners_file(path), source=str(path))
        message = str(caught.value)
        assert message.startswith(f"{path}: "), message
        if location is None:
            assert caught.value.errors == {} and re.search(r"line \d+", message), message
        else:
            assert list(caught.value.errors) == [location], message
        assert words in message, message
        assert [p.to_dict() for p in await shipcast.services.store.get_partners()] == before
        assert await bindings(settings, "shipcast.webhook") == bound == {"acme.OFD"}

        # The API refuses the same document alike: a 422 naming the field, never a 500.
        response = await shipcast.http.post("/v1/partners", content=text, headers={"content-type": "application/yaml"})
        assert response.status_code == 422, response.text
        assert words in response.json()["detail"]
        assert [p.to_dict() for p in await shipcast.services.store.get_partners()] == before


@pytest.mark.broker
async def test_text_that_is_not_text_is_refused_by_field_never_a_500(shipcast: ShipcastProcess,
                                                                      receiver: Receiver) -> None:
    """Half a UTF-16 surrogate pair (a ``\\ud800`` escape, valid JSON) is no
    character: echoed in an error it could not be encoded, stored it could
    not be written (both were 500s). A whole pair is one character, as JSON
    and now YAML read it."""
    await shipcast.apply(partners_doc("acme", receiver.url))
    json_body = {"content-type": "application/json"}
    for body in (b'{"id": "x", "url": "https://hooks.acme.example.com/", "\\ud800": 1}',
                 b'{"id": "x", "url": "https://hooks.acme.example.com/", "description": "a\\ud800b"}'):
        response = await shipcast.http.post("/v1/partners/acme/endpoints", content=body, headers=json_body)
        assert response.status_code == 422, response.text
        assert response.json()["detail"]["errors"]
    response = await shipcast.http.post(
        "/v1/partners", content=b'{"partners": [{"id": "zippy", "name": "Zip\\udc00py"}]}', headers=json_body)
    assert response.status_code == 422 and "half a UTF-16 surrogate pair" in response.json()["detail"]
    response = await shipcast.http.post(
        "/v1/partners", content=b'partners: [{id: zippy, name: "Zippy \\ud83d\\ude00"}]',
        headers={"content-type": "application/yaml"})
    assert response.status_code == 200, response.text
    assert (await shipcast.http.get("/v1/partners/zippy")).json()["name"] == "Zippy \U0001f600"


@pytest.mark.broker
def test_the_command_line_says_what_is_wrong_with_a_template_without_a_traceback(
        settings: Settings, tmp_path: Path) -> None:
    """A template that is not Jinja raised jinja2's own error out of
    ``partners apply`` (a traceback) and out of ``POST /v1/partners`` (a 500)."""
    path = tmp_path / "partners.yaml"
    path.write_text(hostile_file(ZIPPY_SMS))
    result = run_cli(settings, "partners", "apply", "-f", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{path}: refused" in result.stderr
    assert "partner 'zippy': channels.sms.templates.OFD: en: sms template for OFD (en) is not valid Jinja: line 1" \
        in result.stderr, result.stderr


# -- the broker: messages shipcast did not publish -----------------------------------

FORGED_LINE = "2026-01-01 00:00:00,000 INFO shipcast.delivery.consumer: all clear"


@pytest.mark.broker
async def test_messages_shipcast_did_not_publish_are_parked_with_a_reason_and_the_worker_keeps_serving(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    """A body that is an event is still refused when its content type says it
    is something else. A message with no content type (a bare AMQP client's)
    is judged by its body: an event is delivered, anything else parked.
    Whatever a message id holds, the worker's log stays one line per entry."""
    await shipcast.apply(partners_doc("acme", receiver.url))
    disguised = body_of("OFD")
    bare = body_of("DEL")
    foreign = {
        "as-text": ("text/plain", orjson.dumps(disguised), "content type 'text/plain' is not application/json"),
        "as-xml": ("application/xml", b"<event><type>OFD</type></event>", "content type 'application/xml'"),
        "xml-said-json": ("application/json; charset=utf-8", b"<event><type>OFD</type></event>", "not JSON"),
        "xml-unsaid": (None, b"<event><type>OFD</type></event>", "not JSON"),
        f"forged\r\n{FORGED_LINE}": ("text/html", b"<p>hi</p>", "content type 'text/html'"),
    }
    text, structured = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(text), logging.StreamHandler(structured)]
    handlers[0].setFormatter(TextFormatter())
    handlers[1].setFormatter(JsonFormatter())
    worker_log = logging.getLogger("shipcast.delivery.consumer")
    for handler in handlers:
        worker_log.addHandler(handler)
    try:
        connection = await aio_pika.connect(shipcast.settings.amqp_url)
        async with connection:
            exchange = await (await connection.channel()).get_exchange("shipcast.events")
            for message_id, (content_type, body, _) in foreign.items():
                await exchange.publish(aio_pika.Message(body, content_type=content_type, message_id=message_id),
                                       "acme.OFD")
            await exchange.publish(aio_pika.Message(orjson.dumps(bare), message_id="bare"), "acme.DEL")
        event = body_of("RET")
        assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
        await eventually(lambda: {bare["event_id"], event["event_id"]} <= set(receiver.ids))
        topology = next(w.topology for w in shipcast.workers if w.name == "webhook")
        letters = await eventually(lambda: _dead(shipcast, topology, len(foreign)))
    finally:
        for handler in handlers:
            worker_log.removeHandler(handler)
    reasons = {letter.event_id: letter.reason or "" for letter in letters}
    assert set(reasons) == set(foreign)
    for message_id, (_, _, words) in foreign.items():
        assert reasons[message_id].startswith("unparseable message") and words in reasons[message_id], reasons
    assert disguised["event_id"] not in receiver.ids

    lines = text.getvalue().splitlines()
    assert any("forged\\r\\n2026-01-01" in line for line in lines), lines
    assert not any(line.startswith(FORGED_LINE) for line in lines), lines
    entries = [orjson.loads(line) for line in structured.getvalue().splitlines()]
    assert any(f"forged\r\n{FORGED_LINE}" in entry["message"] for entry in entries), entries


async def _dead(shipcast: ShipcastProcess, topology: Any, count: int) -> list[Any] | None:
    letters = await list_dead(shipcast.services.broker, topology)
    return letters if len(letters) >= count else None


# -- output: order data is data in every template, header and log line -----------------

#: Template syntax whose evaluation would show as 24690: it must reach customers as written.
SYNTAX = "{{ 12345*2 }}"
EVALUATED = "24690"
HOSTILE = {
    "order_id": f"ORD-1\r\nBcc: mallory@example.com {SYNTAX}",
    "name": f"{{% raw %}}<script>alert(1)</script>{SYNTAX}{{% endraw %}}\r\nX-Injected: 1",
    "rider": f"Ravi {SYNTAX}\nKumar",
    "reason": f'"><img src=x onerror=alert(2)>\r\n{SYNTAX}',
}


def hostile_event(event_type: str, partner_id: str = "acme") -> dict[str, Any]:
    body = body_of(event_type, partner_id=partner_id)
    body["order"]["order_id"] = HOSTILE["order_id"]
    body["order"]["customer"]["name"] = HOSTILE["name"]
    if body["rider"]:
        body["rider"]["name"] = HOSTILE["rider"]
    if body["failure"]:
        body["failure"].update(code="OTHER", reason=HOSTILE["reason"])
    return body


def test_hostile_order_data_is_text_in_every_customer_message() -> None:
    """SMS, WhatsApp and email, rendered by the channels' own code from the
    shipped templates: template syntax in the data is shown, not run; markup
    is escaped in HTML; a line break in the data neither ends an email's
    subject nor adds a header, and never reaches a WhatsApp variable (which
    WhatsApp refuses)."""
    from email import message_from_bytes, policy

    from shipcast.app.services import Services
    from shipcast.model.partners import Partner
    from shipcast.plugins.email import EmailChannel
    from shipcast.plugins.sms import SmsChannel
    from shipcast.plugins.whatsapp import variables_for

    settings = Settings(api_token="t", public_url="https://track.example.com", config="/nonexistent")
    services = Services.from_settings(settings)
    event = parse_event(hostile_event("OFD"))
    partner = Partner("acme", "Acme Retail", {}, {
        "sms": {"events": ["OFD"], "sender": "ACMEIN"},
        "whatsapp": {"sender": "+14155238886", "content_sids": {"OFD": "HX" + "0" * 32}},
        "email": {"from_address": "Acme Retail <orders@acme.example.com>"}})

    text = SmsChannel(services).render(event, partner, partner.channels["sms"])
    assert HOSTILE["order_id"] in text and HOSTILE["rider"] in text and EVALUATED not in text

    variables = orjson.loads(variables_for(services.registry, event, partner, partner.channels["whatsapp"]))
    assert variables["2"] == f"ORD-1 Bcc: mallory@example.com {SYNTAX}"
    assert variables["3"] == f"Ravi {SYNTAX} Kumar"
    assert not any(re.search(r"[\r\n\t]| {5}", value) for value in variables.values()), variables

    message = EmailChannel(services).compose(event, partner, partner.channels["email"], "priya@example.com")
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert set(parsed.keys()) == {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"}
    # (Python folds this subject onto a line of its own; unfolded, it is the whole first line.)
    assert parsed["Subject"].strip() == f"Your order ORD-1 Bcc: mallory@example.com {SYNTAX} is out for delivery"
    plain_part, html_part = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert plain_part is not None and html_part is not None
    plain, html = plain_part.get_content(), html_part.get_content()
    assert f"<script>alert(1)</script>{SYNTAX}" in plain and "{% raw %}" in plain
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and SYNTAX in html
    assert EVALUATED not in plain + html


@pytest.mark.broker
async def test_hostile_order_data_reaches_webhooks_and_the_tracking_page_as_data(
        shipcast: ShipcastProcess, receiver: Receiver, stranger: httpx.AsyncClient) -> None:
    """A webhook carries the order data in its signed JSON body only: its
    headers are the same few whatever the data. The tracking page shows it
    escaped and unevaluated, and renders at the very end of the calendar."""
    from shipcast.plugins.tracking.links import tracking_token

    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {
        "tracking": {}, "webhook": {"endpoints": [{"id": "main", "url": receiver.url}]}}}]})
    failed = hostile_event("FAIL")
    late = body_of("DEL", order_id="ORD-LATE")
    late["occurred_at"] = late["delivery_confirmation"]["delivered_at"] = "9999-12-31T23:00:00Z"
    assert (await shipcast.http.post("/v1/events", json=[failed, late])).status_code == 202
    await eventually(lambda: len(receiver.requests) == 2)

    for request in receiver.requests:
        assert {name.lower() for name in request.headers} == {
            "host", "content-type", "content-length", "user-agent", "accept", "accept-encoding",
            "webhook-id", "webhook-timestamp", "webhook-signature"}, request.headers
    [sent] = [r.json for r in receiver.requests if r.json["event_id"] == failed["event_id"]]
    assert sent["order"]["order_id"] == HOSTILE["order_id"] and sent["failure"]["reason"] == HOSTILE["reason"]

    await eventually(lambda: shipcast.services.store.order_events("acme", HOSTILE["order_id"]))
    page = await stranger.get(f"/t/{tracking_token(shipcast.settings, 'acme', HOSTILE['order_id'], 30)}")
    assert page.status_code == 200
    assert "<img src=x" not in page.text and "&lt;img src=x onerror=alert(2)&gt;" in page.text
    assert SYNTAX in page.text and EVALUATED not in page.text

    await eventually(lambda: shipcast.services.store.order_events("acme", "ORD-LATE"))
    page = await stranger.get(f"/t/{tracking_token(shipcast.settings, 'acme', 'ORD-LATE', 30)}")
    assert page.status_code == 200 and "9999, 23:00" in page.text  # was an OverflowError: a 500


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_line_break_in_logged_data_cannot_forge_a_log_line(formatter: logging.Formatter) -> None:
    """Text logs escape line breaks and control characters in the message and
    the delivery fields; JSON logs carry them inside a string. Either way one
    entry is one line, and a traceback is all that may follow it."""
    order_id = f"ORD-1\r\n{FORGED_LINE}\x1b[2J"
    record = logging.LogRecord("shipcast.delivery.consumer", logging.WARNING, __file__, 1, "cannot render %s/%s",
                               ("acme", order_id), None)
    record.__dict__.update(partner="acme", target=f"main\n{FORGED_LINE}")
    [line] = formatter.format(record).splitlines()
    assert FORGED_LINE in line and "\x1b" not in line and not line.startswith(FORGED_LINE)
    if isinstance(formatter, JsonFormatter):
        entry = orjson.loads(line)
        assert entry["message"] == f"cannot render acme/{order_id}" and entry["target"] == f"main\n{FORGED_LINE}"
    else:
        assert "ORD-1\\r\\n2026-01-01" in line and "\\x1b[2J" in line and f"target=main\\n{FORGED_LINE}]" in line

    try:
        raise ValueError("refused")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    record.exc_text = None
    head, *rest = formatter.format(record).splitlines()
    assert FORGED_LINE in head and not any(line.startswith(FORGED_LINE) for line in rest)
