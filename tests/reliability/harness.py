"""The fault-injection harness.

An :class:`Oms` posts events to shipcast's ingest API as an order-management
system does, retrying a refused batch with the same ids, and keeps the ledger
of every event id shipcast confirmed (a 202). Partners' receivers count what
they get. :func:`account` then checks the ledger against what happened: every
confirmed id reached each of its targets, or lies in the dead queue with a
reason; it counts duplicates, parked events and the time delivery took to
resume after each fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import orjson
from aiohttp import web

from tests.bound import example
from shipcast.amqp.parking import list_dead
from tests.bound import channels
from shipcast.app.services import Services
from shipcast.settings import Settings

from ..helpers import Received, Receiver, Subprocess, eventually, serve

EVENT_TYPES = ("OFD", "DEL", "FAIL", "RET")


@dataclass
class Row:
    """One scenario's line in the report (docs/reliability.md has the same table)."""

    scenario: str
    events: int
    faults: str
    lost: int
    duplicates: int
    parked: int
    #: Seconds from the end of a fault to the next delivery, the worst over the run's faults.
    recovery: float | None
    notes: str = ""

    def record(self, record_property: Any) -> None:
        """Hand the row to the suite's summary (it travels with the test's report)."""
        record_property("reliability", asdict(self))


class Oms:
    """Posts ``n`` events over ``partners`` at ``rate`` events a second, in
    batches, and keeps the ledger of confirmed ids.

    A batch refused with a 503, a 502 or no answer at all (shipcast or its
    broker is down) is posted again with the same ids after a pause, as an
    OMS must; any other refusal is a failure of the scenario.

    With ``hold``, it stops after posting that share of its events until
    :meth:`resume`, so a fault injected then still has events to post after
    it, however slowly the machine delivers the first ones.
    """

    def __init__(self, base_url: str, token: str, partners: Sequence[str], n: int, *,
                 rate: float = 1000.0, batch: int = 50, hold: float | None = None) -> None:
        self.base_url = base_url
        self.token = token
        self.rate = rate
        self.batch = batch
        self.bodies = [orjson.loads(example(EVENT_TYPES[i % len(EVENT_TYPES)], partner_id=partners[i % len(partners)],
                                            order_id=f"ORD-{i}", sequence=i).to_json()) for i in range(n)]
        #: Event id → when shipcast confirmed it (time.monotonic()).
        self.confirmed: dict[str, float] = {}
        self.partner_of = {b["event_id"]: b["partner_id"] for b in self.bodies}
        self._resumed = asyncio.Event()
        self._hold = len(self.bodies)
        if hold is not None:
            self._hold_at(hold)
        #: Refused posts (each posted again), and what refused them.
        self.refusals: Counter[str] = Counter()
        self.last_refusal = ""
        self._task: asyncio.Task[None] | None = None

    async def _post(self, client: httpx.AsyncClient, batch: list[dict[str, Any]]) -> None:
        while True:
            try:
                response = await client.post("/v1/events", content=orjson.dumps(batch))
            except httpx.TransportError as exc:
                self.refusals[type(exc).__name__] += 1
                self.last_refusal = repr(exc)
            else:
                if response.status_code == 202:
                    at = time.monotonic()
                    self.confirmed.update((body["event_id"], at) for body in batch)
                    return
                if response.status_code not in (502, 503):
                    raise AssertionError(f"ingest answered {response.status_code}: {response.text}")
                self.refusals[str(response.status_code)] += 1
                self.last_refusal = f"{response.status_code} {response.text}"
            await asyncio.sleep(0.2)

    async def run(self) -> None:
        headers = {"authorization": f"Bearer {self.token}", "content-type": "application/json"}
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=20) as client:
            start = time.monotonic()
            for sent in range(0, len(self.bodies), self.batch):
                if sent >= self._hold:
                    while sent >= self._hold:
                        await self._resumed.wait()
                    start = time.monotonic() - sent / self.rate
                ahead = start + sent / self.rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                await self._post(client, self.bodies[sent:sent + self.batch])

    def start(self) -> Oms:
        self._task = asyncio.create_task(self.run(), name="oms")
        return self

    def resume(self, until: float | None = None) -> None:
        """Post the rest of the events, or up to the share ``until`` and hold again."""
        if until is None:
            self._hold = len(self.bodies)
            self._resumed.set()
        else:
            self._hold_at(until)

    def _hold_at(self, share: float) -> None:
        self._hold = int(len(self.bodies) * share)
        woken, self._resumed = self._resumed, asyncio.Event()
        woken.set()

    async def done(self, timeout: float = 180) -> None:
        assert self._task is not None
        try:
            await asyncio.wait_for(self._task, timeout)
        except TimeoutError:
            raise AssertionError(f"the OMS could not post all its events in {timeout}s: {self.sent} confirmed; "
                                 f"refusals {dict(self.refusals)}, the last: {self.last_refusal}") from None

    @property
    def sent(self) -> int:
        return len(self.confirmed)

    def stopped(self) -> str:
        """Why the OMS stopped posting before its last event, if it did ("" if it did not)."""
        return stopped(self._task)


