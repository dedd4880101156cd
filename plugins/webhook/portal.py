"""The webhook channel's pages in the partner portal, under
``/portal/p/{partner_id}/endpoints``: a partner's endpoints with their
health, added, edited, disabled, enabled and deleted; their secrets, revealed
after a confirmation or rotated with an overlap, beside the verification
programs of ``docs/partners.md``; and test events.

Every change goes through :mod:`.admin`, as the partner API's do: the same
validation, the same audit records. A secret is shown only in the answer to
a POST (never to a GET, never kept for a later page).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson
import yaml
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from shipcast.app.api.quotas import resend_quota
from shipcast.app.portal import (
    Person,
    checked_form,
    checked_form_lists,
    form_errors,
    member,
    page,
    partner_admin,
    redirect,
)
from shipcast.app.services import Services, services_of
from shipcast.exceptions import ConfigError

from . import admin
from .headers import MASK
from .headers import MAX_VALUE as MAX_HEADER_VALUE

router = APIRouter(prefix="/portal/p/{partner_id}/endpoints", include_in_schema=False)

#: The endpoint form's fields, as the page names them.
FIELDS = ("id", "url", "events", "description", "ordered", "asymmetric", "rate_limit", "max_concurrency",
          "filter", "headers", "auth_type", "auth_username", "auth_secret")
#: The most characters any one value of a form may hold, and the most event types one may tick.
MAX_VALUE = 2000
MAX_EVENTS = 100
#: The fields that may hold more: the filter, the headers (one per line), a bearer token.
LONG_VALUES = {"filter": 20000, "headers": 20000, "auth_secret": MAX_HEADER_VALUE}
#: Which form field an error of the endpoint's shows beside, by its first part, when not its own name.
ERROR_FIELDS = {"auth.type": "auth_type", "auth.username": "auth_username", "auth.password": "auth_secret",
                "auth.token": "auth_secret", "auth": "auth_type"}
#: What a test send is when nothing says otherwise: the sample the API sends too.
DEFAULT_TEST_TYPE = "OFD"


@contextmanager
def _found() -> Iterator[None]:
    """No such endpoint (or partner): the portal's 404 page."""
    try:
        yield
    except admin.UnknownEndpoint as exc:
        raise HTTPException(404, str(exc)) from exc


def _base(partner_id: str) -> str:
    return f"/portal/p/{partner_id}/endpoints"


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _catalog(services: Services) -> list[tuple[str, str]]:
    """Every registered event type and what it means, for checkboxes and selects."""
    known = services.registry.event_types
    return [(name, known[name].description) for name in known]


def _default_test_type(services: Services, endpoint: Mapping[str, Any]) -> str:
    """The type a test send offers first: one the endpoint receives."""
    known: list[str] = list(services.registry.event_types)
    events = [str(e) for e in endpoint.get("events", ["*"]) if e in known]
    if events:
        return events[0]
    return DEFAULT_TEST_TYPE if DEFAULT_TEST_TYPE in known else known[0]


# -- the endpoint form --------------------------------------------------------------

