"""Concurrent callers share runs of one batch function.

While one batch runs, the items that arrive wait, and the next run takes all of them (up to a weight). A caller
alone runs at once: there is no waiting window, so coalescing costs nothing at low load and turns a queue of
small calls into a few large ones at high load. The caller that finds no run in progress runs the batch on its
own thread (no background thread to start or stop); every caller returns its own result, or raises the error
its batch raised.

Used where one call per item is expensive and a call for many is nearly as cheap: the embedding model (a model
call per batch of texts) and the audit log (a transaction per batch of records).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
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
                    self._running = False
                    self._lock.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]  # done without an error: run gave this item's result

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
            return
        for waiting, result in zip(batch, results, strict=True):
            waiting.result, waiting.done = result, True
