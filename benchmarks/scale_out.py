"""How the simulated service scales with the replica count one ``cato serve`` fronts.

The same short synthetic tasks as ``test_bench_sim`` at 7.5 tasks/s per replica (about
half load), for 16, 64 and 256 replicas: tasks per CPU-second of one core, with CATO's
routing scanning every replica per call. Prints the Markdown table in
docs/SCALE_OUT.md::

    python3 -m benchmarks.scale_out [--tasks 20000]
"""

from __future__ import annotations

import argparse

from benchmarks.test_bench_sim import PROFILE, arrivals
from orchestrator.sim import ModelSpec, SimConfig, simulate

PER_REPLICA_RATE = 7.5  # tasks/s: test_bench_sim's 16-replica point, per replica
REPLICAS = (16, 64, 256)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.scale_out")
    parser.add_argument("--tasks", type=int, default=20_000)
    n = parser.parse_args(argv).tasks
    print(
        "| replicas | tasks | arrivals (tasks/s, simulated) | CPU s "
        "| tasks per CPU-second | goodput |"
    )
    print("|---|---|---|---|---|---|")
    for replicas in REPLICAS:
        rate = PER_REPLICA_RATE * replicas
        config = SimConfig(models=(ModelSpec("tiny", PROFILE, replicas=replicas),))
        r = simulate(config, arrivals(rate, n))
        print(
            f"| {replicas} | {n:,} | {rate:g} | {r.cpu_s:.2f} | {n / r.cpu_s:,.0f} "
            f"| {r.overall.goodput_rate or 0:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
