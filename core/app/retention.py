"""Retention: what the store keeps, and for how long. A process that runs
workers prunes in the background, in small batches with a pause between
them so deliveries are never held up; ``shipcast prune`` runs one pass by
hand (``--dry-run`` counts without changing anything).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from shipcast.batching import cancel
from shipcast.exceptions import StoreError
from shipcast.settings import Settings
from shipcast.store import Store

log = logging.getLogger(__name__)

#: Rows per statement, and the pause between statements.
BATCH = 500
PAUSE = 0.05


async def prune(store: Store, settings: Settings, *, dry_run: bool = False,
                now: datetime | None = None) -> dict[str, int]:
    """One pass: every kind of row past its retention, in batches until none
    is left. Returns how many of each went (or, dry, would go)."""
    now = now or datetime.now(UTC)
    passes: dict[str, Callable[[], Awaitable[int]]] = {
        "otps": lambda: store.drop_spent_otps(now, BATCH, dry_run=dry_run),
    }
    cutoff = now - timedelta(days=settings.retain_attempts_days) if settings.retain_attempts_days else None
    if cutoff is not None:
        passes["attempts"] = lambda: store.prune_attempts(cutoff, BATCH, dry_run=dry_run)
        # Sign-in links and sessions that can no longer sign anyone in, kept as long as the attempt log.
        passes["portal_signins"] = lambda: store.prune_portal(cutoff, BATCH, dry_run=dry_run)
        # The development outbox is a log of what would have been sent: kept as long as the attempt log.
        passes["outbox"] = lambda: store.prune_outbox(cutoff, BATCH, dry_run=dry_run)
    if settings.retain_responses_days:
        responses = now - timedelta(days=settings.retain_responses_days)
        # Attempts the pass above removes whole are not counted twice.
        passes["responses"] = lambda: store.strip_responses(responses, BATCH, dry_run=dry_run, since=cutoff)
    if settings.retain_events_days:
        events = now - timedelta(days=settings.retain_events_days)
        passes["events"] = lambda: store.prune_events(events, BATCH, dry_run=dry_run)
    done: dict[str, int] = {}
    for name, step in passes.items():
        done[name] = 0
        while True:
            count = await step()
            done[name] += count
            if dry_run or count < BATCH:
                break
            await asyncio.sleep(PAUSE)  # let the workers' writes in between
    return done


class Pruner:
    """Prunes every ``settings.prune_interval`` seconds, in the background."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="shipcast-pruner")

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                done = await prune(self.store, self.settings)
                if any(done.values()):
                    log.info("pruned %s", ", ".join(f"{count} {name}" for name, count in done.items() if count))
            except StoreError as exc:  # the store is down: the next pass tries again
                log.warning("pruning skipped: %s", exc)
            await asyncio.sleep(self.settings.prune_interval)
