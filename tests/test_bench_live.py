"""The simulator against the live orchestrator over emulator processes, on the same load.

Scenario: RQ2's mix (complete 70% + summarize 30%) on 2 replicas of codellama-7b@a100,
Poisson arrivals at 20% of those replicas' capacity for 16 s, seed 3, CATO routing; the
emulators run at the profile's own speed, so HTTP and Python overheads count once. At
this light load the live run hardly depends on how busy the machine is.

Tolerance (simulated twin vs live): goodput rate within 10 points overall and per kind;
TTFT P50 and E2E P50 of each kind within 25% of the live figure, or 20 ms for the
smallest figures (summaries' first tokens, ~35 ms). The live run has real HTTP
streaming and Python overheads (a few ms per call, more on a busy machine) that the
simulator does not model, hence the margins. Every call generates the workload's
output length, live (the emulators' length table) as in the twin. Measured when
written, on a busy machine: complete TTFT P50 147 ms live / 135 ms simulated, E2E P50
424 / 411 ms; summarize TTFT P50 40 / 28 ms, E2E P50 431 / 404 ms; goodput 100% in both.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.bench.live import LiveOptions, run_live_sweep, twin_sweep
from orchestrator.bench.processes import descendants
from orchestrator.bench.scenarios import ModelPlan, Scenario, Sweep, capacity_rps, scenario
from orchestrator.bench.workloads import Workload, build_workload, iter_tasks

SEED = 3
DURATION_S = 16.0
GOODPUT_POINTS = 0.10
P50_REL = 0.25
P50_ABS_MS = 20.0


@pytest.fixture(scope="module")
def workload() -> Workload:
    return build_workload(seed=SEED, per_kind=30, kinds=("complete", "summarize"))


@pytest.fixture(scope="module")
def small() -> Scenario:
    rq2 = scenario("rq2")
    (plan,) = rq2.models
    return replace(rq2, models=(ModelPlan(plan.name, plan.profile, replicas=2),))


@pytest.fixture(scope="module")
def live(small: Scenario, workload: Workload) -> Sweep:
    rate = round(0.2 * capacity_rps(small, workload), 3)
    return run_live_sweep(
        small,
        workload,
        policies=("cato",),
        seed=SEED,
        duration_s=DURATION_S,
        rates=[(0.67, rate)],
        options=LiveOptions(speed=1.0),
    )


def test_the_workload_has_no_network_and_is_the_same_per_seed(workload: Workload) -> None:
    again = build_workload(seed=SEED, per_kind=30, kinds=("complete", "summarize"))
    assert [t.request for t in iter_tasks(again)] == [t.request for t in iter_tasks(workload)]


def test_arrivals_are_deterministic_per_seed(small: Scenario, workload: Workload) -> None:
    def keys(seed: int) -> list[tuple[float, str]]:
        return [(t, task.key) for t, task in small.arrivals(4.0, 10.0, workload, seed)]

    assert keys(SEED) == keys(SEED)
    assert keys(SEED) != keys(SEED + 1)


def test_the_simulated_twin_is_deterministic(live: Sweep, workload: Workload) -> None:
    def figures(sweep: Sweep) -> dict[str, object]:
        return sweep.points[0].result.to_dict() | {"wall_s": 0.0, "cpu_s": 0.0}

    assert figures(twin_sweep(live, workload)) == figures(twin_sweep(live, workload))


def test_the_simulator_matches_the_live_emulator_within_tolerance(
    live: Sweep, workload: Workload
) -> None:
    (point,) = live.points
    (twin,) = twin_sweep(live, workload).points
    real, sim = point.result, twin.result
    assert real.counters["tasks"] == sim.counters["tasks"] > 40
    # every model call generated the workload's length, as in the simulator
    assert real.counters["drawn_lengths"] == 0
    assert real.counters["fixed_lengths"] >= real.counters["tasks"]
    assert real.overall.errors == 0
    assert abs((real.goodput_rate or 0.0) - (sim.goodput_rate or 0.0)) <= GOODPUT_POINTS
    assert set(real.kinds) == set(sim.kinds) == {"complete", "summarize"}
    for kind, stats in real.kinds.items():
        other = sim.kinds[kind]
        assert abs((stats.goodput_rate or 0.0) - (other.goodput_rate or 0.0)) <= GOODPUT_POINTS
        for name in ("ttft_p50_ms", "e2e_p50_ms"):
            live_p50 = getattr(stats, name)
            sim_p50 = getattr(other, name)
            assert live_p50 is not None and sim_p50 is not None
            assert sim_p50 == pytest.approx(live_p50, rel=P50_REL, abs=P50_ABS_MS), (kind, name)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_service_a_live_run_started(tmp_path: Path) -> None:
    """``cato serve`` runs in a session of its own: only the bench command can stop it."""
    argv = [sys.executable, "-m", "orchestrator.cli", "bench", "live", "--via", "serve"]
    argv += ["--scenario", "rq2", "--quick", "--speed", "4", "--duration", "120"]
    argv += ["--policies", "cato", "--no-twin", "--no-plots", "--out", str(tmp_path)]
    proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        started: set[int] = set()
        for _ in range(1200):
            started = descendants(proc.pid)
            if len(started) >= 7 or proc.poll() is not None:  # the service and 6 replicas
                break
            time.sleep(0.1)
        assert len(started) >= 7, "the run did not start its service and replicas"
        proc.send_signal(signal.SIGTERM)
        proc.wait(90)
        for _ in range(300):
            if not any(_alive(p) for p in started):
                break
            time.sleep(0.1)
        assert not [p for p in started if _alive(p)], "the service outlived the run"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("loads", ["x", "0", "1.0,-1", ","])
def test_bad_loads_are_refused_before_anything_runs(
    loads: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "live", "--loads", loads])
    assert exit_.value.code == 2
    assert "--loads" in capsys.readouterr().err