def stopped(task: asyncio.Task[None] | None) -> str:
    """Why an OMS's task ended, if it did: said with a scenario's failure."""
    if task is None or not task.done():
        return ""
    if task.cancelled():
        return "; its task was cancelled"
    return f"; its task ended: {task.exception()!r}" if task.exception() else "; its task ended"


@dataclass
class Target:
    """A partner's endpoint as the ledger sees it: which partner's events it
    should get, and the receiver that records them."""

    partner_id: str
    endpoint: str
    receiver: Receiver | RemoteReceiver

    def delivered(self) -> Counter[str]:
        return Counter(r.headers["webhook-id"] for r in self.receiver.delivered)


def webhook_doc(targets: Sequence[Target], **endpoint: Any) -> dict[str, Any]:
    """A partners file giving each partner its targets' endpoints."""
    partners: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        partners.setdefault(target.partner_id, []).append(
            {"id": target.endpoint, "url": target.receiver.url, "events": ["*"], **endpoint})
    return {"partners": [{"id": p, "name": p.title(), "channels": {"webhook": {"endpoints": endpoints}}}
                         for p, endpoints in partners.items()]}


@dataclass
class Accounts:
    """What :func:`account` found."""

    lost: dict[tuple[str, str], set[str]]
    duplicates: int
    parked: int
    #: Parked events per partner/endpoint.
    parked_by: Counter[str]


async def dead_letters(services: Services) -> list[tuple[str, str, str]]:
    """(event id, target, reason) of every message in the webhook dead queue."""
    topology = channels()["webhook"].topology(services.settings.retry_delays)
    # After a restart of RabbitMQ, this process's own connection may come back after the workers'.
    await eventually(lambda: services.broker.connected, timeout=60)
    letters = await list_dead(services.broker, topology, limit=1_000_000)
    return [(letter.event_id, letter.target or "", letter.reason or "") for letter in letters]


async def account(oms: Oms, targets: Sequence[Target], services: Services, *, stall: float = 120,
                  limit: float = 150) -> Accounts:
    """Wait until every confirmed id reached each target of its partner or
    was parked for it, then count. Fails naming the missing ids if the
    ledger does not balance before ``stall`` seconds pass with nothing more
    delivered or parked, or ``limit`` seconds in all (keep it inside the test's
    timeout, so the ledger is reported): on a loaded machine a
    bad endpoint's retries may still be parking events, which is slow, not lost."""
    expected = {(t.partner_id, t.endpoint): {i for i, p in oms.partner_of.items() if p == t.partner_id and
                                             i in oms.confirmed} for t in targets}
    parked: dict[tuple[str, str], dict[str, str]] = {}

    async def read_parked() -> None:
        parked.clear()
        for event_id, target, reason in await dead_letters(services):
            parked.setdefault((oms.partner_of.get(event_id, "?"), target), {})[event_id] = reason

    def missing() -> int:
        return sum(map(len, _missing(expected, targets, parked).values()))

    started = moved = time.monotonic()
    fewest = missing()
    while fewest:
        await read_parked()
        now = time.monotonic()
        if (left := missing()) < fewest:
            fewest, moved = left, now
        if now - moved > stall or now - started > limit:
            break
        if fewest:
            await asyncio.sleep(1.0)
    await read_parked()  # always: what is parked is counted (and needs a reason) even when nothing is missing
    lost = _missing(expected, targets, parked)
    parked_by: Counter[str] = Counter({f"{partner}/{target}": len(letters) for (partner, target), letters in parked.items()})
    assert all(reason for letters in parked.values() for reason in letters.values()), "a dead letter without a reason"
    duplicates = sum(count - 1 for t in targets for count in t.delivered().values())
    return Accounts(lost={k: v for k, v in lost.items() if v}, duplicates=duplicates,
                    parked=sum(len(v) for v in parked.values()), parked_by=parked_by)


