"""The relay's loop: wait for the lock, then publish pending rows in id
order, each through ingest's validation and publisher, and delete a row only
once RabbitMQ confirmed it. When tracing is on, each row's publish starts a
trace of its own (the outbox keeps no trace context)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from shipcast import metrics, tracing
from shipcast.app.relay.rows import OutboxRow, error_text, parse_row
from shipcast.app.relay.source import SOURCE_ERRORS, OutboxSource, OutboxStats
from shipcast.app.services import Services
from shipcast.exceptions import InvalidEvent, ShipcastError, StoreError
from shipcast.model.envelope import Event

log = logging.getLogger("shipcast.relay")

#: Seconds between a standby relay's tries at the lock, and after an error.
RETRY_EVERY = 1.0
#: Seconds between looks at the broker while it is all a relay waits for
#: (starting, or RabbitMQ coming back): the lock is tried as soon as it answers.
BROKER_EVERY = 0.05
#: Seconds a NOTIFY waits before the rows are read, so that commits close
#: together are published in one round: at 100 events a second, a few per
#: round rather than one, for a few milliseconds more from commit to publish.
LINGER = 0.02
#: Seconds between two readings of the outbox's depth and age for /metrics.
STATS_EVERY = 1.0
class Relay:
    """One relay process. Several may run: the one holding the lock is active,
    the others try every second and take over within seconds when its
    connection drops. Rows are read, deleted and moved aside on the very
    connection that holds the lock, so a relay that lost it cannot delete a
    row, and publishes nothing more: each batch starts with a read on it.
    """

    def __init__(self, services: Services, source: OutboxSource) -> None:
        self.services = services
        self.source = source
        settings = services.settings
        self.batch_size = settings.relay_batch_size
        self.poll_interval = settings.relay_poll_interval
        #: Seconds any one statement on the source may take before the connection counts as lost.
        self.statement_timeout = settings.publish_timeout
        self.active = False
        #: Whether the source database answered the last statement.
        self.source_up = False
        self.stats: OutboxStats | None = None
        self._stats_at = float("-inf")
        self._wake = asyncio.Event()
        self._span = f"relay {source.table_name}"

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set: standby until the lock is ours, then active."""
        metrics.put("shipcast_relay_active", 0)
        while not stop.is_set():
            try:
                async with self._connected() as conn:
                    if await self._wait_for_lock(conn, stop):
                        await self._relay(conn, stop)
            except SOURCE_ERRORS as exc:
                self.source_up = False
                log.warning("outbox database %s: %s; trying again", self.source.database, exc)
            except StoreError as exc:  # partners cannot be looked up: let go, as a relay that cannot publish
                log.warning("shipcast's store: %s; trying again", exc)
            finally:
                if self.active and not stop.is_set():
                    log.warning("relay standing by: its lock's connection is gone")
                self._set_active(False)
            await _sleep_unless(stop, RETRY_EVERY)

    @contextlib.asynccontextmanager
    async def _connected(self) -> AsyncIterator[AsyncConnection]:
        """A connection to the outbox database, opened within the statement
        timeout: a connection attempt to a database that is restarting (or
        one its server never answers) fails and is tried again, instead of
        holding the relay, standby and active alike, for as long as the
        driver's own timeout."""
        async with asyncio.timeout(self.statement_timeout):
            conn = await self.source.connect().start()
        try:
            async with asyncio.timeout(self.statement_timeout):
                await self.source.prepare(conn)
            yield conn
        finally:
            try:
                async with asyncio.timeout(self.statement_timeout):
                    await conn.close()
            except TimeoutError:
                with contextlib.suppress(*SOURCE_ERRORS):  # drop the socket: its session, and the lock, end with it
                    await conn.invalidate()
                raise

    async def _wait_for_lock(self, conn: AsyncConnection, stop: asyncio.Event) -> bool:
        """Try for the lock every second, and only while connected to RabbitMQ,
        so a relay that cannot publish leaves the lock to one that can; while
        the broker is all that is missing, try again as soon as it answers."""
        while not stop.is_set():
            connected = self.services.broker.connected
            async with asyncio.timeout(self.statement_timeout):
                taken = connected and await self.source.try_lock(conn)
                self.source_up = True
                await self._update_stats(conn)
            if taken:
                return True
            await _sleep_unless(stop, RETRY_EVERY if connected else BROKER_EVERY)
        return False

    async def _relay(self, conn: AsyncConnection, stop: asyncio.Event) -> None:
        self._set_active(True)
        listening = await self.source.listen(conn, self._wake.set)
        log.info("relay active on %s.%s (%s)", self.source.database, self.source.table_name,
                 "LISTEN and polling" if listening else "polling")
        while not stop.is_set():
            self._wake.clear()  # before reading: a commit after the read wakes the next round
            async with asyncio.timeout(self.statement_timeout):
                rows = await self.source.pending(conn, self.batch_size)
            self.source_up = True
            kept = await self._publish_batch(conn, rows) if rows else 0
            async with asyncio.timeout(self.statement_timeout):
                await self._update_stats(conn)
            if kept:  # the broker did not confirm some: try again soon
                await self._idle(conn, stop, min(self.poll_interval, RETRY_EVERY))
            elif len(rows) < self.batch_size:  # none left: wait for a NOTIFY, a poll, or stop
                await self._idle(conn, stop, self.poll_interval)
                if self._wake.is_set():  # the commits of the next moment join this one's round
                    await _sleep_unless(stop, LINGER)

    async def _idle(self, conn: AsyncConnection, stop: asyncio.Event, seconds: float) -> None:
        """Wait ``seconds`` for a NOTIFY or stop, reading the outbox's figures
        every second meanwhile: /metrics stays current, and a lost lock
        connection is noticed within a second even when nothing is written."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and not self._wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await _first(stop, self._wake, min(left, STATS_EVERY))
            async with asyncio.timeout(self.statement_timeout):
                await self._update_stats(conn)

    async def _publish_batch(self, conn: AsyncConnection, rows: Sequence[OutboxRow]) -> int:
        """Validate, publish and delete one batch; move bad rows aside. How many
        rows the broker did not confirm (they stay, for the next batch)."""
        chains: dict[tuple[str, str], list[tuple[OutboxRow, Event]]] = {}
        reloaded = False
        for row in rows:
            try:
                event = parse_row(row, self.services.registry.event_types, self.services.settings.max_event_bytes)
                if await self.services.partners.get(event.partner_id) is None and not reloaded:
                    reloaded = True  # applied a moment ago? look once more before refusing
                    await self.services.partners.reload()
                if await self.services.partners.get(event.partner_id) is None:
                    raise InvalidEvent([{"loc": ["partner_id"], "type": "unknown",
                                         "msg": f"no partner {event.partner_id!r}"}])
            except InvalidEvent as exc:
                error = error_text(exc)
                async with asyncio.timeout(self.statement_timeout):
                    await self.source.fail(conn, row.id, error)
                metrics.inc("shipcast_relay_failed_total")
                log.warning("outbox row %d (event %s) moved aside: %s", row.id, row.event_id, error)
                continue
            chains.setdefault((event.partner_id, event.order.order_id), []).append((row, event))
        valid = sum(len(chain) for chain in chains.values())
        confirmed = await self._publish_in_order(list(chains.values()))
        async with asyncio.timeout(self.statement_timeout):
            await self.source.delete(conn, confirmed)
        metrics.inc("shipcast_relay_published_total", len(confirmed))
        return valid - len(confirmed)

    async def _publish_in_order(self, chains: list[list[tuple[OutboxRow, Event]]]) -> list[int]:
        """Publish each order's events one after the other, orders side by side:
        an event goes out only once the one before it of its order was
        confirmed. (Publishing them together would not keep that order when
        one of them fails and is published again.) An order whose event was
        not confirmed waits, with its later events, for the next batch. The
        ids of the rows confirmed."""
        confirmed: list[int] = []
        while chains:
            heads = [chain.pop(0) for chain in chains]
            results = await asyncio.gather(*(self._publish(row, event) for row, event in heads),
                                           return_exceptions=True)
            going_on = []
            for (row, event), chain, result in zip(heads, chains, results, strict=True):
                if isinstance(result, ShipcastError):
                    log.warning("outbox row %d (event %s) not confirmed, kept for the next batch: %s",
                                row.id, event.event_id, result)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    confirmed.append(row.id)
                    if chain:
                        going_on.append(chain)
            chains = going_on
        return confirmed

    async def _publish(self, row: OutboxRow, event: Event) -> None:
        with tracing.span(self._span, parent=tracing.NEW_TRACE) as span:  # a trace per row
            if span is not None:
                tracing.describe(span, event, {tracing.OUTBOX_ROW: row.id})
            await self.services.publisher.publish_one(event)

    async def _update_stats(self, conn: AsyncConnection) -> None:
        if time.monotonic() - self._stats_at < STATS_EVERY:
            return
        self.stats = stats = await self.source.stats(conn)
        self._stats_at = time.monotonic()
        metrics.put("shipcast_relay_outbox_depth", stats.depth)
        metrics.put("shipcast_relay_outbox_oldest_seconds", stats.oldest_age or 0.0)
        metrics.put("shipcast_relay_outbox_failed", stats.failed)

    def _set_active(self, active: bool) -> None:
        self.active = active
        metrics.put("shipcast_relay_active", 1 if active else 0)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _first(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Wait until ``stop`` or ``wake`` is set, or ``seconds`` passed."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
