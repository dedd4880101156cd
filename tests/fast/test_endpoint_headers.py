"""An endpoint's own headers and authentication, without services: what is
refused when applied (shipcast's own headers, names that are no HTTP token,
values that could split a request, too many, an Authorization that auth or
the URL's credentials send), named by the header; values stored encrypted;
a masked value given back keeps the stored one; the headers a delivery
adds and the attempt log shows."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import pytest
from marshmallow import ValidationError

from shipcast.exceptions import ConfigError
from shipcast.model.catalog import validating
from shipcast.plugin.registry import Registry
from shipcast.plugins.webhook.channel import EndpointSchema, WebhookChannel
from shipcast.plugins.webhook.headers import MASK, MAX_HEADERS, request_headers
from shipcast.security.crypto import secret_box
from shipcast.settings import Settings
from tests.bound import load_partners

pytestmark = pytest.mark.fast

URL = "https://93.184.216.34/hooks"  # a public address: judged without a DNS lookup
KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
REGISTRY = Registry(Settings(plugins="webhook", secret_key=KEY, config="/nonexistent/shipcast.yaml"))
BOX = secret_box(REGISTRY.settings)
WHERE = "partner 'acme': channels.webhook.endpoints.0"


def doc(**endpoint: Any) -> dict[str, Any]:
    return {"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
        {"id": "main", "url": URL, **endpoint}]}}}]}


def errors_of(**endpoint: Any) -> dict[str, list[str]]:
    with pytest.raises(ConfigError) as caught:
        load_partners(doc(**endpoint))
    return caught.value.errors


#: Headers refused when applied: the header named, and words of why.
WRONG_HEADERS: list[tuple[dict[str, Any], str, str]] = [
    ({"Webhook-Signature": "v1,x"}, "Webhook-Signature", "reserved: shipcast sends the webhook-* headers"),
    ({"webhook-id": "x"}, "webhook-id", "reserved: shipcast sends the webhook-* headers"),
    ({"Host": "evil.example"}, "Host", "reserved"),
    ({"Content-Type": "text/plain"}, "Content-Type", "reserved"),
    ({"content-length": "0"}, "content-length", "reserved"),
    ({"Transfer-Encoding": "chunked"}, "Transfer-Encoding", "reserved"),
    ({"traceparent": "00-x"}, "traceparent", "reserved"),
    ({"Proxy-Authorization": "Basic x"}, "Proxy-Authorization", "reserved"),
    ({"User-Agent": "erp"}, "User-Agent", "reserved"),
    ({"X Key": "v"}, "X Key", "not a header name"),
    ({"X-Key:": "v"}, "X-Key:", "not a header name"),
    ({"X-" + "k" * 100: "v"}, "X-" + "k" * 100, "not a header name"),
    ({"X-Key\n": "v"}, "X-Key\n", "not a header name"),  # a final line break is no end of the name
    ({"X-Key": "a\r\nX-Injected: 1"}, "X-Key", "must not hold a line break (CR or LF)"),
    ({"X-Key": "a\nb"}, "X-Key", "line break"),
    ({"X-Key": "naïve"}, "X-Key", "must be printable ASCII"),
    ({"X-Key": "a\tb"}, "X-Key", "must be printable ASCII"),
    ({"X-Key": " padded"}, "X-Key", "must not start or end with a space"),
    ({"X-Key": ""}, "X-Key", "must not be empty"),
    ({"X-Key": "v" * 4097}, "X-Key", "longer than 4096 characters"),
    ({"X-Key": 42}, "X-Key", "the value must be text"),
    ({"X-Key": "a", "x-key": "b"}, "x-key", "given twice"),
]


@pytest.mark.parametrize(("headers", "name", "words"), WRONG_HEADERS, ids=[str(h)[:40] for h, _, _ in WRONG_HEADERS])
def test_a_wrong_header_is_refused_naming_it(headers: dict[str, Any], name: str, words: str) -> None:
    errors = errors_of(headers=headers)
    assert list(errors) == [f"{WHERE}.headers.{name}"], errors
    assert words in errors[f"{WHERE}.headers.{name}"][0]


def test_too_many_headers_or_not_a_mapping() -> None:
    many = {f"X-H{n}": "v" for n in range(MAX_HEADERS + 1)}
    assert errors_of(headers=many) == {f"{WHERE}.headers": [f"at most {MAX_HEADERS} headers"]}
    assert errors_of(headers=["X-Key: v"]) == {f"{WHERE}.headers": ["must be a mapping of header name to value"]}
    [partner] = load_partners(doc(headers={f"X-H{n}": "v" for n in range(MAX_HEADERS)}))  # the most is taken
    assert len(partner.channels["webhook"]["endpoints"][0]["headers"]) == MAX_HEADERS


WRONG_AUTH: list[tuple[dict[str, Any], str, str]] = [
    ({"type": "digest"}, "auth.type", "Must be one of: basic, bearer"),
    ({"type": "basic", "password": "p"}, "auth.username", "required for basic authentication"),
    ({"type": "basic", "username": "a:b", "password": "p"}, "auth.username", "must not hold ':'"),
    ({"type": "basic", "username": "erp", "password": "p\nq"}, "auth.password", "must not hold control characters"),
    ({"type": "basic", "username": "erp", "token": "t"}, "auth.token", "only for bearer authentication"),
    ({"type": "bearer", "token": "t", "username": "erp"}, "auth.username", "only for basic authentication"),
    ({"type": "bearer", "token": "has space"}, "auth.token", "not a bearer token"),
    ({"type": "bearer", "token": "t\r\nX: 1"}, "auth.token", "not a bearer token"),
    ({"type": "bearer", "token": "abc\n"}, "auth.token", "not a bearer token"),
    ({"type": "bearer", "token": "t", "scheme": "Token"}, "auth.scheme", "Unknown field"),
    ({"username": "erp"}, "auth.type", "Missing data for required field"),
]


@pytest.mark.parametrize(("auth", "where", "words"), WRONG_AUTH, ids=[str(a)[:50] for a, _, _ in WRONG_AUTH])
def test_wrong_authentication_is_refused_naming_the_field(auth: dict[str, Any], where: str, words: str) -> None:
    errors = errors_of(auth=auth)
    assert f"{WHERE}.{where}" in errors, errors
    assert words in errors[f"{WHERE}.{where}"][0]


@pytest.mark.parametrize("auth", [{}, {"username": "erp"}, {"password": "p"}, {"token": "t"}])
def test_an_update_s_auth_names_its_type_too(auth: dict[str, Any]) -> None:
    """An update loads its fields partially, but an ``auth`` given replaces
    the stored one whole: without its type it is refused, naming it."""
    with validating(REGISTRY.catalog), pytest.raises(ValidationError) as caught:
        EndpointSchema(partial=True).load({"auth": auth})
    assert caught.value.messages == {"auth": {"type": ["Missing data for required field."]}}


def test_a_final_line_break_ends_no_id_or_secret() -> None:
    assert errors_of(id="main\n") == {f"{WHERE}.id": ["must match [a-z0-9_-]+"]}
    assert errors_of(secret="whsec_" + "A" * 32 + "\n") == {f"{WHERE}.secret": ["must look like whsec_<base64>"]}


async def prepare(endpoint: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The endpoint as stored, validated and prepared as the partners file is."""
    [partner] = load_partners(doc(**endpoint))
    config = await WebhookChannel.prepare(REGISTRY, "acme", dict(partner.channels["webhook"]),
                                          {"endpoints": [old]} if old else None)
    stored: dict[str, Any] = config["endpoints"][0]
    return stored


