"""Signing in and out, the portal's home, its static files, and its error pages."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.resources import files

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from shipcast.app.people import Person, digest, end_session, start_session
from shipcast.app.portal.session import COOKIE, SignInRequired, checked_form, current_person, signed_in
from shipcast.app.portal.web import page, redirect
from shipcast.app.services import services_of

router = APIRouter(prefix="/portal", include_in_schema=False)

#: The portal's own files: a stylesheet and one script, nothing from elsewhere.
STATIC = {"portal.css": "text/css; charset=utf-8", "portal.js": "text/javascript; charset=utf-8"}


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404, "no such file")
    body = files("shipcast.templates").joinpath("portal", name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "public, max-age=300",
                                                           "X-Content-Type-Options": "nosniff"})


@router.get("/")
async def home(request: Request, person: Person = Depends(signed_in)) -> Response:
    """An operator's home is the partners list; a partner's person's, their overview."""
    if person.is_operator:
        return redirect(request, "/portal/operator/")
    return redirect(request, f"/portal/p/{person.partner_id}/")


@router.get("/signin")
async def signin_page(request: Request, token: str | None = None) -> Response:
    """With an invitation's token: who it signs in, and a button to use it
    (a link scanner fetching the link does not use it up). Without: how to get one."""
    invitation = None
    if token and len(token) <= 100:
        invitation = await services_of(request).store.peek_invitation(digest(token))
    expired = invitation is not None and invitation["used_at"] is None \
        and invitation["expires_at"] <= datetime.now(UTC)
    return page(request, "signin.html", await current_person(request), title="Sign in", token=token,
                invitation=None if expired else invitation, failed=expired or (bool(token) and invitation is None))


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}".lower()


def cross_site(request: Request) -> bool:
    """Whether a form was posted from another site's page (the browser says so
    in ``Sec-Fetch-Site``, or by an ``Origin`` other than the portal's own)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False  # not a browser's cross-site POST: every browser that sends forms cross-site says Origin
    own = {_origin(str(request.base_url)), _origin(services_of(request).settings.public_url)}
    return origin.lower() not in own


@router.post("/signin")
async def signin(request: Request) -> Response:
    """Use an invitation. Not from another site's page: a form there could sign
    this browser in as someone else (login CSRF). A session this browser had
    ends: the new cookie replaces it."""
    if cross_site(request):
        raise HTTPException(403, "sign in from the portal's own sign-in page: open your invitation link again")
    form = await request.form()
    token = form.get("token")
    services = services_of(request)
    started = await start_session(services, token) if isinstance(token, str) and len(token) <= 100 else None
    if started is None:
        return page(request, "signin.html", None, title="Sign in", token=None, invitation=None,
                    status_code=400, failed=True)
    cookie, person = started
    previous = request.cookies.get(COOKIE)
    if previous and len(previous) <= 100:
        await end_session(services, previous)
    response = redirect(request, "/portal/", f"Signed in as {person.email}.")
    settings = services.settings
    response.set_cookie(COOKIE, cookie, max_age=int(settings.portal_session_max), path="/portal", httponly=True,
                        samesite="lax", secure=settings.public_url.startswith("https:"))
    return response


@router.post("/signout")
async def signout(request: Request, _: dict[str, str] = Depends(checked_form)) -> Response:
    cookie = request.cookies.get(COOKIE)
    if cookie:
        await end_session(services_of(request), cookie)
    response = redirect(request, "/portal/signin", "Signed out.")
    response.delete_cookie(COOKIE, path="/portal")
    return response


def portal_error(request: Request, status: int, detail: str) -> Response:
    """An error on a portal page, as a page."""
    titles = {403: "Not allowed", 404: "Not found", 413: "Too large", 422: "Not valid", 429: "Too many"}
    person = request.scope.get("portal_person")
    return page(request, "error.html", person, title=titles.get(status, "Something went wrong"),
                status_code=status, message=detail if status != 404 else "There is no such page here.")


def sign_in_first(request: Request, exc: SignInRequired) -> Response:
    """A page asked without a session: to the sign-in page (a live fragment: 401)."""
    if request.method != "GET" or request.headers.get("x-shipcast-fragment"):
        return page(request, "error.html", None, title="Signed out", status_code=401,
                    message="Your session has ended: sign in again with a new invitation link.")
    return redirect(request, "/portal/signin", "Sign in to see that page.")
