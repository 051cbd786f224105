"""``cato bench live --via serve``: the scenario as a ``cato.toml``, and one real run
through ``cato serve`` over HTTP in front of the emulated replicas it starts."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from orchestrator.bench.live import LiveOptions
from orchestrator.bench.live_serve import ServeRun, run_point, serve_config
from orchestrator.bench.scenarios import ModelPlan, capacity_rps, scenario
from orchestrator.bench.workloads import build_workload
from orchestrator.config import parse_config


def test_the_config_stretches_slas_and_intervals_by_the_speed() -> None:
    rq3 = scenario("rq3")
    config = parse_config(serve_config(rq3, "cato_triage", "queue_length", 0.5, 7), "t.toml")
    assert config.gpus.devices == list(range(16))
    assert [(m.min_replicas, m.initial_replicas, m.max_replicas) for m in config.models] == [
        (1, 6, 12),
        (1, 6, 12),
    ]
    assert all(m.engine == "emulated" and m.speed == 0.5 and m.gpus == 1 for m in config.models)
    assert (config.tasks.complete.sla_ms, config.tasks.translate.sla_ms) == (1000, 40000)
    assert config.tasks.complete.model == "starcoder2-7b"
    assert config.tasks.translate.model == "codellama-7b"
    assert (config.scheduler.policy, config.scheduler.seed) == ("cato_triage", 7)
    prov = config.provisioner
    assert prov.policy == "queue_length"
    assert prov.interval_s == 2 * rq3.provisioner_config.interval_s
    assert prov.upscale_delay_s == 2 * rq3.provisioner_config.upscale_delay_s
    assert prov.target_ongoing_requests == rq3.provisioner_config.target_ongoing_requests
    fixed = parse_config(serve_config(scenario("rq2"), "cato", "fixed", 1.0, 0), "t.toml")
    (model,) = fixed.models
    assert (model.min_replicas, model.initial_replicas, model.max_replicas) == (6, 6, 6)
    assert model.gpus == 0 and fixed.tasks.complete.sla_ms == 500


def test_a_light_load_through_cato_serve() -> None:
    workload = build_workload(seed=1, per_kind=20, kinds=("complete", "summarize"))
    rq2 = scenario("rq2")
    (plan,) = rq2.models
    small = replace(rq2, models=(ModelPlan(plan.name, plan.profile, replicas=2),))
    rate = 0.2 * capacity_rps(small, workload)
    arrivals = list(small.arrivals(rate, 8.0, workload, 1))
    options = LiveOptions(speed=4.0, start_timeout_s=120.0, drain_s=60.0)
    result = asyncio.run(run_point(ServeRun(small, "cato", "fixed", 1, options), arrivals))

    assert result.counters["tasks"] == len(arrivals) > 20
    # the replicas cato serve started generated the workload's lengths
    assert result.counters["drawn_lengths"] == 0
    assert result.counters["fixed_lengths"] >= len(arrivals)
    assert result.overall.errors == 0 and result.overall.cancelled == 0
    assert set(result.kinds) == {"complete", "summarize"}
    assert result.overall.sla_met > 0  # latencies were recorded against the SLA
    series = result.replica_series[plan.name]
    assert series[0][1:] == (2, 0) and all(ready + pending == 2 for _, ready, pending in series)
    assert result.cpu_s > 0  # the service process did the work