def _missing(expected: dict[tuple[str, str], set[str]], targets: Sequence[Target],
             parked: dict[tuple[str, str], dict[str, str]]) -> dict[tuple[str, str], set[str]]:
    missing = {}
    for t in targets:
        key = (t.partner_id, t.endpoint)
        missing[key] = expected[key] - set(t.delivered()) - set(parked.get(key, {}))
    return missing


def recovery_after(fault_ended: float, targets: Sequence[Target], oms: Oms | None = None) -> float | None:
    """Seconds from ``fault_ended`` (time.monotonic()) to the first delivery
    after it; with ``oms``, to the first delivery of an event confirmed after
    it (the pipeline works end to end again)."""
    after = [r.at for t in targets for r in t.receiver.delivered if r.at >= fault_ended and
             (oms is None or oms.confirmed.get(r.headers["webhook-id"], 0.0) >= fault_ended)]
    return round(min(after) - fault_ended, 2) if after else None


async def recovery(fault_ended: float, targets: Sequence[Target], oms: Oms | None = None,
                   timeout: float = 60) -> float:
    """Wait until delivery resumes after a fault; :func:`recovery_after` of it."""
    try:
        [seconds] = await eventually(
            lambda: [r] if (r := recovery_after(fault_ended, targets, oms)) is not None else None, timeout=timeout)
    except AssertionError:
        delivered = sum(1 for t in targets for r in t.receiver.delivered if r.at >= fault_ended)
        state = (f"; the OMS has {oms.sent} confirmed, refusals {dict(oms.refusals)}, the last: {oms.last_refusal}"
                 f"{oms.stopped()}" if oms is not None else "")
        raise AssertionError(f"delivery did not resume in {timeout}s after the fault: {delivered} deliveries "
                             f"since{state}") from None
    return float(seconds)


def timed(oms: Oms, target: Target) -> list[tuple[float, float]]:
    """(when confirmed, seconds from then to the first 2xx) of each event the target got."""
    firsts: dict[str, float] = {}
    for r in target.receiver.delivered:
        firsts.setdefault(r.headers["webhook-id"], r.at)
    return [(oms.confirmed[i], at - oms.confirmed[i]) for i, at in firsts.items() if i in oms.confirmed]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(accounts: Accounts) -> str:
    """The accounts in words, for a failing assertion."""
    lost = {f"{p}/{e}": sorted(ids)[:5] for (p, e), ids in accounts.lost.items()}
    return (f"lost {sum(map(len, accounts.lost.values()))} (first few per target: {lost}); "
            f"{accounts.duplicates} duplicates, {accounts.parked} parked {dict(accounts.parked_by)}")


@asynccontextmanager
async def processes(settings: Settings, *commands: Sequence[str]) -> AsyncIterator[list[Subprocess]]:
    """shipcast commands as real processes, stopped (and their output shown
    on failure) at the end."""
    running = [Subprocess(settings, *command).start() for command in commands]
    try:
        yield running
    finally:
        for process in running:
            if process.process is not None:
                print(await asyncio.to_thread(process.stop))


#: Nodes of RabbitMQ beside the main one: a cluster, and nodes alone (docs in the script).
CLUSTER = Path(__file__).parents[2] / "deploy" / "cluster.sh"


async def run(*command: str) -> str:
    """A command off the event loop: shipcast and the receivers keep serving meanwhile."""
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"
    return done.stdout


def cluster_sh(*args: str) -> str:
    done = subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"cluster.sh {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


