"""The cache bound of ``benchmarks.sessions_ceiling``: what it counts, and that the
simulated engines never find more cached than it allows."""

from __future__ import annotations

import pytest

from benchmarks.sessions_ceiling import _Recording, bound_tokens
from orchestrator.bench.capacity import Options, _kinds, _workload, arrivals
from orchestrator.bench.scenarios import SCENARIOS


def test_bound_counts_leading_blocks_sent_before() -> None:
    starts = [
        (40, (1, 2, 3)),  # nothing seen yet
        (40, (1, 2, 9)),  # blocks 1, 2 seen: 32 tokens
        (40, (9, 1, 2)),  # 9 seen (by the call before), then 1 and 2: all 3 blocks
        (20, (1, 2)),  # the run is capped at the prompt: 20, not 32
        (40, (5, 1, 2)),  # a new first block: nothing, whatever follows
    ]
    assert bound_tokens(starts, 16) == 0 + 32 + 40 + 20 + 0


@pytest.mark.parametrize("policy", ["cato", "round_robin"])
def test_engines_never_find_more_than_the_bound(policy: str) -> None:
    scenario = SCENARIOS["sessions"]
    workload = _workload(0, Options(False).per_kind, _kinds(["sessions"]))
    sim = _Recording(scenario.config(policy, "fixed", 0))
    result = sim.run(arrivals(scenario, 60.0, 4.0, workload, 0))
    engines = [r.engine for r in sim.replicas.values()]
    assert sum(e.num_preemptions for e in engines) == 0  # the bound's premise
    hits = result.counters["prefix_cache_hits"]
    bound = bound_tokens(sim.starts, engines[0].profile.block_size)
    assert 0 < hits <= bound
