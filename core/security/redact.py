"""Keep secrets out of output: API answers, ``partners list``, logs."""

from __future__ import annotations

import re
from typing import Any

from shipcast.security.crypto import PREFIX as ENCRYPTED

#: ``scheme://user:password@`` in a URL: the credentials are masked wherever a URL is shown.
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)

_SECRET_KEYS = ("secret", "token", "password", "auth_token", "api_key")


def _is_secret(key: str) -> bool:
    return key in _SECRET_KEYS or key.endswith(("_secret", "_token", "_password"))


def redact(value: Any) -> Any:
    """A copy of ``value`` with every secret-looking key's value masked, and
    every value stored encrypted (an endpoint's own headers, by their names)."""
    if isinstance(value, dict):
        return {key: ("…redacted…" if _is_secret(str(key)) and value[key] else redact(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str) and value.startswith(ENCRYPTED):
        return "…redacted…"
    if isinstance(value, str) and "@" in value:
        return _USERINFO.sub(r"\1…redacted…@", value)
    return value
