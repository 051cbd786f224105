"""How many streams one core of ``cato serve`` carries at 16, 64 and 256 replicas.

Three inputs, one table (the one in docs/SCALE_OUT.md):

- a routing decision, timed here: ``CatoScheduler.route`` over N busy replicas with
  10,000 calls queued (``test_bench_scheduler``'s setup), the best of 15 rounds' means, for a
  deadline some replica meets and one none meets (which examines every replica);
- the simulator's tasks per CPU-second at N replicas (``benchmarks/scale_out``'s
  short tasks at half load; engines simulated too, so routing alone is cheaper);
- the service's CPU per streamed request, from ``cato bench overhead`` (two replicas;
  docs/BENCHMARKS.md, "Overhead"), given as ``--request-cpu-ms``, and the idle CPU
  each replica costs the service (its health checks), from
  ``python3 -m orchestrator.bench.ray_cluster fleet``, given as ``--idle-per-replica``.

A request makes one routing decision; the rest of its CPU does not grow with the
replica count, so streams per core at N = (1 - N x idle per replica) / (CPU per request
+ decision at N - decision at 2). Run from the checkout::

    python3 -m benchmarks.streams_per_core [--request-cpu-ms 1.57 2.58] [--no-sim]
"""

from __future__ import annotations

import argparse
import time

from benchmarks.test_bench_scheduler import busy_replicas, routing_call
from orchestrator.policy.scheduler import CatoScheduler

REPLICAS = (16, 64, 256)
# cato 0.1.0 on uvloop, 16 and 128 tokens at 16 in flight (docs/BENCHMARKS.md, Overhead).
REQUEST_CPU_MS = (1.57, 2.58)
# cato serve over 64 Ray replicas, no load: 2.4% of a core (ray_cluster fleet; 0.8% at 16,
# 1.0-1.2% at 32), all of it counted per replica.
IDLE_PER_REPLICA = 0.024 / 64


def decision_us(n: int, misses: bool, rounds: int = 15, per_round: int = 200) -> float:
    """Microseconds of one routing decision over ``n`` busy replicas: the best round's
    mean (on a shared machine, the slower rounds measure the other work)."""
    replicas = busy_replicas(n)
    call = routing_call(replicas, meets=not misses)
    scheduler = CatoScheduler()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            scheduler.route(call, replicas, 1.0)
        times.append((time.perf_counter() - start) / per_round)
    return 1e6 * min(times)


def sim_tasks_per_cpu_s(n: int, tasks: int) -> float:
    from benchmarks.scale_out import PER_REPLICA_RATE
    from benchmarks.test_bench_sim import PROFILE, arrivals
    from orchestrator.sim import ModelSpec, SimConfig, simulate

    config = SimConfig(models=(ModelSpec("tiny", PROFILE, replicas=n),))
    result = simulate(config, arrivals(PER_REPLICA_RATE * n, tasks))
    return tasks / result.cpu_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.streams_per_core")
    parser.add_argument("--request-cpu-ms", type=float, nargs="+", default=list(REQUEST_CPU_MS))
    parser.add_argument("--idle-per-replica", type=float, default=IDLE_PER_REPLICA)
    parser.add_argument("--tasks", type=int, default=20_000, help="per simulated point")
    parser.add_argument("--no-sim", action="store_true", help="leave the simulator out")
    args = parser.parse_args(argv)
    base = decision_us(2, misses=True)
    cpu = args.request_cpu_ms
    head = "| replicas | decision, us (meets / misses) | decisions per core-second |"
    rule = "|---|---|---|"
    if not args.no_sim:
        head += " simulated tasks per CPU-second |"
        rule += "---|"
    head += " idle share of a core |"
    rule += "---|"
    for ms in cpu:
        head += f" streams per core at {ms:g} ms/request |"
        rule += "---|"
    print(head)
    print(rule)
    for n in REPLICAS:
        meets, misses = decision_us(n, misses=False), decision_us(n, misses=True)
        row = f"| {n} | {meets:.1f} / {misses:.1f} | {1e6 / misses:,.0f} |"
        if not args.no_sim:
            row += f" {sim_tasks_per_cpu_s(n, args.tasks):,.0f} |"
        idle = n * args.idle_per_replica
        row += f" {idle:.1%} |"
        for ms in cpu:
            row += f" {1000 * (1 - idle) / (ms + (misses - base) / 1000):,.0f} |"
        print(row, flush=True)
    print(
        f"\n(decision at 2 replicas: {base:.1f} us, taken off; CPU per request "
        f"{', '.join(f'{ms:g}' for ms in cpu)} ms from `cato bench overhead`; idle "
        f"{args.idle_per_replica:.3%} of a core per replica)"
    )


if __name__ == "__main__":
    main()
