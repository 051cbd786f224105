"""Cost of one CATO routing decision with 10,000 calls queued over 16 or 1,024 replicas.

Targets (median): 20 us at 16 replicas, 100 us at 1,024. ``meets`` is a deadline some
replica can meet (the usual case: one C-level scan of the kept route keys); ``misses``
is one that no replica can meet, which goes on to examine every replica.
"""

from __future__ import annotations

import random

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator.policy.scheduler import CatoScheduler
from orchestrator.policy.state import Call, Rates, ReplicaState

QUEUED = 10_000
SLOTS = 8


def busy_replicas(n: int, seed: int = 0) -> list[ReplicaState]:
    """``n`` full replicas (slightly different rates) sharing ``QUEUED`` waiting calls."""
    rng = random.Random(seed)
    replicas = [
        ReplicaState(
            id=f"r{i}",
            model="m",
            concurrency_limit=SLOTS,
            rates=Rates(
                prefill_s_per_token=rng.uniform(8e-5, 1.2e-4), tpot_s=rng.uniform(0.015, 0.025)
            ),
        )
        for i in range(n)
    ]
    for i, replica in enumerate(replicas):
        for j in range(SLOTS):
            call = _call(rng, f"run-{i}-{j}")
            replica.start(call, 0.0)
            replica.first_token(call.id, 0.1)
    for k in range(QUEUED):
        call = _call(rng, f"q{k}")
        call.sort_key = call.deadline
        call.promote_at = call.deadline - 0.1
        rng.choice(replicas).enqueue(call)
    return replicas


def _call(rng: random.Random, call_id: str) -> Call:
    return Call(
        id=call_id,
        model="m",
        deadline=rng.uniform(0.5, 30.0),
        prompt_tokens=rng.randint(50, 2_000),
        expected_output_tokens=rng.randint(16, 256),
        arrival=0.0,
        metric="e2e",
    )


@pytest.mark.parametrize("deadline_case", ["meets", "misses"])
@pytest.mark.parametrize("n_replicas", [16, 1_024])
def test_cato_route(benchmark: BenchmarkFixture, n_replicas: int, deadline_case: str) -> None:
    replicas = busy_replicas(n_replicas)
    shortest = min(r.wait_s for r in replicas)
    # The call's own service is 0.05-0.07 s: half of it is too little on every replica.
    slack = shortest + (5.0 if deadline_case == "meets" else 0.03)
    call = Call(
        id="new",
        model="m",
        deadline=1.0 + slack,
        prompt_tokens=400,
        expected_output_tokens=64,
        arrival=1.0,
        metric="ttft",
    )
    scheduler = CatoScheduler()
    route = benchmark(scheduler.route, call, replicas, 1.0)
    assert route.priority == (2 if deadline_case == "meets" else 1)
    assert route.expected_wait_s == pytest.approx(shortest, rel=1e-6)
