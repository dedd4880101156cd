"""How customer identifiers (phone numbers, email addresses) are kept: as
hashes, never in clear."""

from __future__ import annotations

import hashlib


def address_hash(address: str) -> str:
    """A phone number or email address, as the store keeps it: hashed, never in clear."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()
