"""The audit log: who changed what, when, before and after, through the
portal, the API or the command line. Secrets are never written: any key that
looks like one (``secret``, ``*_token``, ``previous_secrets``…) is left out
of what is recorded, whatever its value."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shipcast.app.services import Services
from shipcast.exceptions import StoreError
from shipcast.security.redact import redact

log = logging.getLogger(__name__)

#: Keys never recorded, even redacted: their presence would say nothing useful (a secret's
#: fingerprint would let a guess of it be confirmed).
_LEFT_OUT = ("previous_secrets", "userinfo_secret", "given_fingerprint")


@dataclass(frozen=True)
class Actor:
    """Who made a change: ``name`` as shown in the log (an email, ``operator
    token``, ``token 1a2b… of acme``), and ``via`` what (portal, api, cli)."""

    name: str
    via: str


def scrubbed(value: Any) -> Any:
    """``value`` with every secret gone: secret-looking keys masked, the keys
    of :data:`_LEFT_OUT` dropped, credentials in URLs masked."""
    if isinstance(value, dict):
        return redact({key: scrubbed(item) for key, item in value.items() if key not in _LEFT_OUT})
    if isinstance(value, list):
        return [scrubbed(item) for item in value]
    return redact(value)


async def record(services: Services, actor: Actor, action: str, *, partner_id: str | None,
                 subject: str | None = None, before: Any = None, after: Any = None) -> None:
    """Write one change to the audit log. A change already made is not undone
    when its record cannot be written: the failure is logged loudly instead."""
    try:
        await services.store.add_audit(actor=actor.name, via=actor.via, partner_id=partner_id, action=action,
                                       subject=subject, before=scrubbed(before), after=scrubbed(after))
    except StoreError as exc:
        log.error("audit record lost: %s %s by %s (%s): %s", action, subject, actor.name, actor.via, exc)
