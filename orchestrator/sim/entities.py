"""The simulator's bookkeeping: tasks, calls, replicas and models.

Plain slotted classes (one is made per task or call, millions in a long run) that
``Simulator`` mutates; the policies never see them, only the ``ReplicaState`` each
replica carries.
"""

from __future__ import annotations

import itertools

from orchestrator.policy.provisioner import ReplicaView
from orchestrator.policy.state import Call, ReplicaState
from orchestrator.sim.config import ModelSpec
from orchestrator.sim.engine import DecodeRun, FusedEngine
from orchestrator.sim.templates import Template

PENDING, READY, DRAINING, STOPPED = "pending", "ready", "draining", "stopped"


class TaskState:
    __slots__ = ("arrival", "deadlines", "failed", "first_token", "id", "left", "tpl", "waiting")

    def __init__(self, task_id: int, tpl: Template, arrival: float) -> None:
        self.id = task_id
        self.tpl = tpl
        self.arrival = arrival
        self.waiting = list(tpl.deps_left)
        self.left = len(tpl.nodes)
        self.first_token: float | None = None
        self.failed = False
        self.deadlines: list[float] = []


class CallRun:
    """One call in the simulator: its task, node and true output length."""

    __slots__ = ("call", "node", "out", "task")

    def __init__(self, task: TaskState, node: int, out: int, call: Call) -> None:
        self.task = task
        self.node = node
        self.out = out
        self.call = call


class SimReplica:
    __slots__ = (
        "aborting",
        "engine",
        "id",
        "model",
        "phase",
        "ready_at",
        "run",
        "started_at",
        "state",
        "stepping",
        "version",
    )

    def __init__(
        self, rid: str, model: SimModel, state: ReplicaState, engine: FusedEngine, now: float
    ) -> None:
        self.id = rid
        self.model = model
        self.state = state
        self.engine = engine
        self.phase = PENDING
        self.started_at = now
        self.ready_at: float | None = None
        self.stepping = False
        self.run: DecodeRun | None = None  # the fused decode steps under way
        self.version = 0
        self.aborting: set[str] = set()  # sequences to drop when the step under way ends


class SimModel:
    __slots__ = ("count", "replicas", "series", "spec", "synced_at")

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.replicas: list[SimReplica] = []
        self.count = itertools.count()
        self.series: list[tuple[float, int, int]] = []
        self.synced_at: dict[str, float] = {}


def snapshot(model: SimModel, now: float) -> None:
    """Append the model's (ready, pending) replica counts at ``now`` if they changed."""
    ready = sum(1 for r in model.replicas if r.phase == READY)
    pending = sum(1 for r in model.replicas if r.phase == PENDING)
    series = model.series
    if series and series[-1][0] == now:
        series.pop()
    if not series or series[-1][1:] != (ready, pending):
        series.append((now, ready, pending))


def replica_view(rep: SimReplica) -> ReplicaView:
    """A replica as the provisioner sees it."""
    st = rep.state
    ready = rep.phase == READY
    return ReplicaView(
        id=rep.id,
        phase="ready" if ready else "pending",
        started_at=rep.started_at,
        ready_at=rep.ready_at,
        in_flight=len(st.in_flight),
        queued=len(st.queue),
        idle_since=st.idle_since if ready else None,
    )
