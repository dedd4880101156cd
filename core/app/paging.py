"""Keyset paging's cursors: a page's last key (a time, then strings) carried
in the link to the next page as ``before=…``, and read back from it. The
portal's and the partner API's paged lists share them."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import orjson

from shipcast.exceptions import ConfigError

#: The longest cursor read: a key is a time and a few bounded strings.
CURSOR_MAX = 1000


def parse_when(value: str) -> datetime:
    """A date and time as a ``datetime-local`` input sends it (UTC), or RFC 3339.

    :raises ValueError: it is neither.
    """
    when = datetime.fromisoformat(value)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def encode_cursor(key: tuple[datetime, *tuple[str, ...]]) -> str:
    """A page's key as the ``before=`` of the link to the next page."""
    at, *rest = key
    return base64.urlsafe_b64encode(orjson.dumps([at.isoformat(), *rest])).decode().rstrip("=")


def decode_cursor(text: str, size: int = 4) -> tuple[Any, ...]:
    """The key of ``size`` parts that :func:`encode_cursor` wrote: a time, then strings.

    :raises ValueError: the cursor was not made by :func:`encode_cursor` (or for another list).
    """
    if len(text) > CURSOR_MAX:
        raise ValueError("too long")
    try:
        data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("unreadable") from exc
    if not (isinstance(data, list) and len(data) == size
            and all(isinstance(item, str) and "\x00" not in item for item in data)):
        raise ValueError("not a cursor")
    return parse_when(data[0]), *data[1:]


def page_start(before: str | None, size: int = 4) -> tuple[Any, ...] | None:
    """Where a page starts: the key in its ``before=``, or ``None`` for the newest.

    :raises ConfigError: naming ``before``, when it is not a cursor of this list.
    """
    if not before:
        return None
    try:
        return decode_cursor(before, size)
    except ValueError:
        raise ConfigError("invalid page", {"before": [
            "this page's link is damaged (not the next of an earlier page): start again from the newest"]}) from None
