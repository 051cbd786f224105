"""The paper's three experiments as simulation scenarios, and the rate sweep that runs them.

* ``rq1``: long-output tasks (``generate`` + ``translate``) on 6 fixed replicas.
* ``rq2``: short tasks (``complete`` + ``summarize``) on 6 fixed replicas.
* ``rq3``: all four kinds at once, bursty arrivals, two models sharing a GPU pool, with
  autoscaling (provisioners ``cato``, ``queue_length``, ``fixed``).
* ``sessions``: editing sessions (``bench.sessions``) on 6 fixed replicas whose engines
  cache prompt prefixes, as vLLM does by default: where routing decides cache hits.

The paper swept 0.67-3.33 requests/s on its own replicas. Here the same five points are
scaled to the simulated replicas: ``C`` is the saturation throughput of the scenario's
replicas for its task mix (``capacity_rps``: full batches, KV-limited, prefill and decode
costs from the engine profile), and the paper's 3.33 req/s maps to ``OVERLOAD`` x C, so
the sweep runs from a fifth of that throughput to all of it. The estimate is optimistic
(it ignores queueing and the SLAs), so the top rates are overload in practice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.api import SLA, SLAMetric, TaskKind
from orchestrator.bench.arrivals import Mmpp, poisson, with_kinds, with_tasks
from orchestrator.bench.sessions import SESSIONS, sample_workload, session_arrivals
from orchestrator.bench.workloads import Workload, profile_workload
from orchestrator.config import TASK_DEFAULTS, ProvisionerConfig
from orchestrator.engine_model import EngineProfile, load_profile
from orchestrator.graphs import BUILTIN_KINDS, KindDefaults, TaskDefaults
from orchestrator.sim.results import SimResult
from orchestrator.sim.simulator import ModelSpec, SimConfig, SimTask, Simulator
from orchestrator.sim.variants import parse_variant

PAPER_RATES: tuple[float, ...] = (0.67, 1.33, 2.0, 2.67, 3.33)
QUICK_PAPER_RATES: tuple[float, ...] = (0.67, 3.33)
OVERLOAD = 1.0
POLICIES: tuple[str, ...] = ("cato", "round_robin", "pow2", "least_loaded", "clairvoyant")


@dataclass(frozen=True)
class ModelPlan:
    """A model of a scenario: its profile and replica bounds per provisioner."""

    name: str
    profile: str
    replicas: int
    min_replicas: int | None = None
    max_replicas: int | None = None

    def spec(
        self,
        provisioner: str,
        concurrency_limit: int | None = None,
        prefix_caching: bool = False,
    ) -> ModelSpec:
        profile = load_profile(self.profile)
        if provisioner == "fixed":
            return ModelSpec(
                self.name,
                profile,
                replicas=self.replicas,
                concurrency_limit=concurrency_limit,
                prefix_caching=prefix_caching,
            )
        return ModelSpec(
            self.name,
            profile,
            replicas=self.replicas,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            concurrency_limit=concurrency_limit,
            prefix_caching=prefix_caching,
        )


@dataclass(frozen=True)
class Scenario:
    """One experiment: task mix, models, arrival process and what to sweep."""

    name: str
    title: str
    mix: Mapping[str, float]
    models: tuple[ModelPlan, ...]
    kind_models: Mapping[str, str]
    duration_s: float
    quick_duration_s: float
    provisioners: tuple[str, ...] = ("fixed",)
    bursty: bool = False
    gpus: int | None = None
    provisioner_config: ProvisionerConfig = field(default_factory=ProvisionerConfig)
    # Calls in flight per replica (default: the engine's max_num_seqs, as the runtime does).
    concurrency_limit: int | None = None
    # Engines reuse cached prompt blocks (vLLM's automatic prefix caching). Off for
    # rq1-rq3: their figures were measured without it, and their tasks come from small
    # pools drawn with replacement, so the same prompt recurs by the pool's size, not
    # by anything a user does; a cache would measure that artifact.
    prefix_caching: bool = False
    # > 0: the tasks come from this many editing sessions (``bench.sessions``), built
    # from the workload's seed, not from the workload's pools.
    sessions: int = 0

    def defaults(self) -> TaskDefaults:
        """Per-kind SLAs and budgets of ``cato.toml``'s defaults, with this scenario's models
        (kinds not in ``kind_models`` go to the first model)."""
        kinds: dict[TaskKind, KindDefaults] = {}
        for kind, builtin in BUILTIN_KINDS.items():
            task = TASK_DEFAULTS[kind.value]
            kinds[kind] = KindDefaults(
                model=self.kind_models.get(kind.value, self.models[0].name),
                sla=SLA(metric=SLAMetric(task["sla_metric"]), target_ms=task["sla_ms"]),
                max_tokens=task["max_tokens"],
                expected_output_ratio=builtin.expected_output_ratio,
                stop=builtin.stop,
            )
        return TaskDefaults(kinds=kinds)

    def config(self, policy: str, provisioner: str, seed: int) -> SimConfig:
        """The run of ``policy`` (a scheduler, or a variant: see ``sim.variants``)."""
        return parse_variant(policy).apply(self._config(provisioner, seed))

    def _config(self, provisioner: str, seed: int) -> SimConfig:
        return SimConfig(
            models=tuple(
                m.spec(provisioner, self.concurrency_limit, self.prefix_caching)
                for m in self.models
            ),
            defaults=self.defaults(),
            provisioner=provisioner,
            provisioner_config=self.provisioner_config.model_copy(update={"policy": provisioner}),
            gpus=self.gpus,
            seed=seed,
        )

    def task_pool(self, workload: Workload) -> Workload:
        """Tasks that stand for the scenario's mix: the workload's, or its sessions'."""
        if self.sessions:
            return sample_workload(workload.seed, tuple(sorted(self.mix.items())))
        return workload

    def arrivals(
        self, rate: float, duration_s: float, workload: Workload, seed: int
    ) -> Iterator[tuple[float, SimTask]]:
        if self.sessions:
            return session_arrivals(rate, duration_s, self.mix, workload.seed, seed, self.sessions)
        if self.bursty:
            times = Mmpp.around(rate).times(duration_s, seed)
        else:
            times = poisson(rate, duration_s, seed)
        return with_tasks(with_kinds(times, self.mix, seed + 1), workload, seed + 2)


