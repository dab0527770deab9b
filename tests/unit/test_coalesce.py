"""The Coalescer: concurrent callers share batch runs; each gets exactly its own result (or its batch's error),
every item runs exactly once, in arrival order, batches keep to their weight, and no caller is left waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from core.coalesce import Coalescer

T = TypeVar("T")


class _Recorder:
    """A batch function that holds each run for `hold_s` (sleeping, as a model call releases the GIL) and records
    the batches it was given."""

    def __init__(self, hold_s: float = 0.0, fail_on: int | None = None) -> None:
        self.hold_s = hold_s
        self.fail_on = fail_on
        self.batches: list[list[int]] = []
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> Sequence[int]:
        with self._lock:
            self.batches.append(list(items))
        time.sleep(self.hold_s)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"batch with {self.fail_on} failed")
        return [item * 10 for item in items]


def _submit_all(coalescer: Coalescer[int, int], items: Sequence[int], *, stagger_s: float = 0.0) -> dict[int, object]:
    """Each item submitted from its own thread (started `stagger_s` apart); item -> result or raised error."""
    outcomes: dict[int, object] = {}
    lock = threading.Lock()

    def call(item: int) -> None:
        try:
            result: object = coalescer.submit(item)
        except Exception as exc:
            result = exc
        with lock:
            outcomes[item] = result

    threads = [threading.Thread(target=call, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
        time.sleep(stagger_s)
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a caller was never woken"
    return outcomes


def test_a_caller_alone_runs_at_once_and_gets_its_result() -> None:
    run = _Recorder()
    coalescer = Coalescer(run, max_weight=8)
    assert [coalescer.submit(i) for i in range(3)] == [0, 10, 20]
    assert run.batches == [[0], [1], [2]]
    assert coalescer.runs == 3


def test_concurrent_callers_share_runs_and_each_gets_its_own_result() -> None:
    run = _Recorder(hold_s=0.02)
    coalescer = Coalescer(run, max_weight=8)
    items = list(range(40))
    outcomes = _submit_all(coalescer, items, stagger_s=0.001)
    assert outcomes == {item: item * 10 for item in items}
    ran = [item for batch in run.batches for item in batch]
    assert sorted(ran) == items, "an item ran twice or never"
    assert all(len(batch) <= 8 for batch in run.batches)
    assert len(run.batches) < len(items) / 2, f"{len(run.batches)} runs for {len(items)} callers: little coalescing"
    assert coalescer.runs == len(run.batches)


def test_batches_take_the_oldest_waiting_items_first() -> None:
    run = _Recorder(hold_s=0.05)
    coalescer = Coalescer(run, max_weight=3)
    # 0 runs alone; 1..7 arrive, in order, while it runs, and are taken oldest first, three at a time.
    outcomes = _submit_all(coalescer, list(range(8)), stagger_s=0.004)
    assert outcomes == {item: item * 10 for item in range(8)}
    assert run.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]


def test_an_item_heavier_than_the_limit_runs_alone() -> None:
    run = _Recorder(hold_s=0.05)
    weights = {0: 1, 1: 5, 2: 1, 3: 1}
    coalescer: Coalescer[int, int] = Coalescer(run, max_weight=3, weight=weights.__getitem__)
    outcomes = _submit_all(coalescer, [0, 1, 2, 3], stagger_s=0.005)
    assert outcomes == {0: 0, 1: 10, 2: 20, 3: 30}
    assert run.batches == [[0], [1], [2, 3]]


def test_a_failed_run_raises_in_every_caller_of_its_batch_and_no_other() -> None:
    run = _Recorder(hold_s=0.05, fail_on=2)
    coalescer = Coalescer(run, max_weight=3)
    outcomes = _submit_all(coalescer, list(range(8)), stagger_s=0.004)
    assert run.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]
    for item in (1, 2, 3):
        assert isinstance(outcomes[item], RuntimeError) and "batch with 2 failed" in str(outcomes[item])
    assert {item: outcomes[item] for item in (0, 4, 5, 6, 7)} == {0: 0, 4: 40, 5: 50, 6: 60, 7: 70}


def test_a_result_count_that_does_not_match_the_batch_is_an_error_for_all_of_it() -> None:
    def short(items: list[int]) -> Sequence[int]:
        time.sleep(0.02)
        return items[:-1]

    outcomes = _submit_all(Coalescer(short, max_weight=4), list(range(5)), stagger_s=0.002)
    assert all(isinstance(outcome, RuntimeError) and "gave" in str(outcome) for outcome in outcomes.values())


@pytest.mark.parametrize("callers", [2, 16, 64])
def test_many_rounds_of_callers_never_lose_a_wake_up(callers: int) -> None:
    run: Callable[[list[int]], Sequence[int]] = lambda items: [item + 1 for item in items]  # noqa: E731
    coalescer = Coalescer(run, max_weight=5)
    for round_ in range(20):
        items = list(range(round_ * callers, (round_ + 1) * callers))
        assert _submit_all(coalescer, items) == {item: item + 1 for item in items}


def test_max_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_weight"):
        Coalescer(lambda items: items, max_weight=0)


# Awaiting callers (submit_async): the API's queries await the model from the event loop.


def _run(calls: Coroutine[Any, Any, T]) -> T:
    """Run on a new event loop; a caller never woken fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(calls, 30))


