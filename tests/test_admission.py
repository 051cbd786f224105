"""Slack-aware engine admission: who may join a replica's running batch, and when."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math

import pytest

from orchestrator.api import SLA, SLAMetric, TaskKind, TaskRequest
from orchestrator.bench.scenarios import capacity_rps, scenario
from orchestrator.bench.workloads import build_workload
from orchestrator.dispatch import DispatchCore
from orchestrator.emulator.process import launch_emulator
from orchestrator.engine_model import load_profile
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.policy.admission import (
    DEFAULT_E2E_FLOOR,
    DEFAULT_HARM_FLOOR,
    DEFAULT_PREFILL_SHARE,
    AdmissionConfigError,
    NetSlackAdmission,
    OpenAdmission,
    SlackAdmission,
    StepCosts,
    make_admission,
    resolve_admission,
)
from orchestrator.policy.scheduler import URGENT, make_scheduler
from orchestrator.policy.state import Call, PrefixIndex, Rates, ReplicaState
from orchestrator.sim import Simulator

PROFILE = load_profile("codellama-7b@a100")
_ids = itertools.count()


def call(
    *,
    deadline: float = 100.0,
    prompt: int = 100,
    output: int = 50,
    metric: str = "e2e",
) -> Call:
    return Call(
        id=f"c{next(_ids)}",
        model=PROFILE.name,
        deadline=deadline,
        prompt_tokens=prompt,
        expected_output_tokens=output,
        arrival=0.0,
        metric="ttft" if metric == "ttft" else "e2e",
    )


def replica(limit: int = 8) -> ReplicaState:
    return ReplicaState(
        id="r0",
        model=PROFILE.name,
        concurrency_limit=limit,
        rates=Rates.from_profile(PROFILE),
    )


def running(st: ReplicaState, c: Call, *, first_token: bool = True) -> Call:
    st.start(c, 0.0)
    if first_token:
        st.first_token(c.id, 0.0)
    return c


def predicted_done(st: ReplicaState, c: Call, now: float) -> float:
    """When the policy expects ``c`` (decoding, e2e) to finish without another call."""
    costs = StepCosts.from_profile(PROFILE)
    context = sum(x.prompt_tokens + x.tokens_done for x in st.in_flight.values())
    step = costs.overhead_s + len(st.in_flight) * costs.decode_s_per_seq
    step += context * costs.kv_read_s_per_token
    owed = st.inflight_prefill_tokens * st.rates.prefill_s_per_token
    return now + owed + (c.expected_output_tokens - c.tokens_done) * step


def slack(margin_s: float = 0.0, *, net: bool = False, harm_floor: float = 0.0) -> SlackAdmission:
    """The rule itself: every delay that makes a running call late counts (no floor), and
    a long prompt is not held for the completions that may arrive behind it."""
    cls = NetSlackAdmission if net else SlackAdmission
    return cls(
        profiles={PROFILE.name: PROFILE},
        margin_s=margin_s,
        harm_floor=harm_floor,
        e2e_floor=0.0,
        prefill_share=math.inf,
    )


def test_an_empty_replica_takes_anything() -> None:
    st = replica()
    hopeless = call(deadline=-1.0, prompt=8000, output=1000)
    assert slack().admits(st, hopeless, 0.0)


def test_a_long_prompt_waits_if_it_would_make_a_running_call_late() -> None:
    st = replica()
    c = running(st, call(output=200))
    # The running call meets its deadline by 50 ms: less than a 2,000-token prefill
    # (~190 ms on this engine), more than a 100-token one (~10 ms).
    c.deadline = predicted_done(st, c, 1.0) + 0.05
    policy = slack()
    assert not policy.admits(st, call(prompt=2000, output=10), 1.0)
    assert policy.admits(st, call(prompt=100, output=10), 1.0)
    # With a deadline a second further away, the long prompt fits too.
    c.deadline += 1.0
    assert policy.admits(st, call(prompt=2000, output=10), 1.0)


def test_calls_that_miss_anyway_or_are_past_their_sla_point_do_not_block() -> None:
    st = replica()
    late = running(st, call(output=200))
    late.deadline = predicted_done(st, late, 1.0) - 0.01  # misses even alone
    answered = running(st, call(metric="ttft", deadline=1.0))  # first token is out
    assert slack().admits(st, call(prompt=4000), 1.0)
    assert answered.first_token_at is not None


def test_a_prefilling_ttft_call_is_protected_from_the_step_it_shares() -> None:
    st = replica()
    first = running(st, call(metric="ttft", prompt=500), first_token=False)
    step = PROFILE.step_overhead_s + PROFILE.decode_s_per_seq + 500 * PROFILE.kv_read_s_per_token
    alone = 500 * PROFILE.prefill_s_per_token + step
    first.deadline = alone + 0.02  # 20 ms to spare: a 1,000-token chunk (~96 ms) is too much
    policy = slack()
    assert not policy.admits(st, call(prompt=1000), 0.0)
    assert policy.admits(st, call(prompt=50), 0.0)


def test_a_delay_under_the_harm_floor_does_not_hold_a_call_back() -> None:
    st = replica()
    first = running(st, call(metric="ttft", prompt=500), first_token=False)
    step = PROFILE.step_overhead_s + PROFILE.decode_s_per_seq + 500 * PROFILE.kv_read_s_per_token
    first.deadline = 500 * PROFILE.prefill_s_per_token + step + 0.002  # 2 ms to spare
    first.arrival = first.deadline - 0.5  # a 500 ms budget: the default floor is 50 ms
    small, large = call(prompt=50), call(prompt=1000)  # ~5 ms and ~96 ms of its step
    assert not slack().admits(st, small, 0.0)  # without a floor, 5 ms is harm
    default = SlackAdmission(profiles={PROFILE.name: PROFILE})
    assert default.harm_floor == DEFAULT_HARM_FLOOR == 0.1
    assert default.admits(st, small, 0.0)
    assert not default.admits(st, large, 0.0)
    with pytest.raises(AdmissionConfigError, match="harm_floor"):
        SlackAdmission(harm_floor=1.0)


def test_a_decoding_call_s_floor_is_a_share_of_the_time_left_to_its_deadline() -> None:
    """Small delays add up over a long decode, so the floor is no share of the budget;
    2% of the time left is within the model's error there, and shrinks to nothing as
    the deadline nears."""
    default = SlackAdmission(profiles={PROFILE.name: PROFILE})
    assert default.e2e_floor == DEFAULT_E2E_FLOOR == 0.02
    small = call(prompt=50, output=10)  # ~5 ms of prefill, and a sequence for 10 steps
    far = replica()
    summary = running(far, call(output=200))
    summary.deadline = predicted_done(far, summary, 0.0) + 0.002  # 2 ms to spare
    left = summary.deadline  # about 200 steps, several seconds
    assert left * 0.02 > 0.02  # the floor is tens of ms here
    assert default.admits(far, small, 0.0)
    assert not slack().admits(far, small, 0.0)  # without a floor, it is harm
    near = replica()
    ending = running(near, call(output=200))
    ending.tokens_done = 197  # three steps left: the floor is under a millisecond
    ending.deadline = predicted_done(near, ending, 0.0) + 0.002
    assert not default.admits(near, small, 0.0)
    with pytest.raises(AdmissionConfigError, match="e2e_floor"):
        SlackAdmission(e2e_floor=1.0)


def test_a_long_prompt_waits_while_a_completion_prefills() -> None:
    """Not for that completion (the engine prefills in the order calls started), but
    for those arriving while the long prompt's chunks run ahead of theirs."""
    default = SlackAdmission(profiles={PROFILE.name: PROFILE})
    assert default.prefill_share == DEFAULT_PREFILL_SHARE == 0.2
    st = replica()
    completion = running(st, call(metric="ttft", prompt=200), first_token=False)
    completion.deadline = 10.0  # plenty of slack: no delay harms it
    completion.arrival = completion.deadline - 0.5  # a 500 ms budget: 100 ms of prefill
    long = call(prompt=2000, output=100)  # ~190 ms of prefill
    assert slack().admits(st, long, 0.0)  # the rule alone: it harms no running call
    assert not default.admits(st, long, 0.0)
    assert default.admits(st, call(prompt=500, output=100), 0.0)  # ~48 ms: let in
    urgent = call(prompt=2000, output=100)
    urgent.priority = URGENT  # its own slack is nearly gone: it waits no more
    assert default.admits(st, urgent, 0.0)
    st.first_token(completion.id, 0.05)
    assert default.admits(st, long, 0.05)  # no completion waits on its prefill now
    with pytest.raises(AdmissionConfigError, match="prefill_share"):
        SlackAdmission(prefill_share=0.0)


