"""Keep secrets out of output: API answers, ``partners list``, logs."""

from __future__ import annotations

import re
from typing import Any

from shipcast.security.crypto import PREFIX as ENCRYPTED

#: ``scheme://user:password@`` in a URL: the credentials are masked wherever a URL is shown.
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)

_SECRET_KEYS = ("secret", "token", "password", "auth_token", "api_key")
#: What a secret is shown as.
REDACTED = "…redacted…"


def _is_secret(key: str) -> bool:
    return key in _SECRET_KEYS or key.endswith(("_secret", "_token", "_password"))


def redact(value: Any) -> Any:
    """A copy of ``value`` with every secret-looking key's value masked, and
    every value stored encrypted (an endpoint's own headers, by their names)."""
    if isinstance(value, dict):
        return {key: (REDACTED if _is_secret(str(key)) and value[key] else redact(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str) and value.startswith(ENCRYPTED):
        return REDACTED
    if isinstance(value, str) and "@" in value:
        return _USERINFO.sub(rf"\1{REDACTED}@", value)
    return value


def without_redacted(value: Any) -> Any:
    """A copy of ``value`` without the secrets :func:`redact` masked: what
    comes back from a form that showed them is "keep the stored one", never
    a new secret that reads ``…redacted…``."""
    if isinstance(value, dict):
        return {key: without_redacted(item) for key, item in value.items()
                if not (_is_secret(str(key)) and item == REDACTED)}
    if isinstance(value, list):
        return [without_redacted(item) for item in value]
    return value
