"""``POST /v1/events`` with the operator's token is served by the ingest
middleware itself, past FastAPI's routing; everything else goes on to the
app. Driven here as uvicorn drives it, message by message, on the in-memory
broker (the full path over HTTP and RabbitMQ is tests/test_pipeline.py's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipcast import metrics
from shipcast.amqp.memory import MemoryBroker, MemoryQueue
from shipcast.app.api.ingest import IngestRequests
from shipcast.app.services import Services
from shipcast.plugin.registry import Registry
from shipcast.settings import Settings
from shipcast.store import Store
from tests.bound import example

pytestmark = pytest.mark.fast

TOKEN = "operator-token"


class App:
    """The app behind the middleware: what reaches it, answered 418."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.reached.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[IngestRequests, App, MemoryBroker]]:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", api_token=TOKEN,
                        config=str(tmp_path / "none.yaml"), secret_key_file=str(tmp_path / "k"))
    broker = MemoryBroker()
    broker.queues["everything"] = MemoryQueue("everything", bindings={"#"})
    services = Services(settings, Registry(settings), Store(settings.database_url), broker)  # type: ignore[arg-type]
    app = App()
    yield IngestRequests(app, services), app, broker


async def call(asgi: IngestRequests, path: str, pieces: list[bytes], *, token: str | None = TOKEN,
               method: str = "POST", cut: bool = False) -> list[dict[str, Any]]:
    """The messages ``asgi`` sends for a request whose body comes in ``pieces``
    (``cut``: the caller goes away after them)."""
    headers = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    incoming = [{"type": "http.request", "body": piece, "more_body": cut or i < len(pieces) - 1}
                for i, piece in enumerate(pieces)] + ([{"type": "http.disconnect"}] if cut else [])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi(scope, receive, send)
    return sent


def answer(sent: list[dict[str, Any]]) -> tuple[int, dict[str, str], bytes]:
    start, *bodies = sent
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            b"".join(body.get("body", b"") for body in bodies))


async def test_the_operators_request_is_served_here_from_a_body_in_pieces(
        served: tuple[IngestRequests, App, MemoryBroker]) -> None:
    asgi, app, broker = served
    event = example("OFD", partner_id="acme")
    raw = event.to_json()
    accepted = metrics.value("shipcast_ingest_requests_total", code="202")
    status, headers, body = answer(await call(asgi, "/v1/events", [raw[:100], raw[100:500], raw[500:]]))
    assert (status, orjson.loads(body)) == (202, {"ids": [event.event_id]})
    assert headers["content-type"] == "application/json"
    assert [message.message_id for _, message in broker.published] == [event.event_id]
    assert app.reached == []
    assert metrics.value("shipcast_ingest_requests_total", code="202") == accepted + 1


async def test_any_other_token_or_route_goes_on_to_the_app(served: tuple[IngestRequests, App, MemoryBroker]) -> None:
    asgi, app, broker = served
    raw = example("OFD", partner_id="acme").to_json()
    for token in (None, "wrong", "scp_a-partners-token"):
        assert answer(await call(asgi, "/v1/events", [raw], token=token))[0] == 418
    assert answer(await call(asgi, "/v1/events/x", [b""], method="GET"))[0] == 418
    assert answer(await call(asgi, "/v1/partners", [b"{}"]))[0] == 418
    assert app.reached == ["POST /v1/events"] * 3 + ["GET /v1/events/x", "POST /v1/partners"]
    assert broker.published == []


async def test_a_caller_gone_mid_body_gets_nothing_and_nothing_is_counted_or_published(
        served: tuple[IngestRequests, App, MemoryBroker]) -> None:
    asgi, app, broker = served
    raw = example("OFD", partner_id="acme").to_json()
    before = {code: metrics.value("shipcast_ingest_requests_total", code=code) for code in ("202", "422")}
    assert await call(asgi, "/v1/events", [raw[:300]], cut=True) == []
    assert broker.published == [] and app.reached == []
    assert {code: metrics.value("shipcast_ingest_requests_total", code=code) for code in before} == before


async def test_invalid_events_and_an_unconfirmed_publish_get_the_apps_own_answers(
        served: tuple[IngestRequests, App, MemoryBroker]) -> None:
    asgi, app, broker = served
    rejected = metrics.value("shipcast_events_rejected_total")
    status, _, body = answer(await call(asgi, "/v1/events", [b'{"event_type": "OFD"}']))
    assert status == 422 and {tuple(e["loc"])[0] for e in orjson.loads(body)["detail"]} >= {"occurred_at", "partner_id"}
    status, _, body = answer(await call(asgi, "/v1/events", [b"{not json"]))
    assert status == 422 and orjson.loads(body)["detail"][0]["type"] == "json_invalid"
    assert metrics.value("shipcast_events_rejected_total") == rejected + 2
    broker.queues["everything"].bindings.clear()  # RabbitMQ returns what no queue takes: not confirmed
    status, headers, body = answer(await call(asgi, "/v1/events", [example("OFD", partner_id="acme").to_json()]))
    assert (status, headers["retry-after"]) == (503, "1") and "nothing received it" in orjson.loads(body)["detail"]
    assert broker.published == [] and app.reached == []