async def refused(endpoint: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    with pytest.raises(ConfigError) as caught:
        await prepare(endpoint, old)
    return caught.value.errors


async def test_headers_and_credentials_are_stored_encrypted_and_sent() -> None:
    stored = await prepare({"headers": {"X-Api-Key": "k-123-secret", "X-Tenant": "acme-7"},
                            "auth": {"type": "basic", "username": "erp", "password": "pa55-secret"}})
    assert "headers" not in stored and set(stored["header_secrets"]) == {"X-Api-Key", "X-Tenant"}
    assert all(value.startswith("enc:") for value in stored["header_secrets"].values())
    assert stored["auth"]["type"] == "basic" and stored["auth"]["username"] == "erp"
    assert stored["auth"]["password_secret"].startswith("enc:") and "password" not in stored["auth"]
    assert not any(plain in str(stored) for plain in ("k-123-secret", "acme-7", "pa55-secret"))

    sent, shown = request_headers(BOX, stored)
    assert sent == {"X-Api-Key": "k-123-secret", "X-Tenant": "acme-7",
                    "authorization": "Basic " + base64.b64encode(b"erp:pa55-secret").decode()}
    assert shown == {"X-Api-Key": MASK, "X-Tenant": MASK, "authorization": f"Basic {MASK}"}

    bearer = await prepare({"auth": {"type": "bearer", "token": "eyJhbGciOi.J9x-_~+/=="}})
    assert request_headers(BOX, bearer) == ({"authorization": "Bearer eyJhbGciOi.J9x-_~+/=="},
                                            {"authorization": f"Bearer {MASK}"})


async def test_a_masked_value_keeps_the_stored_one_and_nothing_else() -> None:
    old = await prepare({"headers": {"X-Api-Key": "k-1", "X-Old": "o"},
                         "auth": {"type": "bearer", "token": "t-1"}})
    # Shown masked, given back masked: kept; a new value replaces; a header left out is gone.
    again = await prepare({"headers": {"x-api-key": MASK, "X-New": "n"}, "auth": {"type": "bearer", "token": MASK}},
                          old)
    assert request_headers(BOX, again)[0] == {"x-api-key": "k-1", "X-New": "n", "authorization": "Bearer t-1"}
    left_out = await prepare({"auth": {"type": "bearer"}}, old)  # no token given: the stored one
    assert request_headers(BOX, left_out)[0] == {"authorization": "Bearer t-1"}
    # Nothing stored to keep: said, by the field.
    assert await refused({"headers": {"X-Other": MASK}}, old) == {
        "endpoints.0.headers.X-Other": ["no value is stored to keep: give the value"]}
    assert await refused({"auth": {"type": "basic", "username": "erp", "password": MASK}}, old) == {
        "endpoints.0.auth.password": ["required: no password is stored to keep"]}
    assert await refused({"auth": {"type": "bearer"}}) == {
        "endpoints.0.auth.token": ["required: no token is stored to keep"]}


async def test_the_same_values_applied_again_change_nothing_stored() -> None:
    endpoint = {"headers": {"X-Api-Key": "k-1"}, "auth": {"type": "basic", "username": "erp", "password": "p"}}
    first = await prepare(endpoint)
    second = await prepare(endpoint, first)
    assert second["header_secrets"] == first["header_secrets"] and second["auth"] == first["auth"]
    changed = await prepare({**endpoint, "headers": {"X-Api-Key": "k-2"}}, first)
    assert changed["header_secrets"]["X-Api-Key"] != first["header_secrets"]["X-Api-Key"]


async def test_authorization_comes_from_one_place() -> None:
    # An Authorization header of the endpoint's own is taken when nothing else sends one...
    alone = await prepare({"headers": {"Authorization": "Token abc"}})
    assert request_headers(BOX, alone)[0] == {"Authorization": "Token abc"}
    # ...and refused beside auth, or beside the URL's credentials.
    assert await refused({"headers": {"Authorization": "Token abc"}, "auth": {"type": "bearer", "token": "t"}}) == {
        "endpoints.0.headers.Authorization": ["reserved while auth is set: auth sends it"]}
    with_userinfo = URL.replace("https://", "https://erp:pw@")
    assert await refused({"url": with_userinfo, "headers": {"authorization": "Token abc"}}) == {
        "endpoints.0.headers.authorization": ["reserved while the URL carries credentials: they send it"]}
    # Credentials in the URL and in auth at once: give them in one place.
    assert await refused({"url": with_userinfo, "auth": {"type": "bearer", "token": "t"}}) == {
        "endpoints.0.auth": ["the URL carries credentials too: give them in one place"]}
    # Given later, one replaces the other: auth replaces the URL's, the URL's replace auth.
    from_url = await prepare({"url": with_userinfo})
    assert from_url["userinfo_secret"].startswith("enc:")
    replaced = await prepare({"auth": {"type": "bearer", "token": "t"}}, from_url)
    assert "userinfo_secret" not in replaced and replaced["auth"]["type"] == "bearer"
    back = await prepare({"url": with_userinfo}, replaced)
    assert "auth" not in back and back["userinfo_secret"].startswith("enc:")


async def updated(old: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """``old`` changed as an update changes it: the fields given replace the
    stored ones (``headers`` replaces the stored values), the rest stay."""
    replaced = {"header_secrets" if key == "headers" else key for key in changes}
    plain = {key: value for key, value in old.items()
             if key not in ("secret", "previous_secrets") and key not in replaced}
    config = await WebhookChannel.prepare(REGISTRY, "acme", {"endpoints": [{**plain, **changes}]},
                                          {"endpoints": [old]})
    stored: dict[str, Any] = config["endpoints"][0]
    return stored


async def refused_update(old: Mapping[str, Any], **changes: Any) -> dict[str, list[str]]:
    with pytest.raises(ConfigError) as caught:
        await updated(old, **changes)
    return caught.value.errors


ELSEWHERE = ["https://93.184.216.35/hooks", "https://93.184.216.34:8443/hooks", "http://93.184.216.34/hooks"]


@pytest.mark.parametrize("url", ELSEWHERE, ids=["host", "port", "scheme"])
async def test_stored_credentials_never_follow_the_url_to_another_origin(url: str) -> None:
    old = await prepare({"headers": {"X-Api-Key": "k-1"}, "auth": {"type": "bearer", "token": "t-1"}})
    # Another host, port or scheme: the headers' values and the token stored are not sent there.
    moved = await updated(old, url=url)
    assert (moved["url"], "header_secrets" in moved, "auth" in moved) == (url, False, False)
    assert request_headers(BOX, moved) == ({}, {})
    # Given back masked (or the token left out) with the new URL: given again, by name.
    again = "give it again: the URL's host changed"
    assert await refused_update(old, url=url, headers={"X-Api-Key": MASK}) == {
        "endpoints.0.headers.X-Api-Key": [again]}
    assert await refused_update(old, url=url, auth={"type": "bearer", "token": MASK}) == {
        "endpoints.0.auth.token": [again]}
    assert await refused_update(old, url=url, auth={"type": "bearer"}) == {"endpoints.0.auth.token": [again]}
    # Given in clear with it: taken.
    given = await updated(old, url=url, headers={"X-Api-Key": "k-2"}, auth={"type": "bearer", "token": "t-2"})
    assert request_headers(BOX, given)[0] == {"X-Api-Key": "k-2", "authorization": "Bearer t-2"}


async def test_stored_credentials_stay_while_the_origin_does() -> None:
    old = await prepare({"headers": {"X-Api-Key": "k-1"}, "auth": {"type": "basic", "username": "erp", "password": "p"}})
    for url in (URL + "/v2?x=1", URL.replace("93.184.216.34", "93.184.216.34:443")):
        kept = await updated(old, url=url, headers={"X-Api-Key": MASK})
        assert request_headers(BOX, kept)[0] == {
            "X-Api-Key": "k-1", "authorization": "Basic " + base64.b64encode(b"erp:p").decode()}
    # A partners file applied with a new host and the password left out: given again, by name.
    assert await refused({"url": ELSEWHERE[0], "auth": {"type": "basic", "username": "erp"}}, old) == {
        "endpoints.0.auth.password": ["give it again: the URL's host changed"]}