def _typed(form: Mapping[str, list[str]]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """What the person typed (to show again), and what is too long to take."""
    too_long: dict[str, list[str]] = {}
    typed: dict[str, Any] = {}
    for name in FIELDS:
        values = form.get(name, [])
        limit = LONG_VALUES.get(name, MAX_VALUE)
        if any(len(value) > limit for value in values):
            too_long[name] = [f"at most {limit} characters"]
            values = [value[:limit] for value in values]
        if name == "events":
            if len(values) > MAX_EVENTS:
                too_long[name] = [f"at most {MAX_EVENTS} event types"]
            typed[name] = values[:MAX_EVENTS]
        elif name in ("ordered", "asymmetric"):
            typed[name] = bool(values)
        elif name in ("filter", "headers"):  # several lines, kept as typed
            typed[name] = values[-1].strip("\r\n") if values else ""
        else:
            typed[name] = values[-1].strip() if values else ""
    return typed, too_long


class _PlainLoader(yaml.SafeLoader):
    """YAML's safe loader without anchors, aliases and explicit tags: a few
    lines typed in a form never need them, an alias repeated is how a small
    text grows huge, and a tag (``!!timestamp x``) runs a constructor on
    text it was never meant for."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not taken here", mark)
        if isinstance(event, yaml.NodeEvent) and getattr(event, "tag", None) is not None:
            raise yaml.composer.ComposerError(None, None, "tags (!!name) are not taken here", mark)
        return super().compose_node(parent, index)


def _filter_of(text: str) -> Any:
    """The filter typed, as JSON or YAML.

    :raises ValueError: it is neither, saying where.
    """
    try:
        return yaml.load(text, Loader=_PlainLoader)
    except RecursionError:
        raise ValueError("not JSON or YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ValueError(f"not JSON or YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    except Exception as exc:  # a constructor's own error on a value YAML resolved (a date past the month's end)
        raise ValueError(f"not JSON or YAML: {exc}"[:500]) from None


def _headers_of(text: str) -> dict[str, str] | None:
    """The headers typed, one ``Name: value`` a line; ``None`` for none.

    :raises ValueError: a line is not one, naming it.
    """
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"line {number}: write one header a line, as Name: value")
        if name.strip() in found:
            raise ValueError(f"line {number}: {name.strip()} is given twice")
        found[name.strip()] = value.strip()
    return found or None


def _auth_of(typed: Mapping[str, Any]) -> dict[str, Any] | None:
    """The authentication chosen; an empty password or token keeps the stored one."""
    kind = typed["auth_type"]
    if not kind:
        return None
    auth: dict[str, Any] = {"type": kind}
    if kind == "basic":
        auth["username"] = typed["auth_username"]
    if typed["auth_secret"] and kind in ("basic", "bearer"):
        auth["password" if kind == "basic" else "token"] = typed["auth_secret"]
    return auth


def _body(typed: Mapping[str, Any], *, updating: bool) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The endpoint as the API would be sent it: an empty optional field is
    left out (a new endpoint) or cleared back to the default (an update);
    and what cannot be read of the filter or the headers."""
    body: dict[str, Any] = {"url": typed["url"], "events": typed["events"], "ordered": typed["ordered"],
                            "asymmetric": typed["asymmetric"]}
    errors: dict[str, list[str]] = {}
    readers = {"filter": _filter_of, "headers": _headers_of}
    given: dict[str, Any] = {name: typed[name] for name in ("description", "rate_limit", "max_concurrency")}
    for name, read in readers.items():
        try:
            given[name] = read(typed[name]) if typed[name].strip() else None
        except ValueError as exc:
            errors[name] = [str(exc)]
    given["auth"] = _auth_of(typed)
    for name, value in given.items():
        if value is not None and value != "":
            body[name] = value
        elif updating:
            body[name] = None
    return body, errors


def _shown(value: Any) -> str:
    """A filter as its field shows it: JSON, indented."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _form_values(endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A stored endpoint (as described) as its edit form shows it: its
    headers' values, password or token masked, which given back keep theirs."""
    auth = endpoint["auth"] or {}
    return {"id": endpoint["id"], "url": endpoint["url"], "events": list(endpoint["events"]),
            "description": endpoint["description"] or "", "ordered": endpoint["ordered"],
            "asymmetric": endpoint["asymmetric"],
            "rate_limit": "" if endpoint["rate_limit"] is None else f"{endpoint['rate_limit']:g}",
            "max_concurrency": "" if endpoint["max_concurrency"] is None else str(endpoint["max_concurrency"]),
            "filter": "" if endpoint["filter"] is None else _shown(endpoint["filter"]),
            "headers": "\n".join(f"{name}: {value}" for name, value in endpoint["headers"].items()),
            "auth_type": auth.get("type", ""), "auth_username": auth.get("username", ""),
            "auth_secret": auth.get("password") or auth.get("token") or ""}


def _typed_again(typed: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """What was typed, as the form shows it again after an error, and what
    to say beside it: a header value, password or token typed never comes
    back into the page (one given as :data:`MASK` does: it keeps the stored
    one); a line that is no ``Name: value`` is left out whole, as it may be
    all value."""
    again = dict(typed)
    notes: dict[str, list[str]] = {}
    lines, withheld = [], False
    for line in str(typed.get("headers", "")).splitlines():
        name, colon, value = line.partition(":")
        if not colon:
            withheld = withheld or bool(line.strip())
            lines.append("")
        elif value.strip() in ("", MASK):
            lines.append(line)
        else:
            withheld = True
            lines.append(f"{name}: ")
    if withheld:
        again["headers"] = "\n".join(lines)
        notes["headers"] = ["values typed are not shown again: type them again"]
    if typed.get("auth_secret") and typed["auth_secret"] != MASK:
        again["auth_secret"] = ""
        notes["auth_secret"] = ["not shown again: type it again"]
    return again, notes


def _again(typed: Mapping[str, Any], errors: Mapping[str, list[str]]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The form's values and errors for a page that refuses what was typed."""
    values, notes = _typed_again(typed)
    shown = {field: list(messages) for field, messages in errors.items()}
    for field, messages in notes.items():
        shown.setdefault(field, []).extend(messages)
    return values, shown


def _field_errors(errors: Mapping[str, Any]) -> dict[str, list[str]]:
    """Errors by the field they are shown beside; one of no field is the form's
    (``_form``). Within the filter or the headers, each says where it is."""
    shown: dict[str, list[str]] = {}
    for where, messages in errors.items():
        items = [str(m) for m in (messages if isinstance(messages, list) else [messages])]
        head, _, rest = str(where).partition(".")
        if str(where) in ERROR_FIELDS:
            shown.setdefault(ERROR_FIELDS[str(where)], []).extend(items)
        elif head in ("filter", "headers") and rest:
            shown.setdefault(head, []).extend(f"{rest}: {message}" for message in items)
        else:
            for field, found in form_errors({where: items}).items():
                shown.setdefault(field if field in FIELDS else "_form", []).extend(found)
    return shown


NEW_ENDPOINT = {"id": "", "url": "", "events": ["*"], "description": "", "ordered": False, "asymmetric": False,
                "rate_limit": "", "max_concurrency": "", "filter": "", "headers": "", "auth_type": "",
                "auth_username": "", "auth_secret": ""}


# -- the list, and adding one --------------------------------------------------------

async def _listing(services: Services, partner_id: str) -> list[dict[str, Any]]:
    """Each endpoint as shown, with its health over the last 24 hours."""
    await services.partners.reload(if_older_than=1.0)
    found = [admin.describe(services, partner_id, e)
             for e in admin.endpoints_of(await admin.load(services, partner_id))]
    health = await asyncio.gather(*(admin.stats(services, partner_id, e["id"]) for e in found))
    return [{**endpoint, "health": stats} for endpoint, stats in zip(found, health, strict=True)]


def _list_page(request: Request, person: Person, partner_id: str, endpoints: list[dict[str, Any]], *,
               values: Mapping[str, Any] = NEW_ENDPOINT, errors: Mapping[str, list[str]] | None = None,
               status_code: int = 200) -> Response:
    services = services_of(request)
    return page(request, "endpoint_list.html", person, title="Endpoints", partner_id=partner_id,
                status_code=status_code, endpoints=endpoints, values=values, errors=errors or {},
                catalog=_catalog(services), may_change=person.may_change(partner_id), base=_base(partner_id))


@router.get("")
async def endpoints_page(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    with _found():
        endpoints = await _listing(services_of(request), partner_id)
    return _list_page(request, person, partner_id, endpoints)


@router.post("")
async def add_endpoint(partner_id: str, request: Request, person: Person = Depends(partner_admin),
                       form: dict[str, list[str]] = Depends(checked_form_lists)) -> Response:
    """Register an endpoint, then show its secret, this once, with the
    verification programs and a button that sends it a test event."""
    services = services_of(request)
    typed, errors = _typed(form)
    if not errors:
        with _found():
            partner = await admin.load(services, partner_id)
        fields, errors = _body(typed, updating=False)
        body = {"id": typed["id"] or admin.new_id(partner, typed["url"]), **fields}
    if not errors:
        try:
            with _found():
                shown, secret = await admin.create(services, partner_id, body, person.actor)
        except ConfigError as exc:
            errors = _field_errors(exc.errors or {"_form": [str(exc)]})
        except admin.EndpointExists:
            errors = {"id": ["this partner has an endpoint with that id already: choose another"]}
        else:
            return page(request, "endpoint_created.html", person, title="Endpoint added", partner_id=partner_id,
                        status_code=201, endpoint=shown, secret=secret, base=_base(partner_id),
                        test_type=_default_test_type(services, shown))
    with _found():
        endpoints = await _listing(services, partner_id)
    values, errors = _again(typed, errors)
    return _list_page(request, person, partner_id, endpoints, values=values, errors=errors, status_code=422)


# -- one endpoint: its page and edit form --------------------------------------------

async def _one(services: Services, partner_id: str, endpoint_id: str) -> dict[str, Any]:
    await services.partners.reload(if_older_than=1.0)
    with _found():
        found, index = admin.find(await admin.load(services, partner_id), endpoint_id)
        stats = await admin.stats(services, partner_id, endpoint_id)
    return {**admin.describe(services, partner_id, found[index]), "health": stats}


def _endpoint_page(request: Request, person: Person, partner_id: str, endpoint: dict[str, Any], *,
                   values: Mapping[str, Any] | None = None, errors: Mapping[str, list[str]] | None = None,
                   status_code: int = 200) -> Response:
    return page(request, "endpoint_edit.html", person, title=f"Endpoint {endpoint['id']}", partner_id=partner_id,
                status_code=status_code, endpoint=endpoint, values=values or _form_values(endpoint),
                errors=errors or {}, catalog=_catalog(services_of(request)),
                may_change=person.may_change(partner_id), base=_base(partner_id),
                previous_valid_until=_when(endpoint["previous_secret_valid_until"]),
                failing_since=_when(endpoint["failing_since"]))


@router.get("/{endpoint_id}")
async def endpoint_page(partner_id: str, endpoint_id: str, request: Request,
                        person: Person = Depends(member)) -> Response:
    endpoint = await _one(services_of(request), partner_id, endpoint_id)
    return _endpoint_page(request, person, partner_id, endpoint)


@router.post("/{endpoint_id}")
async def edit_endpoint(partner_id: str, endpoint_id: str, request: Request,
                        person: Person = Depends(partner_admin),
                        form: dict[str, list[str]] = Depends(checked_form_lists)) -> Response:
    services = services_of(request)
    typed, errors = _typed(form)
    if not errors:
        body, errors = _body(typed, updating=True)
    if not errors:
        try:
            with _found():
                await admin.update(services, partner_id, endpoint_id, body, person.actor)
        except ConfigError as exc:
            errors = _field_errors(exc.errors or {"_form": [str(exc)]})
        else:
            return redirect(request, f"{_base(partner_id)}/{endpoint_id}", f"Endpoint {endpoint_id} saved.")
    endpoint = await _one(services, partner_id, endpoint_id)
    values, errors = _again(typed, errors)
    return _endpoint_page(request, person, partner_id, endpoint, values={**values, "id": endpoint_id},
                          errors=errors, status_code=422)


@router.post("/{endpoint_id}/disable")
async def disable_endpoint(partner_id: str, endpoint_id: str, request: Request,
                           person: Person = Depends(partner_admin),
                           _: dict[str, str] = Depends(checked_form)) -> Response:
    with _found():
        await admin.disable(services_of(request), partner_id, endpoint_id, person.actor)
    return redirect(request, f"{_base(partner_id)}/{endpoint_id}",
                    f"Endpoint {endpoint_id} disabled: nothing is sent to it until you enable it.")


@router.post("/{endpoint_id}/enable")
async def enable_endpoint(partner_id: str, endpoint_id: str, request: Request,
                          person: Person = Depends(partner_admin),
                          _: dict[str, str] = Depends(checked_form)) -> Response:
    with _found():
        await admin.enable(services_of(request), partner_id, endpoint_id, person.actor)
    return redirect(request, f"{_base(partner_id)}/{endpoint_id}", f"Endpoint {endpoint_id} enabled.")


@router.get("/{endpoint_id}/delete")
async def delete_page(partner_id: str, endpoint_id: str, request: Request,
                      person: Person = Depends(partner_admin)) -> Response:
    """Deleting asks first, on a page of its own."""
    endpoint = await _one(services_of(request), partner_id, endpoint_id)
    return page(request, "endpoint_delete.html", person, title=f"Delete endpoint {endpoint_id}",
                partner_id=partner_id, endpoint=endpoint, base=_base(partner_id))


@router.post("/{endpoint_id}/delete")
async def delete_endpoint(partner_id: str, endpoint_id: str, request: Request,
                          person: Person = Depends(partner_admin),
                          _: dict[str, str] = Depends(checked_form)) -> Response:
    with _found():
        await admin.delete(services_of(request), partner_id, endpoint_id, person.actor)
    return redirect(request, _base(partner_id), f"Endpoint {endpoint_id} deleted.")


# -- the secret -------------------------------------------------------------------

def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g}"


def _secret_page(request: Request, person: Person, partner_id: str, endpoint: dict[str, Any], *,
                 overlap_hours: str, errors: Mapping[str, list[str]] | None = None,
                 status_code: int = 200) -> Response:
    return page(request, "endpoint_secret.html", person, title=f"Secret of {endpoint['id']}", partner_id=partner_id,
                status_code=status_code, endpoint=endpoint, base=_base(partner_id), overlap_hours=overlap_hours,
                max_hours=_hours(admin.MAX_OVERLAP), errors=errors or {},
                previous_valid_until=_when(endpoint["previous_secret_valid_until"]))


@router.get("/{endpoint_id}/secret")
async def secret_page(partner_id: str, endpoint_id: str, request: Request,
                      person: Person = Depends(partner_admin)) -> Response:
    """Reveal (after this confirmation) or rotate: a GET shows no secret."""
    services = services_of(request)
    endpoint = await _one(services, partner_id, endpoint_id)
    return _secret_page(request, person, partner_id, endpoint,
                        overlap_hours=_hours(services.settings.webhook_secret_overlap))


def _shown_secret(request: Request, person: Person, partner_id: str, endpoint_id: str, secret: Mapping[str, Any],
                  *, rotated: bool, title: str) -> Response:
    return page(request, "endpoint_secret_shown.html", person, title=title, partner_id=partner_id,
                endpoint_id=endpoint_id, secret=secret["secret"], rotated=rotated, base=_base(partner_id),
                previous_valid_until=_when(secret["previous_secret_valid_until"]))


@router.post("/{endpoint_id}/secret/reveal")
async def reveal_secret(partner_id: str, endpoint_id: str, request: Request,
                        person: Person = Depends(partner_admin),
                        _: dict[str, str] = Depends(checked_form)) -> Response:
    with _found():
        secret = await admin.reveal_secret(services_of(request), partner_id, endpoint_id, person.actor)
    return _shown_secret(request, person, partner_id, endpoint_id, secret, rotated=False,
                         title=f"Secret of {endpoint_id}")


@router.post("/{endpoint_id}/secret/rotate")
async def rotate_secret(partner_id: str, endpoint_id: str, request: Request,
                        person: Person = Depends(partner_admin),
                        form: dict[str, str] = Depends(checked_form)) -> Response:
    services = services_of(request)
    typed = form.get("overlap_hours", "").strip()[:32]
    wrong = [f"must be a number of hours from 0 to {_hours(admin.MAX_OVERLAP)}"]
    errors: dict[str, list[str]] = {}
    try:
        overlap: float | None = float(typed) * 3600 if typed else None
    except ValueError:
        errors = {"overlap_hours": wrong}
    if not errors:
        try:
            with _found():
                secret = await admin.rotate_secret(services, partner_id, endpoint_id, None, overlap,
                                                   actor=person.actor)
        except ConfigError as exc:
            for field, messages in exc.errors.items():
                if field == "overlap_seconds":
                    errors["overlap_hours"] = wrong
                else:
                    errors.setdefault("_form", []).extend(messages)
        else:
            return _shown_secret(request, person, partner_id, endpoint_id, secret, rotated=True,
                                 title=f"New secret of {endpoint_id}")
    endpoint = await _one(services, partner_id, endpoint_id)
    return _secret_page(request, person, partner_id, endpoint, overlap_hours=typed, errors=errors, status_code=422)


# -- a test event ------------------------------------------------------------------

def _test_page(request: Request, person: Person, partner_id: str, endpoint: dict[str, Any], *, chosen: str,
               errors: Mapping[str, list[str]] | None = None, status_code: int = 200) -> Response:
    return page(request, "endpoint_test.html", person, title=f"Send a test event to {endpoint['id']}",
                partner_id=partner_id, status_code=status_code, endpoint=endpoint, base=_base(partner_id),
                catalog=_catalog(services_of(request)), chosen=chosen, errors=errors or {})


@router.get("/{endpoint_id}/test")
async def test_page(partner_id: str, endpoint_id: str, request: Request,
                    person: Person = Depends(partner_admin)) -> Response:
    services = services_of(request)
    endpoint = await _one(services, partner_id, endpoint_id)
    return _test_page(request, person, partner_id, endpoint, chosen=_default_test_type(services, endpoint))


@router.post("/{endpoint_id}/test")
async def send_test(partner_id: str, endpoint_id: str, request: Request, person: Person = Depends(partner_admin),
                    form: dict[str, str] = Depends(checked_form)) -> Response:
    """Send a sample event through the same call as the API, then follow its
    message, attempt by attempt, on the message's page."""
    services = services_of(request)
    event_type = form.get("event_type", "")[:64]
    try:
        with _found():
            admin.find(await admin.load(services, partner_id), endpoint_id)
            taken = event_type in services.registry.event_types
            if taken:
                resend_quota(request).take(partner_id, 1)  # a test send fills the shared queue like any other
            try:
                event = await admin.send_test(services, partner_id, endpoint_id, event_type, actor=person.actor)
            except Exception:
                if taken:
                    resend_quota(request).give_back(partner_id, 1)  # nothing was sent
                raise
    except ConfigError as exc:
        endpoint = await _one(services, partner_id, endpoint_id)
        return _test_page(request, person, partner_id, endpoint, chosen=event_type,
                          errors=form_errors(exc.errors), status_code=422)
    return redirect(request, f"/portal/p/{partner_id}/messages/{event.event_id}",
                    f"Test event {event.event_type} sent to {endpoint_id}: its attempts appear below as they happen.")