class _ThreadRecorder(_Recorder):
    """Also records which thread ran each batch."""

    def __init__(self, hold_s: float = 0.0, fail_on: int | None = None) -> None:
        super().__init__(hold_s, fail_on)
        self.threads: list[str] = []

    def __call__(self, items: list[int]) -> Sequence[int]:
        self.threads.append(threading.current_thread().name)
        return super().__call__(items)


def test_an_awaiting_caller_gets_its_result_from_a_batch_run_off_the_event_loop() -> None:
    run = _ThreadRecorder()
    coalescer = Coalescer(run, max_weight=8)

    async def main() -> list[int]:
        return [await coalescer.submit_async(i) for i in range(3)]

    assert _run(main()) == [0, 10, 20]
    assert run.batches == [[0], [1], [2]]
    assert run.threads and all(name.startswith("coalescer") for name in run.threads), run.threads


def test_awaiting_callers_share_runs_and_each_gets_its_own_result() -> None:
    run = _ThreadRecorder(hold_s=0.02)
    coalescer = Coalescer(run, max_weight=8)
    items = list(range(40))

    async def main() -> list[int]:
        return list(await asyncio.gather(*(coalescer.submit_async(i) for i in items)))

    assert _run(main()) == [item * 10 for item in items]
    ran = [item for batch in run.batches for item in batch]
    assert sorted(ran) == items, "an item ran twice or never"
    assert all(len(batch) <= 8 for batch in run.batches)
    assert len(run.batches) <= 6, run.batches  # one alone, then the rest eight at a time


def test_awaiting_and_blocked_callers_share_batches() -> None:
    run = _ThreadRecorder(hold_s=0.03)
    coalescer = Coalescer(run, max_weight=100)
    blocked = list(range(0, 40, 2))
    awaiting = list(range(1, 40, 2))
    blocked_outcomes: dict[int, object] = {}
    thread = threading.Thread(
        target=lambda: blocked_outcomes.update(_submit_all(coalescer, blocked, stagger_s=0.002)), daemon=True
    )

    async def main() -> list[int]:
        calls = []
        for item in awaiting:
            calls.append(asyncio.ensure_future(coalescer.submit_async(item)))
            await asyncio.sleep(0.002)
        return list(await asyncio.gather(*calls))

    thread.start()
    assert _run(main()) == [item * 10 for item in awaiting]
    thread.join(30)
    assert blocked_outcomes == {item: item * 10 for item in blocked}
    assert sorted(item for batch in run.batches for item in batch) == list(range(40))
    mixed = [batch for batch in run.batches if {i % 2 for i in batch} == {0, 1}]
    assert mixed, f"no batch held both kinds of caller: {run.batches}"


