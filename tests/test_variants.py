"""Policy variants (``sim.variants``): one lever changed, for the ablation table."""

from __future__ import annotations

import math

import pytest

from orchestrator.bench.capacity import run_capacity
from orchestrator.bench.scenarios import SCENARIOS, capacity_rps
from orchestrator.bench.workloads import build_workload
from orchestrator.policy.scheduler import CatoScheduler
from orchestrator.sim.config import SimConfig
from orchestrator.sim.simulator import Simulator
from orchestrator.sim.variants import VariantError, parse_variant


def test_a_variant_changes_only_its_lever() -> None:
    rq2 = SCENARIOS["rq2"]
    plain = Simulator(rq2.config("cato", "fixed", 3))
    assert plain.admission == "slack_net" and isinstance(plain.scheduler, CatoScheduler)
    assert plain.scheduler.late_bound == 1.0
    varied = Simulator(rq2.config("cato/admission=none/late_bound=inf/best_fit=true", "fixed", 3))
    assert varied.admission == "none"
    assert isinstance(varied.scheduler, CatoScheduler)
    assert varied.scheduler.late_bound == math.inf and varied.scheduler.best_fit
    assert varied.scheduler.urgent_margin == plain.scheduler.urgent_margin
    assert varied.config.seed == plain.config.seed == 3
    assert varied.config.models == plain.config.models
    floored = Simulator(rq2.config("cato/harm_floor=0", "fixed", 3))
    assert floored.core.admission is not None and plain.core.admission is not None
    assert getattr(floored.core.admission, "harm_floor", None) == 0.0
    assert getattr(plain.core.admission, "harm_floor", None) == 0.1
    assert floored.scheduler.late_bound == plain.scheduler.late_bound
    other = Simulator(rq2.config("cato/e2e_floor=0/prefill_share=inf", "fixed", 3))
    assert getattr(other.core.admission, "e2e_floor", None) == 0.0
    assert getattr(other.core.admission, "prefill_share", None) == math.inf
    assert getattr(other.core.admission, "harm_floor", None) == 0.1  # left as it is
    assert getattr(plain.core.admission, "e2e_floor", None) == 0.02
    assert getattr(plain.core.admission, "prefill_share", None) == 0.2


def test_engine_priority_kind_sends_each_kind_its_fixed_priority() -> None:
    rq2 = SCENARIOS["rq2"]
    assert not Simulator(rq2.config("cache_aware", "fixed", 0)).config.kind_priority
    varied = rq2.config("cache_aware/engine_priority=kind", "fixed", 0)
    assert varied.kind_priority and varied.scheduler == "cache_aware"
    workload = build_workload(seed=0, per_kind=20)
    rate = 1.2 * capacity_rps(rq2, workload)  # past capacity: the engines' queues fill

    def run(config: SimConfig) -> tuple[int, float | None]:
        result = Simulator(config).run(rq2.arrivals(rate, 5.0, workload, 0))
        return result.overall.requests, result.goodput_rate

    kind, route = run(varied), run(rq2.config("cache_aware", "fixed", 0))
    assert kind[0] == route[0]  # the same tasks, all accounted for
    assert kind[1] != route[1]  # completions go first in the engines now


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("fifo", "unknown policy 'fifo'"),
        ("cato/admission", "expected key=value"),
        ("cato/speed=2", "expected key=value"),
        ("cato/admission=greedy", "unknown admission policy 'greedy'"),
        ("cato/urgent_margin=high", "urgent_margin must be a number"),
        ("cato/urgent_margin=nan", "urgent_margin must be a number"),
        ("cato/urgent_margin=1.5", "urgent_margin must be in [0, 1)"),
        ("cato/best_fit=yes", "best_fit must be true or false"),
        ("pow2/late_bound=2", "bad options for scheduler 'pow2'"),
        ("clairvoyant/late_bound=2", "clairvoyant takes no options"),
        ("cato/engine_priority=deadline", "engine_priority must be route or kind"),
        ("cato/harm_floor=1", "harm_floor must be in [0, 1)"),
        ("cato/e2e_floor=-0.1", "e2e_floor must be in [0, 1)"),
        ("cato/prefill_share=0", "prefill_share must be > 0"),
    ],
)
def test_bad_variants_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(VariantError) as err:
        parse_variant(text)
    assert problem in str(err.value)


def test_capacity_runs_take_variants_and_refuse_bad_ones() -> None:
    with pytest.raises(ValueError, match="unknown policy 'fifo'"):
        run_capacity(["rq2"], ["cato", "fifo"], [0], quick=True)
