"""A running orchestrator built from a ``cato.toml``: replicas, scheduler, autoscaler.

``cato serve`` puts the HTTP layer in front of a ``Runtime``; the language server's
embedded mode runs one in its own event loop. The control loop here is the only place
that turns the provisioner's pure decisions into process starts and drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from orchestrator.api import Status, TaskKind
from orchestrator.config import CatoConfig, ConfigError, ModelConfig, load_config
from orchestrator.engine_model import EngineProfile, load_profile, sped_up
from orchestrator.executor import Orchestrator
from orchestrator.graphs import BUILTIN_KINDS, KindDefaults, TaskDefaults
from orchestrator.policy.admission import Admission, make_admission, resolve_admission
from orchestrator.policy.provisioner import ClusterView, ModelView, ReplicaView, make_provisioner
from orchestrator.policy.scheduler import make_scheduler
from orchestrator.policy.state import Call, Rates
from orchestrator.replicas.cluster import make_launcher
from orchestrator.replicas.launchers import LaunchSpec
from orchestrator.replicas.manager import (
    Lifecycle,
    ManagedReplica,
    ManagerSettings,
    ReplicaManager,
)

log = logging.getLogger(__name__)

# A model's prefix cache where no engine profile says more: vLLM's block size, and the
# KV blocks of a 7B model on one 80 GB GPU (the codellama-7b@a100 profile's).
DEFAULT_BLOCK_TOKENS = 16
DEFAULT_KV_BLOCKS = 7200


def task_defaults(config: CatoConfig) -> TaskDefaults:
    """The graphs' per-kind defaults with the config's models, SLAs and budgets."""
    kinds: dict[TaskKind, KindDefaults] = {}
    for kind, builtin in BUILTIN_KINDS.items():
        task = config.task(kind)
        kinds[kind] = KindDefaults(
            model=task.model or config.models[0].name,
            sla=task.sla,
            max_tokens=task.max_tokens,
            expected_output_ratio=builtin.expected_output_ratio,
            stop=builtin.stop,
            on_late=task.on_late,
        )
    return TaskDefaults(kinds=kinds)


def launch_spec(model: ModelConfig, environ: Mapping[str, str] | None = None) -> LaunchSpec:
    """The manager's view of one ``[[models]]`` entry; an external server's bearer token
    is read here from the variable ``api_key_env`` names (a clear error when unset)."""
    api_key = None
    if model.api_key_env is not None:
        api_key = (os.environ if environ is None else environ).get(model.api_key_env)
        if not api_key:
            raise ConfigError(
                "(environment)",
                [
                    f"models {model.name!r}: api_key_env names {model.api_key_env!r}, but "
                    "that variable is not set (export the external server's bearer token)"
                ],
            )
    limit = model.effective_concurrency_limit()
    if limit is None and model.engine == "emulated":
        limit = load_profile(model.profile).max_num_seqs
    extra = list(model.vllm_args)
    if model.engine == "emulated":  # the emulator caches nothing unless asked
        extra.append(
            "--enable-prefix-caching" if model.prefix_cache else "--no-enable-prefix-caching"
        )
    elif (
        model.engine == "vllm"
        and not model.prefix_cache
        and "--no-enable-prefix-caching" not in extra
    ):
        extra.append("--no-enable-prefix-caching")  # vLLM V1 caches by default
    return LaunchSpec(
        name=model.name,
        engine=model.engine,
        model=model.model,
        url=model.url,
        urls=tuple(model.urls or ()),
        gpus_per_replica=model.gpus,
        concurrency_limit=limit or 16,
        extra_args=tuple(extra),
        profile=model.profile,
        speed=model.speed,
        max_model_len=model.max_model_len,
        entrypoint=model.entrypoint,
        priority=model.priority,
        api_key=api_key,
    )


def admission_policy(config: CatoConfig) -> Admission | None:
    """``[scheduler] admission`` resolved for the scheduler, with the engine profiles of
    the models that have one: step costs the slack admission uses until it can learn
    them from the replicas' rates."""
    name = resolve_admission(config.scheduler.admission, config.scheduler.policy)
    if name == "none":
        return None
    profiles = {m.name: p for m in config.models if (p := engine_profile(m)) is not None}
    return make_admission(name, profiles=profiles)


