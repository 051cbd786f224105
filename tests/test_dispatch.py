"""The dispatch core shared by the executor and the simulator, on a virtual clock."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.dispatch import DispatchCore, DispatchError
from orchestrator.policy.scheduler import RoundRobinScheduler, make_scheduler
from orchestrator.policy.state import Call, Rates, ReplicaState

RATES = Rates(overhead_s=0.01, prefill_s_per_token=0.001, tpot_s=0.01)
_ids = itertools.count()


def call(model: str = "m", deadline: float = 100.0, prompt: int = 100) -> Call:
    return Call(
        id=f"c{next(_ids)}",
        model=model,
        deadline=deadline,
        prompt_tokens=prompt,
        expected_output_tokens=50,
        arrival=0.0,
        metric="ttft",
    )


def replica(rid: str, limit: int = 2, *, accepting: bool = True) -> ReplicaState:
    return ReplicaState(
        id=rid, model="m", concurrency_limit=limit, rates=Rates(**vars(RATES)), accepting=accepting
    )


class Host:
    """What the core tells its caller, in order."""

    def __init__(self, scheduler: str = "cato") -> None:
        self.started: list[tuple[str, str]] = []
        self.batches: list[tuple[str, int]] = []
        self.failed: list[tuple[str, str]] = []
        self.outcomes: list[tuple[str, bool, float]] = []
        self.core = DispatchCore(
            make_scheduler(scheduler),
            on_start=lambda c, st, now: self.started.append((c.id, st.id)),
            on_fail=lambda c, exc: self.failed.append((c.id, exc.code)),
            on_batch=lambda st, now: self.batches.append((st.id, len(st.in_flight))),
            on_outcome=lambda c, violated, now: self.outcomes.append((c.id, violated, now)),
        )


def test_starts_up_to_the_limit_then_queues_and_refills_on_finish() -> None:
    host = Host()
    r = replica("r0", limit=2)
    host.core.add(r, 0.0)
    calls = [call() for _ in range(3)]
    for c in calls:
        host.core.place(c, 0.0)
    assert host.started == [(calls[0].id, "r0"), (calls[1].id, "r0")]
    assert calls[2].id in r.queue and len(r.in_flight) == 2
    assert host.batches == [("r0", 1), ("r0", 2)]
    assert host.core.finish(r, calls[0].id, 1.0) is True
    assert host.started[-1] == (calls[2].id, "r0") and calls[2].started_at == 1.0
    assert host.core.finish(r, calls[1].id, 2.0) is False  # nothing left to start


def test_parked_while_starting_then_started_when_ready() -> None:
    host = Host()
    r = replica("r0", accepting=False)
    host.core.add(r, 0.0, starting=True)
    c = call()
    host.core.place(c, 0.0)
    assert c.replica is None and host.core.parked_count == 1 and not host.started
    host.core.set_phase("r0", 5.0, accepting=True, starting=False)
    assert host.core.parked_count == 0
    assert host.started == [(c.id, "r0")] and c.started_at == 5.0


def test_parked_calls_fail_when_nothing_starts_any_more() -> None:
    host = Host()
    host.core.add(replica("r0", accepting=False), 0.0, starting=True)
    c = call()
    host.core.place(c, 0.0)
    host.core.set_phase("r0", 1.0, accepting=False, starting=False)  # failed to start
    assert host.failed == [(c.id, "no_replica")] and host.core.parked_count == 0


def test_unknown_model_and_no_replica_are_raised_on_first_placement() -> None:
    host = Host()
    host.core.add(replica("r0", accepting=False), 0.0)
    with pytest.raises(DispatchError) as unknown:
        host.core.place(call(model="other"), 0.0)
    assert unknown.value.code == "unknown_model" and "served models: m" in str(unknown.value)
    with pytest.raises(DispatchError) as none:
        host.core.place(call(), 0.0)
    assert none.value.code == "no_replica"
    assert not host.failed  # raised, not reported through the hook


def test_queue_of_a_replica_that_stops_accepting_moves_elsewhere() -> None:
    host = Host("round_robin")
    a, b = replica("a", limit=1), replica("b", limit=1)
    host.core.add(a, 0.0)
    host.core.add(b, 0.0)
    calls = [call() for _ in range(4)]  # a, b, a (queued), b (queued)
    for c in calls:
        host.core.place(c, 0.0)
    assert [c.replica for c in calls] == ["a", "b", "a", "b"]
    host.core.set_phase("a", 1.0, accepting=False, starting=False)  # draining
    assert calls[2].replica == "b" and calls[2].id in b.queue and len(a.queue) == 0
    assert host.core.rerouted == 1
    assert calls[0].id in a.in_flight  # what runs there stays


def test_queue_fails_when_its_replica_was_the_last() -> None:
    host = Host()
    r = replica("r0", limit=1)
    host.core.add(r, 0.0)
    running, queued = call(), call()
    host.core.place(running, 0.0)
    host.core.place(queued, 0.0)
    assert host.core.remove("r0", 1.0) is r
    # The model has no replica left at all: as unknown as one never served.
    assert host.failed == [(queued.id, "unknown_model")]
    assert host.core.models() == []


def test_suspect_replica_is_avoided_while_another_accepts() -> None:
    host = Host()
    a, b = replica("a"), replica("b")
    host.core.add(a, 0.0)
    host.core.add(b, 0.0)
    host.core.suspect("a", 10.0, 0.0)
    assert [s.id for s in host.core.candidates("m", 5.0)] == ["b"]
    assert [s.id for s in host.core.candidates("m", 5.0, {"b"})] == ["a"]  # better than none
    assert [s.id for s in host.core.candidates("m", 10.0)] == ["a", "b"]


def test_release_takes_a_call_out_wherever_it_is() -> None:
    host = Host()
    r = replica("r0", limit=1)
    host.core.add(r, 0.0)
    running, queued = call(), call()
    host.core.place(running, 0.0)
    host.core.place(queued, 0.0)
    host.core.release(queued, 1.0, queued_only=True)  # cancelled while waiting
    assert queued.id not in r.queue and running.id in r.in_flight
    host.core.release(running, 2.0)
    assert not r.in_flight and r.idle_since == 2.0
    starting = replica("s0", accepting=False)
    host.core.add(starting, 0.0, starting=True)
    host.core.remove("r0", 3.0)
    parked = call()
    host.core.place(parked, 3.0)
    assert host.core.parked_count == 1
    host.core.release(parked, 4.0)
    assert host.core.parked_count == 0


def test_scheduler_pick_order_is_what_starts() -> None:
    """Queued calls start in the scheduler's order (CATO: earliest deadline first)."""
    host = Host()
    r = replica("r0", limit=1)
    host.core.add(r, 0.0)
    first, late, early = call(deadline=50.0), call(deadline=90.0), call(deadline=60.0)
    for c in (first, late, early):
        host.core.place(c, 0.0)
    host.core.finish(r, first.id, 1.0)
    assert host.started[-1][0] == early.id


