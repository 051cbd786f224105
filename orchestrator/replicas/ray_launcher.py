"""Replicas as Ray actors across a cluster: ``[cluster] backend = "ray"``.

One actor per replica, holding ``num_gpus`` = the model's GPUs per replica on one node
(the node the inventory picked, with a hard node affinity). The actor starts the
engine (vLLM, or the emulator for tests and demos) as its child process, bound to the
node's address on a free port, with the replica's API key in its environment; the
service alone knows the key. A dead actor or a lost node is a replica failure whose
place is gone: the manager replaces it on a node with free GPUs.

Ray is the ``.[ray]`` extra; this module imports it only when a launcher is made.
The free GPUs are the alive nodes' ``GPU`` resources less what this service's actors
hold (other Ray users' GPUs are not seen; give CATO its own cluster or nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from orchestrator.replicas.backend import Address, LaunchError, Placement, ReplicaHandle
from orchestrator.replicas.launchers import LaunchSpec, build_command, build_env, describe
from orchestrator.replicas.local import EXIT_WITH_STDIN, free_port

log = logging.getLogger(__name__)

RAY_MISSING = (
    '[cluster] backend = "ray" needs Ray, which is not installed: '
    "pip install 'cato[ray]' (or: pip install 'ray[serve]>=2.40,<3')"
)
PLACE_TIMEOUT_S = 120.0  # an actor not placed by then: no node could take it
# A watch call waits on the engine in the actor this long before it is asked again; an
# engine that exits, or an actor (or node) that dies, ends it at once.
WATCH_S = 30.0


def import_ray() -> Any:
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(RAY_MISSING) from exc
    return ray


def ray_installed() -> bool:
    try:
        import_ray()
    except RuntimeError:
        return False
    return True


@cache
def _actor_class() -> Any:
    """The replica actor, defined once Ray is importable."""
    ray = import_ray()

    class ReplicaActor:
        """Runs one replica's engine process on its node and reports on it."""

        def __init__(self, folder: str) -> None:
            self.folder = Path(folder)
            self.proc: subprocess.Popen[bytes] | None = None
            self.host = ray.util.get_node_ip_address()
            self.port = free_port(self.host)

        def where(self) -> tuple[str, int, str]:
            return self.host, self.port, ray.get_runtime_context().get_node_id()

        def start(self, spec: LaunchSpec, api_key: str | None) -> tuple[int, list[int]]:
            self.stop(10.0)
            gpus = [int(g) for g in ray.get_gpu_ids()]
            argv = build_command(spec, host=self.host, port=self.port)
            if spec.engine == "emulated" and EXIT_WITH_STDIN not in argv:
                argv.append(EXIT_WITH_STDIN)
            self.folder.mkdir(parents=True, exist_ok=True)
            env = build_env(spec, gpus, folder=self.folder)
            if api_key is not None:
                env["VLLM_API_KEY"] = api_key
            with (self.folder / "replica.log").open("ab") as logf:
                logf.write(f"\n--- start: {describe(argv)}\n".encode())
                logf.flush()
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.folder,
                    start_new_session=True,
                )
            return self.proc.pid, gpus

        def watch(self, pid: int, timeout_s: float) -> int | None:
            """The engine ``pid``'s exit code once it exits, or None after ``timeout_s``
            while it runs (called on its own thread: the actor has several)."""
            proc = self.proc
            if proc is None or proc.pid != pid:
                return -1  # stopped, or replaced by a restart in place
            try:
                return proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return None

        def stop(self, grace_s: float) -> int | None:
            proc, self.proc = self.proc, None
            if proc is None:
                return None
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait()
            _signal_group(proc.pid, signal.SIGKILL)
            if proc.stdin is not None:
                proc.stdin.close()
            return proc.returncode

    return ray.remote(ReplicaActor)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class RayInventory:
    """Free GPUs per alive node: its ``GPU`` resource less this service's grants."""

    def __init__(self, nodes: Callable[[], list[dict[str, Any]]]) -> None:
        self._nodes = nodes
        self._held: dict[str, int] = {}

    def _totals(self) -> dict[str, int]:
        return {
            n["NodeID"]: int(n.get("Resources", {}).get("GPU", 0))
            for n in self._nodes()
            if n.get("Alive")
        }

    def free_by_node(self) -> dict[str, int]:
        return {
            node: max(gpus - self._held.get(node, 0), 0) for node, gpus in self._totals().items()
        }

    @property
    def total(self) -> int:
        return sum(self._totals().values())

    @property
    def free(self) -> int:
        return sum(self.free_by_node().values())

    def allocate(self, n: int) -> Placement | None:
        """The node with the most free GPUs that has ``n`` (spreads replicas out)."""
        free = self.free_by_node()
        fits = [node for node, gpus in free.items() if gpus >= n]
        if not fits:
            return None
        node = max(fits, key=lambda k: (free[k], k))
        self._held[node] = self._held.get(node, 0) + n
        return Placement(node, (), n)

    def release(self, placement: Placement) -> None:
        held = self._held.get(placement.node, 0) - placement.count
        if held > 0:
            self._held[placement.node] = held
        else:
            self._held.pop(placement.node, None)


