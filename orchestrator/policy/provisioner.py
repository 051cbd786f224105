"""Autoscaling policies: how many replicas each model should run, from state and ``now``.

Pure: the caller (the live replica manager or the simulator) describes the replicas in a
``ClusterView``, feeds finished calls through ``observe_task`` and applies the returned
``ScaleDecision`` list. Nothing here reads a clock, sleeps or does I/O, so the same
objects run live and on a virtual clock.

- ``cato``: CATO Algorithm 2. Finished calls are counted per model in tumbling windows of
  ``window_s``. When more than ``violation_threshold`` of a window's calls missed their
  slack, for ``windows_in_row`` windows in a row, and those violations ``V`` outnumber
  the idle replicas ``I``, replicas are added in proportion to the excess::

      per_replica = calls finished in the window / READY replicas   (at least 1 replica)
      need        = ceil(scale_factor * (V - I) / per_replica)      (at least 1)
      add         = need - PENDING replicas                         (capacity on the way)

  i.e. the unabsorbed violations measured in replica-loads of work. ``add`` is bounded by
  ``max_replicas`` and the free GPUs; after adding, the streak starts again. Replicas idle
  for ``idle_timeout_s`` are released, longest idle first, down to ``min_replicas``.
- ``queue_length``: Ray Serve's default policy (``replica_queue_length_autoscaling_policy``):
  ``desired = ongoing / target_ongoing_requests`` with ``ongoing`` averaged over the
  samples of the last ``look_back_s``; moved from the running count by ``upscaling_factor`` /
  ``downscaling_factor``; clamped to [min, max]; applied only once the same direction
  was wanted for ``upscale_delay_s`` / ``downscale_delay_s`` (Ray counts control-loop
  periods; counting seconds is the same rule for any call rate).
- ``fixed``: holds ``min_replicas``; it only replaces missing replicas.

Every policy tops a model up to ``min_replicas`` and never removes below it. Free GPUs are
shared: when models want more than fits, the more urgent want is served first.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from orchestrator.config import ProvisionerConfig

Phase = Literal["pending", "ready", "draining"]
_EPS = 1e-9


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the provisioner sees it.

    ``pending``: starting (holds its GPUs, serves nothing yet); ``ready``: serving;
    ``draining``: finishing its calls before it stops (no longer counted). A replica the
    manager is restarting should be reported as ``pending``. ``idle_since`` is when its
    last call finished (None while it has calls); ``ready_at`` stands in when it never
    had one.
    """

    id: str
    phase: Phase = "ready"
    started_at: float = 0.0
    ready_at: float | None = None
    in_flight: int = 0
    queued: int = 0
    idle_since: float | None = None

    @property
    def load(self) -> int:
        return self.in_flight + self.queued

    @property
    def idle(self) -> bool:
        return self.phase == "ready" and self.load == 0

    def idle_for(self, now: float) -> float:
        """Seconds this replica has been ready with nothing to do (0 when busy)."""
        if not self.idle:
            return 0.0
        since = self.idle_since if self.idle_since is not None else self.ready_at
        return max(now - since, 0.0) if since is not None else 0.0


@dataclass(frozen=True)
class ModelView:
    """One model's replicas and limits; ``waiting`` counts calls on no replica yet."""

    name: str
    replicas: Sequence[ReplicaView]
    gpus_per_replica: int = 0
    min_replicas: int = 1
    max_replicas: int = 1
    waiting: int = 0

    @property
    def active(self) -> list[ReplicaView]:
        """Replicas that count toward the model's size: pending and ready."""
        return [r for r in self.replicas if r.phase != "draining"]

    @property
    def ready(self) -> list[ReplicaView]:
        return [r for r in self.replicas if r.phase == "ready"]

    @property
    def pending(self) -> list[ReplicaView]:
        return [r for r in self.replicas if r.phase == "pending"]

    @property
    def ongoing(self) -> int:
        """Calls queued or running on this model: what Ray Serve's policy targets."""
        return sum(r.load for r in self.active) + self.waiting


@dataclass(frozen=True)
class ClusterView:
    """All models, and the GPUs that no replica holds (pending, ready or draining)."""

    models: Sequence[ModelView]
    free_gpus: int = 0


