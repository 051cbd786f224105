"""``cato plan``: the smallest replica count that meets a goodput target, by simulation.

From a workload description (requests/s per task kind, optional SLA overrides) and one
engine profile, simulate the same arrivals over n fixed replicas (CATO scheduling by
default) and search n: doubling until the target is met, then bisecting. Goodput rate is
taken to grow with n (more replicas never slow a replica down), which the search relies
on; the table shows every n tried, so a violation would be visible.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from orchestrator.api import SLA, SLAMetric, TaskKind
from orchestrator.bench.arrivals import per_kind_poisson, with_tasks
from orchestrator.bench.workloads import KINDS, Workload, WorkloadUnavailable, build_workload
from orchestrator.config import TASK_DEFAULTS
from orchestrator.engine_model import EngineProfile, load_profile
from orchestrator.graphs import BUILTIN_KINDS, KindDefaults, TaskDefaults
from orchestrator.sim.clairvoyant import SIM_SCHEDULERS
from orchestrator.sim.results import SimResult
from orchestrator.sim.simulator import ModelSpec, SimConfig, simulate

MODEL = "model"


@dataclass(frozen=True)
class Trial:
    replicas: int
    result: SimResult

    @property
    def goodput_rate(self) -> float:
        return self.result.goodput_rate or 0.0


def parse_pairs(text: str, what: str) -> dict[str, str]:
    """``a=1,b=2`` as a dict, keys checked against the task kinds."""
    pairs: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in KINDS:
            raise argparse.ArgumentTypeError(
                f"bad {what} {part!r}: expected KIND=VALUE with KIND one of {', '.join(KINDS)}"
            )
        pairs[key] = value.strip()
    return pairs


def parse_rates(text: str) -> dict[str, float]:
    rates = {}
    for kind, value in parse_pairs(text, "rate").items():
        try:
            rates[kind] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"rate of {kind} is not a number: {value!r}") from None
        if rates[kind] < 0:
            raise argparse.ArgumentTypeError(f"rate of {kind} must be >= 0")
    if not any(r > 0 for r in rates.values()):
        raise argparse.ArgumentTypeError("give at least one positive rate")
    return rates


def parse_slas(text: str) -> dict[str, SLA]:
    """``complete=300`` (ms, the kind's own metric) or ``summarize=e2e:4000``."""
    slas = {}
    for kind, value in parse_pairs(text, "SLA").items():
        metric, _, target = value.rpartition(":")
        metric = metric or TASK_DEFAULTS[kind]["sla_metric"]
        try:
            slas[kind] = SLA(metric=SLAMetric(metric), target_ms=float(target))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad SLA for {kind}: {value!r} ({exc})") from None
    return slas


def task_defaults(slas: Mapping[str, SLA]) -> TaskDefaults:
    kinds = {}
    for kind, builtin in BUILTIN_KINDS.items():
        task = TASK_DEFAULTS[kind.value]
        default = SLA(metric=SLAMetric(task["sla_metric"]), target_ms=task["sla_ms"])
        kinds[kind] = KindDefaults(
            model=MODEL,
            sla=slas.get(kind.value, default),
            max_tokens=task["max_tokens"],
            expected_output_ratio=builtin.expected_output_ratio,
            stop=builtin.stop,
        )
    return TaskDefaults(kinds=kinds)


def trial(
    replicas: int,
    profile: EngineProfile,
    rates: Mapping[str, float],
    workload: Workload,
    defaults: TaskDefaults,
    policy: str,
    duration_s: float,
    seed: int,
) -> Trial:
    config = SimConfig(
        models=(ModelSpec(MODEL, profile, replicas=replicas),),
        defaults=defaults,
        scheduler=policy,
        seed=seed,
    )
    arrivals = with_tasks(per_kind_poisson(rates, duration_s, seed), workload, seed + 1)
    return Trial(replicas, simulate(config, arrivals))


def search(
    run_trial: Callable[[int], Trial], target: float, max_replicas: int
) -> tuple[Trial | None, list[Trial]]:
    """The smallest n in 1..max_replicas whose trial meets ``target``, and all trials."""
    tried: dict[int, Trial] = {}

    def at(n: int) -> Trial:
        if n not in tried:
            tried[n] = run_trial(n)
        return tried[n]

    low, high = 0, 1  # low fails (0 replicas serve nothing), high is the next to try
    while at(high).goodput_rate < target:
        if high >= max_replicas:
            return None, sorted(tried.values(), key=lambda t: t.replicas)
        low, high = high, min(high * 2, max_replicas)
    while high - low > 1:
        mid = (low + high) // 2
        if at(mid).goodput_rate >= target:
            high = mid
        else:
            low = mid
    return tried[high], sorted(tried.values(), key=lambda t: t.replicas)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rates",
        type=parse_rates,
        required=True,
        help="requests/s per task kind, e.g. complete=5,summarize=1",
    )
    parser.add_argument("--profile", default="codellama-7b@a100", help="engine profile")
    parser.add_argument("--target", type=float, default=0.95, help="goodput rate to meet")
    parser.add_argument(
        "--sla",
        type=parse_slas,
        default={},
        help="SLA overrides, e.g. complete=300,summarize=e2e:4000",
    )
    parser.add_argument("--policy", default="cato", choices=SIM_SCHEDULERS)
    parser.add_argument("--duration", type=float, default=300.0, help="simulated seconds")
    parser.add_argument("--max-replicas", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-kind", type=int, default=100, help="distinct tasks per kind")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.target <= 1:
        print("--target must be in (0, 1]", file=sys.stderr)
        return 2
    try:
        profile = load_profile(args.profile)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    kinds = [k for k, r in args.rates.items() if r > 0]
    try:
        workload = build_workload(seed=args.seed, per_kind=args.per_kind, kinds=kinds)
    except WorkloadUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    defaults = task_defaults(args.sla)

    def run_trial(n: int) -> Trial:
        found = trial(
            n, profile, args.rates, workload, defaults, args.policy, args.duration, args.seed
        )
        print(f"  {n:5d} replicas: goodput rate {found.goodput_rate:.3f}", file=sys.stderr)
        return found

    best, trials = search(run_trial, args.target, args.max_replicas)
    print(_table(trials, defaults, kinds))
    if best is None:
        print(f"\nno replica count up to {args.max_replicas} meets {args.target:.0%}")
        return 1
    print(
        f"\n{best.replicas} replicas of {profile.name} meet a goodput rate of "
        f"{best.goodput_rate:.1%} (target {args.target:.0%}) with {args.policy} scheduling"
    )
    return 0


def _table(trials: list[Trial], defaults: TaskDefaults, kinds: list[str]) -> str:
    head = "| replicas | goodput rate | " + " | ".join(f"{k} P99 (ms)" for k in kinds) + " |"
    rows = [head, "|---|---|" + "---|" * len(kinds)]
    for t in trials:
        cells = []
        for kind in kinds:
            st = t.result.kinds.get(kind)
            metric = defaults.for_kind(TaskKind(kind)).sla.metric
            value = None
            if st is not None:
                value = st.ttft_p99_ms if metric is SLAMetric.TTFT else st.e2e_p99_ms
            cells.append("-" if value is None else f"{value:.0f} ({metric.value})")
        rows.append(f"| {t.replicas} | {t.goodput_rate:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cato plan")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