async def ready(base_url: str, timeout: float = 30) -> None:
    """Wait for a shipcast API process to answer /readyz with 200."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        async def up() -> bool:
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False
        await eventually(up, timeout=timeout, interval=0.2)


class Misbehaving(Receiver):
    """A partner's endpoint that misbehaves in one way, while ``bad`` is set:

    * ``"500"``: answers 500;
    * ``"hang"``: answers only after ``hang`` seconds, past shipcast's timeout;
    * ``"cut"``: reads the request, starts the response and closes the connection;
    * ``"huge"``: answers 200 with a 10 MB body;
    * ``"redirect"``: answers 302 to ``location`` (a private address).

    Requests it does not answer properly are recorded with status 0.
    """

    def __init__(self, mode: str, *, hang: float = 5.0, location: str = "") -> None:
        super().__init__()
        self.mode = mode
        self.hang = hang
        self.location = location
        self.bad = True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self.bad:
            return await super()._handle(request)
        body = await request.read()
        received = Received(dict(request.headers), body, time.monotonic())
        self.requests.append(received)
        if self.mode == "500":
            received.status = 500
            return web.Response(status=500, text="internal error")
        if self.mode == "hang":
            await asyncio.sleep(self.hang)
            return web.Response(status=200, text="too late")
        if self.mode == "cut":
            response = web.StreamResponse(status=200, headers={"content-length": "1000"})
            await response.prepare(request)
            await response.write(b"partial")
            assert request.transport is not None
            request.transport.abort()
            return response
        if self.mode == "huge":
            # 10 MB announced and sent until the client hangs up (shipcast reads 64 KiB), in
            # chunks: the other receivers in this process must not wait behind it.
            received.status = 200
            response = web.StreamResponse(status=200, headers={"content-length": str(HUGE)})
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):
                for _ in range(HUGE // len(CHUNK)):
                    await response.write(CHUNK)
            return response
        if self.mode == "redirect":
            received.status = 302
            return web.Response(status=302, headers={"location": self.location})
        raise AssertionError(f"unknown mode {self.mode}")


HUGE = 10 * 1024 * 1024
CHUNK = b"x" * 65536
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RemoteReceiver:
    """A :class:`Misbehaving` receiver served by a :class:`MisbehavingProcess`,
    as the test sees it: its URL and the requests it got (a copy, brought up
    to date every half second; ``at`` is ``time.monotonic()`` there, the
    system's monotonic clock, so it compares with this process's)."""

    mode: str
    port: int
    requests: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def delivered(self) -> list[Received]:
        """The requests answered with a 2xx, in the order they arrived."""
        return [r for r in self.requests if 200 <= r.status < 300]


class MisbehavingProcess:
    """:class:`Misbehaving` receivers in a process of their own, healthy at
    first. The test process serves the healthy partners' receivers and
    times their requests: were it also sending 10 MB bodies, holding hanging
    requests and cutting connections, the healthy partners' latency would
    measure its event loop rather than shipcast. Each spec is a mode and
    its keyword arguments (:class:`Misbehaving`)."""

    def __init__(self, *specs: dict[str, Any]) -> None:
        self.specs = specs
        self.receivers: list[RemoteReceiver] = []

    async def set_bad(self, bad: bool, *modes: str) -> None:
        """Make the receivers of ``modes`` (all when none is named) misbehave, or stop."""
        response = await self._control.post("/bad", json={"bad": bad, "modes": list(modes) or
                                                          [r.mode for r in self.receivers]})
        response.raise_for_status()

    async def sync(self) -> None:
        """Bring each receiver's copy of its requests up to date."""
        response = await self._control.post("/requests", json={r.mode: len(r.requests) for r in self.receivers})
        response.raise_for_status()
        found = response.json()
        for receiver in self.receivers:
            receiver.requests += [Received({"webhook-id": event_id}, b"", at, status)
                                  for event_id, at, status in found[receiver.mode]]

    async def _keep_in_sync(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(0.5)

    async def __aenter__(self) -> Self:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.reliability.harness", "misbehaving", json.dumps(self.specs), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        started = json.loads(await asyncio.wait_for(self.process.stdout.readline(), 60))
        self.receivers = [RemoteReceiver(spec["mode"], started["ports"][spec["mode"]]) for spec in self.specs]
        self._control = httpx.AsyncClient(base_url=f"http://127.0.0.1:{started['control']}", timeout=30)
        self._syncing = asyncio.create_task(self._keep_in_sync())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._syncing.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._syncing
            await self.sync()
        await self._control.aclose()
        self.process.terminate()
        await self.process.wait()


async def _serve_misbehaving(specs: list[dict[str, Any]]) -> None:
    receivers = {spec["mode"]: Misbehaving(**spec) for spec in specs}
    for receiver in receivers.values():
        receiver.bad = False
        await receiver.__aenter__()

    async def set_bad(request: web.Request) -> web.Response:
        asked = await request.json()
        for mode in asked["modes"]:
            receivers[mode].bad = asked["bad"]
        return web.json_response(True)

    async def requests(request: web.Request) -> web.Response:
        # A request's status is set in the same step of the loop that records it: what is sent is final.
        since = await request.json()
        return web.json_response({mode: [(r.headers.get("webhook-id", ""), r.at, r.status)
                                         for r in receivers[mode].requests[count:]]
                                  for mode, count in since.items()})

    app = web.Application()
    app.router.add_post("/bad", set_bad)
    app.router.add_post("/requests", requests)
    runner, port = await serve(app)
    print(json.dumps({"control": port, "ports": {mode: r.port for mode, r in receivers.items()}}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__" and sys.argv[1:2] == ["misbehaving"]:
    asyncio.run(_serve_misbehaving(json.loads(sys.argv[2])))