def test_net_mode_lets_an_on_time_call_cost_one_running_call_but_not_two() -> None:
    st = replica()
    a = running(st, call(output=200))
    b = running(st, call(output=200))
    for c in (a, b):
        c.deadline = predicted_done(st, c, 0.0) + 0.05
    on_time = call(prompt=2000, output=10, metric="ttft", deadline=10.0)
    assert not slack(net=True).admits(st, on_time, 0.0)  # both would miss
    b.deadline = 0.001  # b misses anyway now: only a is at stake
    assert slack(net=True).admits(st, on_time, 0.0)
    assert not slack().admits(st, on_time, 0.0)
    late = call(prompt=2000, output=10, metric="ttft", deadline=0.0)
    assert not slack(net=True).admits(st, late, 0.0)  # it gains nothing by joining


def test_the_margin_is_kept_for_running_calls_that_still_meet_their_deadline() -> None:
    st = replica()
    c = running(st, call(output=200))
    c.deadline = predicted_done(st, c, 0.0) + 0.5  # half a second to spare
    small = call(prompt=100, output=10)  # costs it ~10 ms
    assert slack().admits(st, small, 0.0)
    assert slack(margin_s=0.3).admits(st, small, 0.0)
    assert not slack(margin_s=0.495).admits(st, small, 0.0)  # would eat into the margin
    c.deadline -= 0.6  # misses anyway: no margin to keep
    assert slack(margin_s=0.495).admits(st, small, 0.0)


