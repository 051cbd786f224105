"""What a simulation runs: the served models, the run's settings, and the tasks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.api import TaskRequest
from orchestrator.config import ProvisionerConfig
from orchestrator.engine_model import EngineProfile, Policy
from orchestrator.graphs import DEFAULTS, Node, TaskDefaults
from orchestrator.graphs import approx_tokens as _approx_tokens
from orchestrator.policy.admission import resolve_admission
from orchestrator.policy.state import Rates

OutputModel = Literal["workload", "emulator"]


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its engine profile and how many replicas it may run.

    ``replicas`` start READY at time zero; the provisioner keeps the count within
    ``min_replicas`` .. ``max_replicas`` (defaults: ``replicas`` for both).
    ``prefix_caching``: the engines reuse cached prompt blocks (vLLM's
    ``--enable-prefix-caching``), and calls carry their prompts' block hashes.
    """

    name: str
    profile: EngineProfile
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    gpus_per_replica: int = 1
    concurrency_limit: int | None = None
    rates: Rates | None = None
    prefix_caching: bool = False

    @property
    def floor(self) -> int:
        return self.replicas if self.min_replicas is None else self.min_replicas

    @property
    def ceiling(self) -> int:
        top = self.replicas if self.max_replicas is None else self.max_replicas
        return max(top, self.floor, self.replicas)

    @property
    def limit(self) -> int:
        return self.concurrency_limit or self.profile.max_num_seqs


@dataclass(frozen=True)
class SimConfig:
    """Everything a run depends on besides its arrivals."""

    models: tuple[ModelSpec, ...]
    defaults: TaskDefaults = DEFAULTS
    scheduler: str = "cato"
    # Keywords of ``make_scheduler`` beyond ``seed`` (see ``sim.variants``).
    scheduler_options: Mapping[str, Any] = field(default_factory=dict)
    provisioner: str = "fixed"
    provisioner_config: ProvisionerConfig = field(default_factory=ProvisionerConfig)
    gpus: int | None = None
    seed: int = 0
    engine_policy: Policy = "priority"
    send_priority: bool = True
    # Send the engine each call's kind priority (``KIND_PRIORITY``) instead of the one
    # the scheduler routed it with (a lever of ``sim.variants``: ``engine_priority=kind``).
    kind_priority: bool = False
    outputs: OutputModel = "workload"
    emulator_seed: int = 0
    sync_s: float = 0.25
    fuse_decode: bool = True
    max_fused_steps: int = 1024
    profiler_refresh_s: float = 1.0
    drain_s: float = 600.0
    warmup_s: float = 0.0
    local_s: Mapping[str, float] = field(default_factory=dict)
    # Engine admission (``policy.admission``): ``none`` fills a replica up to its
    # concurrency limit; ``slack`` and ``slack_net`` hold back calls that would make
    # running ones late; ``auto``: the scheduler's default (``slack_net`` for cato).
    admission: str = "auto"
    admission_margin_s: float = 0.0
    # Options of the slack admissions (``harm_floor``, ``e2e_floor``, ``prefill_share``:
    # see ``SlackAdmission``); those not given keep their defaults.
    admission_options: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("simulate at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in {names}")
        if self.sync_s < 0 or self.profiler_refresh_s < 0 or self.drain_s < 0:
            raise ValueError("sync_s, profiler_refresh_s and drain_s must be >= 0")
        resolve_admission(self.admission, self.scheduler)  # a clear error if unknown

    @property
    def total_gpus(self) -> int:
        if self.gpus is not None:
            return self.gpus
        return sum(m.ceiling * m.gpus_per_replica for m in self.models)


@dataclass(frozen=True, eq=False)
class SimTask:
    """A task to simulate: the request, and how long the model's answers really are.

    ``output_tokens`` is what a single-call task generates; a task with several calls
    (``translate``) generates ``output_ratio`` times each chunk's tokens. Without either,
    a call generates what the graph expected. ``key`` names the request for caching (the
    same key must always mean the same request).
    """

    key: str
    request: TaskRequest
    output_tokens: int | None = None
    output_ratio: float | None = None

    def output_for(self, node: Node, llm_nodes: int) -> int:
        if self.output_tokens is not None and llm_nodes == 1:
            n = self.output_tokens
        elif self.output_ratio is not None:
            n = math.ceil(_approx_tokens(node.text or node.prompt) * self.output_ratio)
        else:
            n = node.expected_output_tokens
        return max(1, min(n, node.max_tokens))
