"""How customer identifiers (phone numbers, email addresses) are kept: keyed
hashes (HMAC-SHA256 under a key derived from ``SHIPCAST_SECRET_KEY``), never
in clear, and never a bare hash a dictionary of phone numbers reverses.

The first configured key keys new records; every configured key, and the
bare SHA-256 of earlier versions, still matches, so rotating the secret key
(new first, old after) loses no opt-out. A record found under an older key is
keyed again under the first one when it is next looked up.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from functools import cached_property


def normalized(address: str) -> str:
    return address.strip().lower()


def mask(address: str) -> str:
    """An address as the delivery log keeps it: the start and last four characters."""
    address = address.strip()
    return address[:3] + "*" * max(0, len(address) - 7) + address[-4:] if len(address) > 7 else "***"


def bare_hash(address: str) -> str:
    """The unkeyed SHA-256 earlier versions stored: still matched, never written."""
    return hashlib.sha256(normalized(address).encode()).hexdigest()


class Identifiers:
    """Keys customer identifiers with the keys ``keys()`` gives (first keys,
    all match); read lazily, so a process that stores none needs no key."""

    def __init__(self, keys: Callable[[], Sequence[bytes]]) -> None:
        self._keys = keys

    @cached_property
    def keys(self) -> tuple[bytes, ...]:
        found = tuple(self._keys())
        if not found:
            raise ValueError("no key to key customer identifiers with")
        return found

    def key(self, address: str) -> str:
        """How ``address`` is stored from now on."""
        return hmac.new(self.keys[0], normalized(address).encode(), hashlib.sha256).hexdigest()

    def matches(self, address: str) -> list[str]:
        """Every form ``address`` may be stored in: keyed under each key, first
        the current one, then the bare hash of earlier versions."""
        keyed = [hmac.new(key, normalized(address).encode(), hashlib.sha256).hexdigest() for key in self.keys]
        return [*keyed, bare_hash(address)]