def test_without_a_profile_the_learned_rates_price_the_prefill() -> None:
    st = replica()
    c = running(st, call(output=100))
    step = st.rates.tpot_s
    c.deadline = 1.0 + 100 * step + 0.05
    policy = SlackAdmission(harm_floor=0.0)  # no profiles
    assert policy.costs(st) == StepCosts.from_rates(st.rates)
    assert not policy.admits(st, call(prompt=2000), 1.0)
    assert policy.admits(st, call(prompt=100), 1.0)


def test_the_core_keeps_a_dynamic_limit_between_one_and_the_concurrency_limit() -> None:
    started: list[str] = []
    core = DispatchCore(
        make_scheduler("round_robin"),
        on_start=lambda c, st, now: started.append(c.id),
        on_fail=lambda c, exc: None,
        admission=slack(),
    )
    st = replica(limit=4)
    core.add(st, 0.0)
    first = call(output=200, deadline=10.0)
    core.place(first, 0.0)  # an empty replica always takes a call
    first.deadline = predicted_done(st, first, 0.0) + 0.05
    held = call(prompt=3000, output=10)
    core.place(held, 0.0)
    assert started == [first.id] and held.id in st.queue  # held back: the limit is 1 now
    small = call(prompt=20, output=5)
    core.place(small, 0.0)
    assert started == [first.id]  # behind the held call, in the scheduler's order
    core.finish(st, first.id, 0.5)
    assert started == [first.id, held.id, small.id]  # both fit once it is done


def _two_replicas(admission: SlackAdmission) -> tuple[DispatchCore, list[str], list[ReplicaState]]:
    started: list[str] = []
    core = DispatchCore(
        make_scheduler("round_robin"),
        on_start=lambda c, st, now: started.append(f"{c.id}@{st.id}"),
        on_fail=lambda c, exc: None,
        admission=admission,
    )
    reps = [
        ReplicaState(
            id=rid, model=PROFILE.name, concurrency_limit=4, rates=Rates.from_profile(PROFILE)
        )
        for rid in ("a", "b")
    ]
    for st in reps:
        core.add(st, 0.0)
    return core, started, reps


@pytest.mark.parametrize("moves", [True, False])
def test_a_held_call_moves_to_a_replica_whose_batch_takes_it(moves: bool) -> None:
    core, started, (a, b) = _two_replicas(
        slack() if moves else SlackAdmission(profiles={PROFILE.name: PROFILE}, moves=False)
    )
    tight, lax = call(output=200), call(output=200, deadline=1000.0)
    core.place(tight, 0.0)  # round robin: a
    core.place(lax, 0.0)  # b
    tight.deadline = predicted_done(a, tight, 0.0) + 0.05
    held = call(prompt=3000, output=10)
    core.place(held, 0.0)  # a, where it would make ``tight`` late
    if moves:
        assert started[-1] == f"{held.id}@b" and core.moved == 1 and not len(a.queue)
    else:
        assert held.id in a.queue and core.moved == 0 and len(b.in_flight) == 1