_CODELLAMA = "codellama-7b"
_STARCODER = "starcoder2-7b"

SCENARIOS: dict[str, Scenario] = {
    "rq1": Scenario(
        name="rq1",
        title="RQ1: long-output tasks (generate + translate), 6 fixed replicas",
        mix={"generate": 0.7, "translate": 0.3},
        models=(ModelPlan(_CODELLAMA, "codellama-7b@a100", replicas=6),),
        kind_models={},
        duration_s=180.0,
        quick_duration_s=20.0,
    ),
    "rq2": Scenario(
        name="rq2",
        title="RQ2: short tasks (complete + summarize), 6 fixed replicas",
        mix={"complete": 0.7, "summarize": 0.3},
        models=(ModelPlan(_CODELLAMA, "codellama-7b@a100", replicas=6),),
        kind_models={},
        duration_s=180.0,
        quick_duration_s=20.0,
    ),
    "rq3": Scenario(
        name="rq3",
        title="RQ3: all kinds, bursty arrivals, two models on 16 GPUs, autoscaling",
        mix={"complete": 0.4, "generate": 0.25, "summarize": 0.2, "translate": 0.15},
        models=(
            ModelPlan(
                _STARCODER, "starcoder2-7b@a100", replicas=6, min_replicas=1, max_replicas=12
            ),
            ModelPlan(_CODELLAMA, "codellama-7b@a100", replicas=6, min_replicas=1, max_replicas=12),
        ),
        kind_models={
            "complete": _STARCODER,
            "summarize": _STARCODER,
            "generate": _CODELLAMA,
            "translate": _CODELLAMA,
        },
        duration_s=600.0,
        quick_duration_s=60.0,
        provisioners=("cato", "queue_length", "fixed"),
        bursty=True,
        gpus=16,
    ),
    "sessions": Scenario(
        name="sessions",
        title=f"Editing sessions: {SESSIONS} developers typing through modules, "
        "6 fixed replicas with prefix caching",
        mix={"complete": 0.85, "summarize": 0.09, "generate": 0.04, "translate": 0.02},
        models=(ModelPlan(_CODELLAMA, "codellama-7b@a100", replicas=6),),
        kind_models={},
        duration_s=180.0,
        quick_duration_s=20.0,
        prefix_caching=True,
        sessions=SESSIONS,
    ),
}


# --------------------------------------------------------------------------- capacity


