"""Customers' identifiers are keyed hashes, link tokens are opaque, and what
earlier versions stored or sent keeps working while its key is configured."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from shipcast.plugins.tracking.links import read_tracking_token, tracking_token
from shipcast.security.identifiers import bare_hash
from shipcast.security.links import (
    identifiers,
    purpose_keys,
    read_unsubscribe_token,
    sign_link,
    unsubscribe_token,
)
from shipcast.settings import Settings
from shipcast.store import Store
from shipcast.store.tables import opt_outs

pytestmark = pytest.mark.fast

KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
SETTINGS = Settings(secret_key=KEY)
PHONE = "+919876543210"


def readable(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@pytest.fixture
async def store(tmp_path: Path) -> Store:
    opened = Store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", identifiers(SETTINGS))
    await opened.open()
    yield opened  # type: ignore[misc]
    await opened.close()


async def stored_hashes(store: Store) -> list[str]:
    assert store.engine is not None
    async with store.engine.connect() as connection:
        return [row.address_hash for row in await connection.execute(sa.select(opt_outs.c.address_hash))]


async def test_an_opt_out_is_kept_as_a_keyed_hash(store: Store) -> None:
    await store.add_opt_out("sms", "acme", f"  {PHONE} ", "STOP")
    [kept] = await stored_hashes(store)
    key = purpose_keys(SETTINGS, "identifiers")[0]
    assert kept == hmac.new(key, PHONE.encode(), hashlib.sha256).hexdigest()
    assert kept != bare_hash(PHONE) and PHONE not in kept  # no dictionary of numbers reverses it
    assert await store.opted_out("sms", "acme", PHONE) == "STOP"
    assert await store.opted_out("sms", "globex", PHONE) is None


async def test_an_earlier_versions_bare_hash_still_matches_and_is_keyed_again(store: Store) -> None:
    await store.add_opt_out("sms", "acme", bare_hash(PHONE), "STOP (stored by an earlier shipcast)", hashed=True)
    assert await store.opted_out("sms", "acme", PHONE) == "STOP (stored by an earlier shipcast)"
    assert await stored_hashes(store) == [identifiers(SETTINGS).key(PHONE)]


async def test_a_rotated_key_keeps_every_opt_out(store: Store, tmp_path: Path) -> None:
    await store.add_opt_out("email", "acme", "asha@example.com", "unsubscribed")
    new_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    rotated = Settings(secret_key=f"{new_key},{KEY}")
    again = Store(store.url, identifiers(rotated))
    await again.open()
    try:
        assert await again.opted_out("email", "acme", "ASHA@example.com") == "unsubscribed"
        assert await stored_hashes(again) == [identifiers(rotated).key("asha@example.com")]
    finally:
        await again.close()


async def test_a_store_without_keys_refuses_to_keep_an_address(tmp_path: Path) -> None:
    bare = Store(f"sqlite+aiosqlite:///{tmp_path / 'bare.db'}")
    await bare.open()
    try:
        with pytest.raises(Exception, match="without keys for customer identifiers"):
            await bare.add_opt_out("sms", "acme", PHONE, "STOP")
    finally:
        await bare.close()


def test_link_tokens_are_opaque_and_round_trip() -> None:
    unsubscribe = unsubscribe_token(SETTINGS, "email", "acme", "asha@example.com")
    tracking = tracking_token(SETTINGS, "acme", "ORD-10023", 30)
    for token, words in ((unsubscribe, (b"acme", b"email", bare_hash("asha@example.com").encode())),
                         (tracking, (b"acme", b"ORD-10023"))):
        assert not any(word in readable(token) for word in words), token
    assert read_unsubscribe_token(SETTINGS, unsubscribe) == ("email", "acme", identifiers(SETTINGS).key(
        "asha@example.com"), "ash*********.com")
    assert read_tracking_token(SETTINGS, tracking) == ("acme", "ORD-10023")
    assert tracking_token(SETTINGS, "acme", "ORD-10023", 30) == tracking  # one token per link


@pytest.mark.parametrize("change", [lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"), lambda t: t + "=",
                                    lambda t: t[1:], lambda t: "x" + t])
def test_an_altered_token_is_refused(change: object) -> None:
    token = tracking_token(SETTINGS, "acme", "ORD-1", 30)
    assert read_tracking_token(SETTINGS, change(token)) is None  # type: ignore[operator]


def test_links_already_sent_keep_working_while_their_key_is_configured() -> None:
    """A readable, signed token of an earlier version is still accepted."""
    expires = 10**6
    legacy = sign_link(SETTINGS, "tracking", f"acme:{expires}:ORD-7")
    assert b"ORD-7" in readable(legacy)
    assert read_tracking_token(SETTINGS, legacy, now=0) == ("acme", "ORD-7")
    old = sign_link(SETTINGS, "unsubscribe", f"sms:acme:{bare_hash(PHONE)}")
    assert read_unsubscribe_token(SETTINGS, old) == ("sms", "acme", bare_hash(PHONE), None)
    other = Settings(secret_key=base64.urlsafe_b64encode(os.urandom(32)).decode())
    assert read_tracking_token(other, legacy, now=0) is None
    assert read_tracking_token(other, tracking_token(SETTINGS, "acme", "ORD-7", 3)) is None


def test_a_secret_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    from shipcast.exceptions import ConfigError
    from shipcast.security.crypto import secret_box

    path = tmp_path / "shipcast.key"
    made = Settings(secret_key=None, secret_key_file=str(path))
    assert secret_box(made).encrypt("x")  # made here, private
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=f"{path}: the secret key file is readable by other users .*chmod 600 {path}"):
        secret_box(made)


async def test_the_key_file_and_the_same_key_in_the_variable_are_one_key(tmp_path: Path) -> None:
    """An operator who moves the generated key into SHIPCAST_SECRET_KEY (as the
    start-up warning asks) keeps every opt-out and every link already sent."""
    from shipcast.security.crypto import secret_box

    in_file = Settings(secret_key=None, secret_key_file=str(tmp_path / "shipcast.key"))
    key = secret_box(in_file).key
    in_variable = Settings(secret_key=key)
    link = tracking_token(in_file, "acme", "ORD-1", 30)
    assert read_tracking_token(in_variable, link) == ("acme", "ORD-1")
    assert identifiers(in_file).key(PHONE) == identifiers(in_variable).key(PHONE)
    # What was keyed from the key's id, before the two were one, still matches.
    legacy = hmac.new(hashlib.sha256(f"identifiers:{hashlib.sha256(key.encode()).hexdigest()}".encode()).digest(),
                      PHONE.encode(), hashlib.sha256).hexdigest()
    assert legacy in identifiers(in_variable).matches(PHONE)


async def test_an_opt_out_under_an_older_form_leaves_no_copy_behind(store: Store) -> None:
    await store.add_opt_out("sms", "acme", PHONE, "STOP")
    await store.add_opt_out("sms", "acme", bare_hash(PHONE), "STOP (earlier)", hashed=True)
    assert len(await stored_hashes(store)) == 2
    assert await store.opted_out("sms", "acme", PHONE) == "STOP"
    assert await stored_hashes(store) == [identifiers(SETTINGS).key(PHONE)]  # the bare hash is gone


def test_a_colon_in_a_urls_user_name_stays_in_the_user_name() -> None:
    from urllib.parse import unquote

    from shipcast.plugins.webhook.channel import with_userinfo
    from shipcast.security.crypto import secret_box

    box = secret_box(SETTINGS)
    stored = with_userinfo(box, {"url": "https://us%3Aer:p%40ss@hooks.example.com/x"}, None)
    assert stored["url"] == "https://hooks.example.com/x"
    user, _, password = box.decrypt(stored["userinfo_secret"]).partition(":")
    assert (unquote(user), unquote(password)) == ("us:er", "p@ss")
