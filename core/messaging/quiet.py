"""When a customer message may go: quiet hours, and the messages critical
enough to go whatever the hour."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from datetime import time as dt_time
from typing import Any
from zoneinfo import ZoneInfo

from shipcast.model.envelope import Event

#: Event types after which an order's earlier kinds of message are stale.
TERMINAL = ("DEL", "RET")


#: Event types sent whatever the quiet hours and whatever the config says:
#: OTPs and failures cannot wait. A config's ``critical`` only adds to them.
CRITICAL = ("OFD", "FAIL")


def critical(event: Event, config: Mapping[str, Any]) -> bool:
    """Whether this message goes out even in the merchant's quiet hours: an
    OFD or FAIL, any event carrying an OTP, or a type the config's
    ``critical`` adds. No config can make an OTP or a failure wait."""
    return event.event_type in CRITICAL or event.otp is not None \
        or event.event_type in (config.get("critical") or ())


def quiet_for(quiet: Mapping[str, Any] | None, at: datetime) -> float:
    """Seconds until the quiet hours end, or 0 outside them."""
    if not quiet:
        return 0.0
    zone = ZoneInfo(quiet.get("timezone") or "Asia/Kolkata")
    local = at.astimezone(zone)
    start, end = (_as_time(quiet["start"]), _as_time(quiet["end"]))
    now = local.time().replace(tzinfo=None)
    inside = start <= now < end if start < end else (now >= start or now < end)
    if not inside:
        return 0.0
    ends = datetime.combine(local.date(), end, zone)
    if ends <= local:
        ends += timedelta(days=1)
    return (ends - local).total_seconds()


def _as_time(value: Any) -> dt_time:
    return value if isinstance(value, dt_time) else dt_time.fromisoformat(str(value))
