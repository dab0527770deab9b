"""Concurrent callers share runs of one batch function.

While one batch runs, the items that arrive wait, and the next run takes all of them (up to a weight). A caller
alone runs at once: there is no waiting window, so coalescing costs nothing at low load and turns a queue of
small calls into a few large ones at high load. Every caller returns its own result, or raises the error its
batch raised.

Callers come two ways, into one queue and the same batches:
- `submit`, from a thread: the caller that finds no run in progress runs the batch on its own thread (no
  background thread to start or stop), and a waiting one runs the next;
- `submit_async`, from an event loop: the caller awaits its result and never blocks the loop. A batch that only
  such callers wait for runs on the coalescer's one runner thread (started when first needed).

Used where one call per item is expensive and a call for many is nearly as cheap: the embedding model (a model
call per batch of texts: ingestion threads submit, queries on the API's event loop await) and the audit log (a
transaction per batch of records).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    # An awaiting caller's future, resolved on its own loop; None for a caller blocked in submit.
    future: asyncio.Future[Result] | None = None
    done: bool = False
    result: Result | None = None
    error: BaseException | None = None


class Coalescer(Generic[Item, Result]):
    """`run` maps a batch of items to one result per item, in order. A batch is the oldest waiting items, whole,
    up to `max_weight` (at least one item, however heavy)."""

    def __init__(
        self,
        run: Callable[[list[Item]], Sequence[Result]],
        max_weight: int,
        weight: Callable[[Item], int] = lambda _: 1,
    ) -> None:
        if max_weight < 1:
            raise ValueError("max_weight must be at least 1")
        self._run = run
        self._max_weight = max_weight
        self._weight = weight
        self._lock = threading.Condition()
        self._waiting: list[_Waiting[Item, Result]] = []
        self._running = False
        self._runner: ThreadPoolExecutor | None = None
        self.runs = 0  # how many batches ran (to see the coalescing work)

    def submit(self, item: Item) -> Result:
        mine: _Waiting[Item, Result] = _Waiting(item)
        with self._lock:
            self._waiting.append(mine)
            while not mine.done:
                if self._running:
                    self._lock.wait()
                    continue
                batch = self._take_batch()
                self._running = True
                self._lock.release()
                try:
                    self._run_batch(batch)
                finally:
                    self._lock.acquire()
                    self._batch_ended()
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]  # done without an error: run gave this item's result

    async def submit_async(self, item: Item) -> Result:
        """`submit` for a coroutine: the batch runs on another thread while the caller awaits. A caller that is
        cancelled while it waits leaves its item in the queue; the item runs and its result is dropped."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting.append(_Waiting(item, future))
            if not self._running:
                self._start_on_runner()
        return await future

    def _start_on_runner(self) -> None:
        """Run the next batch on the runner thread (the lock held). If the thread cannot be had (the interpreter
        is shutting down), every awaiting caller gets that error instead of waiting for ever."""
        try:
            if self._runner is None:
                self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coalescer")
            self._runner.submit(self._run_next_batch)
        except RuntimeError as exc:
            for waiting in [w for w in self._waiting if w.future is not None]:
                self._waiting.remove(waiting)
                waiting.error, waiting.done = exc, True
                _resolve(waiting)
            return
        self._running = True

    def _run_next_batch(self) -> None:
        try:
            with self._lock:
                batch = self._take_batch()
            if batch:  # never empty (started only with items waiting and no run in progress), but cheap to check
                self._run_batch(batch)
        finally:
            with self._lock:
                self._batch_ended()

    def _batch_ended(self) -> None:
        """After a run (the lock held): a caller blocked in submit runs the next batch on its own thread when it
        wakes; if only awaiting callers wait, the runner thread runs it."""
        self._running = False
        if self._waiting and all(waiting.future is not None for waiting in self._waiting):
            self._start_on_runner()
        self._lock.notify_all()

    def _take_batch(self) -> list[_Waiting[Item, Result]]:
        batch: list[_Waiting[Item, Result]] = []
        total = 0
        while self._waiting and (not batch or total + self._weight(self._waiting[0].item) <= self._max_weight):
            waiting = self._waiting.pop(0)
            batch.append(waiting)
            total += self._weight(waiting.item)
        return batch

    def _run_batch(self, batch: list[_Waiting[Item, Result]]) -> None:
        try:
            results = self._run([waiting.item for waiting in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} items gave {len(results)} results")
            self.runs += 1
        except BaseException as exc:  # every waiting caller gets the error, none hangs
            for waiting in batch:
                waiting.error, waiting.done = exc, True
                _resolve(waiting)
            return
        for waiting, result in zip(batch, results, strict=True):
            waiting.result, waiting.done = result, True
            _resolve(waiting)


def _resolve(waiting: _Waiting[Item, Result]) -> None:
    """Hand an awaiting caller its outcome on its own loop (a no-op for a caller blocked in submit)."""
    future = waiting.future
    if future is None:
        return
    with contextlib.suppress(RuntimeError):  # its loop has closed: nobody is waiting any more
        future.get_loop().call_soon_threadsafe(_settle, future, waiting.result, waiting.error)


def _settle(future: asyncio.Future[Result], result: Result | None, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled
        return
    if error is None:
        future.set_result(result)  # type: ignore[arg-type]  # no error: the batch gave this item's result
    elif isinstance(error, Exception) and not isinstance(error, StopIteration):
        future.set_exception(error)
    else:
        # A future refuses StopIteration, and a KeyboardInterrupt or SystemExit raised in a request's task would
        # stop the event loop itself: the caller gets an ordinary error that says what happened.
        failed = RuntimeError(f"the batch failed: {type(error).__name__}: {error}")
        failed.__cause__ = error
        future.set_exception(failed)
