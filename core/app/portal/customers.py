"""A merchant's pages about their customers: the customer message log (what
each customer got, or why not, found by order or by phone or email) and the
customers' opt-outs, looked up and lifted. Both read and change through
:mod:`shipcast.app.customers`, as the partner API does."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from shipcast.app import customers
from shipcast.app.paging import encode_cursor, page_start
from shipcast.app.people import Person
from shipcast.app.portal.session import checked_form, member, partner_admin
from shipcast.app.portal.web import page, redirect
from shipcast.app.services import services_of
from shipcast.exceptions import ConfigError
from shipcast.model.outcomes import DeliveryStatus

router = APIRouter(prefix="/portal/p/{partner_id}", include_in_schema=False)

#: Rows on one page.
PAGE = 25


def _base(partner_id: str) -> str:
    return f"/portal/p/{partner_id}"


def _typed(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """What the search form sent, each field cut to a length it may not pass."""
    return {name: str(request.query_params.get(name) or "").strip()[:customers.FIELDS[name] + 1] for name in names}


def _after(request: Request, size: int, errors: dict[str, list[str]]) -> Any:
    try:
        return page_start(request.query_params.get("before"), size)
    except ConfigError as exc:
        errors.update(exc.errors)
        return None


@router.get("/customers")
async def customer_log(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    """What the partner's customers got: searched, paged by key."""
    services = services_of(request)
    values = _typed(request, tuple(customers.FIELDS))
    errors: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    older = None
    capped = False
    search = None
    try:
        search = customers.parse_customer_search(services, await services.partners.get(partner_id), values)
    except ConfigError as exc:
        errors.update({name: list(messages) for name, messages in exc.errors.items()})
    after = _after(request, 4, errors)
    if search is not None and not errors:
        found = await customers.customer_messages(services, partner_id, search, after=after, limit=PAGE)
        rows, capped = found.rows, found.capped
        if found.next is not None:
            kept = {name: value for name, value in values.items() if value}
            older = f"{_base(partner_id)}/customers?{urlencode({**kept, 'before': encode_cursor(found.next)})}"
    return page(request, "partner_customers.html", person, title="Customer messages", partner_id=partner_id,
                status_code=422 if errors else 200, base=_base(partner_id), rows=rows, older=older, capped=capped,
                scan_limit=customers.SCAN_LIMIT, values=values, errors=errors, paged=after is not None,
                searched=any(values.values()), channels=list(customers.customer_channels(services)),
                statuses=[status.value for status in DeliveryStatus])


async def opt_outs_page(request: Request, partner_id: str, person: Person, *,
                        lift_errors: dict[str, list[str]] | None = None, failed: str = "",
                        status_code: int = 200) -> Response:
    services = services_of(request)
    values = _typed(request, ("phone", "email", "channel"))
    errors: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    older = None
    after = _after(request, 3, errors)
    looked_up = values["phone"] or values["email"]
    try:
        if values["phone"] and values["email"]:
            errors["email"] = ["look up by a phone or an email, not both"]
        elif looked_up:
            by = "phone" if values["phone"] else "email"
            rows = await customers.find_opt_outs(services, partner_id, by, looked_up, values["channel"] or None)
        elif not errors:
            rows, next_key = await customers.opt_outs_page(services, partner_id, channel=values["channel"] or None,
                                                           after=after, limit=PAGE)
            if next_key is not None:
                kept = {name: value for name, value in values.items() if value}
                older = f"{_base(partner_id)}/opt-outs?{urlencode({**kept, 'before': encode_cursor(next_key)})}"
    except ConfigError as exc:
        errors.update({name: list(messages) for name, messages in exc.errors.items()})
    return page(request, "partner_opt_outs.html", person, title="Opt-outs", partner_id=partner_id,
                status_code=422 if errors and status_code == 200 else status_code, base=_base(partner_id),
                rows=rows, older=older, values=values, errors=errors, paged=after is not None,
                looked_up=bool(looked_up), channels=list(customers.customer_channels(services)),
                may_change=person.may_change(partner_id), lift_errors=lift_errors or {}, failed=failed)


@router.get("/opt-outs")
async def opt_outs(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    return await opt_outs_page(request, partner_id, person)


@router.post("/opt-outs/lift")
async def lift(partner_id: str, request: Request, person: Person = Depends(partner_admin),
               form: dict[str, str] = Depends(checked_form)) -> Response:
    """Lift one opt-out; one the customer asked for only with the box ticked that says they asked again."""
    channel, opt_out_id = (form.get("channel") or "")[:64], (form.get("id") or "")[:64]
    try:
        lifted = await customers.lift_opt_out(services_of(request), partner_id, channel, opt_out_id, person.actor,
                                              customer_asked=form.get("customer_asked") == "on")
    except customers.NotFound:
        return redirect(request, f"{_base(partner_id)}/opt-outs", "No such opt-out: it may have been lifted already.")
    except ConfigError as exc:
        return await opt_outs_page(request, partner_id, person, failed=opt_out_id, status_code=422,
                                   lift_errors={name: list(messages) for name, messages in exc.errors.items()})
    who = lifted["address"] or f"opt-out {lifted['id']}"
    notice = f"Lifted: {lifted['channel']} messages go to {who} again."
    if lifted["note"]:
        notice += f" {lifted['note']}"
    return redirect(request, f"{_base(partner_id)}/opt-outs", notice)
