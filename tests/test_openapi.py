"""The partner API's OpenAPI document, held to what the API does: every
request body described as it is validated, fuzzed with schemathesis
against a running shipcast (each operation alone, then walked from
``POST /v1/partners`` through its links); and a typed Python client,
generated from the document with openapi-python-client, driving the
walk-through of docs/partners.md."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import hypothesis
import hypothesis.errors
import pytest
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from .helpers import Receiver, ShipcastProcess, eventually, partners_doc

pytestmark = [
    pytest.mark.broker,
    # schemathesis 4.32 draws from `random` inside its strategies; hypothesis deprecates that.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

#: The partner routes: the partners document, and everything under one partner.
PARTNER_ROUTES = r"^/v1/partners"
#: Examples per operation, valid by the document and not: enough to reach each refusal, few enough for seconds.
EXAMPLES = {"positive": 8, "negative": 4}
#: Scenarios a stateful walk takes, calls in each at most, and walks at most.
SCENARIOS, STEPS, WALKS = 20, 10, 3
#: The routes of one endpoint, reached only with the id of one registered in the same walk.
ENDPOINT_ROUTES = {"get_endpoint", "update_endpoint", "delete_endpoint", "get_secret", "rotate_secret", "send_test",
                   "enable_endpoint", "disable_endpoint", "endpoint_stats"}
#: Operations the stateless run leaves out: they would remove the partner and endpoint it fuzzes.
DESTRUCTIVE = {"delete_partner", "delete_endpoint", "revoke_partner_token"}
#: Operations whose body the document describes from the rules that validate it.
BODIES = {"post_partners", "create_endpoint", "update_endpoint", "rotate_secret", "send_test", "put_branding",
          "patch_branding"}
#: The fuzzers' work is bounded by their examples, not by time; on a loaded machine
#: (a full suite in four processes on two cores) they took past the 120 s a test is given.
FUZZ_TIMEOUT = pytest.mark.timeout(300)
QUICK = hypothesis.settings(deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck))


#: Operations whose body is checked twice: as the document describes it, then
#: by each channel's own checks when applied (every template compiles and
#: renders for each event type the channel sends, the SMS provider is
#: installed, a URL is one shipcast may send to), which the document says in
#: words. A refusal by those says "refused"; one by the schema, "invalid".
APPLIED_CHECKS = {"post_partners", "put_channel", "patch_channel"}
#: Rules across fields or on what is stored, which JSON Schema cannot state and
#: the document says in words: a schema-valid body refused for one of these
#: alone is no contradiction.
RULES_IN_WORDS = ("duplicate partner id", "duplicate endpoint ids", "duplicate destination ids",
                  "start and end are the same", "no approved content template for",
                  "set by the operator's partners file", "never matches", "given twice (as", "too large: at most",
                  "is stored to keep", "nested too deeply")


def refused_only_by_rules_in_words(case: Any, response: Any) -> bool:
    """Whether a 422 for a body valid by the document is one of the refusals it describes in words."""
    answer = response.json()
    detail = answer.get("detail")
    if case.operation.definition.raw["operationId"] in APPLIED_CHECKS and isinstance(detail, str) \
            and re.match(r"(request body: )?refused\b", detail):
        return True
    errors = answer.get("errors") or (detail.get("errors") if isinstance(detail, dict) else None)
    return bool(errors) and all(any(rule in message for rule in RULES_IN_WORDS)
                                for messages in errors.values() for message in messages)


def checks() -> list[Any]:
    """Each answer: no 5xx, a documented status, content type and shape;
    and a request body valid by the document is never refused as invalid (422)."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        positive_data_acceptance,
        response_schema_conformance,
        status_code_conformance,
    )

    def valid_data_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
        if "requestBody" not in case.operation.definition.raw:
            return None  # the request bodies are what the document is held to here; query strings are not
        if case.meta is not None and case.meta.generation.mode.is_positive and response.status_code == 422 \
                and refused_only_by_rules_in_words(case, response):
            return None
        return positive_data_acceptance(ctx, response, case)  # type: ignore[no-any-return]

    # Not negative_data_rejection: marshmallow and pydantic coerce as they document
    # ("5" for an integer, "yes" for a boolean) what JSON Schema calls the wrong type.
    return [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
            valid_data_accepted]