@dataclass(eq=False)
class RayReplica:
    """A replica's actor as the manager sees it; a poller watches the actor."""

    actor: Any
    node: str
    _pid: int | None
    _gpus: tuple[int, ...]
    returncode: int | None = None
    dead: str | None = None  # why the actor is gone
    done: asyncio.Event = field(default_factory=asyncio.Event)
    poller: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._pid  # on the actor's node

    @property
    def log_path(self) -> Path | None:
        return None  # on the actor's node, in its replica folder

    @property
    def gpus(self) -> tuple[int, ...]:
        return self._gpus

    def exited(self) -> bool:
        return self.done.is_set()

    def exit_reason(self) -> str:
        if self.dead is not None:
            return f"actor lost: {self.dead}"
        return f"process exited with {self.returncode}"

    def lost(self) -> bool:
        return self.dead is not None

    async def wait_exit(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), timeout_s)
        except TimeoutError:
            return
        if timeout_s > 0:
            await asyncio.sleep(0)  # exited: return at once, the caller checks


class RayLauncher:
    """Starts each replica as an actor on a node with free GPUs."""

    def __init__(self, *, address: str = "auto", workdir: Path, namespace: str = "cato") -> None:
        self.ray = import_ray()
        self._owns = not self.ray.is_initialized()
        if self._owns:
            kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False}
            if address != "local":
                kwargs["address"] = address
            self.ray.init(**kwargs)
        self.workdir = workdir
        self._inventory = RayInventory(self.ray.nodes)
        self._actors: dict[str, Any] = {}
        # Seconds each live replica's actor took to be placed (a worker process started
        # on its node): part of its cold start that the manager does not see.
        self.placed_in_s: dict[str, float] = {}

    @property
    def inventory(self) -> RayInventory:
        return self._inventory

    async def address(self, replica_id: str, spec: LaunchSpec, placement: Placement) -> Address:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = (
            _actor_class()
            .options(
                num_cpus=0,
                num_gpus=placement.count,
                scheduling_strategy=NodeAffinitySchedulingStrategy(placement.node, soft=False),
                max_restarts=0,
                max_concurrency=4,  # a watch call waits while stop or start runs
            )
            .remote(str(self.workdir / replica_id))
        )
        asked = time.monotonic()
        try:
            host, port, node = await asyncio.wait_for(actor.where.remote(), PLACE_TIMEOUT_S)
        except Exception as exc:
            self.ray.kill(actor)
            raise LaunchError(f"no actor for {replica_id} on node {placement.node}: {exc}") from exc
        self._actors[replica_id] = actor
        self.placed_in_s[replica_id] = time.monotonic() - asked
        return Address(f"http://{host}:{port}", port, node)

    async def start(
        self,
        replica_id: str,
        spec: LaunchSpec,
        address: Address,
        placement: Placement,
        api_key: str | None,
    ) -> ReplicaHandle:
        actor = self._actors.get(replica_id)
        if actor is None:
            raise LaunchError(f"replica {replica_id}: its actor is gone")
        try:
            pid, gpus = await actor.start.remote(spec, api_key)
        except self.ray.exceptions.RayActorError as exc:
            # Its actor or node died (a restart in place raced the node's loss): a
            # handle whose place is gone, so the manager replaces the replica elsewhere
            # instead of retrying here until it retires it.
            log.warning("replica %s: its actor is gone: %s", replica_id, type(exc).__name__)
            handle = RayReplica(actor, address.node, None, (), dead=type(exc).__name__)
            handle.done.set()
            return handle
        except Exception as exc:
            raise LaunchError(f"replica {replica_id}: cannot start: {exc}") from exc
        handle = RayReplica(actor, address.node, pid, tuple(gpus))
        handle.poller = asyncio.create_task(self._poll(handle), name=f"poll {replica_id}")
        log.info(
            "replica %s: started pid %d on node %s (%s, GPUs %s; actor placed in %.1f s)",
            replica_id,
            pid,
            address.node[:12],
            address.url,
            ",".join(map(str, gpus)) or "none",
            self.placed_in_s.get(replica_id, 0.0),
        )
        return handle

    async def _poll(self, handle: RayReplica) -> None:
        """Wait on the actor's engine: one call per ``WATCH_S`` while it runs, answered
        as soon as it exits or the actor dies (no polling of every actor)."""
        while not handle.done.is_set():
            try:
                handle.returncode = await handle.actor.watch.remote(handle.pid, WATCH_S)
            except Exception as exc:  # RayActorError: the actor or its node died
                handle.dead = type(exc).__name__
            if handle.dead is not None or handle.returncode is not None:
                handle.done.set()
                return

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        if not isinstance(handle, RayReplica):
            raise TypeError(f"not a Ray replica: {handle!r}")
        if handle.poller is not None:
            handle.poller.cancel()
        if handle.dead is None:
            try:
                await asyncio.wait_for(handle.actor.stop.remote(grace_s), grace_s + 10)
            except Exception as exc:
                log.warning("replica on node %s: stop failed: %s", handle.node[:12], exc)
        handle.done.set()

    async def release(self, replica_id: str) -> None:
        actor = self._actors.pop(replica_id, None)
        self.placed_in_s.pop(replica_id, None)
        if actor is not None:
            try:
                self.ray.kill(actor)
            except Exception as exc:  # already gone with its node
                log.debug("replica %s: kill: %s", replica_id, exc)

    def leftovers(self) -> set[int]:
        return set()  # processes live on the nodes, owned by actors

    async def close(self) -> None:
        for replica_id in list(self._actors):
            await self.release(replica_id)
        if self._owns:
            self.ray.shutdown()
