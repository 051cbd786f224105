"""Prefix-cache affinity: per-replica prompt tracking, CATO's affinity, the cache-aware
baseline."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from orchestrator.bench.scenarios import SCENARIOS, capacity_rps
from orchestrator.bench.workloads import Workload
from orchestrator.engine_model import EngineModel
from orchestrator.policy.scheduler import (
    CacheAwareScheduler,
    CatoScheduler,
    SchedulerConfigError,
    make_scheduler,
)
from orchestrator.policy.state import Call, PrefixIndex, Rates, ReplicaState
from orchestrator.sim.simulator import Simulator
from orchestrator.sim.variants import VariantError, parse_variant
from tests.test_engine_model import SMALL

RATES = Rates(overhead_s=0.01, prefill_s_per_token=0.001, tpot_s=0.01)
BLOCK = 16
_ids = itertools.count()


def call(hashes: tuple[int, ...], prompt: int = 1000, deadline: float = 2.0) -> Call:
    return Call(
        id=f"c{next(_ids)}",
        model="m",
        deadline=deadline,
        prompt_tokens=prompt,
        expected_output_tokens=10,
        arrival=0.0,
        metric="ttft",
        block_hashes=hashes,
    )


def replica(rid: str, capacity: int = 1000) -> ReplicaState:
    r = ReplicaState(id=rid, model="m", concurrency_limit=8, rates=Rates(**vars(RATES)))
    r.prefixes = PrefixIndex(BLOCK, capacity)
    return r


def serve(r: ReplicaState, c: Call) -> None:
    """Queue and start ``c`` on ``r``, then finish it (its prompt stays tracked)."""
    r.enqueue(c)
    r.dispatch(c, 0.0)
    r.finish(c.id, 0.0)


SESSION = tuple(range(1, 61))  # 60 blocks of a long prompt


def test_the_index_matches_leading_blocks_and_forgets_the_oldest() -> None:
    index = PrefixIndex(BLOCK, capacity=100)
    index.add(SESSION)
    assert index.match_tokens(SESSION) == 60 * BLOCK
    assert index.match_tokens((1, 2, 99, 4)) == 2 * BLOCK  # stops at the first miss
    assert index.match_tokens((99, *SESSION)) == 0
    index.add(tuple(range(1000, 1060)))  # 120 blocks in all: the 20 oldest go
    assert len(index) == 100
    assert index.match_tokens(SESSION) == 0
    assert index.match_tokens(SESSION[20:]) == 40 * BLOCK
    with pytest.raises(ValueError):
        PrefixIndex(BLOCK, 0)


def test_a_queued_call_counts_only_its_uncached_prefill() -> None:
    r = replica("a")
    serve(r, call(SESSION))
    later = call((*SESSION, 61, 62), prompt=1000)
    r.enqueue(later)
    assert later.cached_tokens == 60 * BLOCK
    assert r.queued_prompt_tokens == 1000 - 60 * BLOCK
    r.dispatch(later, 0.0)
    assert r.inflight_prefill_tokens == 1000 - 60 * BLOCK
    r.finish(later.id, 0.0)
    assert r.inflight_prefill_tokens == r.queued_prompt_tokens == 0
    # a moved call leaves nothing behind: only started prompts are tracked
    moved = call(tuple(range(500, 530)))
    r.enqueue(moved)
    r.dequeue(moved.id)
    assert r.cached_tokens(moved) == 0


def test_cato_sends_a_session_where_its_prefix_is_while_that_meets_the_deadline() -> None:
    a, b = replica("a"), replica("b")
    serve(b, call(SESSION))
    sched = CatoScheduler()
    assert sched.tracks_prefixes
    nxt = call((*SESSION, 61))
    route = sched.route(nxt, [a, b], 0.0)
    assert route.replica_id == "b"
    # the saving is counted in the service time: 60 blocks less to prefill
    assert route.expected_completion == pytest.approx(0.01 + (1000 - 960) * 0.001)


def test_affinity_is_a_cost_not_a_rule() -> None:
    a, b = replica("a"), replica("b")
    serve(b, call(SESSION))
    for _ in range(3):  # b owes 3 x 1000 tokens of prefill: 3 s, past the deadline
        b.start(call((), prompt=1000), 0.0)
    strict = CatoScheduler(affinity_tolerance=0.0)
    route = strict.route(call((*SESSION, 61), deadline=1.5), [a, b], 0.0)
    assert route.replica_id == "a"  # no prefix, but it meets the deadline
    # By default the prefix's replica may be late by up to 2 budgets (3 s): b is 1.55 s
    # late, and keeps the document; with 2 more calls queued (3.55 s late) it does not.
    tolerant = CatoScheduler()
    assert tolerant.route(call((*SESSION, 61), deadline=1.5), [a, b], 0.0).replica_id == "b"
    for _ in range(2):
        b.start(call((), prompt=1000), 0.0)
    assert tolerant.route(call((*SESSION, 61), deadline=1.5), [a, b], 0.0).replica_id == "a"
    # A replica holding under AFFINITY_SHARE of the prompt gets no tolerance.
    short = call((*SESSION[:5], 61), prompt=1000)  # 5 blocks of 16 held: 8%
    c = replica("c")
    serve(c, call(SESSION[:5]))
    c.start(call((), prompt=1000), 0.0)  # 1 s of prefill first: c is late, a meets it
    short.deadline = 1.2
    assert tolerant.route(short, [a, c], 0.0).replica_id == "a"
    # without an index (or with affinity off) the call is charged in full, as before
    off = CatoScheduler(affinity=False)
    assert not off.tracks_prefixes
    plain = off.route(call((*SESSION, 61), deadline=1.5), [a, b], 0.0)
    assert plain.expected_completion == pytest.approx(0.01 + 1.0)


def test_when_no_replica_meets_the_deadline_the_least_work_wins() -> None:
    a, b = replica("a"), replica("b")
    serve(b, call(SESSION))
    for r in (a, b):
        for _ in range(3):
            r.start(call((), prompt=1000), 0.0)
    route = CatoScheduler().route(call((*SESSION, 61), deadline=0.5), [a, b], 0.0)
    assert route.replica_id == "b"


def test_calls_without_hashes_route_as_before() -> None:
    def routes(tracked: bool) -> list[str]:
        reps = [replica(f"r{i}") for i in range(3)]
        if not tracked:
            for r in reps:
                r.prefixes = None
        sched = CatoScheduler()
        got = []
        for i in range(12):
            c = call((), prompt=100 * (i % 4 + 1))
            route = sched.route(c, reps, 0.0)
            rep = next(r for r in reps if r.id == route.replica_id)
            route.apply(c, rep)
            rep.dispatch(c, 0.0)
            got.append(route.replica_id)
        return got

    assert routes(True) == routes(False)


def test_the_cache_aware_baseline_follows_the_prefix_until_loads_drift_apart() -> None:
    a, b = replica("a"), replica("b")
    serve(b, call(SESSION))
    sched = make_scheduler("cache_aware")
    assert isinstance(sched, CacheAwareScheduler) and sched.tracks_prefixes
    assert sched.route(call((*SESSION, 61)), [a, b], 0.0).replica_id == "b"
    # a match under the threshold (30% of the prompt): least loaded
    b.start(call(()), 0.0)
    short = call(SESSION[:10], prompt=1000)  # 160 of 1000 tokens
    assert sched.route(short, [a, b], 0.0).replica_id == "a"
    # loads 0 and 65 (> 64 apart and > 1.5 x): least loaded, prefix or not
    for _ in range(64):
        b.start(call(()), 0.0)
    assert sched.route(call((*SESSION, 61)), [a, b], 0.0).replica_id == "a"
    with pytest.raises(SchedulerConfigError):
        make_scheduler("cache_aware", cache_threshold=2.0)


def test_affinity_is_a_variant_switch() -> None:
    variant = parse_variant("cato/affinity=false")
    assert variant.options == {"affinity": False}
    assert parse_variant("cato/affinity_margin=0.3").options == {"affinity_margin": 0.3}
    with pytest.raises(VariantError):
        parse_variant("cato/affinity=maybe")
    with pytest.raises(VariantError):
        parse_variant("cato/affinity_margin=1.5")


def test_the_index_overstates_what_an_engine_under_pressure_still_holds() -> None:
    """The index sees the prompts sent, not the engine's other uses of its KV blocks:
    a long generation's output evicts a cached prompt the index still counts."""
    tight = dataclasses.replace(SMALL, num_kv_blocks=130, max_model_len=2048)
    engine = EngineModel(tight, prefix_caching=True)
    index = PrefixIndex(tight.block_size, tight.num_kv_blocks)
    prompt = tuple(range(1, 61))  # 60 blocks, then freed and cached
    long = tuple(range(500, 510))  # 10 blocks of prompt, 100 blocks of output
    now = 0.0
    for seq_id, hashes, output in (("a", prompt, 2), ("long", long, 100 * tight.block_size)):
        index.add(hashes)
        engine.add(seq_id, len(hashes) * tight.block_size, output, now=now, block_hashes=hashes)
        while seq_id in engine:
            assert engine.step(now) is not None
            now = engine.busy_until
    assert len(index) == 70 <= index.capacity  # nothing forgotten here
    held = engine.cached_prefix_tokens(prompt)
    assert index.match_tokens(prompt) == 60 * tight.block_size
    # the generation holds 110 of the 130 blocks: 20 of the prompt's are left
    assert held == 20 * tight.block_size
    # The index never tracks blocks it was not sent: where it says nothing, nothing.
    assert index.match_tokens((900, 901)) == engine.cached_prefix_tokens((900, 901)) == 0


def test_over_a_simulated_run_the_index_tracks_the_engines_hits_closely() -> None:
    """Under sessions at twice the mix's capacity, what routing expected to find cached
    (``prefix_index_hits``) is within 2 points of what the engines found."""
    scenario = SCENARIOS["sessions"]
    workload = Workload(tasks={}, seed=0)  # sessions draw their own tasks
    rate = 2.0 * capacity_rps(scenario, workload)
    result = Simulator(scenario.config("cato", "fixed", 0)).run(
        scenario.arrivals(rate, 8.0, workload, 0)
    )
    counters = result.counters
    queries = counters["prefix_cache_queries"]
    engine_share = counters["prefix_cache_hits"] / queries
    index_share = counters["prefix_index_hits"] / queries
    assert engine_share > 0.4  # sessions share their prefixes
    assert abs(index_share - engine_share) < 0.02
    # a router that keeps no index reports none
    plain = Simulator(scenario.config("round_robin", "fixed", 0)).run(
        scenario.arrivals(rate, 2.0, workload, 0)
    )
    assert "prefix_index_hits" not in plain.counters
