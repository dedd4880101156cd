"""Request bodies are bounded before they are read: a declared length over
the limit is refused at once, and a body that grows past it while it is
read (no Content-Length, or one that lies) is cut off there. Either way the
caller gets 413, and nothing larger than the limit is ever held or parsed.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def too_large(limit: int, seen: int | None = None) -> JSONResponse:
    size = f"over {limit}" if seen is None else str(seen)
    return JSONResponse({"detail": f"request body is {size} bytes; at most {limit} are read here"}, status_code=413)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


class BodyLimit:
    """ASGI middleware: ``limit_for(scope)`` gives each request's bound, in bytes.

    Past the bound the app is told the client went away (so it stops reading
    and parsing), whatever it answers then is dropped, and the caller gets the
    413 instead.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:  # refused before a byte of it is read
            await too_large(limit, int(declared))(scope, _nothing, send)
            return
        seen, over, started = 0, False, False

        async def bounded() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a body it never got whole: the 413 goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded, answer)
        except Exception:
            if not over:
                raise
        if over and not started:
            await too_large(limit)(scope, _nothing, send)