def test_a_move_is_judged_by_the_prefill_the_call_would_pay_there() -> None:
    """A call held back where its prompt is cached costs its whole prompt elsewhere."""
    core, started, (a, b) = _two_replicas(slack())
    block = PROFILE.block_size
    for st in (a, b):
        st.prefixes = PrefixIndex(block, 10_000)
    tight_a, tight_b = call(output=200), call(output=200)
    core.place(tight_a, 0.0)  # round robin: a
    core.place(tight_b, 0.0)  # b
    tight_a.deadline = predicted_done(a, tight_a, 0.0) + 0.005  # 5 ms to spare
    tight_b.deadline = predicted_done(b, tight_b, 0.0) + 0.05  # 50 ms to spare
    hashes = tuple(range(1, 2000 // block + 1))
    a.prefixes.add(hashes[:-7])  # a holds all but the last ~100 tokens
    held = call(prompt=2000, output=10)
    held.block_hashes = hashes
    core.place(held, 0.0)  # a: its ~10 ms of prefill would make ``tight_a`` late
    assert held.id in a.queue and held.cached_tokens == 2000 - 7 * block
    # On b, with nothing cached, its ~190 ms of prefill would make ``tight_b`` late:
    # it stays (it moved when judged by a's cache).
    assert core.moved == 0 and started[-1] == f"{tight_b.id}@b"
    assert held.cached_tokens == 2000 - 7 * block  # as a holds it, unchanged


def test_first_token_lets_a_held_call_in() -> None:
    started: list[str] = []
    core = DispatchCore(
        make_scheduler("round_robin"),
        on_start=lambda c, st, now: started.append(c.id),
        on_fail=lambda c, exc: None,
        admission=slack(),
    )
    st = replica(limit=4)
    core.add(st, 0.0)
    ttft = call(metric="ttft", prompt=500)
    core.place(ttft, 0.0)
    ttft.deadline = 0.07  # just meets its first token alone
    held = call(prompt=1500)
    core.place(held, 0.0)
    assert started == [ttft.id]
    core.first_token(st, ttft.id, 0.06)
    assert started == [ttft.id, held.id]


def test_names_and_options() -> None:
    assert isinstance(make_admission("none"), OpenAdmission)
    assert isinstance(make_admission("slack", margin_s=0.1), SlackAdmission)
    assert isinstance(make_admission("slack_net"), NetSlackAdmission)
    with pytest.raises(AdmissionConfigError, match="valid names: none, slack, slack_net"):
        make_admission("greedy")
    with pytest.raises(AdmissionConfigError, match="margin_s"):
        make_admission("slack", margin_s=-1.0)
    with pytest.raises(AdmissionConfigError, match="bad options"):
        make_admission("none", margin_s=1.0)


def test_the_simulator_runs_with_slack_admission_deterministically() -> None:
    rq2 = scenario("rq2")
    workload = build_workload(seed=0, per_kind=20)
    rate = 1.2 * capacity_rps(rq2, workload)  # past capacity: batches fill up
    base = rq2.config("round_robin", "fixed", 0)

    def run(admission: str) -> tuple[int, float | None, int]:
        config = dataclasses.replace(base, admission=admission)
        result = Simulator(config).run(rq2.arrivals(rate, 5.0, workload, 0))
        return result.overall.requests, result.goodput_rate, result.counters.get("moved", 0)

    held = run("slack")
    assert held == run("slack")
    plain = run("none")
    assert held[0] == plain[0]  # the same tasks, all accounted for
    assert held[2] > 0 and plain[2] == 0  # calls held back started elsewhere
    assert held[1] != plain[1]
    with pytest.raises(ValueError, match="unknown admission policy 'greedy'"):
        dataclasses.replace(base, admission="greedy")


def test_auto_is_slack_net_for_cato_and_none_for_plain_routers() -> None:
    assert resolve_admission("auto", "cato") == "slack_net"
    assert resolve_admission("auto", "round_robin") == "none"
    assert resolve_admission("slack", "round_robin") == "slack"
    rq2 = scenario("rq2")
    assert Simulator(rq2.config("cato", "fixed", 0)).admission == "slack_net"
    assert Simulator(rq2.config("pow2", "fixed", 0)).admission == "none"
    with pytest.raises(AdmissionConfigError, match="valid names: auto, none, slack"):
        resolve_admission("greedy", "cato")


def test_the_executor_serves_through_slack_admission() -> None:
    """Live: every call passes the admission policy and its first-token re-dispatch
    (timing decides whether one is held back), all run, and nothing is left over."""
    emulator = launch_emulator(model="tiny", speed=2.0)
    try:
        asyncio.run(_serve_through_admission(emulator.url))
    finally:
        emulator.stop()


async def _serve_through_admission(url: str) -> None:
    spec = ReplicaSpec(id="r0", url=url, model="tiny", concurrency_limit=4)
    orch = Orchestrator([spec], admission="slack")
    sla = SLA(metric=SLAMetric.E2E, target_ms=60_000)

    async def one(i: int) -> str:
        request = TaskRequest(
            id=f"t{i}",
            kind=TaskKind.COMPLETE,
            model="tiny",
            sla=sla,
            prompt=f"<fim_prefix>def f{i}(x):\n    <fim_suffix>\n<fim_middle>",
            max_tokens=8,
        )
        async with contextlib.aclosing(orch.submit(request)) as events:
            return [e.type async for e in events][-1]

    try:
        ends = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(6))), 60.0)
    finally:
        await orch.close()
    assert ends == ["done"] * 6
    assert orch.replica_load("r0") == (0, 0)
