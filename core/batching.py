"""Group concurrent writes into one transaction.

``await batcher.submit(item)`` returns once the item is written, so a worker
acks nothing that was not recorded, yet 200 concurrent deliveries cost one
write instead of 200.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, write: Callable[[Sequence[T]], Awaitable[None]], *, max_batch: int = 500) -> None:
        self.write = write
        self.max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, *items: T) -> None:
        """Queue items for the next write and wait until it has committed.

        :raises: whatever the write raised for the batch these items were in.
        """
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="shipcast-batcher")
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            future: asyncio.Future[None] = loop.create_future()
            self._pending.append((item, future))
            futures.append(future)
        self._wake.set()
        await asyncio.gather(*futures)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # let deliveries finishing in this tick join the batch
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
                await self._write(batch)

    async def _write(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        try:
            await self.write([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            # One bad item must not fail its neighbours: write them one by one.
            for entry in batch:
                await self._write([entry])
        else:
            for _, future in batch:
                _settle(future, None)

    async def close(self) -> None:
        """Write what is pending, then stop; nobody is left waiting."""
        if self._pending:
            pending, self._pending = self._pending, []
            await self._write(pending)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
