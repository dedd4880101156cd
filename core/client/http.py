"""Posting events to ``POST /v1/events``, for an OMS without an outbox.

A 503 (the API's broker or store is down for a moment; a gateway's 502 or
504) and a failed connection are retried, with exponential backoff or after
the ``Retry-After`` the API sent; nothing else is. Every retry sends the same
bytes, so the same event ids: an event the API did publish before its answer
was lost is published again under its id, and consumers drop the copy.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from shipcast.client.envelopes import Draft
from shipcast.exceptions import ApiRefused, ApiUnavailable, InvalidEvent
from shipcast.retry_after import parse_retry_after

#: Statuses that say "not now": the API's own 503, a gateway's 502 and 504.
RETRYABLE = frozenset({502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to try. ``attempts`` counts the first try.
    Backoff doubles from ``backoff`` seconds up to ``max_wait``, with jitter so
    that many OMS workers do not come back at once; a ``Retry-After`` is waited
    out as asked, and one longer than ``max_wait`` ends the retries."""

    attempts: int = 5
    backoff: float = 0.5
    max_wait: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts: at least 1, not {self.attempts}")
        if self.backoff < 0 or self.max_wait < 0:
            raise ValueError(f"backoff and max_wait: not negative ({self.backoff}, {self.max_wait})")

    def wait(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait after failed ``attempt`` (1-based); ``None``: give up."""
        if attempt >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_wait else None
        return min(self.max_wait, self.backoff * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def body(events: Sequence[Draft]) -> bytes:
    """One event as an object, several as an array, as ``POST /v1/events`` takes them.

    :raises InvalidEvent: for an event without a ``sequence``: the API needs
        one (only the relay fills it, from the outbox).
    """
    if not events:
        raise InvalidEvent([{"loc": [], "msg": "no events to send", "type": "too_short"}])
    missing = [{"loc": [index, "sequence"] if len(events) > 1 else ["sequence"], "type": "missing",
                "msg": "required when posting to the API (only the relay fills it, from the outbox)"}
               for index, event in enumerate(events) if event.sequence is None]
    if missing:
        raise InvalidEvent(missing)
    if len(events) == 1:
        return events[0].payload.encode()
    return b"[" + b",".join(event.payload.encode() for event in events) + b"]"


@dataclass
class _Failure:
    """The last failed attempt: what the API said, or that it could not be reached."""

    status: int | None
    detail: Any
    retry_after: float | None = None


def _read(response: httpx.Response) -> list[str] | _Failure:
    """The ids of a 202, or the failure to retry.

    :raises InvalidEvent: on a 422, with the API's errors per field.
    :raises ApiRefused: on any other answer that is not to be retried.
    """
    try:
        answer: Any = response.json()
    except ValueError:
        answer = {"detail": response.text[:500]}
    detail = answer.get("detail", answer) if isinstance(answer, dict) else answer
    if response.status_code == 202 and isinstance(answer, dict) and isinstance(answer.get("ids"), list):
        return [str(event_id) for event_id in answer["ids"]]
    if response.status_code == 422 and isinstance(detail, list):
        raise InvalidEvent(detail)
    if response.status_code in RETRYABLE:
        return _Failure(response.status_code, detail, parse_retry_after(response.headers.get("retry-after")))
    raise ApiRefused(f"shipcast API answered {response.status_code} to POST /v1/events: {detail}",
                     status=response.status_code, detail=detail)


def _unreachable(exc: httpx.TransportError) -> _Failure:
    return _Failure(None, f"{type(exc).__name__}: {exc}")


def _wait_after(retry: RetryPolicy, failure: _Failure, attempt: int) -> float:
    """Seconds to wait before the next attempt.

    :raises ApiUnavailable: when no attempt is left, or the API asks for a
        longer wait than the policy allows, naming what it answered last.
    """
    wait = retry.wait(attempt, failure.retry_after)
    if wait is not None:
        return wait
    said = f"answered {failure.status}: {failure.detail}" if failure.status else f"unreachable ({failure.detail})"
    if failure.retry_after is not None:
        said += f"; Retry-After {failure.retry_after:g} s"
    raise ApiUnavailable(f"shipcast API did not take the events after {attempt} attempt(s): {said}",
                         status=failure.status, detail=failure.detail, attempts=attempt)


def _headers(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}


class Client:
    """Send events to shipcast's API from synchronous code.

    :param base_url: where the API is (``http://shipcast.internal:8000``).
    :param token: ``SHIPCAST_API_TOKEN``.
    :param timeout: seconds for each attempt's connect, write and read.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0, retry: RetryPolicy = RetryPolicy(),
                 transport: httpx.BaseTransport | None = None) -> None:
        self.retry = retry
        self._http = httpx.Client(base_url=base_url, headers=_headers(token), timeout=timeout, transport=transport)

    def send(self, *events: Draft) -> list[str]:
        """Post ``events`` (one request, all or nothing) and return their ids
        once the API has had each confirmed by RabbitMQ.

        :raises InvalidEvent: the API's 422, or an event without a sequence.
        :raises ApiRefused: any other 4xx, or a 500.
        :raises ApiUnavailable: 503s or no connection through every attempt.
        """
        content = body(events)
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = _read(self._http.post("/v1/events", content=content))
            except httpx.TransportError as exc:
                outcome = _unreachable(exc)
            if not isinstance(outcome, _Failure):
                return outcome
            time.sleep(_wait_after(self.retry, outcome, attempt))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """Send events to shipcast's API from asyncio code; as :class:`Client`."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0, retry: RetryPolicy = RetryPolicy(),
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.retry = retry
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(token), timeout=timeout,
                                       transport=transport)

    async def send(self, *events: Draft) -> list[str]:
        """As :meth:`Client.send`."""
        content = body(events)
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = _read(await self._http.post("/v1/events", content=content))
            except httpx.TransportError as exc:
                outcome = _unreachable(exc)
            if not isinstance(outcome, _Failure):
                return outcome
            await asyncio.sleep(_wait_after(self.retry, outcome, attempt))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

