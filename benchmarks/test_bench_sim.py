"""Simulator throughput: simulated tasks per second of one core.

Two shapes: 16 replicas at about half load (the usual case), and 1,024 replicas, where
every CATO routing decision scans a thousand replicas. Short tasks (completions and
summaries of synthetic code) keep the runs to a few seconds; ``extra_info`` records the
tasks per CPU-second of the last round. Target: about 1M tasks per CPU-minute (~17k/s).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator.api import TaskKind, TaskRequest
from orchestrator.engine_model import load_profile
from orchestrator.sim import ModelSpec, SimConfig, SimResult, SimTask, simulate

PROFILE = load_profile("codellama-7b@a100")


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
