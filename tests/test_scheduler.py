"""Routing decisions of CATO (Algorithm 1) and the baselines, on a virtual clock."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.policy.scheduler import (
    AT_RISK,
    LATE,
    SAFE,
    URGENT,
    CatoPaperScheduler,
    CatoScheduler,
    CatoTriageScheduler,
    LeastLoadedScheduler,
    NoReplicaError,
    PowerOfTwoScheduler,
    RoundRobinScheduler,
    Scheduler,
    SchedulerConfigError,
    make_scheduler,
    service_s,
)
from orchestrator.policy.state import Call, Rates, ReplicaQueue, ReplicaState

RATES = Rates(overhead_s=0.01, prefill_s_per_token=0.001, tpot_s=0.01)
_ids = itertools.count()


def call(
    deadline: float = 100.0,
    prompt: int = 100,
    output: int = 50,
    metric: str = "ttft",
    arrival: float = 0.0,
) -> Call:
    assert metric in ("ttft", "e2e")
    return Call(
        id=f"c{next(_ids)}",
        model="m",
        deadline=deadline,
        prompt_tokens=prompt,
        expected_output_tokens=output,
        arrival=arrival,
        metric="ttft" if metric == "ttft" else "e2e",
    )


def replica(rid: str, queued: int = 0, limit: int = 1, rates: Rates = RATES) -> ReplicaState:
    """A replica with ``limit`` calls running and ``queued`` more waiting."""
    r = ReplicaState(id=rid, model="m", concurrency_limit=limit, rates=Rates(**vars(rates)))
    for _ in range(limit if queued else 0):
        c = call()
        r.start(c, 0.0)
    for _ in range(queued):
        r.enqueue(call())
    return r


def test_with_a_free_slot_the_wait_is_the_prefill_still_owed() -> None:
    r = ReplicaState(id="r", model="m", concurrency_limit=3, rates=RATES)
    a = call(prompt=400)
    r.start(a, 0.0)
    r.start(call(prompt=100), 0.0)
    assert r.free_slots == 1 and r.wait_s == pytest.approx(0.5)  # 500 tokens x 1 ms
    r.first_token(a.id, 0.4)
    assert r.wait_s == pytest.approx(0.1)
    idle = ReplicaState(id="i", model="m", concurrency_limit=3, rates=RATES)
    assert idle.wait_s == 0.0


def test_cato_steers_a_completion_away_from_a_long_prefill() -> None:
    """Fewer calls is not less wait: one 3,000-token prompt being prefilled delays a
    new call more than three calls that are only decoding."""
    prefilling = ReplicaState(id="p", model="m", concurrency_limit=8, rates=RATES)
    prefilling.start(call(prompt=3000, metric="e2e"), 0.0)
    decoding = ReplicaState(id="d", model="m", concurrency_limit=8, rates=RATES)
    for _ in range(3):
        c = call(prompt=100)
        decoding.start(c, 0.0)
        decoding.first_token(c.id, 0.1)
    new = call(deadline=1.0, prompt=50)
    assert make_scheduler("cato").route(new, [prefilling, decoding], 0.2).replica_id == "d"
    assert make_scheduler("least_loaded").route(new, [prefilling, decoding], 0.2).replica_id == "p"


def test_wait_counts_prefill_ahead_and_decode_until_a_slot_frees() -> None:
    r = ReplicaState(id="r", model="m", concurrency_limit=2, rates=RATES)
    a, b = call(prompt=100, output=50), call(prompt=100, output=50)
    r.start(a, 0.0)
    r.start(b, 0.0)
    r.first_token(a.id, 0.1)
    r.tokens(a.id, 10)
    r.enqueue(call(prompt=200, output=20))
    # prefill still owed: b's 100 + the queued 200 tokens, plus one queued overhead.
    prefill = 300 * 0.001 + 0.01
    # decode ahead: 40 + 50 + 20 tokens over 2 slots; 2 of the 3 calls ahead must finish.
    decode = 110 * 0.01 / 2 * 2 / 3
    assert r.wait_s == pytest.approx(prefill + decode)
    assert r.wait_s == r.estimate_wait_s()


OPS = ["enqueue", "start", "dispatch", "first", "tokens", "finish", "finish_at", "observe"]


@given(st.lists(st.sampled_from(OPS)))
@settings(max_examples=60, deadline=None)
def test_kept_wait_and_aggregates_match_a_recount(ops: list[str]) -> None:
    r = ReplicaState(id="r", model="m", concurrency_limit=2, rates=Rates())
    rng = random.Random(len(ops))
    for op in ops:
        queued, running = r.queue.calls(), list(r.in_flight.values())
        if op == "enqueue":
            r.enqueue(call(prompt=rng.randint(1, 500), output=rng.randint(1, 80)))
        elif op == "start" and queued:
            head = r.queue.peek(0.0)
            assert head is not None
            r.dequeue(head.id)
            r.start(head, 1.0)
        elif op == "dispatch" and queued:
            head = r.queue.peek(0.0)
            assert head is not None
            r.dispatch(head, 1.0)
            assert head.id in r.in_flight and head.id not in r.queue
        elif op == "first" and running:
            r.first_token(rng.choice(running).id, 1.0)
        elif op == "tokens" and running:
            r.tokens(rng.choice(running).id, rng.randint(1, 30))
        elif op == "finish" and running:
            r.finish(rng.choice(running).id, 2.0)
        elif op == "finish_at" and running:
            done = rng.choice(running)
            produced = done.tokens_done + rng.randint(0, 90)
            assert r.finish(done.id, 2.0, produced) is done and done.tokens_done == produced
        elif op == "observe":
            done = call(prompt=rng.randint(1, 100), output=1)
            r.observe_call(done, 0.0, 0.5, 0.9, rng.randint(2, 50))
        queued, running = r.queue.calls(), list(r.in_flight.values())
        assert r.queued_prompt_tokens == sum(c.prompt_tokens for c in queued)
        assert r.queued_output_tokens == sum(c.expected_output_tokens for c in queued)
        prefilling = [c for c in running if c.first_token_at is None]
        assert r.inflight_prefill_tokens == sum(c.prompt_tokens for c in prefilling)
        assert r.inflight_output_tokens == sum(c.remaining_output_tokens for c in running)
        assert r.wait_s == r.estimate_wait_s()


STEPS = st.tuples(st.sampled_from(["enqueue", "start", "first", "end"]), st.integers(0, 9))


@given(st.lists(STEPS))
@settings(max_examples=60, deadline=None)
def test_dispatch_and_finish_with_tokens_equal_their_separate_steps(
    ops: list[tuple[str, int]],
) -> None:
    """``dispatch`` is ``dequeue`` + ``start``, ``finish(..., n)`` is ``tokens`` + ``finish``:
    the same state, float for float."""
    one = ReplicaState(id="r", model="m", concurrency_limit=3, rates=Rates())
    two = ReplicaState(id="r", model="m", concurrency_limit=3, rates=Rates())
    for step, (op, n) in enumerate(ops):
        for r, fused in ((one, True), (two, False)):
            running = list(r.in_flight.values())
            if op == "enqueue":
                fresh = call(prompt=50 + 37 * n, output=3 + 11 * n, metric="e2e")
                r.enqueue(dataclasses.replace(fresh, id=f"e{step}", deadline=float(n)))
            elif op == "start" and len(r.queue) and r.free_slots:
                head = r.queue.peek(0.0)
                assert head is not None
                if fused:
                    r.dispatch(head, 1.0)
                else:
                    r.dequeue(head.id)
                    r.start(head, 1.0)
            elif op == "first" and running:
                r.first_token(running[n % len(running)].id, 1.5)
            elif op == "end" and running:
                done = running[n % len(running)]
                produced = done.tokens_done + 7 * n
                if fused:
                    r.finish(done.id, 2.0, produced)
                else:
                    if produced > done.tokens_done:
                        r.tokens(done.id, produced - done.tokens_done)
                    r.finish(done.id, 2.0)
        assert one.wait_s == two.wait_s and one.route_key == two.route_key
        fields = (
            "queued_prompt_tokens",
            "queued_output_tokens",
            "inflight_prefill_tokens",
            "inflight_output_tokens",
            "idle_since",
        )
        assert all(getattr(one, f) == getattr(two, f) for f in fields)
        assert list(one.in_flight) == list(two.in_flight)


def same_moves(got: tuple[tuple[float, int], ...], want: tuple[tuple[float, int], ...]) -> bool:
    return [lv for _, lv in got] == [lv for _, lv in want] and [t for t, _ in got] == (
        pytest.approx([t for t, _ in want])
    )


def test_safe_call_goes_to_an_idle_replica_with_priority_2() -> None:
    replicas = [replica("busy", queued=3), replica("idle")]
    c = call(deadline=5.0, prompt=200)
    route = CatoScheduler().route(c, replicas, now=1.0)
    service = 0.01 + 200 * 0.001
    assert route.replica_id == "idle"
    assert route.priority == SAFE
    assert route.expected_wait_s == 0.0
    assert route.expected_completion == pytest.approx(1.0 + service)
    assert route.sort_key == 5.0
    # Its budget is 5 s (arrival 0, deadline 5): urgent once less than 0.5 s of margin
    # would be left, late when its slack is gone, safe again (at the front) at its bound.
    assert route.promote_at == pytest.approx(5.0 - service - 0.5) and route.promote_to == URGENT
    assert same_moves(route.moves, ((5.0 - service, LATE), (10.0 - service, SAFE)))
    paper = CatoPaperScheduler().route(c, replicas, now=1.0)
    assert (paper.priority, paper.promote_to, paper.moves) == (SAFE, URGENT, ())
    assert paper.promote_at == pytest.approx(5.0 - service)


def test_shortest_wait_wins_when_it_meets_the_deadline() -> None:
    replicas = [replica("q3", queued=3), replica("q1", queued=1), replica("q2", queued=2)]
    assert CatoScheduler().route(call(deadline=100.0), replicas, now=0.0).replica_id == "q1"


def test_idle_replicas_tie_broken_by_fewer_calls() -> None:
    a = ReplicaState(id="a", model="m", concurrency_limit=4, rates=RATES)
    b = ReplicaState(id="b", model="m", concurrency_limit=4, rates=RATES)
    busy = call()
    a.start(busy, 0.0)
    a.first_token(busy.id, 0.1)  # decoding only: nothing owed ahead of a new call
    assert a.wait_s == b.wait_s == 0.0
    assert CatoScheduler().route(call(), [a, b], now=0.1).replica_id == "b"


def test_shortest_wait_among_replicas_that_meet_the_deadline() -> None:
    slow = Rates(overhead_s=0.01, prefill_s_per_token=0.05, tpot_s=0.01)
    short_wait_slow = replica("slow", queued=0, rates=slow)
    meets_a = replica("a", queued=2)
    meets_b = replica("b", queued=3)
    c = call(deadline=0.0, prompt=100)
    assert short_wait_slow.wait_s < meets_a.wait_s < meets_b.wait_s
    # A deadline meetable on "a" and "b" but not on "slow" (its service is 5 s).
    c.deadline = meets_b.wait_s + service_s(RATES, c) + 0.01
    route = CatoScheduler().route(c, [short_wait_slow, meets_b, meets_a], now=0.0)
    assert route.replica_id == "a" and route.priority == SAFE
    assert route.expected_wait_s == pytest.approx(meets_a.wait_s)


def test_no_replica_meets_the_deadline_gives_priority_1_and_the_shortest_wait() -> None:
    replicas = [replica("q2", queued=2), replica("q1", queued=1)]
    c = call(prompt=100)
    service = service_s(RATES, c)
    c.deadline = 10.0 + service + replicas[1].wait_s / 2  # slack left, but not enough
    route = CatoScheduler().route(c, replicas, now=10.0)
    assert route.replica_id == "q1" and route.priority == AT_RISK
    assert route.promote_at == pytest.approx(c.deadline - service)
    assert route.expected_completion > c.deadline


def test_slack_already_gone_gives_late_with_a_bound_and_priority_0_in_the_paper() -> None:
    c = call(deadline=10.05, prompt=100, arrival=9.0)  # service 0.11 s from now = 10.0
    replicas = [replica("idle"), replica("busy", queued=1)]
    route = CatoScheduler().route(c, replicas, now=10.0)
    assert route.priority == LATE and route.replica_id == "idle"
    # Behind on-time work until its bound: deadline + its budget (1.05 s) - service.
    assert route.promote_at == pytest.approx(11.1 - 0.11) and route.promote_to == SAFE
    assert route.moves == () and not route.shed
    paper = CatoPaperScheduler().route(c, replicas, now=10.0)
    assert paper.priority == URGENT and paper.replica_id == "idle"


def test_past_its_bound_a_late_call_is_safe_at_once() -> None:
    c = call(deadline=1.0, prompt=100, arrival=0.0)  # bound: 2.0 - 0.11
    route = CatoScheduler().route(c, [replica("idle")], now=1.95)
    assert route.priority == SAFE and route.promote_at == math.inf
    unbounded = CatoScheduler(late_bound=math.inf).route(c, [replica("idle")], now=1.95)
    assert unbounded.priority == LATE and unbounded.promote_at == math.inf


def test_a_call_turns_urgent_only_while_it_waits() -> None:
    idle = [replica("idle")]
    service = 0.11
    # Budget 10 s: urgent once under 1 s of slack is left and it has not started.
    loose = CatoScheduler().route(call(deadline=10.0, prompt=100), idle, now=8.0)
    assert loose.priority == SAFE
    assert loose.promote_at == pytest.approx(9.0 - service) and loose.promote_to == URGENT
    assert same_moves(loose.moves, ((10.0 - service, LATE), (20.0 - service, SAFE)))
    # Already under the margin on arrival: safe, not urgent (no overtaking those ahead).
    tight = CatoScheduler().route(call(deadline=10.0, prompt=100), idle, now=9.5)
    assert tight.priority == SAFE
    assert tight.promote_at == pytest.approx(10.0 - service) and tight.promote_to == LATE
    assert same_moves(tight.moves, ((20.0 - service, SAFE),))
    off = CatoScheduler(urgent_margin=0.0).route(call(deadline=10.0, prompt=100), idle, now=8.0)
    assert off.priority == SAFE and off.promote_to == LATE


def test_e2e_calls_need_their_decode_time_too() -> None:
    c_ttft = call(deadline=0.5, prompt=100, output=50, metric="ttft")
    c_e2e = call(deadline=0.5, prompt=100, output=50, metric="e2e")
    idle = [replica("idle")]
    assert CatoScheduler().route(c_ttft, idle, now=0.0).priority == SAFE
    route = CatoScheduler().route(c_e2e, idle, now=0.0)
    assert route.priority == LATE  # its decode alone outlasts the slack
    assert route.expected_completion == pytest.approx(0.11 + 0.5)


@pytest.mark.parametrize(
    ("sched", "hopeless_level", "hopeless_first"),
    [(CatoScheduler(), LATE, False), (CatoPaperScheduler(), URGENT, True)],
)
def test_queue_serves_by_priority_then_deadline(
    sched: Scheduler, hopeless_level: int, hopeless_first: bool
) -> None:
    r = replica("r", queued=0)
    r.start(call(), 0.0)  # full: new calls queue
    late = call(deadline=50.0)
    early = call(deadline=20.0)
    hopeless = call(deadline=0.05, arrival=-1.0)  # its bound is 1.1 s away
    for c in (late, early, hopeless):
        sched.route(c, [r], now=0.0).apply(c, r)
    assert [late.priority, early.priority, hopeless.priority] == [SAFE, SAFE, hopeless_level]
    order = drain(sched, r, now=0.0)
    assert order == ([hopeless, early, late] if hopeless_first else [early, late, hopeless])


def test_paper_promotes_a_waiting_call_to_0_when_its_slack_runs_out() -> None:
    r = replica("r", queued=0)
    r.start(call(), 0.0)  # the replica stays full: everything below waits
    sched = CatoPaperScheduler()
    safe = call(deadline=5.0, prompt=100)
    sched.route(safe, [r], now=0.0).apply(safe, r)
    assert safe.priority == SAFE and safe.promote_at == pytest.approx(5.0 - 0.11)
    # Later, a long call that cannot make its deadline here: priority 1, not yet 0.
    # Expected: wait 1.21 s (queue of one, one in flight) + service 2.11 s from now = 4.
    at_risk = call(deadline=7.11, prompt=100, output=200, metric="e2e")
    sched.route(at_risk, [r], now=4.0).apply(at_risk, r)
    assert at_risk.priority == AT_RISK and at_risk.promote_at == pytest.approx(5.0)
    assert sched.pick(r, now=4.5) is at_risk
    assert sched.pick(r, now=safe.promote_at - 1e-6) is at_risk and safe.priority == SAFE
    # At promote_at the safe call's slack is gone: it rises to 0 and goes first.
    assert sched.pick(r, now=safe.promote_at) is safe and safe.priority == URGENT
    assert sched.pick(r, now=at_risk.promote_at) is safe  # both 0 now: earlier deadline
    assert at_risk.priority == URGENT


def test_a_waiting_call_goes_urgent_then_late_then_back_at_its_bound() -> None:
    r = replica("r", queued=0)
    r.start(call(), 0.0)  # the replica stays full: everything below waits
    sched = CatoScheduler()
    c = call(deadline=5.0, prompt=100)  # budget 5 s, service 0.11 s
    other = call(deadline=7.0, prompt=100)  # budget 7 s
    for x in (c, other):
        sched.route(x, [r], now=0.0).apply(x, r)
    levels = []
    for now in (4.0, 4.4, 4.9, 9.0, 9.9):
        head = sched.pick(r, now)
        levels.append((now, c.priority, head is c))
    assert levels == [
        (4.0, SAFE, True),  # earlier deadline first
        (4.4, URGENT, True),  # under 0.5 s of margin left
        (4.9, LATE, False),  # slack gone: behind the on-time call
        (9.0, LATE, True),  # both late now: the earlier deadline first
        (9.9, SAFE, True),  # bound (10 - 0.11) passed: ahead of every later deadline
    ]
    assert other.priority == LATE  # its own slack ran out at 6.89; its bound is 13.89
    assert c.promote_at == math.inf and c.moves == ()


def drain(sched: Scheduler, r: ReplicaState, now: float) -> list[Call]:
    order = []
    while (head := sched.pick(r, now)) is not None:
        r.dequeue(head.id)
        order.append(head)
    return order


def run_burst(sched: Scheduler, late: Call, burst: int = 200) -> dict[str, float]:
    """One replica serving one call at a time (0.11 s each) while ``burst`` on-time
    calls arrive every 0.1 s (a little faster than it serves); ``late`` arrives at
    0.95 s. Returns when each call started."""
    r = ReplicaState(id="r", model="m", concurrency_limit=1, rates=Rates(**vars(RATES)))
    arrivals = [(0.1 * i, call(deadline=0.1 * i + 30.0, arrival=0.1 * i)) for i in range(burst)]
    arrivals = sorted([*arrivals, (0.95, late)], key=lambda a: a[0])
    started: dict[str, float] = {}
    running: Call | None = None
    busy_until = math.inf
    i = 0
    while i < len(arrivals) or running is not None:
        if running is not None and busy_until <= (arrivals[i][0] if i < len(arrivals) else 1e9):
            now = busy_until
            r.finish(running.id, now)
            running, busy_until = None, math.inf
        else:
            now, c = arrivals[i]
            i += 1
            sched.route(c, [r], now).apply(c, r)
        if running is None and (head := sched.pick(r, now)) is not None:
            r.dispatch(head, now)
            running, busy_until = head, now + service_s(r.rates, head)
            started[head.id] = now
    return started


def test_a_late_call_in_a_burst_is_served_by_its_bound_not_starved() -> None:
    """The burst that starved a late call under ``cato_triage``: on-time calls keep
    coming, so "behind on-time work" alone means after the whole burst. ``cato``
    serves it by its bound: deadline 1.0 + budget 1.0, less its service (0.11 s), plus
    at most the one call already being served then."""
    service = 0.11
    late = call(deadline=1.0, arrival=0.0)  # routed at 0.95: its slack is gone
    started = run_burst(CatoScheduler(), late)
    assert late.id in started and started[late.id] <= 2.0 - service + service
    assert started[late.id] >= 2.0 - service - service  # but not before on-time work
    starved = call(deadline=1.0, arrival=0.0)
    triage = run_burst(CatoTriageScheduler(), starved)
    assert triage[starved.id] == max(triage.values())  # after every one of the burst
    assert triage[starved.id] > 200 * 0.1
    # The paper's rule serves it at once, ahead of the on-time calls.
    first = call(deadline=1.0, arrival=0.0)
    paper = run_burst(CatoPaperScheduler(), first)
    assert paper[first.id] <= 0.95 + service


def test_shed_only_a_late_call_that_asked_for_it() -> None:
    idle = [replica("idle")]
    late = dataclasses.replace(call(deadline=10.05, prompt=100), shed_late=True)
    for name in ("cato", "cato_paper", "cato_triage", "round_robin", "pow2", "least_loaded"):
        route = make_scheduler(name).route(late, idle, now=10.0)
        assert route.shed, name
        with pytest.raises(ValueError, match="shed"):
            route.apply(late, idle[0])
        waits = dataclasses.replace(late, id=f"w-{name}", shed_late=False)
        assert not make_scheduler(name).route(waits, idle, now=10.0).shed
    # At risk (it would meet its deadline with no wait) is not late: not shed.
    busy = [replica("q2", queued=2)]
    at_risk = dataclasses.replace(call(prompt=100), shed_late=True)
    at_risk.deadline = 10.0 + service_s(RATES, at_risk) + busy[0].wait_s / 2
    route = CatoScheduler().route(at_risk, busy, now=10.0)
    assert route.priority == AT_RISK and not route.shed


def test_best_fit_takes_the_busiest_replica_that_meets_the_deadline_with_margin() -> None:
    def owing(rid: str, calls: int, prompt: int) -> ReplicaState:
        """``calls`` in flight, each still owing a ``prompt``-token prefill."""
        r = ReplicaState(id=rid, model="m", concurrency_limit=16, rates=Rates(**vars(RATES)))
        for _ in range(calls):
            r.start(call(prompt=prompt), 0.0)
        return r

    replicas = [owing("empty", 0, 0), owing("two", 2, 10), owing("five", 5, 1000)]
    assert [r.wait_s for r in replicas] == pytest.approx([0.0, 0.02, 5.0])
    fit = CatoScheduler(best_fit=True)

    def chosen(sched: Scheduler, slack: float) -> str:
        return sched.route(call(deadline=slack, prompt=100), replicas, now=0.0).replica_id

    assert chosen(CatoScheduler(), 30.0) == "empty"  # shortest wait
    # Best fit keeps 80% of the budget spare: 5.11 s on "five" leaves 24.89 of 30 s.
    assert chosen(fit, 30.0) == "five"
    assert chosen(fit, 20.0) == "two"  # "five" would meet it, but without the margin
    assert chosen(CatoScheduler(best_fit=True, fit_margin=0.4), 10.0) == "five"
    assert chosen(fit, 0.1) == "empty"  # nobody meets it: the shortest wait, as cato


def test_triage_routes_late_calls_like_the_paper_but_last() -> None:
    replicas = [replica("idle"), replica("busy", queued=1)]
    late = call(deadline=10.05, prompt=100)  # service 0.11 s from now = 10.0
    cato = CatoPaperScheduler().route(late, replicas, now=10.0)
    triage = CatoTriageScheduler().route(late, replicas, now=10.0)
    assert cato.priority == URGENT and triage.priority == LATE
    assert triage.replica_id == cato.replica_id == "idle"
    assert triage.expected_completion == cato.expected_completion
    assert triage.sort_key == cato.sort_key and triage.promote_at == math.inf
    assert triage.promote_to == LATE


@pytest.mark.parametrize(("deadline", "priority"), [(1.0, AT_RISK), (5.0, SAFE), (100.0, SAFE)])
def test_triage_routes_on_time_calls_exactly_as_the_paper(deadline: float, priority: int) -> None:
    replicas = [replica("q2", queued=2), replica("q1", queued=1)]
    c = call(deadline=deadline, prompt=100, output=50, metric="e2e")
    cato = CatoPaperScheduler().route(c, replicas, now=0.0)
    assert cato.priority == priority and cato.promote_to == URGENT
    # The same decision, but should its slack run out in the queue, it goes to the back.
    triage = CatoTriageScheduler().route(c, replicas, now=0.0)
    assert triage == dataclasses.replace(cato, promote_to=LATE)


def test_triage_queue_serves_on_time_calls_before_late_ones() -> None:
    r = replica("r", queued=0)
    r.start(call(), 0.0)  # full: new calls queue
    sched = CatoTriageScheduler()
    late = call(deadline=50.0)
    early = call(deadline=20.0)
    hopeless = call(deadline=0.05)
    hopeless_too = call(deadline=0.01)
    for c in (late, hopeless, early, hopeless_too):
        sched.route(c, [r], now=0.0).apply(c, r)
    assert [late.priority, early.priority, hopeless.priority] == [SAFE, SAFE, LATE]
    assert drain(sched, r, now=0.0) == [early, late, hopeless_too, hopeless]


def test_triage_sends_a_call_whose_slack_runs_out_while_queued_to_the_back() -> None:
    r = replica("r", queued=0)
    r.start(call(), 0.0)  # the replica stays full: everything below waits
    sched = CatoTriageScheduler()
    soon = call(deadline=5.0, prompt=100)  # promote_at 4.89
    later = call(deadline=9.0, prompt=100)
    hopeless = call(deadline=0.01, prompt=100)
    for c in (soon, later, hopeless):
        sched.route(c, [r], now=0.0).apply(c, r)
    assert sched.pick(r, now=soon.promote_at - 1e-6) is soon and soon.priority == SAFE
    tokens, waits = r.queued_prompt_tokens, r.wait_s
    # Where cato would raise it to 0 and serve it first, triage files it behind `later`,
    # ahead of the call that was late on arrival (earlier deadline first among late).
    assert sched.pick(r, now=soon.promote_at) is later
    assert soon.priority == LATE and soon.promote_at == math.inf
    assert r.queued_prompt_tokens == tokens and r.wait_s == waits and len(r.queue) == 3
    assert drain(sched, r, now=6.0) == [later, hopeless, soon]
    assert later.priority == SAFE


def test_a_moved_call_stays_where_it_was_moved() -> None:
    """After its move a call has nothing left to wait for: queued again (a replica
    drained, say), it keeps its level and no timer moves it a second time."""
    q = ReplicaQueue()
    late, safe = call(deadline=5.0), call(deadline=9.0)
    for c, promote_to in ((late, LATE), (safe, URGENT)):
        c.priority, c.sort_key, c.promote_at, c.promote_to = SAFE, c.deadline, 4.0, promote_to
        q.push(c)
    assert q.peek(3.0) is late
    assert q.peek(4.0) is safe and safe.priority == URGENT and late.priority == LATE
    assert late.promote_at == safe.promote_at == math.inf
    q.remove(late.id)
    q.push(late)
    assert q.pop(10.0) is safe and q.pop(10.0) is late and late.priority == LATE


def test_paper_and_triage_differ_only_on_late_calls() -> None:
    """Same arrivals on both: the on-time calls come out in the same order under both,
    and triage serves every late call after every on-time one."""
    rng = random.Random(5)
    specs = [(rng.uniform(0.0, 8.0), rng.randint(10, 400)) for _ in range(40)]
    orders = []
    for sched in (CatoPaperScheduler(), CatoTriageScheduler()):
        r = replica("r", queued=0)
        r.start(call(), 0.0)
        calls = [call(deadline=d, prompt=p) for d, p in specs]
        for c in calls:
            sched.route(c, [r], now=0.0).apply(c, r)
        orders.append([calls.index(c) for c in drain(sched, r, now=3.0)])
        late = {i for i, c in enumerate(calls) if c.priority in (URGENT, LATE)}
    cato, triage = orders
    assert 0 < len(late) < len(specs)
    assert [i for i in cato if i not in late] == [i for i in triage if i not in late]
    assert set(triage[-len(late) :]) == late
    assert set(cato[: len(late)]) == late


Entry = tuple[int, float, list[tuple[float, int]]]


@st.composite
def queue_entries(draw: st.DrawFn) -> list[Entry]:
    """(priority, key, moves): up to three moves, in time order, to any level."""
    n = draw(st.integers(0, 30))
    keys = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    out = []
    for key in keys:
        priority = draw(st.sampled_from([0, 1, 2, 3]))
        times = sorted(draw(st.lists(st.floats(0, 100), max_size=3)))
        moves = [(t, draw(st.sampled_from([URGENT, AT_RISK, SAFE, LATE]))) for t in times]
        out.append((priority, float(key), moves))
    return out


@given(queue_entries(), st.lists(st.floats(0, 120), max_size=40), st.data())
@settings(max_examples=150, deadline=None)
def test_queue_pops_in_priority_key_order_with_moves(
    entries: list[Entry], times: list[float], data: st.DataObject
) -> None:
    q = ReplicaQueue()
    calls = []
    for priority, key, moves in entries:
        c = call()
        c.priority, c.sort_key = priority, key
        if moves:
            (c.promote_at, c.promote_to), c.moves = moves[0], tuple(moves[1:])
        calls.append(c)
        q.push(c)
    removed = data.draw(st.lists(st.sampled_from(calls), unique=True)) if calls else []
    for c in removed:
        assert q.remove(c.id) is c
    left = {c.id: entry for c, entry in zip(calls, entries, strict=True)}
    for c in removed:
        del left[c.id]
    for now in sorted(times):
        got = q.pop(now)
        if not left:
            assert got is None
            continue

        def effective(cid: str, now: float = now) -> tuple[int, float]:
            priority, key, moves = left[cid]
            for at, level in moves:  # the last move due by now decides
                if at <= now:
                    priority = level
            return (priority, key)

        expected = min(left, key=effective)
        assert got is not None and got.id == expected
        assert got.priority == effective(expected)[0]
        del left[expected]
    assert len(q) == len(left)


def test_round_robin_cycles_in_order() -> None:
    replicas = [replica(f"r{i}") for i in range(3)]
    sched = RoundRobinScheduler()
    picked = [sched.route(call(), replicas, now=0.0).replica_id for _ in range(7)]
    assert picked == ["r0", "r1", "r2", "r0", "r1", "r2", "r0"]


def test_pow2_takes_the_shorter_of_two_draws_and_is_seeded() -> None:
    replicas = [replica(f"r{i}", queued=i) for i in range(6)]
    sched = PowerOfTwoScheduler(seed=7)
    rng = random.Random(7)
    picks = []
    for _ in range(50):
        i, j = rng.sample(range(len(replicas)), 2)
        route = sched.route(call(), replicas, now=0.0)
        assert route.replica_id == replicas[min(i, j, key=lambda k: replicas[k].load)].id
        picks.append(route.replica_id)
    again = PowerOfTwoScheduler(seed=7)
    assert [again.route(call(), replicas, now=0.0).replica_id for _ in range(50)] == picks
    other = PowerOfTwoScheduler(seed=8)
    assert [other.route(call(), replicas, now=0.0).replica_id for _ in range(50)] != picks
    assert "r5" not in picks  # the most loaded replica never wins a draw


def test_least_loaded_picks_min_load_ties_by_id() -> None:
    replicas = [replica("c", queued=1), replica("b", queued=0), replica("a", queued=0)]
    replicas[1].start(call(), 0.0)
    assert LeastLoadedScheduler().route(call(), replicas, now=0.0).replica_id == "a"
    replicas[2].start(call(), 0.0)
    assert LeastLoadedScheduler().route(call(), replicas, now=0.0).replica_id == "a"
    replicas[2].start(call(), 0.0)
    assert LeastLoadedScheduler().route(call(), replicas, now=0.0).replica_id == "b"


@pytest.mark.parametrize("name", ["round_robin", "pow2", "least_loaded"])
def test_baselines_keep_fifo_order(name: str) -> None:
    sched = make_scheduler(name, seed=1)
    r = replica("r", queued=0)
    r.start(call(), 0.0)
    urgent_late = call(deadline=0.01, arrival=2.0)
    relaxed_early = call(deadline=99.0, arrival=1.0)
    for c in (urgent_late, relaxed_early):
        route = sched.route(c, [r], now=2.0)
        assert route.priority == SAFE and route.promote_at == math.inf
        assert route.sort_key == c.arrival
        route.apply(c, r)
    assert sched.pick(r, now=50.0) is relaxed_early


def test_registry_and_errors() -> None:
    assert isinstance(make_scheduler("cato"), CatoScheduler)
    assert make_scheduler("pow2", seed=3).seed == 3
    with pytest.raises(
        SchedulerConfigError, match="cato, cato_paper, cato_triage, least_loaded, pow2, round_robin"
    ):
        make_scheduler("fifo")
    with pytest.raises(SchedulerConfigError, match="bad options"):
        make_scheduler("cato", window=3)
    assert isinstance(make_scheduler("cato_triage"), CatoTriageScheduler)
    assert isinstance(make_scheduler("cato_paper"), CatoPaperScheduler)
    with pytest.raises(SchedulerConfigError, match="late_bound must be > 0"):
        make_scheduler("cato", late_bound=0)
    with pytest.raises(SchedulerConfigError, match="urgent_margin must be in"):
        make_scheduler("cato", urgent_margin=1.0)
    for name in ("cato", "cato_paper", "cato_triage", "round_robin", "pow2", "least_loaded"):
        with pytest.raises(NoReplicaError, match="model 'm'"):
            make_scheduler(name).route(call(), [], now=0.0)


def test_route_apply_checks_the_replica() -> None:
    a, b = replica("a"), replica("b")
    c = call()
    route = CatoScheduler().route(c, [a], now=0.0)
    with pytest.raises(ValueError, match="replica 'a'"):
        route.apply(c, b)
    route.apply(c, a)
    assert c.id in a.queue and c.replica == "a" and c.sort_key == route.sort_key
