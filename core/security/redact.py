"""Keep secrets out of output: API answers, ``partners list``, logs."""

from __future__ import annotations

from typing import Any

_SECRET_KEYS = ("secret", "token", "password", "auth_token", "api_key")


def _is_secret(key: str) -> bool:
    return key in _SECRET_KEYS or key.endswith(("_secret", "_token", "_password"))


def redact(value: Any) -> Any:
    """A copy of ``value`` with every secret-looking key's value masked."""
    if isinstance(value, dict):
        return {key: ("…redacted…" if _is_secret(str(key)) and value[key] else redact(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value
