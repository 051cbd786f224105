"""The simulator: exact timing on simple cases, determinism, sanity under load, scaling."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.api import TaskKind, TaskRequest
from orchestrator.bench.scenarios import SCENARIOS, run_sweep
from orchestrator.bench.workloads import Workload, build_workload
from orchestrator.config import ProvisionerConfig
from orchestrator.emulator.textgen import TextGenerator
from orchestrator.engine_model import EngineModel, load_profile, sped_up
from orchestrator.graphs import DEFAULTS, build_graph, split_code
from orchestrator.policy.state import Call, ReplicaState
from orchestrator.sim import (
    ClairvoyantScheduler,
    ModelSpec,
    SimConfig,
    SimResult,
    SimTask,
    Simulator,
    simulate,
)
from orchestrator.sim.clairvoyant import HOPELESS
from orchestrator.sim.engine import DecodeRun

A100 = load_profile("codellama-7b@a100")
TINY = load_profile("tiny@cpu")


def complete(i: int, prompt_tokens: int, out: int) -> SimTask:
    request = TaskRequest(id=f"c{i}", kind=TaskKind.COMPLETE, prompt="x" * (4 * prompt_tokens))
    return SimTask(f"c{i}", request, output_tokens=out)


def summarize(i: int, lines: int, out: int) -> SimTask:
    code = "def f(a, b):\n    return a + b\n" * lines
    request = TaskRequest(id=f"s{i}", kind=TaskKind.SUMMARIZE, code=code)
    return SimTask(f"s{i}", request, output_tokens=out)


def pool(seed: int = 0) -> list[SimTask]:
    rng = random.Random(seed)
    tasks = [complete(i, rng.randint(100, 900), rng.randint(4, 64)) for i in range(30)]
    tasks += [summarize(i, rng.randint(3, 40), rng.randint(16, 160)) for i in range(30)]
    return tasks


def poisson(
    rate: float, n: int, seed: int, tasks: list[SimTask]
) -> Iterator[tuple[float, SimTask]]:
    rng = random.Random(seed)
    t = 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        yield t, tasks[rng.randrange(len(tasks))]


def config(replicas: int, scheduler: str = "cato", **kw: object) -> SimConfig:
    spec = ModelSpec("tiny", A100, replicas=replicas)
    return SimConfig(models=(spec,), scheduler=scheduler, **kw)  # type: ignore[arg-type]


def signature(result: object) -> list[tuple[object, ...]]:
    return [
        (r.kind, r.arrival, r.first_token, r.done, r.outcome)
        for r in result.records()  # type: ignore[attr-defined]
    ]


# --------------------------------------------------------------------------- exact cases


def test_a_lone_call_takes_exactly_the_engine_models_steps() -> None:
    task = complete(0, 500, 5)
    result = simulate(config(1), [(1.0, task)])
    (record,) = list(result.records())
    engine = EngineModel(A100, "priority")
    prompt = build_graph(task.request).node("llm").prompt_tokens
    engine.add("x", prompt, 5, 2, 1.0)
    now, times = 1.0, []
    while engine.step(now) is not None:
        now = engine.busy_until
        times.append(now)
    assert record.first_token == pytest.approx(times[0], abs=1e-12)
    assert record.done == pytest.approx(times[-1], abs=1e-12)
    assert len(times) == 5
    assert record.outcome == "ok"
    assert record.sla_met


def test_a_translate_task_fans_out_one_call_per_chunk() -> None:
    code = "".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(200))
    request = TaskRequest(
        id="t", kind=TaskKind.TRANSLATE, code=code, language="python", target_language="go"
    )
    chunks = split_code(code, "python", DEFAULTS.chunk_tokens)
    assert len(chunks) > 2
    result = simulate(config(2), [(0.0, SimTask("t", request, output_ratio=1.0))])
    (record,) = list(result.records())
    assert result.counters["calls"] == len(chunks)
    assert record.first_token is None  # a translate task streams no final node
    assert record.outcome == "ok"
    assert record.done > 0


def test_emulator_outputs_are_the_lengths_the_emulator_would_generate() -> None:
    task = summarize(0, 10, 16)
    node = build_graph(task.request).node("llm")
    expected = (
        TextGenerator(7, A100.output_mean_tokens, A100.output_sigma)
        .plan(node.prompt, node.max_tokens, stop=node.stop)
        .num_tokens
    )
    sim = Simulator(config(1, outputs="emulator", emulator_seed=7))
    sim.run([(0.0, task)])
    assert sim._templates.cache[task.key].outputs[0] == expected
    assert expected != 16


def test_a_sped_up_profile_runs_the_same_task_that_much_faster() -> None:
    task = summarize(0, 20, 40)
    normal = simulate(config(1), [(0.0, task)])
    spec = ModelSpec("tiny", sped_up(A100, 4.0), replicas=1)
    fast = simulate(SimConfig(models=(spec,)), [(0.0, task)])
    (slow_record,) = list(normal.records())
    (fast_record,) = list(fast.records())
    assert fast_record.e2e_ms == pytest.approx(slow_record.e2e_ms / 4.0, rel=1e-9)


def test_a_request_too_long_for_the_model_fails_like_the_emulator_would() -> None:
    spec = ModelSpec("tiny", TINY, replicas=1)
    result = simulate(SimConfig(models=(spec,)), [(0.0, complete(0, 4_050, 8))])
    (record,) = list(result.records())
    assert record.outcome == "error"
    assert result.overall.errors == 1


def close_signatures(a: object, b: object) -> bool:
    """Same tasks with the same outcomes at the same times (up to float rounding)."""
    left, right = signature(a), signature(b)
    if len(left) != len(right):
        return False
    for x, y in zip(left, right, strict=True):
        if x[0] != y[0] or x[4] != y[4] or (x[2] is None) != (y[2] is None):
            return False
        times = [(x[1], y[1]), (x[3], y[3])] + ([(x[2], y[2])] if x[2] is not None else [])
        if any(abs(float(p) - float(q)) > 1e-6 for p, q in times):  # type: ignore[arg-type]
            return False
    return True


def test_fused_decode_runs_change_nothing_but_the_cost() -> None:
    tasks = pool()
    stepped = simulate(config(3, fuse_decode=False), poisson(15, 600, 11, tasks))
    fused = simulate(config(3), poisson(15, 600, 11, tasks))
    assert fused.counters["fused_runs"] > 0
    assert fused.counters["steps"] == stepped.counters["steps"]
    assert close_signatures(fused, stepped)


def test_fused_runs_stop_where_the_kv_cache_runs_out() -> None:
    spec = ModelSpec("tiny", dataclasses.replace(TINY, num_kv_blocks=300), replicas=2)
    tasks = [summarize(i, 30 + i, 200) for i in range(20)]
    runs = []
    for fuse in (False, True):
        cfg = SimConfig(models=(spec,), scheduler="round_robin", fuse_decode=fuse)
        runs.append(simulate(cfg, poisson(6, 300, 12, tasks)))
    stepped, fused = runs
    assert stepped.counters["preemptions"] > 0
    assert fused.counters["fused_runs"] > 0
    assert fused.counters["preemptions"] == stepped.counters["preemptions"]
    assert close_signatures(fused, stepped)


# --------------------------------------------------------------------------- runs


def test_same_seed_same_run_and_another_seed_another() -> None:
    tasks = pool()
    first = simulate(config(3, "pow2", seed=1), poisson(40, 1_500, 5, tasks))
    again = simulate(config(3, "pow2", seed=1), poisson(40, 1_500, 5, tasks))
    other = simulate(config(3, "pow2", seed=2), poisson(40, 1_500, 5, tasks))
    assert signature(first) == signature(again)
    assert first.counters == again.counters
    assert signature(first) != signature(other)


@pytest.mark.parametrize("scheduler", ["cato", "round_robin", "least_loaded", "clairvoyant"])
def test_more_replicas_never_lower_goodput(scheduler: str) -> None:
    tasks = pool()
    rates = []
    for replicas in (1, 2, 4):
        result = simulate(config(replicas, scheduler), poisson(60, 1_500, 3, tasks))
        assert result.overall.requests == 1_500
        rates.append(result.overall.goodput_rate or 0.0)
    assert rates[0] < 0.9  # one replica is overloaded at this rate
    assert rates[1] >= rates[0] - 0.02
    assert rates[2] >= rates[1] - 0.02
    assert rates[2] > 0.85


def test_overload_lowers_goodput_and_raises_tail_latency() -> None:
    tasks = pool()
    light = simulate(config(2), poisson(10, 800, 4, tasks))
    heavy = simulate(config(2), poisson(80, 800, 4, tasks))
    assert (light.overall.goodput_rate or 0) > 0.95
    assert (heavy.overall.goodput_rate or 0) < (light.overall.goodput_rate or 0) - 0.2
    assert (heavy.overall.e2e_p99_ms or 0) > 2 * (light.overall.e2e_p99_ms or 0)
    light_batch = light.utilization.mean_batch_occupancy or 0
    assert 0 < light_batch < (heavy.utilization.mean_batch_occupancy or 0) <= 1


def test_unfinished_tasks_are_errors_after_the_drain_limit() -> None:
    tasks = pool()
    result = simulate(config(1, drain_s=1.0), poisson(200, 600, 6, tasks))
    assert result.overall.requests == 600
    assert result.overall.errors > 0
    assert result.end <= result.last_arrival + 1.0 + 1e-9


# --------------------------------------------------------------------------- scaling


def autoscaled(policy: str, **knobs: float) -> SimConfig:
    spec = ModelSpec("tiny", A100, replicas=1, min_replicas=1, max_replicas=4)
    prov = ProvisionerConfig(policy=policy, **knobs)  # type: ignore[arg-type]
    return SimConfig(models=(spec,), provisioner=policy, provisioner_config=prov, gpus=3)


def test_cato_scales_up_under_violations_within_the_free_gpus() -> None:
    result = simulate(autoscaled("cato", window_s=2.0), poisson(60, 3_000, 7, pool()))
    series = result.replica_series["tiny"]
    assert series[0] == (0.0, 1, 0)
    assert max(ready + pending for _, ready, pending in series) == 3  # 3 GPUs, max 4
    first_up = next(e for e in result.scale_events if e.after > e.before)
    ready_at = next(t for t, ready, _ in series if ready > 1)
    assert ready_at == pytest.approx(first_up.t + A100.cold_start_s)
    assert "violated" in first_up.reason


def test_queue_length_scales_down_after_the_load_goes() -> None:
    prov = {"upscale_delay_s": 1.0, "downscale_delay_s": 5.0, "look_back_s": 2.0}
    arrivals = list(poisson(60, 3_000, 8, pool()))
    quiet_from = arrivals[-1][0]
    arrivals.append((quiet_from + 120.0, complete(99, 100, 4)))
    result = simulate(autoscaled("queue_length", **prov), arrivals)
    series = result.replica_series["tiny"]
    assert max(ready for _, ready, _ in series) > 1
    after = [ready + pending for t, ready, pending in series if t > quiet_from + 60]
    assert after and after[-1] == 1
    assert result.overall.requests == 3_001


def test_calls_wait_for_a_starting_replica_and_fail_without_one() -> None:
    spec = ModelSpec("tiny", A100, replicas=0, min_replicas=1, max_replicas=1)
    arrivals = [(0.5, complete(0, 100, 4)), (2.0, complete(1, 100, 4))]
    result = simulate(SimConfig(models=(spec,)), arrivals)
    early, parked = sorted(result.records(), key=lambda r: r.arrival)
    assert early.outcome == "error"  # nothing was starting yet at 0.5 s
    assert parked.outcome == "ok"
    ready_at = 1.0 + A100.cold_start_s  # the first provisioner tick starts one
    assert parked.first_token is not None and parked.first_token > ready_at


def test_fixed_provisioning_never_changes_the_replicas() -> None:
    cfg = dataclasses.replace(config(2), provisioner="fixed")
    result = simulate(cfg, poisson(80, 1_000, 9, pool()))
    assert result.scale_events == []
    assert result.replica_series["tiny"] == [(0.0, 2, 0)]


# --------------------------------------------------------------------------- clairvoyant


def test_the_clairvoyant_heuristic_sends_hopeless_calls_to_the_back() -> None:
    replicas = [ReplicaState(id=f"r{i}", model="m", concurrency_limit=1) for i in range(2)]
    for i, replica in enumerate(replicas):
        busy = Call(id=f"busy{i}", model="m", deadline=99, prompt_tokens=10,
                    expected_output_tokens=10_000 * (i + 1), arrival=0.0)  # fmt: skip
        replica.start(busy, 0.0)
    clairvoyant = ClairvoyantScheduler(profiles={"m": A100})
    call = Call(id="c", model="m", deadline=1.0, prompt_tokens=100,
                expected_output_tokens=50, arrival=0.0, metric="ttft")  # fmt: skip
    route = clairvoyant.route(call, replicas, 0.0)
    assert route.replica_id == "r0"  # the one that frees up first
    assert route.priority == HOPELESS
    relaxed = dataclasses.replace(call, id="d", deadline=10_000.0)
    assert clairvoyant.route(relaxed, replicas, 0.0).priority < HOPELESS


# --------------------------------------------------------------------------- scenarios


@pytest.fixture(scope="module")
def small_workload() -> Workload:
    return build_workload(seed=0, per_kind=12, modules=40)


@pytest.mark.parametrize("name", ["rq1", "rq2"])
def test_fixed_scenarios_run_quickly_and_degrade_with_load(
    name: str, small_workload: Workload
) -> None:
    sweep = run_sweep(
        SCENARIOS[name], small_workload, policies=["cato", "round_robin"], quick=True, seed=1
    )
    assert {(p.policy, p.provisioner) for p in sweep.points} == {
        ("cato", "fixed"),
        ("round_robin", "fixed"),
    }
    for policy in ("cato", "round_robin"):
        light, heavy = sorted((p for p in sweep.points if p.policy == policy), key=lambda p: p.rate)
        assert set(light.result.kinds) == set(SCENARIOS[name].mix)
        assert (light.result.goodput_rate or 0) >= (heavy.result.goodput_rate or 0)


def test_rq3_autoscales(small_workload: Workload) -> None:
    sweep = run_sweep(
        SCENARIOS["rq3"],
        small_workload,
        policies=["cato"],
        provisioners=["queue_length", "fixed"],
        quick=True,
        rates=[(3.33, 40.0)],
    )
    by_prov = {p.provisioner: p.result for p in sweep.points}
    assert by_prov["fixed"].scale_events == []
    assert any(e.after > e.before for e in by_prov["queue_length"].scale_events)
    assert set(by_prov["fixed"].kinds) == set(KIND_NAMES)
    busy = by_prov["fixed"].utilization.replicas
    for model in ("starcoder2-7b", "codellama-7b"):  # each serves two of the kinds
        assert sum(u.busy_s for rid, u in busy.items() if rid.startswith(model)) > 0


KIND_NAMES = [k.value for k in TaskKind]


def test_bench_sim_command_writes_json_and_markdown(tmp_path: Path) -> None:
    from orchestrator.cli import main

    out = tmp_path / "out"
    code = main(
        ["bench", "sim", "--scenario", "rq2", "--quick", "--policies", "cato",
         "--out", str(out), "--no-plots", "--per-kind", "8", "--duration", "5"]
    )  # fmt: skip
    assert code == 0
    assert (out / "rq2.json").is_file()
    assert "Goodput rate" in (out / "rq2.md").read_text()


def test_plan_finds_the_smallest_replica_count(capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.bench.plan import main

    code = main(
        ["--rates", "summarize=8,generate=8", "--profile", "tiny@cpu", "--target", "0.9",
         "--duration", "30", "--per-kind", "8"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    answer = int(out.strip().splitlines()[-1].split()[0])
    rows = {int(line.split("|")[1]): float(line.split("|")[2]) for line in out.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()}  # fmt: skip
    assert rows[answer] >= 0.9
    assert answer == 1 or rows[answer - 1] < 0.9


def test_shed_calls_end_at_once_count_as_missed_and_free_the_replica() -> None:
    """Past capacity, requests that ask to be shed when late end as errors (never SLA
    met, counted apart) instead of running late, and the others gain from it."""

    def shedding(tasks: list[SimTask]) -> list[SimTask]:
        update = {"on_late": "shed"}
        return [dataclasses.replace(t, request=t.request.model_copy(update=update)) for t in tasks]

    runs = {}
    for name, tasks in (("wait", pool()), ("shed", shedding(pool()))):
        runs[name] = simulate(config(1), poisson(25, 3000, 3, tasks))
    wait, shed = runs["wait"], runs["shed"]
    assert wait.counters["shed"] == 0 and wait.overall.errors == 0
    assert shed.counters["shed"] > 0 and shed.overall.errors == shed.counters["shed"]
    assert all(not r.sla_met for r in shed.records() if r.outcome == "error")
    assert shed.overall.requests == wait.overall.requests == 3000
    assert shed.overall.sla_met > 1.5 * wait.overall.sla_met

    def worst(result: SimResult) -> float:
        return max(r.done - r.arrival for r in result.records() if r.outcome == "ok")

    assert worst(shed) < worst(wait) / 2


def test_a_decode_run_counts_no_more_steps_than_it_has() -> None:
    run = DecodeRun(start=1.0, batch=2, base=0.01, slope=1e-6, context=100, steps=4)
    assert run.steps_before(1.0) == 0
    assert run.steps_before(run.end(2) + 1e-9) == 3  # the third step starts at end(2)
    assert run.steps_before(run.end(4) + 10.0) == 4  # long past its end: all of them
