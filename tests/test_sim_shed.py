"""``on_late="shed"`` in the simulator: a call that has not reached its SLA point by its
deadline ends there (as the executor ends it), wherever it is, and its engine drops it."""

from __future__ import annotations

from collections.abc import Iterator

from orchestrator.bench.scenarios import SCENARIOS, capacity_rps
from orchestrator.bench.workloads import Workload
from orchestrator.sim.config import SimTask
from orchestrator.sim.results import SimResult
from orchestrator.sim.simulator import Simulator

SESSIONS = SCENARIOS["sessions"]
WORKLOAD = Workload(tasks={}, seed=0)  # sessions draw their own tasks


def arrivals(shed: bool) -> Iterator[tuple[float, SimTask]]:
    """Sessions at 2.5 x C for 6 s; completions ask to be shed when late, as the
    language server's do, unless ``shed`` is off."""
    rate = 2.5 * capacity_rps(SESSIONS, WORKLOAD)
    for t, task in SESSIONS.arrivals(rate, 6.0, WORKLOAD, 0):
        if not shed and task.request.on_late == "shed":
            request = task.request.model_copy(update={"on_late": None})
            task = SimTask(task.key + "/wait", request, task.output_tokens, task.output_ratio)
        yield t, task


def run(policy: str, shed: bool) -> tuple[Simulator, SimResult]:
    sim = Simulator(SESSIONS.config(policy, "fixed", 0))
    return sim, sim.run(arrivals(shed))


def late_completions(result: SimResult) -> int:
    return sum(
        1
        for r in result.records(kind="complete")
        if r.outcome == "ok" and r.ttft_ms is not None and r.ttft_ms > r.target_ms + 1e-6
    )


def test_no_completion_that_asked_to_be_shed_is_answered_late() -> None:
    for policy in ("cato", "cache_aware"):
        sim, shed = run(policy, shed=True)
        _, waited = run(policy, shed=False)
        assert late_completions(shed) == 0
        assert late_completions(waited) > 0  # the same load answers some late otherwise
        expired = shed.counters["expired"]
        assert 0 < expired <= shed.counters["shed"]
        errors = sum(1 for r in shed.records() if r.outcome == "error")
        assert errors == shed.counters["shed"]  # every failed task was shed, none lost
        assert shed.overall.requests == waited.overall.requests  # every task accounted for
        # Each slot a shed call held is free again, and what it held back ran.
        assert all(not r.state.in_flight and not len(r.state.queue) for r in sim.replicas.values())
        # Dropping work that would come late leaves more for work that can be on time.
        assert (shed.goodput_rate or 0.0) > (waited.goodput_rate or 0.0)


def test_shedding_is_deterministic() -> None:
    (_, a), (_, b) = run("cato", shed=True), run("cato", shed=True)
    assert a.counters == b.counters
    assert [r.e2e_ms for r in a.records()] == [r.e2e_ms for r in b.records()]
