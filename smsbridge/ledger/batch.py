"""Many small ledger writes as one statement.

Handlers run concurrently (a worker has hundreds of deliveries in flight); each submitting
its own round trip to PostgreSQL would cost more CPU than the rest of its work. A `Batcher`
collects the requests that arrive while a statement is running and sends them together in
the next one: one request alone goes at once (no added latency when idle), and under load
batches grow by themselves.

One bad request must not fail the others: when a batch fails for a reason other than
waiting (`MustWait`: the ledger is away, every request must wait anyway), each of its
requests is run again on its own, so only the bad one gets the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from smsbridge.waiting import MustWait

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        run: Callable[[list[In]], Awaitable[Sequence[Out]]],
        *,
        max_size: int = 500,
        concurrency: int = 2,
    ) -> None:
        self._run = run
        self.max_size = max_size
        self.concurrency = concurrency
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._running < self.concurrency:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_size]
                del self._pending[: self.max_size]
                try:
                    results = await self._run([item for item, _ in batch])
                except MustWait as exc:  # every request of the batch must wait
                    _fail(batch, exc)
                    continue
                except Exception as exc:
                    if len(batch) == 1:
                        _fail(batch, exc)
                    else:
                        await self._one_by_one(batch)
                    continue
                except BaseException:
                    _fail(batch, RuntimeError("stopped"))
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running -= 1

    async def _one_by_one(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        for item, future in batch:
            try:
                [result] = await self._run([item])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(result)


def _fail(batch: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
