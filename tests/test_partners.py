"""The partners file: validation that names file, partner and field; applying
it through the CLI and the API; bindings that follow the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shipcast.exceptions import ConfigError
from tests.bound import load_partners, load_partners_file
from shipcast.settings import Settings

from .helpers import ShipcastProcess, run_cli

GOOD: dict[str, Any] = {"partners": [{
    "id": "acme", "name": "Acme Retail",
    "branding": {"logo_url": "https://acme.example.com/logo.png", "primary_color": "#0a7cff",
                 "support_phone": "+919876543210"},
    "channels": {"webhook": {"endpoints": [
        {"id": "orders", "url": "https://hooks.acme.example.com/shipcast", "events": ["OFD", "DEL", "FAIL", "RET"]},
        {"id": "all", "url": "https://all.acme.example.com/", "events": ["*"],
         "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
    ]}},
}]}


def with_change(path: list[Any], value: Any) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


P = ["partners", 0]
E = [*P, "channels", "webhook", "endpoints", 0]


@pytest.mark.fast
@pytest.mark.parametrize(("path", "value", "location", "words"), [
    ([*P, "id"], "Acme Retail", "partner 'Acme Retail': id", "must match [a-z0-9_-]+"),
    ([*P, "name"], KeyError, "partner 'acme': name", "Missing data"),
    ([*P, "colour"], "red", "partner 'acme': colour", "Unknown field"),
    ([*P, "branding", "primary_color"], "blue", "partner 'acme': branding.primary_color", "#0a7cff"),
    ([*P, "branding", "support_phone"], "98765", "partner 'acme': branding.support_phone", "E.164"),
    ([*P, "channels", "pigeon"], {}, "partner 'acme': channels.pigeon", "unknown channel"),
    ([*E, "url"], "not a url", "partner 'acme': channels.webhook.endpoints.0.url", "Not a valid URL"),
    ([*E, "url"], "ftp://x.example.com/", "partner 'acme': channels.webhook.endpoints.0.url", "Not a valid URL"),
    ([*E, "events"], ["OFD", "TELEPORT"], "partner 'acme': channels.webhook.endpoints.0.events",
     "unknown event types ['TELEPORT']"),
    ([*E, "events"], [], "partner 'acme': channels.webhook.endpoints.0.events", "at least one"),
    ([*E, "events"], ["*", "OFD"], "partner 'acme': channels.webhook.endpoints.0.events", "'*' already"),
    ([*E, "secret"], "hunter2", "partner 'acme': channels.webhook.endpoints.0.secret", "whsec_"),
    ([*E, "id"], "all", "partner 'acme': channels.webhook.endpoints", "duplicate endpoint ids ['all']"),
    ([*P, "channels", "webhook", "endpoints"], [], "partner 'acme': channels.webhook.endpoints", "at least one"),
])
def test_errors_name_the_file_the_partner_and_the_field(path: list[Any], value: Any, location: str,
                                                         words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_partners(with_change(path, value), "partners.yaml")
    text = str(exc.value)
    assert text.startswith("partners.yaml: invalid partners file")
    matching = {loc: msgs for loc, msgs in exc.value.errors.items() if loc == location}
    assert matching, text
    assert any(words in message for message in matching[location]), text


@pytest.mark.fast
def test_every_partner_is_reported_and_duplicates_are_errors() -> None:
    doc = {"partners": [GOOD["partners"][0], GOOD["partners"][0], {"id": "BAD", "name": "x"}]}
    with pytest.raises(ConfigError) as exc:
        load_partners(doc, "f.yaml")
    assert set(exc.value.errors) == {"partner 'acme': id", "partner 'BAD': id"}


@pytest.mark.fast
@pytest.mark.parametrize(("text", "words"), [
    ("partners: [\n  - id: acme\n   name: x", "not valid YAML"),
    ("[1, 2]", "one key, 'partners'"),
    ("partners: {}", "'partners' must be a list"),
    ("partners: []\nextra: 1", "one key, 'partners'"),
])
def test_malformed_files(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words) as exc:
        load_partners_file(path)
    assert str(exc.value).startswith(str(path))


@pytest.mark.fast
def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_partners_file(tmp_path / "nope.yaml")


async def bindings(settings: Settings, queue: str) -> set[str]:
    from shipcast.amqp.management import Management

    async with Management(settings) as management:
        return await management.queue_bindings(queue)


@pytest.mark.broker
async def test_apply_through_the_cli_binds_lists_and_never_prints_secrets(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    applied = run_cli(settings, "partners", "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    assert "applied acme (Acme Retail): webhook" in applied.stdout
    assert await bindings(settings, "shipcast.webhook") == {"acme.*"}
    assert await bindings(settings, "shipcast.archive") == {"#"}

    listed = run_cli(settings, "partners", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "whsec_" not in listed.stdout
    [partner] = yaml.safe_load(listed.stdout)
    assert partner["channels"]["webhook"]["endpoints"][0]["secret"] == "…redacted…"

    # A generated secret is kept across applies; a given one is stored as given, both encrypted.
    from shipcast.security.crypto import secret_box
    from shipcast.store import Store

    store = await Store(settings.database_url).open()
    try:
        first = await store.get_partner("acme")
        assert run_cli(settings, "partners", "apply", "-f", str(path)).returncode == 0
        second = await store.get_partner("acme")
    finally:
        await store.close()
    assert first is not None and second is not None
    stored = [e["secret"] for e in first.channels["webhook"]["endpoints"]]
    assert all(s.startswith("enc:") for s in stored)
    secrets = [secret_box(settings).decrypt(s) for s in stored]
    assert secrets[0].startswith("whsec_") and secrets[1] == "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert stored == [e["secret"] for e in second.channels["webhook"]["endpoints"]]


@pytest.mark.broker
async def test_an_invalid_file_changes_nothing(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "partners.yaml"
    doc = {"partners": [GOOD["partners"][0], {"id": "zippy", "name": "Zippy", "channels": {"webhook": {
        "endpoints": [{"id": "m", "url": "nope"}]}}}]}
    path.write_text(yaml.safe_dump(doc))
    result = run_cli(settings, "partners", "apply", "-f", str(path))
    assert result.returncode == 1
    assert f"{path}: invalid partners file" in result.stderr
    assert "partner 'zippy': channels.webhook.endpoints.0.url: Not a valid URL." in result.stderr
    listed = run_cli(settings, "partners", "list")
    assert "no partners applied yet" in listed.stdout


@pytest.mark.broker
async def test_the_api_applies_and_stale_bindings_are_removed(shipcast: ShipcastProcess) -> None:
    http: httpx.AsyncClient = shipcast.http
    response = await http.post("/v1/partners", content=yaml.safe_dump(GOOD),
                               headers={"content-type": "application/yaml"})
    assert response.status_code == 200, response.text
    assert response.json()["bindings_added"] == {"shipcast.webhook": ["acme.*"]}

    narrowed = with_change([*P, "channels", "webhook", "endpoints"],
                           [{"id": "orders", "url": "https://hooks.acme.example.com/x", "events": ["DEL", "FAIL"]}])
    response = await http.post("/v1/partners", json=narrowed)
    assert response.status_code == 200, response.text
    assert await bindings(shipcast.settings, "shipcast.webhook") == {"acme.DEL", "acme.FAIL"}
    assert response.json()["bindings_removed"] == {"shipcast.webhook": ["acme.*"]}

    no_webhook = with_change([*P, "channels"], {})
    assert (await http.post("/v1/partners", json=no_webhook)).status_code == 200
    assert await bindings(shipcast.settings, "shipcast.webhook") == set()

    listed = (await http.get("/v1/partners")).json()
    assert [p["id"] for p in listed] == ["acme"]
    assert (await http.get("/v1/partners/acme")).json()["name"] == "Acme Retail"
    assert (await http.get("/v1/partners/nobody")).status_code == 404

    assert (await http.post("/v1/partners", json=GOOD)).status_code == 200
    deleted = await http.delete("/v1/partners/acme")
    assert deleted.json() == {"deleted": "acme", "bindings_removed": {"shipcast.webhook": ["acme.*"]}}
    assert await bindings(shipcast.settings, "shipcast.webhook") == set()
    assert (await http.get("/v1/partners/acme")).status_code == 404
    assert (await http.delete("/v1/partners/acme")).status_code == 404

    bad = await http.post("/v1/partners", json=with_change([*E, "url"], "nope"))
    assert bad.status_code == 422
    assert "partner 'acme': channels.webhook.endpoints.0.url" in bad.json()["errors"]
    assert (await http.post("/v1/partners", json=GOOD, headers={"authorization": "Bearer no"})).status_code == 401
