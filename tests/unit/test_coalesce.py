"""The Coalescer: concurrent callers share batch runs; each gets exactly its own result (or its batch's error),
every item runs exactly once, in arrival order, batches keep to their weight, and no caller is left waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from core.coalesce import Coalescer


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
