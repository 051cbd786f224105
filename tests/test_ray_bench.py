"""The measuring parts of ``orchestrator.bench.ray_cluster`` that need no Ray: goodput
per 1 s window, and when it was back after a node loss."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.bench.ray_cluster import Ended, back_at, closed_loop, outcomes, per_window


def test_per_window_counts_done_calls_by_their_end() -> None:
    ended = [
        Ended(0.0, 0.5, "done"),
        Ended(0.0, 0.99, "done"),
        Ended(0.0, 1.0, "done"),
        Ended(0.0, 1.5, "error"),  # not goodput
        Ended(0.0, 2.7, "done"),
        Ended(0.0, 3.2, "done"),  # past the last whole window
    ]
    assert per_window(ended, 0.0, 3.1) == [2, 1, 1]
    assert per_window(ended, 1.0, 3.0) == [1, 1]
    assert per_window(ended, 2.0, 1.0) == []


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ([10, 9, 10, 11], 0.0),  # never below 90% of 10
        ([5, 5, 6, 10, 10, 9], 3.0),  # back at the window that starts 3 s after
        ([5, 10, 8, 10, 10], 1.0),  # one low window inside three whose mean is back
        ([5, 6, 7, 8, 10], None),  # no three windows back at the level yet
        ([10, 10, 4, 10, 9, 10], 3.0),  # the first dip counts, even after good windows
    ],
)
def test_back_at(after: list[int], expected: float | None) -> None:
    assert back_at(10.0, after, hold=3) == expected


async def test_closed_loop_classifies_every_call() -> None:
    stop = asyncio.Event()
    ended: list[Ended] = []

    async def one(n: int, i: int) -> tuple[str, str]:
        if n == 0 and i == 0:
            await asyncio.sleep(1.0)  # past hang_s
        if n == 1 and i == 0:
            raise ConnectionResetError("cut")
        if i == 2:
            stop.set()
        await asyncio.sleep(0)
        return ("error", "no replica") if n == 2 else ("done", "")

    await asyncio.wait_for(closed_loop(one, 3, stop, 0.0, 0.2, ended), 5)
    counts = outcomes(ended)
    assert counts["hung"] == 1 and counts["broken"] == 1
    assert counts["error"] >= 1 and counts["done"] >= 2
    assert all(e.end >= e.start for e in ended)


def test_times_come_from_the_managers_transitions() -> None:
    from orchestrator.bench.ray_cluster import FAILED_OR_GONE, _last_first
    from orchestrator.replicas.manager import Lifecycle, Transition

    records = [
        Transition(5.0, "a", Lifecycle.FAILED),  # before the loss: not this one
        Transition(10.3, "a", Lifecycle.FAILED),
        Transition(10.6, "b", Lifecycle.FAILED),
        Transition(10.9, "b", Lifecycle.STOPPED),  # its first after the loss counts
        Transition(17.5, "c", Lifecycle.READY),
    ]
    assert _last_first(records, {"a", "b"}, FAILED_OR_GONE, 10.0) == pytest.approx(0.6)
    assert _last_first(records, {"c"}, {Lifecycle.READY}, 10.0) == pytest.approx(7.5)
    assert _last_first(records, {"a", "d"}, FAILED_OR_GONE, 10.0) is None  # d never failed
    assert _last_first(records, set(), {Lifecycle.READY}, 10.0) is None
