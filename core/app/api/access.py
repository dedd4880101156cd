"""Who may call the API: the operator's token for everything, a partner-scoped
token (``scp_…``) for its own ``/v1/partners/{id}/…`` only; and the error
shapes every route documents."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.types import Scope

from shipcast import metrics
from shipcast.app.audit import Actor
from shipcast.app.services import services_of
from shipcast.app.tokens import PARTNER_TOKEN_PREFIX, token_hash
from shipcast.exceptions import BrokerError, InvalidEvent

_bearer = HTTPBearer(auto_error=False, description="SHIPCAST_API_TOKEN")


class JSONAnswer(JSONResponse):
    """JSON that can always be sent. An error that echoes what a caller sent
    may hold half a UTF-16 surrogate pair (from a ``\\ud800`` escape), which
    UTF-8 cannot encode: it goes back as that escape, not as a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the operator (``partner_id`` is ``None``) or one
    partner, and by which token (the start of its hash, for the audit log)."""

    partner_id: str | None = None
    token_id: str | None = None

    @property
    def actor(self) -> Actor:
        if self.partner_id is None:
            return Actor("operator token", "api")
        return Actor(f"token {self.token_id} of {self.partner_id}", "api")


async def principal(request: Request,
                    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    """The caller, from the bearer token. Plugin routes that need a caller add
    this (or :func:`require_token` / :func:`partner_scope`) themselves: a
    tracking page or a provider's callback must stay reachable without one."""
    services = services_of(request)
    given = credentials.credentials if credentials else ""
    expected = services.settings.api_token
    if _is_operator_token(given, expected):
        return Principal()
    if given.startswith(PARTNER_TOKEN_PREFIX):
        digest = token_hash(given)
        partner_id = await services.store.partner_for_token(digest)
        if partner_id is not None:
            return Principal(partner_id, digest[:16])
    if not expected:
        raise HTTPException(401, "SHIPCAST_API_TOKEN is not set on the server: every request is refused "
                                 "but a partner token's", headers={"WWW-Authenticate": "Bearer"})
    raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def _is_operator_token(given: str, expected: str | None) -> bool:
    """Whether ``given`` is the operator's token (in constant time)."""
    return bool(expected) and hmac.compare_digest(given.encode(), str(expected).encode())


def carries_operator_token(scope: Scope, expected: str | None) -> bool:
    """Whether a request carries the operator's token (``expected``), read
    as :data:`_bearer` reads it: the first ``Authorization`` header, scheme
    ``Bearer`` in any case. It refuses nothing (what the request's route
    requires still does)."""
    header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
    scheme, token = get_authorization_scheme_param(header.decode("latin-1"))
    return scheme.lower() == "bearer" and _is_operator_token(token, expected)


async def require_token(caller: Principal = Depends(principal)) -> Principal:
    """The operator's token only: ingest and every cross-partner route.

    (This and the other dependencies here are coroutines, though they never
    wait: FastAPI runs a plain function in a thread, a hop per request.)"""
    if caller.partner_id is not None:
        raise HTTPException(403, f"this token is scoped to partner {caller.partner_id!r}: "
                                 f"use /v1/partners/{caller.partner_id}/…")
    return caller


async def partner_scope(partner_id: str, caller: Principal = Depends(principal)) -> str:
    """The operator's token, or the token of the partner named in the path."""
    if caller.partner_id is not None and caller.partner_id != partner_id:
        raise HTTPException(403, f"this token is scoped to partner {caller.partner_id!r}")
    return partner_id


async def actor_of(caller: Principal = Depends(principal)) -> Actor:
    """Who the audit log says made a change through the API."""
    return caller.actor


def invalid_answer(exc: InvalidEvent) -> JSONAnswer:
    """The 422 an invalid event gets, naming each field wrong (counted as rejected)."""
    metrics.inc("shipcast_events_rejected_total")
    return JSONAnswer({"detail": exc.errors}, status_code=422)


def broker_answer(exc: BrokerError) -> JSONAnswer:
    """The 503 a request gets while RabbitMQ cannot take or confirm what it publishes."""
    return JSONAnswer({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


#: What each error status means, for the OpenAPI document.
_ERRORS = {
    400: "The body cannot be read as JSON (not UTF-8)",
    401: "No bearer token, or a wrong one",
    403: "A partner's token, reaching beyond its partner",
    404: "No such partner, event, endpoint or token (or not this partner's)",
    409: "It exists already",
    413: "The body is larger than the route reads: SHIPCAST_MAX_BODY_BYTES "
         "(ingest: SHIPCAST_MAX_EVENT_BYTES × SHIPCAST_MAX_BATCH)",
    422: "Invalid: the answer names each field that is wrong",
    429: "Over the partner's quota of messages sent again: try again after Retry-After",
    502: "The provider (Twilio, the SMTP server) refused the message: the answer says why",
    503: "The broker or the store is unreachable right now: try again after Retry-After",
}


#: Every error answer, documented once (as the component ``Error``).
ERROR = {"type": "object", "required": ["detail"], "description": "What is wrong",
         "properties": {"detail": {"description": "In words, or each field wrong with why"},
                        "errors": {"type": "object", "description": "Each field wrong, by its path, and why",
                                   "additionalProperties": {"type": "array", "items": {"type": "string"}}}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` for error statuses a route answers with, each an :data:`ERROR`."""
    schema = {"$ref": "#/components/schemas/Error"}
    return {status: {"description": _ERRORS[status], "content": {"application/json": {"schema": schema}}}
            for status in statuses}
