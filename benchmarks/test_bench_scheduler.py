"""Cost of one CATO routing decision with 10,000 calls queued over 16 to 1,024 replicas.

Targets (median): 20 us at 16 replicas, 100 us at 1,024 (64 and 256 show how it
grows). ``meets`` is a deadline some replica can meet (the usual case: one C-level scan
of the kept route keys); ``misses`` is one that no replica can meet, which goes on to
examine every replica. Also the ``pick`` that finds half of a 10,000-call queue late
(each late call moves once, in O(log queue)).
"""

from __future__ import annotations

import random

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator.policy.scheduler import LATE, SAFE, URGENT, CatoScheduler, make_scheduler
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


def routing_call(replicas: list[ReplicaState], meets: bool) -> Call:
    """The call being routed: a completion that one of ``replicas`` can serve in time
    (``meets``) or that none can. Its own service is 0.05-0.07 s: half of it is too
    little on every replica; one that meets its deadline keeps over a tenth of its
    budget spare (not urgent)."""
    shortest = min(r.wait_s for r in replicas)
    slack = shortest * 1.25 + 5.0 if meets else shortest + 0.03
    return Call(
        id="new",
        model="m",
        deadline=1.0 + slack,
        prompt_tokens=400,
        expected_output_tokens=64,
        arrival=1.0,
        metric="ttft",
    )


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
@pytest.mark.parametrize("n_replicas", [16, 64, 256, 1_024])
def test_cato_route(benchmark: BenchmarkFixture, n_replicas: int, deadline_case: str) -> None:
    replicas = busy_replicas(n_replicas)
    call = routing_call(replicas, meets=deadline_case == "meets")
    scheduler = CatoScheduler()
    route = benchmark(scheduler.route, call, replicas, 1.0)
    assert route.priority == (2 if deadline_case == "meets" else 1)
    assert route.expected_wait_s == pytest.approx(min(r.wait_s for r in replicas), rel=1e-6)


@pytest.mark.parametrize("policy", ["cato_paper", "cato_triage"])
def test_pick_when_half_the_queue_ran_out_of_slack(
    benchmark: BenchmarkFixture, policy: str
) -> None:
    """The first ``pick`` after 5,000 of 10,000 queued calls passed their ``promote_at``:
    each moves once, to the front for cato_paper, behind the on-time calls for
    cato_triage (and for cato, until their bound)."""
    scheduler = make_scheduler(policy)
    late = URGENT if policy == "cato_paper" else LATE

    def setup() -> tuple[tuple[ReplicaState, float], dict[str, object]]:
        rng = random.Random(1)
        replica = ReplicaState(id="r", model="m", concurrency_limit=SLOTS)
        for k in range(QUEUED):
            call = _call(rng, f"q{k}")
            call.sort_key = call.deadline
            call.promote_at = call.deadline - 0.1
            call.promote_to = late
            replica.enqueue(call)
        due = sorted(c.promote_at for c in replica.queue.calls())[QUEUED // 2]
        return (replica, due), {}

    def pick(replica: ReplicaState, now: float) -> Call | None:
        return scheduler.pick(replica, now)

    head = benchmark.pedantic(pick, setup=setup, rounds=20, iterations=1)  # type: ignore[no-untyped-call]
    assert head is not None and head.priority == (URGENT if policy == "cato_paper" else SAFE)