def test_round_robin_scheduler_is_accepted_directly() -> None:
    core = DispatchCore(RoundRobinScheduler(), on_start=lambda *a: None, on_fail=lambda *a: None)
    core.add(replica("a"), 0.0)
    c = call()
    core.place(c, 0.0)
    assert c.replica == "a" and c.started_at == 0.0


def test_every_call_is_counted_once_for_the_provisioner() -> None:
    """Met or violated by its metric when it finishes; violated at routing when the
    route predicts a miss (not again when it finishes, even on time); an unfinished
    call only once past its deadline."""
    host = Host()
    r = replica("r0", limit=1)
    host.core.add(r, 0.0)
    on_time, doomed = call(deadline=1.0), call(deadline=0.05)  # 0.11 s of service each
    host.core.place(on_time, 0.0)
    host.core.place(doomed, 0.0)  # queued behind on_time: predicted to miss
    assert host.outcomes == [(doomed.id, True, 0.0)]
    host.core.first_token(r, on_time.id, 0.2)
    host.core.finish(r, on_time.id, 0.9)  # a TTFT call: met at 0.2
    host.core.ended(on_time, 0.9, finished=True)
    host.core.ended(on_time, 0.9, finished=True)
    host.core.finish(r, doomed.id, 1.0)
    host.core.ended(doomed, 1.0, finished=True)
    assert host.outcomes == [(doomed.id, True, 0.0), (on_time.id, False, 0.9)]

    early, late = call(deadline=5.0), call(deadline=5.0)
    for c in (early, late):
        host.core.place(c, 1.0)
    host.core.release(early, 2.0)
    host.core.ended(early, 2.0, finished=False)  # cancelled with time to spare
    host.core.release(late, 6.0)
    host.core.ended(late, 6.0, finished=False)  # abandoned after its deadline
    assert host.outcomes[2:] == [(late.id, True, 6.0)]


def test_a_shed_call_counts_as_a_violation() -> None:
    host = Host()
    r = replica("r0")
    host.core.add(r, 0.0)
    c = call(deadline=1.0)
    c.shed_late = True
    with pytest.raises(DispatchError):
        host.core.place(c, 2.0)
    host.core.ended(c, 2.0, finished=False)
    assert host.outcomes == [(c.id, True, 2.0)]
