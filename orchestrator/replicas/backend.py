"""Where replicas run: the launcher interface and the GPU inventory behind it.

The manager decides *when* a replica starts, stops or is replaced; a ``Launcher``
decides *how*: a child process on this machine (``local.LocalLauncher``) or an actor
on a cluster node (``ray_launcher.RayLauncher``). The manager only sees a
``ReplicaHandle`` (its address, whether it still runs, whether its place is gone) and
a ``GpuInventory`` (free GPUs per node), never process ids or device numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.replicas.launchers import GpuSlots, LaunchSpec

LOCAL_NODE = "local"


@dataclass(frozen=True)
class Placement:
    """GPUs granted to one replica: on which node, and which ones when the inventory
    knows (a cluster may assign the device ids itself when the replica starts)."""

    node: str
    gpus: tuple[int, ...] = ()
    count: int = 0


@dataclass(frozen=True)
class Address:
    """Where a replica will listen, chosen before it starts (its URL stays the same
    across restarts in place)."""

    url: str
    port: int
    node: str = LOCAL_NODE


class LaunchError(RuntimeError):
    """A replica could not be started at all (a missing program, a refused actor)."""


class GpuInventory(Protocol):
    """Free and total GPUs, per node and in all."""

    @property
    def total(self) -> int: ...

    @property
    def free(self) -> int: ...

    def free_by_node(self) -> dict[str, int]: ...

    def allocate(self, n: int) -> Placement | None:
        """``n`` GPUs on one node, or None when no node has that many free."""
        ...

    def release(self, placement: Placement) -> None: ...


class ReplicaHandle(Protocol):
    """One started replica as its launcher sees it."""

    @property
    def pid(self) -> int | None: ...

    @property
    def log_path(self) -> Path | None: ...

    @property
    def gpus(self) -> tuple[int, ...]:
        """The device ids the replica was given (known once it started)."""
        ...

    def exited(self) -> bool:
        """Whether the replica's server is gone (its process exited, its actor died)."""
        ...

    def exit_reason(self) -> str: ...

    def lost(self) -> bool:
        """Whether its place is gone too (a dead actor, a lost node): restarting it in
        place is pointless, a replacement has to start elsewhere."""
        ...

    async def wait_exit(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, waking early when the replica exits."""
        ...


class Launcher(Protocol):
    """Starts and stops the replicas of one service."""

    @property
    def inventory(self) -> GpuInventory: ...

    async def address(self, replica_id: str, spec: LaunchSpec, placement: Placement) -> Address:
        """Reserve where a new replica will listen."""
        ...

    async def start(
        self,
        replica_id: str,
        spec: LaunchSpec,
        address: Address,
        placement: Placement,
        api_key: str | None,
    ) -> ReplicaHandle:
        """Start (or restart in place) the replica's server; ``LaunchError`` if it cannot."""
        ...

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        """Stop the replica's server, forcefully after ``grace_s``."""
        ...

    async def release(self, replica_id: str) -> None:
        """The replica is gone for good: free what ``address`` reserved."""
        ...

    def leftovers(self) -> set[int]:
        """Process groups this launcher started that still exist (local only)."""
        ...

    async def close(self) -> None:
        """Kill anything this launcher started that outlived its replica."""
        ...


class LocalInventory:
    """The GPUs of this machine (``[gpus] devices``), one node."""

    def __init__(self, devices: Sequence[int]) -> None:
        self.slots = GpuSlots(devices)

    @property
    def total(self) -> int:
        return self.slots.total

    @property
    def free(self) -> int:
        return self.slots.free

    def free_by_node(self) -> dict[str, int]:
        return {LOCAL_NODE: self.slots.free}

    def allocate(self, n: int) -> Placement | None:
        gpus = self.slots.allocate(n)
        return None if gpus is None else Placement(LOCAL_NODE, tuple(gpus), len(gpus))

    def release(self, placement: Placement) -> None:
        self.slots.release(placement.gpus)