@dataclass
class ScaleDecision:
    """Start ``add`` replicas of ``model`` and drain the replicas in ``remove``."""

    model: str
    add: int = 0
    remove: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def empty(self) -> bool:
        return self.add == 0 and not self.remove


class Provisioner(Protocol):
    """What the replica manager and the simulator call, once per ``interval_s``."""

    name: str

    def observe_task(self, model: str, violated: bool, now: float) -> None:
        """One finished call on ``model``; ``violated``: it missed its slack."""
        ...

    def decide(self, cluster: ClusterView, now: float) -> list[ScaleDecision]:
        """The changes to make now; models with nothing to do are left out."""
        ...


# ---------------------------------------------------------------- shared pieces


@dataclass
class _Want:
    """A policy's wish for one model before free GPUs are shared out."""

    model: ModelView
    add: int = 0
    remove: list[str] = field(default_factory=list)
    reason: str = ""
    urgency: tuple[float, ...] = (0.0,)
    kind: Literal["floor", "up", "down"] = "floor"


def _floor_want(model: ModelView) -> _Want | None:
    """Top up to min_replicas, or start one replica for calls waiting on none."""
    active = len(model.active)
    if active < model.min_replicas:
        return _Want(
            model,
            add=model.min_replicas - active,
            reason=f"{active} replicas, below min_replicas {model.min_replicas}",
            urgency=(3.0,),
        )
    if active == 0 and model.waiting > 0 and model.max_replicas > 0:
        return _Want(
            model, add=1, reason=f"{model.waiting} calls wait on no replica", urgency=(3.0,)
        )
    return None


def _room(model: ModelView) -> int:
    return max(model.max_replicas - len(model.active), 0)


def _removal_order(model: ModelView, now: float) -> list[ReplicaView]:
    """Pending replicas first (newest first), then idle ones (longest idle), then busy."""
    pending = sorted(model.pending, key=lambda r: -r.started_at)
    idle = sorted((r for r in model.ready if r.idle), key=lambda r: -r.idle_for(now))
    busy = sorted((r for r in model.ready if not r.idle), key=lambda r: r.load)
    return pending + idle + busy


def _grant(wants: Iterable[_Want], free_gpus: int) -> list[ScaleDecision]:
    """Share the free GPUs out, most urgent want first, and drop empty decisions."""
    budget = free_gpus
    decisions: list[ScaleDecision] = []
    by_name = sorted(wants, key=lambda w: w.model.name)
    for want in sorted(by_name, key=lambda w: w.urgency, reverse=True):
        add, reason = want.add, want.reason
        per = want.model.gpus_per_replica
        if add > 0 and per > 0:
            fits = max(budget, 0) // per
            if fits < add:
                reason += f"; {add} wanted, {fits} fit in {budget} free GPUs"
                add = fits
            budget -= add * per
        decision = ScaleDecision(want.model.name, add=add, remove=list(want.remove), reason=reason)
        if not decision.empty:
            decisions.append(decision)
    return decisions


# ---------------------------------------------------------------- CATO Algorithm 2


@dataclass
class ViolationWindow:
    """Tumbling windows of finished calls for one model, and the streak of bad ones.

    A window is bad when more than ``threshold`` of its calls violated their slack; an
    empty window is not bad. ``closed`` counts the windows closed so far, so a policy can
    judge each closed window exactly once.
    """

    window_s: float
    threshold: float
    start: float | None = None
    total: int = 0
    violated: int = 0
    streak: int = 0
    closed: int = 0
    last_total: int = 0
    last_violated: int = 0

    def roll(self, now: float) -> None:
        """Close every window that ended by ``now``."""
        if self.start is None:
            self.start = now
            return
        if now < self.start + self.window_s:
            return
        self._close(self.total, self.violated)
        self.start += self.window_s
        skipped = math.floor((now - self.start) / self.window_s)
        if skipped > 0:  # windows without a single call
            self._close(0, 0)
            self.closed += skipped - 1
            self.start += skipped * self.window_s

    def _close(self, total: int, violated: int) -> None:
        bad = total > 0 and violated / total > self.threshold
        self.streak = self.streak + 1 if bad else 0
        self.last_total, self.last_violated = total, violated
        self.total = self.violated = 0
        self.closed += 1

    def record(self, violated: bool, now: float) -> None:
        self.roll(now)
        self.total += 1
        self.violated += int(violated)


