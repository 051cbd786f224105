"""How close routing comes to the most prompt a prefix cache could ever hold.

A prompt block can be found cached only if some earlier call computed it, on some
replica. So over the calls of a run, in the order they started, the share of prompt
tokens whose leading blocks an earlier call had already sent anywhere is a bound on
what any routing of those same calls could find cached: a single engine with an
infinite cache would find exactly that, and one replica's cache holds no block that
the calls sent to it did not compute. For each seed and policy (a scheduler or a
variant, as in ``cato bench capacity``), this finds the capacity as that command does,
runs the sessions scenario at it once more, and prints the share the engines found
cached (vLLM's counters) beside the bound for that run's calls. Where the two meet,
no routing rule can raise capacity by caching more: what is left is which work gets
the engine time. Prints the Markdown table quoted in docs/BENCHMARKS.md::

    python3 -m benchmarks.sessions_ceiling [--seeds 0-2] [--policies cato,cache_aware]

The engines' counter looks a prompt up again when a preempted sequence comes back
(its own blocks may then be found), so it could pass the bound by those; the
``preemptions`` column says how many there were.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.bench.capacity import parse_seeds, run_at_capacity
from orchestrator.policy.state import Call, ReplicaState
from orchestrator.sim.config import SimConfig
from orchestrator.sim.simulator import Simulator

CASE = "sessions"


class _Recording(Simulator):
    """The simulator, keeping each started call's prompt size and block hashes."""

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self.starts: list[tuple[int, tuple[int, ...]]] = []

    def _on_start(self, call: Call, st: ReplicaState, now: float) -> None:
        self.starts.append((call.prompt_tokens, call.block_hashes))
        super()._on_start(call, st, now)


@dataclass(frozen=True)
class Ceiling:
    """Of a run's prompt tokens: the share its engines found cached (their counters),
    the bound's share over its started calls, and the engines' preemptions."""

    cached: float
    bound: float
    preemptions: int


def bound_tokens(starts: Sequence[tuple[int, tuple[int, ...]]], block_tokens: int) -> int:
    """Tokens of each prompt's leading blocks that an earlier call had already sent
    (a cache shared by all calls, never evicting), summed over ``starts`` in order."""
    seen: set[int] = set()
    total = 0
    for prompt_tokens, hashes in starts:
        run = 0
        for h in hashes:
            if h not in seen:
                break
            run += 1
        total += min(run * block_tokens, prompt_tokens)
        seen.update(hashes)
    return total


def measure(policy: str, seed: int) -> tuple[float, Ceiling]:
    """``policy``'s capacity at ``seed`` (x C) and the ceiling figures of a run there."""
    cell, sim, result = run_at_capacity(CASE, policy, seed, _Recording)
    engines = [r.engine for r in sim.replicas.values()]
    queries = result.counters.get("prefix_cache_queries", 0)
    prompts = sum(p for p, _ in sim.starts)
    bound = bound_tokens(sim.starts, engines[0].profile.block_size)
    return cell.capacity, Ceiling(
        cached=result.counters.get("prefix_cache_hits", 0) / queries if queries else 0.0,
        bound=bound / prompts if prompts else 0.0,
        preemptions=sum(e.num_preemptions for e in engines),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--policies", default="cato,cache_aware")
    args = parser.parse_args(argv)
    print("| policy | seed | capacity (x C) | prompt tokens cached | bound | preemptions |")
    print("|---|---|---|---|---|---|")
    for seed in parse_seeds(args.seeds):
        for policy in args.policies.split(","):
            capacity, c = measure(policy, seed)
            print(
                f"| {policy} | {seed} | {capacity:.2f} | {c.cached:.1%} | {c.bound:.1%} "
                f"| {c.preemptions} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