def call_seconds(profile: EngineProfile, prompt_tokens: float, output_tokens: float) -> float:
    """Replica-seconds one call takes in a full batch (prefill plus its share of decode)."""
    per_seq = max(prompt_tokens + output_tokens, 1.0)
    batch = max(min(profile.max_num_seqs, int(profile.kv_capacity_tokens // per_seq)), 1)
    context = prompt_tokens + output_tokens / 2
    step = profile.step_time_s(0, batch, int(batch * context))
    return prompt_tokens * profile.prefill_s_per_token + output_tokens * step / batch


def capacity_rps(scenario: Scenario, workload: Workload) -> float:
    """Saturation throughput (tasks/s) of the scenario's replicas for its mix."""
    defaults = scenario.defaults()
    profiles = {p.kind: p for p in profile_workload(scenario.task_pool(workload), defaults)}
    total = sum(scenario.mix.values())
    seconds: dict[str, float] = {}
    for kind, weight in scenario.mix.items():
        p = profiles[kind]
        model = defaults.for_kind(TaskKind(kind)).model
        plan = next(m for m in scenario.models if m.name == model)
        calls = max(p.calls_mean, 1.0)
        per_call = call_seconds(
            load_profile(plan.profile), p.prompt[2] / calls, p.output[2] / calls
        )
        seconds[model] = seconds.get(model, 0.0) + weight / total * per_call * calls
    # The mix saturates the model whose replicas have the most work per task first.
    return min(m.replicas / seconds[m.name] for m in scenario.models if m.name in seconds)


def sweep_rates(capacity: float, quick: bool) -> list[tuple[float, float]]:
    """(paper rate, simulated rate) pairs: the paper's 3.33 req/s maps to OVERLOAD x C."""
    scale = OVERLOAD * capacity / PAPER_RATES[-1]
    points = QUICK_PAPER_RATES if quick else PAPER_RATES
    return [(p, round(p * scale, 3)) for p in points]


# --------------------------------------------------------------------------- sweep


@dataclass
class Point:
    """One simulated run of a sweep."""

    policy: str
    provisioner: str
    paper_rate: float
    rate: float
    result: SimResult

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "provisioner": self.provisioner,
            "paper_rate": self.paper_rate,
            "rate": self.rate,
            **self.result.to_dict(),
        }


@dataclass
class Sweep:
    """A scenario's runs, and how its rates were chosen."""

    scenario: Scenario
    capacity_rps: float
    duration_s: float
    seed: int
    quick: bool
    points: list[Point] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "concurrency_limit": self.scenario.concurrency_limit,
            "title": self.scenario.title,
            "mix": dict(self.scenario.mix),
            "models": [vars(m) for m in self.scenario.models],
            "kind_models": dict(self.scenario.kind_models),
            "capacity_rps": self.capacity_rps,
            "overload": OVERLOAD,
            "duration_s": self.duration_s,
            "seed": self.seed,
            "quick": self.quick,
            "bursty": self.scenario.bursty,
            "points": [p.to_dict() for p in self.points],
        }


def plan_sweep(
    scenario: Scenario,
    policies: Sequence[str],
    provisioners: Sequence[str] | None,
    rates: Sequence[tuple[float, float]],
) -> list[tuple[str, str, float, float]]:
    """(policy, provisioner, paper rate, rate) of every run, in order."""
    provs = list(provisioners or scenario.provisioners)
    return [(pol, prov, p, r) for prov in provs for pol in policies for p, r in rates]


def run_sweep(
    scenario: Scenario,
    workload: Workload,
    *,
    policies: Sequence[str] = POLICIES,
    provisioners: Sequence[str] | None = None,
    quick: bool = False,
    seed: int = 0,
    duration_s: float | None = None,
    rates: Sequence[tuple[float, float]] | None = None,
    on_run: Callable[[str, float], Callable[[int], None] | None] | None = None,
) -> Sweep:
    """Simulate every (provisioner, policy, rate); all runs of a rate see the same arrivals.

    ``on_run(label, expected_tasks)`` may return a progress callback for that run.
    """
    capacity = capacity_rps(scenario, workload)
    duration = duration_s or (scenario.quick_duration_s if quick else scenario.duration_s)
    chosen = list(rates) if rates is not None else sweep_rates(capacity, quick)
    sweep = Sweep(scenario, capacity, duration, seed, quick)
    for policy, provisioner, paper, rate in plan_sweep(scenario, policies, provisioners, chosen):
        config = scenario.config(policy, provisioner, seed)
        arrivals = scenario.arrivals(rate, duration, workload, seed)
        label = f"{scenario.name} {policy}/{provisioner} @ {rate:g}/s"
        progress = on_run(label, rate * duration) if on_run is not None else None
        result = Simulator(config).run(arrivals, progress=progress, progress_every=200)
        sweep.points.append(Point(policy, provisioner, paper, rate, result))
    return sweep


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
