"""A destination's secrets at rest, for every channel that signs what it
sends (webhook endpoints, AMQP destinations): its signing secret (given,
generated, or rotated with an overlap while the old one still signs) and the
credentials its URL carries (``scheme://user:password@…``), moved out of the
URL and stored encrypted, so the URL is listed and logged without them."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import yarl

from shipcast.security.crypto import PREFIX as ENCRYPTED
from shipcast.security.crypto import SecretBox
from shipcast.security.signing import generate_secret

__all__ = ["masked_userinfo", "origin", "strip_userinfo", "userinfo", "valid_secrets", "with_secret", "with_userinfo"]


def with_secret(box: SecretBox, endpoint: Mapping[str, Any], old: Mapping[str, Any] | None,
                new_secret: str | None, overlap: float) -> dict[str, Any]:
    """``endpoint`` with its secret encrypted: ``new_secret`` (a rotation), else
    the one it gives (from a partners file), else the old one, else a new one.
    A secret that replaces another moves the old one to ``previous_secrets``
    for ``overlap`` seconds. A file that gives the same secret as the last time
    it was applied changes nothing, so a rotation made since through the API
    stands."""
    endpoint = dict(endpoint)
    given = endpoint.pop("secret", None)
    if isinstance(given, str) and given.startswith(ENCRYPTED):
        # A stored endpoint passed through again (a partners document that does not list the
        # channel keeps the endpoints registered through the API): its secret is the stored one.
        given = None
    endpoint.pop("previous_secrets", None)
    if new_secret is not None:  # a rotation: ``endpoint`` is the stored one, its secret the old ciphertext
        given = None
    now = time.time()
    if old is not None and not old["secret"].startswith(ENCRYPTED):  # stored before secrets were encrypted
        old = {**old, "secret": box.encrypt(old["secret"])}
    fingerprint = (old or {}).get("given_fingerprint")
    if given is not None:
        if old is not None and fingerprint == _fingerprint(given):
            given = None
        fingerprint = _fingerprint(given) if given is not None else fingerprint
    fresh = new_secret or given
    kept = [p for p in (old or {}).get("previous_secrets", []) if p["expires_at"] > now]
    extra = {"given_fingerprint": fingerprint} if fingerprint else {}
    if old is not None and (fresh is None or box.decrypt(old["secret"]) == fresh):
        return {**endpoint, "secret": old["secret"], "previous_secrets": kept, **extra}
    previous = [{"secret": old["secret"], "expires_at": now + overlap}] if old is not None and overlap > 0 else []
    return {**endpoint, "secret": box.encrypt(fresh or generate_secret()), "previous_secrets": previous + kept,
            **extra}


def strip_userinfo(url: str) -> yarl.URL:
    """``url`` without ``user:password@``: how an endpoint is stored, logged and shown."""
    return yarl.URL(url).with_user(None)


def masked_userinfo(url: str) -> str:
    """``url`` as shown beside a request sent with credentials: they were
    sent, and are not shown (``https://…:…@host/path``)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://…:…@{rest}"


def origin(url: str) -> tuple[str, str, int | None]:
    """Where a URL sends to: its scheme, host and port (the scheme's own when
    it names none). Credentials given for one origin are never sent to another."""
    parsed = yarl.URL(url)
    return parsed.scheme.lower(), (parsed.host or "").lower(), parsed.port


def userinfo(url: str) -> str | None:
    """``user:password`` as the URL writes them (percent-encoded, so a ``:`` in
    the user name cannot be taken for the separator)."""
    parsed = yarl.URL(url)
    if parsed.raw_user is None:
        return None
    return f"{parsed.raw_user}:{parsed.raw_password}" if parsed.raw_password is not None else parsed.raw_user


def with_userinfo(box: SecretBox, endpoint: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
    """``endpoint`` with the credentials of its URL (``https://user:pass@…``)
    moved out of it and stored encrypted, like its secret; a URL given again
    without them (an edit of another field) keeps the ones stored."""
    endpoint = dict(endpoint)
    given = userinfo(endpoint["url"])
    endpoint["url"] = str(strip_userinfo(endpoint["url"]))
    endpoint.pop("userinfo_secret", None)
    if given is not None:
        endpoint["userinfo_secret"] = box.encrypt(given)
    elif old is not None and old.get("userinfo_secret") and str(strip_userinfo(old["url"])) == endpoint["url"]:
        endpoint["userinfo_secret"] = old["userinfo_secret"]
    return endpoint


def _fingerprint(secret: str) -> str:
    """Enough of a secret's hash to tell whether a file gives the same one again."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def valid_secrets(box: SecretBox, endpoint: Mapping[str, Any]) -> list[str]:
    """The secrets a delivery is signed with now: the current one first, then
    every rotated-out one still in its overlap."""
    now = time.time()
    return [box.decrypt(endpoint["secret"])] + [
        box.decrypt(p["secret"]) for p in endpoint.get("previous_secrets", ()) if p["expires_at"] > now]