def test_a_failed_run_raises_in_every_awaiting_caller_of_its_batch_and_no_other() -> None:
    run = _Recorder(hold_s=0.1, fail_on=2)
    coalescer = Coalescer(run, max_weight=3)

    async def main() -> list[object]:
        calls = []
        for item in range(8):
            calls.append(asyncio.ensure_future(coalescer.submit_async(item)))
            await asyncio.sleep(0.004)
        return list(await asyncio.gather(*calls, return_exceptions=True))

    outcomes = _run(main())
    assert run.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]
    for item in (1, 2, 3):
        assert isinstance(outcomes[item], RuntimeError) and "batch with 2 failed" in str(outcomes[item])
    assert [outcomes[item] for item in (0, 4, 5, 6, 7)] == [0, 40, 50, 60, 70]


def test_an_awaiting_caller_that_arrives_during_a_blocked_callers_batch_is_run_after_it() -> None:
    """The blocked caller's batch ends with only an awaiting caller waiting: the runner thread must take it."""
    run = _ThreadRecorder(hold_s=0.1)
    coalescer = Coalescer(run, max_weight=8)
    blocked = threading.Thread(target=coalescer.submit, args=(0,), daemon=True)

    async def main() -> int:
        blocked.start()
        await asyncio.sleep(0.03)  # 0 is running on the blocked caller's thread
        return await coalescer.submit_async(1)

    assert _run(main()) == 10
    blocked.join(30)
    assert run.batches == [[0], [1]]
    assert not run.threads[0].startswith("coalescer") and run.threads[1].startswith("coalescer"), run.threads


def test_an_error_a_future_cannot_hold_still_reaches_the_awaiting_caller() -> None:
    def stops(items: list[int]) -> Sequence[int]:
        raise StopIteration("a generator leaked its end")

    coalescer = Coalescer(stops, max_weight=8)
    with pytest.raises(RuntimeError, match="StopIteration: a generator leaked its end"):
        _run(coalescer.submit_async(1))
    with pytest.raises(StopIteration):  # a blocked caller gets it as raised
        coalescer.submit(2)


def test_without_a_runner_thread_an_awaiting_caller_fails_and_nothing_is_wedged() -> None:
    """At interpreter shutdown no thread can be started: the awaiting caller gets that error, not a hang, and a
    blocked caller still runs its own batch."""
    coalescer = Coalescer(_Recorder(), max_weight=8)
    coalescer._runner = ThreadPoolExecutor(max_workers=1)  # a runner that refuses work, as at shutdown
    coalescer._runner.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures"):
        _run(coalescer.submit_async(1))
    assert coalescer.submit(2) == 20


def test_a_cancelled_caller_leaves_the_others_their_results() -> None:
    run = _Recorder(hold_s=0.05)
    coalescer = Coalescer(run, max_weight=8)

    async def main() -> list[object]:
        calls = [asyncio.ensure_future(coalescer.submit_async(item)) for item in range(4)]
        await asyncio.sleep(0.01)  # 0 runs; 1, 2 and 3 wait for the next batch
        calls[2].cancel()
        return list(await asyncio.gather(*calls, return_exceptions=True))

    outcomes = _run(main())
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert [outcomes[i] for i in (0, 1, 3)] == [0, 10, 30]
    assert sorted(item for batch in run.batches for item in batch) == [0, 1, 2, 3]  # the cancelled item still ran


@pytest.mark.parametrize("callers", [2, 16, 64])
def test_many_rounds_of_mixed_callers_never_lose_a_wake_up(callers: int) -> None:
    run: Callable[[list[int]], Sequence[int]] = lambda items: [item + 1 for item in items]  # noqa: E731
    coalescer = Coalescer(run, max_weight=5)

    async def awaiting(items: list[int]) -> list[int]:
        return list(await asyncio.gather(*(coalescer.submit_async(item) for item in items)))

    for round_ in range(20):
        items = list(range(round_ * callers, (round_ + 1) * callers))
        half = len(items) // 2
        blocked: dict[int, object] = {}
        thread = threading.Thread(
            target=lambda part=items[:half], into=blocked: into.update(_submit_all(coalescer, part))
        )
        thread.start()
        assert _run(awaiting(items[half:])) == [item + 1 for item in items[half:]]
        thread.join(30)
        assert blocked == {item: item + 1 for item in items[:half]}