class CatoProvisioner:
    """CATO Algorithm 2: scale up on sustained slack violations, release idle replicas."""

    name = "cato"

    def __init__(self, config: ProvisionerConfig | None = None) -> None:
        self.config = config or ProvisionerConfig(policy="cato")
        self.windows: dict[str, ViolationWindow] = {}
        self._judged: dict[str, int] = {}

    def window(self, model: str) -> ViolationWindow:
        w = self.windows.get(model)
        if w is None:
            w = ViolationWindow(self.config.window_s, self.config.violation_threshold)
            self.windows[model] = w
        return w

    def observe_task(self, model: str, violated: bool, now: float) -> None:
        self.window(model).record(violated, now)

    def decide(self, cluster: ClusterView, now: float) -> list[ScaleDecision]:
        wants: dict[str, _Want] = {}
        for model in cluster.models:
            want = self._want(model, now)
            if want is not None:
                wants[model.name] = want
        decisions = _grant(wants.values(), cluster.free_gpus)
        for d in decisions:
            if d.add > 0 and wants[d.model].kind == "up":
                self.windows[d.model].streak = 0  # the next scale-up needs a new streak
        return decisions

    def _want(self, model: ModelView, now: float) -> _Want | None:
        w = self.window(model.name)
        w.roll(now)
        fresh = w.closed > self._judged.get(model.name, 0)
        self._judged[model.name] = w.closed
        floor = _floor_want(model)
        if floor is not None:
            return floor
        if fresh and w.streak >= self.config.windows_in_row:
            up = self._scale_up(model, w)
            if up is not None:
                return up
        return self._release_idle(model, now)

    def _scale_up(self, model: ModelView, w: ViolationWindow) -> _Want | None:
        violations = w.last_violated
        idle = sum(1 for r in model.ready if r.idle)
        if violations <= idle:
            return None
        per_replica = w.last_total / max(len(model.ready), 1)
        need = max(
            math.ceil(self.config.scale_factor * (violations - idle) / per_replica - _EPS), 1
        )
        pending = len(model.pending)
        add = min(need - pending, _room(model))
        if add <= 0:
            return None
        share = violations / w.last_total
        reason = (
            f"{violations}/{w.last_total} calls ({share:.0%}) violated their slack for "
            f"{self.config.windows_in_row}+ windows, {idle} idle; need {need}, {pending} pending"
        )
        return _Want(model, add=add, reason=reason, urgency=(1.0, violations - idle), kind="up")

    def _release_idle(self, model: ModelView, now: float) -> _Want | None:
        spare = len(model.active) - model.min_replicas
        timeout = self.config.idle_timeout_s
        idle = [r for r in model.ready if r.idle and r.idle_for(now) >= timeout]
        if spare <= 0 or not idle:
            return None
        idle.sort(key=lambda r: -r.idle_for(now))
        remove = [r.id for r in idle[:spare]]
        reason = f"{len(remove)} replicas idle >= {timeout:g} s"
        return _Want(model, remove=remove, reason=reason, kind="down")


# ---------------------------------------------------------------- baselines


class FixedProvisioner:
    """Never scales: keeps each model at ``min_replicas`` (replacing missing replicas)."""

    name = "fixed"

    def __init__(self, config: ProvisionerConfig | None = None) -> None:
        self.config = config or ProvisionerConfig(policy="fixed")

    def observe_task(self, model: str, violated: bool, now: float) -> None:
        return None

    def decide(self, cluster: ClusterView, now: float) -> list[ScaleDecision]:
        wants = [w for m in cluster.models if (w := _fixed_want(m)) is not None]
        return _grant(wants, cluster.free_gpus)


def _fixed_want(model: ModelView) -> _Want | None:
    active = len(model.active)
    if active >= model.min_replicas:
        return None
    return _Want(
        model, add=model.min_replicas - active, reason="below min_replicas", urgency=(3.0,)
    )


@dataclass
class _QueueState:
    """Ongoing-request samples over the look-back period and the pending direction."""

    samples: deque[tuple[float, float]] = field(default_factory=deque)
    direction: int = 0
    since: float = 0.0


