"""Editing sessions: developers typing through standard-library modules."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from orchestrator.bench.scenarios import SCENARIOS, capacity_rps
from orchestrator.bench.sessions import (
    ANCHOR_CHARS,
    Session,
    completion_at,
    session_arrivals,
    session_modules,
)
from orchestrator.bench.workloads import Workload
from orchestrator.engine_model import block_hashes
from orchestrator.graphs import build_graph

MIX = SCENARIOS["sessions"].mix


def shared_blocks(a: str, b: str) -> int:
    return sum(1 for x, y in zip(block_hashes(a, 16), block_hashes(b, 16), strict=False) if x == y)


def test_a_session_types_forward_and_its_completions_share_their_prefix() -> None:
    modules = session_modules(3)
    session = Session(0, modules, {"complete": 1.0}, "3/0")
    tasks = list(itertools.islice(session, 40))
    assert all(t.request.kind.value == "complete" for t in tasks)
    same_file = [
        (a, b)
        for a, b in itertools.pairwise(tasks)
        if a.key.split(":")[0] == b.key.split(":")[0]
        and int(a.key.rsplit(":", 1)[1]) < int(b.key.rsplit(":", 1)[1])
    ]
    assert len(same_file) > 20  # mostly typing on in the same module
    shared = [shared_blocks(a.request.prompt or "", b.request.prompt or "") for a, b in same_file]
    # the next prompt keeps most of the blocks of the last one (the anchor moved rarely)
    assert sum(1 for n in shared if n >= 8) >= 0.7 * len(shared)


def test_the_prefix_window_is_anchored_not_sliding() -> None:
    module = max(session_modules(3), key=lambda m: len(m.text))
    assert len(module.text) > 6 * ANCHOR_CHARS
    cursor = 5 * ANCHOR_CHARS + 100
    here, later = completion_at(module, cursor), completion_at(module, cursor + 40)
    # same start, so the prompt of ``here`` (but its end) is a prefix of ``later``'s
    prefix_here = (here.request.prompt or "").split("<fim_suffix>")[0]
    prefix_later = (later.request.prompt or "").split("<fim_suffix>")[0]
    assert prefix_later.startswith(prefix_here)
    assert ANCHOR_CHARS <= len(prefix_here) - len("<fim_prefix>") <= 2 * ANCHOR_CHARS + 200


def test_session_arrivals_are_deterministic_mixed_and_scale_with_the_rate() -> None:
    slow = list(session_arrivals(20.0, 30.0, MIX, 3, 5, sessions=64))
    again = list(session_arrivals(20.0, 30.0, MIX, 3, 5, sessions=64))
    assert [(t, x.key) for t, x in slow] == [(t, x.key) for t, x in again]
    assert [t for t, _ in slow] == sorted(t for t, _ in slow)
    assert len(slow) / 30.0 == pytest.approx(20.0, rel=0.15)
    kinds = Counter(x.request.kind.value for _, x in slow)
    assert kinds["complete"] > 0.75 * len(slow) and set(kinds) <= set(MIX)
    fast = list(session_arrivals(40.0, 15.0, MIX, 3, 5, sessions=64))
    # twice the rate: the same requests in the same order, at half the times
    assert [x.key for _, x in fast] == [x.key for _, x in slow][: len(fast)]
    assert fast[10][0] == pytest.approx(slow[10][0] / 2)
    other = list(session_arrivals(20.0, 30.0, MIX, 3, 6, sessions=64))
    assert [x.key for _, x in other] != [x.key for _, x in slow]


def test_the_sessions_scenario_sizes_its_mix_from_its_own_tasks() -> None:
    scenario = SCENARIOS["sessions"]
    assert scenario.prefix_caching and scenario.sessions > 0
    assert all(m.prefix_caching for m in scenario.config("cato", "fixed", 0).models)
    assert not any(m.prefix_caching for m in SCENARIOS["rq2"].config("cato", "fixed", 0).models)
    pool = scenario.task_pool(Workload(tasks={}, seed=3))
    assert set(pool.kinds()) == set(MIX)
    for task in pool.tasks["translate"][:5]:
        build_graph(task.request, scenario.defaults())  # valid requests
    assert capacity_rps(scenario, Workload(tasks={}, seed=3)) > 0


def test_the_prefix_report_gives_ratios_per_seed_and_hit_rates() -> None:
    from orchestrator.bench.capacity import OVERLOAD, CapacityRun, Cell, Probe
    from orchestrator.bench.prefix_report import markdown

    def cell(scheduler: str, seed: int, capacity: float, hit: float) -> Cell:
        probes = [
            Probe(load, load * 10, 0.95, 100, 95, 9.5, 1.0, 0, 60.0, hit + 0.01 * i)
            for i, load in enumerate(sorted({OVERLOAD, capacity}))
        ]
        return Cell("sessions", scheduler, "fixed", seed, 10.0, capacity, "", 0, probes)

    cells = [
        cell("cato", 100, 2.0, 0.6),
        cell("cato", 101, 1.8, 0.6),
        cell("round_robin", 100, 1.0, 0.3),
        cell("round_robin", 101, 1.2, 0.3),
        cell("cache_aware", 100, 2.0, 0.6),
        cell("cache_aware", 101, 2.0, 0.6),
    ]
    run = CapacityRun(
        ["sessions"], ["cato", "round_robin", "cache_aware"], [100, 101], False, "cato", cells
    )
    table = markdown(run)
    row = next(line for line in table.splitlines() if line.startswith("| cato |"))
    # per-seed ratios: 2.0 / 1.0 and 1.8 / 1.2 -> mean 1.75; 1.0 and 0.9 -> 0.95
    assert "| 1.75 ± " in row and "| 0.95 ± " in row
    assert row.endswith("| 60 ± 0% | 61 ± 0% |")  # at 1.2 x C, at capacity
    # no table for a run without prefix caching
    plain = [
        Cell("rq2", "cato", "fixed", 100, 10.0, 1.0, "", 0, [Probe(1.2, 12, 0.9, 1, 1, 1, 1, 0, 1)])
    ]
    assert markdown(CapacityRun(["rq2"], ["cato"], [100], False, "cato", plain)) == ""
