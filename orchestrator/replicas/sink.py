"""What the replica manager tells the service about its replicas.

The manager sits below the executor: it announces replicas (a ``ReplicaSpec``) and
their lifecycle to a ``LifecycleSink`` and asks it how busy a replica is, so that it
never imports the executor. ``Orchestrator`` is the sink the service uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.config import PriorityMode
from orchestrator.policy.state import Rates


@dataclass
class ReplicaSpec:
    """Where a replica is and what it serves; the manager fills these in later."""

    id: str
    url: str
    model: str
    concurrency_limit: int = 16
    served_name: str | None = None
    rates: Rates | None = None
    priority: PriorityMode = "auto"  # what the client does with call priorities
    engine: str = "external"
    gpus: list[int] = field(default_factory=list)
    api_key: str | None = None  # the bearer token the replica wants, if any


class LifecycleSink(Protocol):
    """Told every replica transition; only READY replicas get new work."""

    def add_replica(self, spec: ReplicaSpec, *, ready: bool = True) -> None: ...

    def set_lifecycle(
        self, replica_id: str, lifecycle: str, cold_start_s: float | None = None
    ) -> None: ...

    def note_healthy(self, replica_id: str) -> None: ...

    def note_restart(self, replica_id: str) -> None: ...

    async def remove_replica(self, replica_id: str) -> None: ...

    def replica_load(self, replica_id: str) -> tuple[int, int]:
        """(in flight, queued) of one replica."""
        ...