class QueueLengthProvisioner:
    """Ray Serve's request-based autoscaler: replicas = ongoing / target_ongoing_requests."""

    name = "queue_length"

    def __init__(self, config: ProvisionerConfig | None = None) -> None:
        self.config = config or ProvisionerConfig(policy="queue_length")
        self.states: dict[str, _QueueState] = {}

    def observe_task(self, model: str, violated: bool, now: float) -> None:
        return None

    def decide(self, cluster: ClusterView, now: float) -> list[ScaleDecision]:
        wants: list[_Want] = []
        for model in cluster.models:
            want = self._want(model, now)
            if want is not None:
                wants.append(want)
        return _grant(wants, cluster.free_gpus)

    def average_ongoing(self, model: ModelView, now: float) -> float:
        """Record this period's ongoing count; the mean of the samples in the look-back.

        As Ray's ``InMemoryMetricsStore.window_average``: every sample taken after
        ``now - look_back_s`` counts once (the caller samples at a fixed interval).
        """
        samples = self.states.setdefault(model.name, _QueueState()).samples
        samples.append((now, float(model.ongoing)))
        start = now - self.config.look_back_s
        while samples and samples[0][0] <= start:
            samples.popleft()
        return sum(value for _, value in samples) / len(samples) if samples else 0.0

    def _want(self, model: ModelView, now: float) -> _Want | None:
        ongoing = self.average_ongoing(model, now)
        floor = _floor_want(model)
        if floor is not None:
            return floor
        target = len(model.active)
        running = len(model.ready)
        if running == 0:  # Ray's cold-start path: starting replicas are the plan
            return None
        desired = ongoing / self.config.target_ongoing_requests
        scaled = self._apply_factors(desired, running)
        bounded = max(model.min_replicas, min(model.max_replicas, scaled))
        decision = self._apply_delay(model, bounded, target, now)
        reason = (
            f"ongoing {ongoing:.2f} (avg), target {self.config.target_ongoing_requests:g}/replica"
        )
        if decision > target:
            add = decision - target
            return _Want(model, add=add, reason=reason, urgency=(1.0, ongoing), kind="up")
        if decision < target:
            remove = [r.id for r in _removal_order(model, now)[: target - decision]]
            return _Want(model, remove=remove, reason=reason, kind="down")
        return None

    def _apply_factors(self, desired: float, running: int) -> int:
        """Ray's ``_apply_scaling_factors``: move part of the way, never get stuck going down."""
        delta = desired - running
        factor = self.config.upscaling_factor if delta > 0 else self.config.downscaling_factor
        scaled = math.ceil(running + factor * delta - _EPS)
        if math.ceil(desired - _EPS) < running and scaled == running:
            scaled -= 1
        return scaled

    def _apply_delay(self, model: ModelView, desired: int, target: int, now: float) -> int:
        """Ray's ``_apply_delay_logic`` with the consecutive periods counted in seconds."""
        state = self.states.setdefault(model.name, _QueueState())
        direction = (desired > target) - (desired < target)
        if direction == 0:
            state.direction = 0
            return target
        if direction != state.direction:
            state.direction, state.since = direction, now
        if direction > 0:
            delay = self.config.upscale_delay_s
        else:
            delay = self.config.downscale_delay_s
            desired = max(1, desired) if target > 1 else desired
        if now - state.since >= delay - _EPS:
            state.direction = 0
            return desired
        return target


# ---------------------------------------------------------------- registry

PROVISIONERS: dict[str, Callable[[ProvisionerConfig], Provisioner]] = {
    "cato": CatoProvisioner,
    "queue_length": QueueLengthProvisioner,
    "fixed": FixedProvisioner,
}


def make_provisioner(
    name: str | None = None, config: ProvisionerConfig | None = None
) -> Provisioner:
    """The provisioner called ``name`` (default: ``config.policy``) with ``config``'s knobs."""
    config = config or ProvisionerConfig()
    chosen = name or config.policy
    factory = PROVISIONERS.get(chosen)
    if factory is None:
        known = ", ".join(sorted(PROVISIONERS))
        raise ValueError(f"unknown provisioner {chosen!r} (known: {known})")
    return factory(config)
