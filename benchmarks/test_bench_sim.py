"""Simulator throughput: simulated tasks per second of one core.

Three shapes: 16 replicas at about half load (the usual case); 1,024 replicas, where
every CATO routing decision scans a thousand replicas (both with short synthetic
tasks, so a run takes seconds); and the rq2 scenario (``complete`` + ``summarize`` from
the real workload, 6 replicas) at 60% of its capacity C, the shape of the million-task
figure in docs/BENCHMARKS.md. ``extra_info`` records tasks per CPU-second of the last
round. Target: about 1M tasks per CPU-minute (~17k/s).

The rq2 case simulates ``CATO_BENCH_RQ2_TASKS`` tasks (default 100,000). The full
measurement, with a digest of every task's outcome (equal digests: identical results)::

    python3 -m benchmarks.test_bench_sim --tasks 1000000
    python3 -m benchmarks.test_bench_sim --tasks 200000 --profile rq2.prof

(``--policy`` and ``--load`` pick another point; ``PYTHONPATH=CHECKOUT python3
benchmarks/test_bench_sim.py ...`` measures the code of another checkout, side by side.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator.api import TaskKind, TaskRequest
from orchestrator.bench.scenarios import capacity_rps, scenario
from orchestrator.bench.workloads import Workload, WorkloadUnavailable, build_workload
from orchestrator.engine_model import load_profile
from orchestrator.sim import ModelSpec, SimConfig, SimResult, SimTask, Simulator, simulate

PROFILE = load_profile("codellama-7b@a100")
RQ2_LOAD = 0.6  # of the scenario's capacity C


def tasks(seed: int = 0) -> list[SimTask]:
    rng = random.Random(seed)
    pool = []
    for i in range(100):
        prompt = "x" * (4 * rng.randint(100, 1_200))
        request = TaskRequest(id=f"c{i}", kind=TaskKind.COMPLETE, prompt=prompt)
        pool.append(SimTask(f"c{i}", request, output_tokens=rng.randint(4, 64)))
        code = "def f(a, b):\n    return a + b\n" * rng.randint(3, 60)
        request = TaskRequest(id=f"s{i}", kind=TaskKind.SUMMARIZE, code=code)
        pool.append(SimTask(f"s{i}", request, output_tokens=rng.randint(16, 160)))
    return pool


def arrivals(rate: float, n: int, seed: int = 0) -> Iterator[tuple[float, SimTask]]:
    rng = random.Random(seed)
    pool = tasks(seed)
    t = 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        yield t, pool[rng.randrange(len(pool))]


@pytest.mark.parametrize(
    ("replicas", "rate", "n"),
    [(16, 120.0, 30_000), (1_024, 7_000.0, 30_000)],
    ids=["16-replicas", "1024-replicas"],
)
def test_simulated_tasks_per_second(
    benchmark: BenchmarkFixture, replicas: int, rate: float, n: int
) -> None:
    config = SimConfig(models=(ModelSpec("tiny", PROFILE, replicas=replicas),))

    def run() -> SimResult:
        return simulate(config, arrivals(rate, n))

    result: SimResult = benchmark.pedantic(run, rounds=3, iterations=1)  # type: ignore[no-untyped-call]
    assert result.overall.requests == n
    assert (result.overall.goodput_rate or 0) > 0.9
    benchmark.extra_info["tasks_per_cpu_s"] = round(n / result.cpu_s)
    benchmark.extra_info["tasks_per_cpu_min"] = round(60 * n / result.cpu_s)


# --------------------------------------------------------------------------- rq2 at 60% of C


@cache
def _rq2_workload() -> Workload:
    """The benchmark workload (seed 0, 200 tasks per kind), as ``cato bench sim`` builds it."""
    return build_workload(seed=0, per_kind=200)


def rq2_run(
    n: int, policy: str = "cato", load: float = RQ2_LOAD, seed: int = 0
) -> tuple[Simulator, Iterator[tuple[float, SimTask]], float]:
    """A simulator and arrivals for about ``n`` rq2 tasks at ``load`` x C (and the rate)."""
    rq2 = scenario("rq2")
    workload = _rq2_workload()
    rate = load * capacity_rps(rq2, workload)
    return (
        Simulator(rq2.config(policy, "fixed", seed)),
        rq2.arrivals(rate, n / rate, workload, seed),
        rate,
    )


def digest(result: SimResult) -> str:
    """A hash of every task's kind, times and outcome, and the run's counters."""
    store = result.store
    h = hashlib.sha256()
    for column in (store.kind, store.arrival, store.first_token, store.done, store.outcome):
        h.update(column.tobytes())
    h.update(json.dumps(result.counters, sort_keys=True).encode())
    return h.hexdigest()[:16]


def test_rq2_tasks_per_cpu_minute(benchmark: BenchmarkFixture) -> None:
    n = int(os.environ.get("CATO_BENCH_RQ2_TASKS", "100000"))
    try:
        _rq2_workload()
    except WorkloadUnavailable as exc:
        pytest.skip(str(exc))

    def setup() -> tuple[tuple[Simulator, Iterator[tuple[float, SimTask]]], dict[str, Any]]:
        sim, source, _ = rq2_run(n)
        return (sim, source), {}

    def run(sim: Simulator, source: Iterator[tuple[float, SimTask]]) -> SimResult:
        return sim.run(source)

    result: SimResult = benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
    done = result.counters["tasks"]
    assert abs(done - n) < 0.01 * n + 100
    assert (result.overall.goodput_rate or 0) > 0.9
    benchmark.extra_info["tasks"] = done
    benchmark.extra_info["cpu_s"] = round(result.cpu_s, 2)
    benchmark.extra_info["tasks_per_cpu_min"] = round(60 * done / result.cpu_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rq2 at a share of C: tasks per CPU-minute")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--policy", default="cato")
    parser.add_argument("--load", type=float, default=RQ2_LOAD, help="share of capacity C")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None, help="write cProfile stats to this file")
    args = parser.parse_args(argv)
    sim, source, rate = rq2_run(args.tasks, args.policy, args.load, args.seed)
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(sim.run, source)
        profiler.dump_stats(args.profile)
    else:
        result = sim.run(source)
    done = result.counters["tasks"]
    print(
        f"rq2 {args.policy} rate={rate:.3f}/s tasks={done} calls={result.counters['calls']}"
        f" cpu={result.cpu_s:.1f}s {60 * done / result.cpu_s / 1e6:.3f}M/cpu-min"
        f" goodput_rate={result.overall.goodput_rate:.4f} digest={digest(result)}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
