"""Group concurrent store calls into one statement.

``await batcher.submit(item)`` returns once the item is written (or looked
up), so a worker acks nothing that was not recorded, yet 200 concurrent
deliveries cost one round trip to the database instead of 200.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Calls ``run(items)`` with everything submitted since the last call.

    ``run`` returns one result per item, in order (or ``None`` when it only
    writes); :meth:`submit` hands each caller its own results.
    """

    def __init__(self, run: Callable[[Sequence[T]], Awaitable[Sequence[R] | None]], *,
                 max_batch: int = 500, linger: float = 0.002) -> None:
        self.run = run
        self.max_batch = max_batch
        #: How long a call waits for company: a round trip to the database costs
        #: about the same for one item as for a hundred.
        self.linger = linger
        self._pending: list[tuple[T, asyncio.Future[R | None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, *items: T) -> list[R | None]:
        """Queue items for the next call and wait for it.

        :raises: whatever ``run`` raised for these items.
        """
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="shipcast-batcher")
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            future: asyncio.Future[R | None] = loop.create_future()
            self._pending.append((item, future))
            futures.append(future)
        self._wake.set()
        if len(futures) == 1:  # the common case, without gather's future and callbacks
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.linger)
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
                await self._call(batch)

    async def _call(self, batch: list[tuple[T, asyncio.Future[R | None]]]) -> None:
        try:
            results = await self.run([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exception=exc)
                return
            # One bad item must not fail its neighbours: try them one by one.
            for entry in batch:
                await self._call([entry])
        else:
            for index, (_, future) in enumerate(batch):
                _settle(future, result=None if results is None else results[index])

    async def close(self) -> None:
        """Run what is pending, then stop; nobody is left waiting."""
        if self._pending:
            pending, self._pending = self._pending, []
            await self._call(pending)
        await cancel(self._task)
        self._task = None


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _settle(future: asyncio.Future[Any], *, result: Any = None, exception: BaseException | None = None) -> None:
    if future.done():
        return
    if exception is None:
        future.set_result(result)
    else:
        future.set_exception(exception)