@pytest.fixture
def addresses(receiver: Receiver) -> Iterator[None]:
    """URLs in generated bodies point at the test's receiver: a URL of the
    document's format that is anywhere else is one shipcast refuses to send
    to (a private address) or cannot resolve, which no schema can say."""
    import schemathesis

    paths = st.text(st.sampled_from("abcxyz019-_~."), max_size=12)
    schemathesis.openapi.format("uri", st.builds(lambda path: f"{receiver.url}/{path}", paths))
    try:
        yield
    finally:
        from schemathesis.specs.openapi.formats import unregister_string_format

        unregister_string_format("uri")


@dataclass
class Calls:
    """What the fuzzer sent and got, by operation id."""

    statuses: dict[str, collections.Counter[int]] = field(default_factory=lambda: collections.defaultdict(
        collections.Counter))
    failures: list[str] = field(default_factory=list)

    def record(self, case: Any, response: Any) -> None:
        self.statuses[case.operation.definition.raw["operationId"]][response.status_code] += 1


def fuzz_each(document: dict[str, Any], base_url: str, token: str, ids: dict[str, str]) -> Calls:
    """Call each partner route alone with cases schemathesis generates from
    the document, valid by it and not, on the partner and endpoint ``ids``
    name; check every answer. Runs in a thread: the server answers on the
    test's event loop."""
    import schemathesis
    from schemathesis.core.result import Ok

    schema = schemathesis.openapi.from_dict(document).include(path_regex=PARTNER_ROUTES)
    schema.config.update(base_url=base_url, headers={"Authorization": f"Bearer {token}"})
    calls = Calls()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"shipcast's OpenAPI document is invalid: {result.err()}"
        operation = result.ok()
        if operation.definition.raw["operationId"] in DESTRUCTIVE:
            continue
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @hypothesis.settings(QUICK, max_examples=EXAMPLES[mode.value])
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                for name, value in ids.items():
                    if case.path_parameters and name in case.path_parameters:
                        case.path_parameters[name] = value
                response = case.call(timeout=30)
                calls.record(case, response)
                case.validate_response(response, checks=checks())

            try:
                call()
            except hypothesis.errors.Unsatisfiable:
                if mode is schemathesis.GenerationMode.POSITIVE:
                    raise
                # Nothing to get wrong: an operation that takes no parameters and no body.
    return calls


