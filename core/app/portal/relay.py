"""The operator's Relay page, ``/portal/operator/relay``: the outbox relay's
table as ``shipcast relay status`` shows it (pending rows, the oldest one's
age, the failed rows), and retrying or deleting failed rows through the
same functions as ``shipcast relay retry`` and ``delete``, audited. The
page reads the outbox named by ``SHIPCAST_RELAY_*`` in the API's process."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from shipcast.app.people import Person
from shipcast.app.portal.session import checked_form, operator
from shipcast.app.portal.web import page, redirect
from shipcast.app.relay.actions import SHOWN, delete_failed, overview, relay_source, retry_failed
from shipcast.app.relay.source import SOURCE_ERRORS, OutboxSource
from shipcast.app.services import services_of
from shipcast.exceptions import ConfigError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/portal/operator/relay", include_in_schema=False, dependencies=[Depends(operator)])

PATH = "/portal/operator/relay"


def _source(request: Request) -> OutboxSource | None:
    try:
        return relay_source(services_of(request).settings)
    except ConfigError:
        return None


async def _relay_page(request: Request, person: Person, *, status_code: int = 200,
                      errors: dict[str, list[str]] | None = None) -> Response:
    source = _source(request)
    context: dict[str, Any] = {"configured": source is not None, "stats": None, "failed": [], "unreachable": None}
    if source is not None:
        context["where"] = f"{source.dialect} {source.database}.{source.table_name}"
        try:
            context["stats"], context["failed"] = await overview(source)
        except SOURCE_ERRORS as exc:
            context["unreachable"] = str(exc).splitlines()[0][:300]
            log.warning("the Relay page cannot read the outbox: %s", exc)
        finally:
            await source.close()
    return page(request, "operator_relay.html", person, title="Relay", status_code=status_code, shown=SHOWN,
                errors=errors or {}, **context)


@router.get("")
async def relay_page(request: Request, person: Person = Depends(operator)) -> Response:
    return await _relay_page(request, person)


def _ids(form: dict[str, str], *, every: bool) -> tuple[list[int] | None, dict[str, list[str]]]:
    """The row named by the form's ``id`` (``all``: every failed row, where ``every``)."""
    given = form.get("id", "").strip()
    if every and given == "all":
        return None, {}
    if not given.isascii() or not given.isdigit() or len(given) > 19 or int(given) < 1:
        return [], {"id": [f"{given[:40]!r} is not an outbox row's id"]}
    return [int(given)], {}


async def _change(request: Request, form: dict[str, str], person: Person, action: str) -> Response:
    services = services_of(request)
    ids, errors = _ids(form, every=action == "retry")
    source = _source(request)
    if source is None:
        errors["relay"] = ["SHIPCAST_RELAY_DATABASE_URL is not set in this process"]
    if errors or source is None:
        return await _relay_page(request, person, status_code=422, errors=errors)
    try:
        if action == "retry":
            done = await retry_failed(services, source, person.actor, ids)
        else:
            done = await delete_failed(services, source, person.actor, ids or [])
    except SOURCE_ERRORS as exc:
        return await _relay_page(request, person, status_code=503,
                                 errors={"relay": [f"the outbox cannot be reached now: {str(exc).splitlines()[0][:300]}"]})
    finally:
        await source.close()
    verb = "Retried" if action == "retry" else "Deleted"
    shown = ", ".join(map(str, done)) or "none (no such failed row)"
    return redirect(request, PATH, f"{verb} {len(done)} failed row{'s' * (len(done) != 1)}: {shown}.")


@router.post("/retry")
async def retry(request: Request, form: dict[str, str] = Depends(checked_form),
                person: Person = Depends(operator)) -> Response:
    """Make a failed row (``id``), or every one (``id=all``), pending again."""
    return await _change(request, form, person, "retry")


@router.post("/delete")
async def delete(request: Request, form: dict[str, str] = Depends(checked_form),
                 person: Person = Depends(operator)) -> Response:
    """Delete one failed row (``id``) for good."""
    return await _change(request, form, person, "delete")