def engine_profile(model: ModelConfig) -> EngineProfile | None:
    """The engine profile a model's replicas follow, as far as the service knows: always
    for emulated replicas (they run it, sped up), else the ``profile`` set in cato.toml."""
    if model.engine == "emulated":
        return sped_up(load_profile(model.profile), model.speed)
    if "profile" in model.model_fields_set:
        return load_profile(model.profile)
    return None


def prefix_cache(model: ModelConfig) -> tuple[int, int] | None:
    """(tokens per KV block, KV blocks per replica) of a model whose engines cache
    prompt prefixes, from its engine profile where it has one, else vLLM's block size
    and the KV cache of a 7B model on one 80 GB GPU; None where they cache nothing."""
    if not model.prefix_cache:
        return None
    profile = engine_profile(model)
    if profile is None:
        return DEFAULT_BLOCK_TOKENS, DEFAULT_KV_BLOCKS
    return profile.block_size, profile.num_kv_blocks


def prior_rates(model: ModelConfig) -> Rates:
    """The scheduler's starting point for a model before it has measured anything: its
    engine profile where one applies, else the generic default."""
    profile = engine_profile(model)
    return Rates() if profile is None else Rates.from_profile(profile)


class Runtime:
    """An orchestrator with managed replicas and an autoscaling control loop."""

    def __init__(
        self,
        config: CatoConfig,
        *,
        workdir: Path | None = None,
        settings: ManagerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        # A folder made here is removed by ``stop``; one the caller names is kept.
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="cato-replicas-"))
        self.orchestrator = Orchestrator(
            defaults=task_defaults(config),
            scheduler=make_scheduler(
                config.scheduler.policy, seed=config.scheduler.seed, **config.scheduler.options()
            ),
            clock=clock,
            admission=admission_policy(config),
        )
        for model in config.models:
            self.orchestrator.set_prior(model.name, prior_rates(model))
            if (cache := prefix_cache(model)) is not None:
                self.orchestrator.set_prefix_cache(model.name, *cache)
        self.orchestrator.on_call_done = self._on_call_done
        settings = settings or ManagerSettings()
        self.manager = ReplicaManager(
            self.orchestrator,
            workdir=self.workdir,
            settings=settings,
            clock=clock,
            launcher=make_launcher(
                config.cluster,
                gpus=list(config.gpus.devices),
                workdir=self.workdir,
                host=settings.host,
            ),
        )
        self.provisioner = make_provisioner(config=config.provisioner)
        self.specs = {m.name: launch_spec(m) for m in config.models}
        self._loop_task: asyncio.Task[None] | None = None
        self._drains: set[asyncio.Task[None]] = set()
        # (time on ``clock``, model, replicas before, after, the provisioner's reason)
        self.scale_events: list[tuple[float, str, int, int, str]] = []

    @classmethod
    def from_config_path(cls, path: str | os.PathLike[str] | None) -> Runtime:
        return cls(load_config(path))

    async def start(self, *, wait_ready_s: float | None = 600.0) -> None:
        """Start every model's minimum replicas; with ``wait_ready_s``, wait as ``wait_ready``."""
        for model in self.config.models:
            first = model.initial_replicas or model.min_replicas
            # An external model has a replica per pool URL at least (the pool is fixed).
            least = len(model.pool) if model.engine == "external" else 0
            for _ in range(max(first, least)):
                await self.manager.start(self.specs[model.name])
        self._loop_task = asyncio.create_task(self._control_loop(), name="cato autoscaler")
        if wait_ready_s:
            await self.wait_ready(wait_ready_s)

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until every model has a READY replica and none is still on its first start.

        Replicas started together come up together; one that fails to start does not
        hold the others back (it is restarted in the background).
        """
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            if all(self._model_ready(m) for m in self.config.models):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(
            f"replicas not ready within {timeout_s:.0f} s; see their logs in {self.workdir}"
        )

    async def first_ready(self, timeout_s: float, poll_s: float = 0.01) -> None:
        """Wait until every model has a READY replica (a model kept at zero replicas need
        not): one is enough to serve, the model's other replicas join as they become
        ready. What an editor waits for; ``wait_ready`` waits for every first start.

        TimeoutError after ``timeout_s``, naming the models still waiting and the logs."""
        deadline = self.clock() + timeout_s
        while waiting := [m.name for m in self.config.models if not self._model_serving(m)]:
            if self.clock() >= deadline:
                raise TimeoutError(
                    f"no replica of {', '.join(waiting)} ready within {timeout_s:g} s; "
                    f"see their logs in {self.workdir}"
                )
            await asyncio.sleep(poll_s)

    def _model_serving(self, model: ModelConfig) -> bool:
        """A READY replica, or none needed: no minimum and none on its first start."""
        replicas = self.manager.of_model(model.name, Lifecycle.PENDING, Lifecycle.READY)
        if any(r.state is Lifecycle.READY for r in replicas):
            return True
        first_start = any(r.state is Lifecycle.PENDING and r.restarts == 0 for r in replicas)
        return model.min_replicas == 0 and not first_start

    def _model_ready(self, model: ModelConfig) -> bool:
        replicas = self.manager.of_model(model.name, Lifecycle.PENDING, Lifecycle.READY)
        first_start = any(r.state is Lifecycle.PENDING and r.restarts == 0 for r in replicas)
        has_ready = any(r.state is Lifecycle.READY for r in replicas)
        return not first_start and (has_ready or model.min_replicas == 0)

    async def stop(self) -> None:
        """Stop autoscaling, then every replica; no replica process outlives this."""
        tasks = [t for t in (self._loop_task, *self._drains) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        await self.manager.shutdown()
        await self.orchestrator.close()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def status(self) -> Status:
        """The orchestrator's status plus what only the runtime knows (GPUs, provisioner)."""
        return self.orchestrator.status().model_copy(
            update={
                "provisioner": self.provisioner.name,
                "gpus_total": self.manager.slots.total,
                "gpus_free": self.manager.slots.free,
            }
        )

    # -- autoscaling ------------------------------------------------------------

    def _on_call_done(self, call: Call, violated: bool, now: float) -> None:
        self.provisioner.observe_task(call.model, violated, now)

    def cluster_view(self, now: float) -> ClusterView:
        models = []
        for m in self.config.models:
            views = [
                self._replica_view(r)
                for r in self.manager.of_model(
                    m.name, Lifecycle.PENDING, Lifecycle.READY, Lifecycle.FAILED
                )
            ]
            models.append(
                ModelView(
                    name=m.name,
                    replicas=tuple(views),
                    gpus_per_replica=m.gpus,
                    min_replicas=m.min_replicas,
                    max_replicas=m.replicas_max,
                )
            )
        return ClusterView(models=tuple(models), free_gpus=self.manager.slots.free)

    def _replica_view(self, rep: ManagedReplica) -> ReplicaView:
        in_flight, queued = self.orchestrator.replica_load(rep.id)
        idle_since = self.orchestrator.idle_since(rep.id)
        ready = rep.state == Lifecycle.READY
        return ReplicaView(
            id=rep.id,
            phase="ready" if ready else "pending",
            started_at=rep.started_at,
            ready_at=rep.ready_at,
            in_flight=in_flight,
            queued=queued,
            idle_since=idle_since if ready else None,
        )

    async def _control_loop(self) -> None:
        interval = self.config.provisioner.interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.autoscale_once()
            except Exception:
                log.exception("autoscaler step failed")

    async def autoscale_once(self) -> None:
        now = self.clock()
        for decision in self.provisioner.decide(self.cluster_view(now), now):
            before = len(self.manager.of_model(decision.model))
            # A start is refused while no GPU is free or the model waits out the backoff
            # after a retired replica; only what happened is logged and recorded.
            started = 0
            for _ in range(decision.add):
                started += await self.manager.start(self.specs[decision.model]) is not None
            if not started and not decision.remove:
                continue
            log.info(
                "autoscaler: %s +%d -%d (%s)",
                decision.model,
                started,
                len(decision.remove),
                decision.reason,
            )
            for rid in decision.remove:
                task = asyncio.create_task(self.manager.drain(rid), name=f"drain {rid}")
                self._drains.add(task)
                task.add_done_callback(self._drains.discard)
            after = before + started - len(decision.remove)
            self.scale_events.append((now, decision.model, before, after, decision.reason))