@FUZZ_TIMEOUT
async def test_each_partner_route_accepts_what_its_document_allows_and_never_fails(
        shipcast: ShipcastProcess, receiver: Receiver, addresses: None, caplog: pytest.LogCaptureFixture) -> None:
    """Each partner route, fuzzed alone on a partner and endpoint that
    exist: no answer contradicts the document, none is a 5xx, and every
    body the document allows is taken: each route with a described body
    answered 2xx to some generated body, and 422 to none valid by it. What
    was taken works: the workers sending its test events logged no error
    (a secret that only looked like base64 failed every delivery)."""
    await shipcast.apply(partners_doc("fuzzed", receiver.url))
    document = (await shipcast.http.get("/openapi.json")).json()
    calls = await asyncio.to_thread(fuzz_each, document, shipcast.base_url, shipcast.settings.api_token or "",
                                    {"partner_id": "fuzzed", "endpoint_id": "main"})
    for operation in BODIES:
        statuses = calls.statuses[operation]
        assert any(200 <= status < 300 for status in statuses), (operation, statuses)
        assert 422 in statuses, (operation, statuses)  # and the negative cases were refused
    assert not [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def walk(document: dict[str, Any], base_url: str, token: str) -> Calls:
    """Walk the partner routes as a stateful fuzzer does: scenarios of calls,
    each taking ids from an earlier answer through the document's links
    (``POST /v1/partners`` → the partner's routes; an endpoint registered →
    its own routes), every answer checked."""
    import schemathesis
    from schemathesis.core.failures import FailureGroup

    schema = schemathesis.openapi.from_dict(document).include(path_regex=PARTNER_ROUTES)
    schema.config.update(base_url=base_url, headers={"Authorization": f"Bearer {token}"})
    # The walk follows the document's own links, none that schemathesis infers from
    # names, with bodies valid by the document (invalid ones are the stateless run's).
    schema.config.phases.stateful.inference.algorithms = []
    schema.config.generation.modes = [schemathesis.GenerationMode.POSITIVE]
    # Its dependency analysis takes the partners document's dlt_template_ids for ids of a
    # resource that nothing creates, and would never start a scenario at POST /v1/partners.
    graph = schema.analysis.dependency_graph
    produced = {slot.resource.name for node in graph.operations.values() for slot in node.outputs}
    for node in graph.operations.values():
        node.inputs = [slot for slot in node.inputs if slot.resource.name in produced]
    calls = Calls()

    class Walk(schema.as_state_machine()):  # type: ignore[misc]
        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            calls.record(case, response)
            try:
                case.validate_response(response, checks=checks())
            except FailureGroup as exc:
                calls.failures.append(str(exc))
                raise

    try:
        Walk.run(settings=hypothesis.settings(QUICK, max_examples=SCENARIOS, stateful_step_count=STEPS))
    except hypothesis.errors.Flaky:
        # The server keeps what each scenario made, so a scenario replayed to shrink a
        # failure meets other answers; the failures it found are in calls.failures.
        pass
    return calls


@FUZZ_TIMEOUT
async def test_the_partner_routes_are_reached_through_the_documents_links(
        shipcast: ShipcastProcess, receiver: Receiver, addresses: None, caplog: pytest.LogCaptureFixture) -> None:
    """From nothing but the document: a partner applied, then its routes
    called with its id, an endpoint registered on it, then that endpoint's
    routes with its id; no answer contradicts the document, none is a 5xx."""
    document = (await shipcast.http.get("/openapi.json")).json()
    links = document["paths"]["/v1/partners"]["post"]["responses"]["200"]["links"]
    assert links["CreateEndpoint"] == {"operationId": "create_endpoint", "description": ANY,
                                       "parameters": {"partner_id": "$response.body#/applied/0"}}
    # Only an id taken from an earlier answer finds a partner or an endpoint: none is guessed.
    # Which calls a walk makes is chance: a walk that happened not to reach an
    # endpoint's routes is walked again, a bounded number of times.
    for _ in range(WALKS):
        calls = await asyncio.to_thread(walk, document, shipcast.base_url, shipcast.settings.api_token or "")
        assert not calls.failures, calls.failures[0]
        succeeded = {operation for operation, statuses in calls.statuses.items()
                     if any(200 <= status < 300 for status in statuses)}
        if {"post_partners", "create_endpoint"} <= succeeded and succeeded & ENDPOINT_ROUTES:
            break
    assert {"post_partners", "create_endpoint"} <= succeeded, dict(calls.statuses)
    assert succeeded & ENDPOINT_ROUTES, dict(calls.statuses)
    assert not [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


async def test_what_the_fuzzers_found_is_refused_by_field(shipcast: ShipcastProcess, receiver: Receiver) -> None:
    """A secret of base64's letters that is not base64 (its length no
    multiple of four) was taken, then failed every delivery; an integer past
    64 bits in a config section was a 500, and so was a NUL in a template directory."""
    await shipcast.apply(partners_doc("acme", receiver.url))
    almost = "whsec_" + "A" * 33
    created = await shipcast.http.post("/v1/partners/acme/endpoints", json={"id": "x", "url": receiver.url,
                                                                           "secret": almost})
    assert created.status_code == 422 and set(created.json()["detail"]["errors"]) == {"secret"}, created.text
    rotated = await shipcast.http.post("/v1/partners/acme/endpoints/main/secret/rotate", json={"secret": almost})
    assert rotated.status_code == 422 and set(rotated.json()["detail"]["errors"]) == {"secret"}, rotated.text
    branded = await shipcast.http.put("/v1/partners/acme/config/branding", json={"logo_url": 2**70})
    assert branded.status_code == 422 and set(branded.json()["errors"]) == {"branding"}, branded.text
    nul = await shipcast.http.post("/v1/partners", json={"partners": [{"id": "acme", "name": "Acme", "channels": {
        "sms": {"sender": "ACMEIN", "template_dir": "/srv/templates\x00"}}}]})
    assert nul.status_code == 422 and list(nul.json()["errors"]) == ["partner 'acme': channels.sms.template_dir"], \
        nul.text


async def test_a_partners_document_applied_again_keeps_the_secrets_of_endpoints_registered_since(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    """Found by the stateful walk: a partners document that does not list
    the webhook channel keeps the endpoints the partner registered through
    the API, and applying it again took each one's stored (encrypted) secret
    for a new one given: the secret became its own ciphertext, and every
    delivery failed."""
    document = {"partners": [{"id": "acme", "name": "Acme Retail"}]}
    assert (await shipcast.http.post("/v1/partners", json=document)).status_code == 200
    created = await shipcast.http.post("/v1/partners/acme/endpoints", json={"id": "orders", "url": receiver.url})
    assert created.status_code == 201, created.text
    assert (await shipcast.http.post("/v1/partners", json=document)).status_code == 200
    shown = (await shipcast.http.get("/v1/partners/acme/endpoints/orders/secret")).json()
    assert shown == {"secret": created.json()["secret"], "previous_secret_valid_until": None}
    sent = await shipcast.http.post("/v1/partners/acme/endpoints/orders/test", json={})
    assert sent.status_code == 202, sent.text
    [request] = await eventually(lambda: receiver.requests)
    Webhook(shown["secret"]).verify(request.body, {k.lower(): v for k, v in request.headers.items()})


# -- a typed client generated from the document ------------------------------------------------


DOCS = Path(__file__).parents[1] / "docs" / "partners.md"
#: The package name docs/partners.md generates the client as.
PACKAGE = "shipcast_client"


def python_blocks() -> dict[str, str]:
    """The ``sh`` and ``python`` blocks of docs/partners.md's Python client section."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Generate your own client", 1)[1].split("\n### Python\n", 1)[1].split("\n#", 1)[0]
    return {language: code for language, code in re.findall(r"```(sh|python)\n(.*?)```", section, flags=re.DOTALL)}


def generate_client(base_url: str, where: Path) -> None:
    """Generate the client docs/partners.md has a partner generate, by its
    commands run as written (but ``pip install``: the generator is in the
    test extras). Blocking: run it in a thread while shipcast serves."""
    script = "\n".join(line for line in python_blocks()["sh"].splitlines() if not line.startswith("pip install"))
    tools = Path(sys.executable).parent  # the generator and the ruff it formats with
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=where, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "SHIPCAST_URL": base_url,
                                              "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"})
    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    # Every operation and schema became code: the one thing left out is the YAML body, as the guide says.
    assert "Unable to" not in said and "will not be generated" not in said, said
    assert said.count("WARNING") == 1 and "Unsupported content type application/yaml" in said, said


@contextlib.contextmanager
def importable(where: Path) -> Iterator[None]:
    """The generated package, importable while the ``with`` block lasts."""
    sys.path.insert(0, str(where))
    try:
        yield
    finally:
        sys.path.remove(str(where))
        for module in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[module]


async def test_a_client_generated_from_the_document_walks_the_partner_guide(
        shipcast: ShipcastProcess, receiver: Receiver, tmp_path: Path) -> None:
    """docs/partners.md's walk-through, and the rest of its endpoint calls,
    made with a client openapi-python-client generated from the document:
    typed bodies in, each answer parsed as the document says."""
    await asyncio.to_thread(generate_client, shipcast.base_url, tmp_path)
    with importable(tmp_path):
        package = importlib.import_module(PACKAGE)
        models = importlib.import_module(f"{PACKAGE}.models")

        def call(operation: str) -> Any:
            tag = "partner" if importlib.util.find_spec(f"{PACKAGE}.api.partner.{operation}") else "default"
            return importlib.import_module(f"{PACKAGE}.api.{tag}.{operation}").asyncio

        # 0. The operator creates the partner and its token.
        async with package.AuthenticatedClient(base_url=shipcast.base_url,
                                               token=shipcast.settings.api_token) as operator:
            applied = await call("post_partners")(client=operator, body=models.PartnersDocument(
                partners=[models.Partner(id="acme", name="Acme Retail")]))
            assert applied["applied"] == ["acme"]
            token = (await call("create_partner_token")("acme", client=operator))["token"]
        async with package.AuthenticatedClient(base_url=shipcast.base_url, token=token) as acme:
            # 1. The partner registers an endpoint; the answer carries its secret.
            created = await call("create_endpoint")("acme", client=acme, body=models.Endpoint(
                id="orders", url=receiver.url, events=[models.EventType.OFD, models.EventType.DEL]))
            assert isinstance(created, models.EndpointRegistered), created
            assert created.id == "orders" and created.events == ["OFD", "DEL"] and created.disabled is False
            # 2. Fetches the secret again.
            secret = (await call("get_secret")("acme", "orders", client=acme)).secret
            assert secret == created.secret
            # 3. Sends itself a test event.
            sent = await call("send_test")("acme", "orders", client=acme, body=models.TestSend(
                event_type=models.TestSendEventType.DEL))
            # 4. Sees it delivered.

            async def delivered() -> Any:
                message = await call("get_message")("acme", sent.event_id, client=acme)
                return message if message["deliveries"] and message["deliveries"][0]["status"] == "delivered" else None

            message = await eventually(delivered)
            assert message["event"]["event_type"] == "DEL"
            [request] = receiver.requests
            Webhook(secret).verify(request.body, {k.lower(): v for k, v in request.headers.items()})

            # The rest of the endpoint calls the guide lists.
            assert [e.id for e in await call("list_endpoints")("acme", client=acme)] == ["orders"]
            changed = await call("update_endpoint")("acme", "orders", client=acme, body=models.EndpointUpdate(
                events=[models.EventType.ALL], description="All of them"))
            assert changed.events == ["*"] and changed.description == "All of them"
            rotated = await call("rotate_secret")("acme", "orders", client=acme, body=models.SecretRotation(
                overlap_seconds=60))
            assert rotated.secret != secret and rotated.previous_secret_valid_until > datetime.now(UTC)
            assert (await call("disable_endpoint")("acme", "orders", client=acme)).disabled is True
            assert (await call("enable_endpoint")("acme", "orders", client=acme)).disabled is False
            stats = await call("endpoint_stats")("acme", "orders", client=acme)
            assert stats.to_dict(), stats
            attempts = await call("list_attempts")("acme", client=acme, event_id=sent.event_id)
            assert [a["status"] for a in attempts] == [200]

            # A refusal is parsed as the document's Error, naming the field.
            refused = await call("create_endpoint")("acme", client=acme, body=models.Endpoint(
                id="orders", url="ftp://hooks.acme.example.com/"))
            assert isinstance(refused, models.Error) and "url" in refused.detail["errors"], refused
            assert (await call("delete_endpoint")("acme", "orders", client=acme))["deleted"] == "orders"

    # The guide's own Python example, run as written with the partner's token.
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SHIPCAST_URL": shipcast.base_url, "TOKEN": token,
           "ENDPOINT_URL": receiver.url}
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", python_blocks()["python"], cwd=tmp_path,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                   env=env)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    secret_line, sent_line = out.decode().splitlines()
    assert secret_line.startswith("secret: whsec_") and sent_line.startswith("sent DEL "), out.decode()
    await eventually(lambda: len(receiver.requests) == 2)
    assert receiver.requests[1].json["event_id"] == sent_line.split()[-1]
