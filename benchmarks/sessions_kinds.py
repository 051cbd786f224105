"""Which kinds of task meet their SLA at a policy's capacity on the sessions scenario.

Capacity is set by all tasks together (90% of them on time), so a rule can raise it by
trading one kind for another: slack admission's ``prefill_share`` holds summaries back
for completions. For each seed and policy (a scheduler or a variant, as in ``cato bench
capacity``), this finds the capacity as that command does, runs the scenario at it
once more, and prints each kind's share of tasks on time. Prints the Markdown table
quoted in docs/BENCHMARKS.md::

    python3 -m benchmarks.sessions_kinds [--seeds 0-2] [--policies cato,...]
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence

from orchestrator.bench.capacity import parse_seeds, run_at_capacity
from orchestrator.sim.simulator import Simulator

CASE = "sessions"
KINDS = ("complete", "generate", "summarize", "translate")


def row(policy: str, seed: int) -> str:
    """One table row: the policy's capacity at ``seed`` and each kind's attainment there."""
    cell, _, result = run_at_capacity(CASE, policy, seed, Simulator)
    tasks: Counter[str] = Counter()
    met: Counter[str] = Counter()
    for r in result.records():
        latency = r.ttft_ms if r.metric == "ttft" else r.e2e_ms
        tasks[r.kind] += 1
        met[r.kind] += r.outcome == "ok" and latency is not None and latency <= r.target_ms
    shares = " | ".join(f"{met[k] / tasks[k]:.0%}" if tasks[k] else "-" for k in KINDS)
    return f"| {policy} | {seed} | {cell.capacity:.2f} | {shares} |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--policies", default="cato,cato/e2e_floor=0/prefill_share=inf")
    args = parser.parse_args(argv)
    print("| policy | seed | capacity (x C) | " + " | ".join(KINDS) + " |")
    print("|---|---|---|" + "---|" * len(KINDS))
    for seed in parse_seeds(args.seeds):
        for policy in args.policies.split(","):
            print(row(policy, seed), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
