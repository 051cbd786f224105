"""Replica lifecycle: start, readiness, health, drain, failure, restart, shutdown.

PENDING -> READY -> DRAINING -> STOPPED, and FAILED from any running state. Every
replica is a child process in its own process group (so a stop reaches vLLM's workers
too) with its log in a file of its own. The orchestrator is told each transition:
only READY replicas get new work, and the queue of a replica that leaves READY is
re-routed at once. In-flight requests of a dead replica fail on their stream; the
executor retries those that had sent no token yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.replicas.launchers import GpuSlots, LaunchSpec, build_command, build_env, describe
from orchestrator.replicas.openai_client import ReplicaClient

log = logging.getLogger(__name__)


class Lifecycle(StrEnum):
    PENDING = "pending"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(eq=False)
class ManagedReplica:
    id: str
    spec: LaunchSpec
    url: str
    port: int
    gpus: list[int]
    state: Lifecycle = Lifecycle.PENDING
    proc: asyncio.subprocess.Process | None = None
    log_path: Path | None = None
    started_at: float = 0.0
    ready_at: float | None = None
    idle_since: float | None = None
    restarts: int = 0
    health_failures: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def cold_start_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.started_at


@dataclass(frozen=True)
class ManagerSettings:
    host: str = "127.0.0.1"
    ready_timeout_s: float = 900.0
    health_interval_s: float = 2.0
    health_failures_to_fail: int = 3
    drain_timeout_s: float = 60.0
    term_grace_s: float = 10.0
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 60.0
    max_restarts: int = 5


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ReplicaManager:
    """Owns the replica processes of one service and keeps the orchestrator informed."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        *,
        gpus: list[int] | None = None,
        workdir: Path,
        settings: ManagerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.orch = orchestrator
        self.slots = GpuSlots(gpus or [])
        self.workdir = workdir
        self.settings = settings or ManagerSettings()
        self.clock = clock
        self.replicas: dict[str, ManagedReplica] = {}
        self._ids = itertools.count(1)
        self._closing = False

    # -- queries ----------------------------------------------------------------

    def of_model(self, name: str, *states: Lifecycle) -> list[ManagedReplica]:
        wanted = set(states) or {Lifecycle.PENDING, Lifecycle.READY}
        return [r for r in self.replicas.values() if r.spec.name == name and r.state in wanted]

    # -- start --------------------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> ManagedReplica | None:
        """Launch one replica of ``spec``; None when no GPU slot is free for it."""
        gpus = self.slots.allocate(spec.gpus_per_replica if spec.engine == "vllm" else 0)
        if gpus is None:
            log.warning("model %s: no free GPU slot for another replica", spec.name)
            return None
        rid = f"{spec.name}-{next(self._ids)}"
        if spec.engine == "external":
            if not spec.url:
                raise ValueError(f"model {spec.name!r}: engine 'external' needs a url")
            rep = ManagedReplica(rid, spec, spec.url.rstrip("/"), 0, gpus)
        else:
            port = free_port(self.settings.host)
            rep = ManagedReplica(rid, spec, f"http://{self.settings.host}:{port}", port, gpus)
        self.replicas[rid] = rep
        self.orch.add_replica(self._replica_spec(rep), ready=False)
        await self._spawn(rep)
        rep.tasks.append(asyncio.create_task(self._supervise(rep), name=f"supervise {rid}"))
        return rep

    def _replica_spec(self, rep: ManagedReplica) -> ReplicaSpec:
        return ReplicaSpec(
            id=rep.id,
            url=rep.url,
            model=rep.spec.name,
            concurrency_limit=rep.spec.concurrency_limit,
            engine=rep.spec.engine,
            gpus=rep.gpus,
        )

    async def _spawn(self, rep: ManagedReplica) -> None:
        rep.state = Lifecycle.PENDING
        rep.started_at = self.clock()
        rep.ready_at = None
        rep.health_failures = 0
        if rep.spec.engine == "external":
            return
        argv = build_command(rep.spec, host=self.settings.host, port=rep.port)
        folder = self.workdir / rep.id
        folder.mkdir(parents=True, exist_ok=True)
        rep.log_path = folder / "replica.log"
        logf = rep.log_path.open("ab")
        logf.write(f"\n--- start: {describe(argv)}\n".encode())
        logf.flush()
        log.info(
            "replica %s: starting %s (gpus %s), log %s",
            rep.id,
            describe(argv),
            rep.gpus,
            rep.log_path,
        )
        try:
            rep.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                env=build_env(rep.spec, rep.gpus),
                cwd=folder,
                start_new_session=True,
            )
        finally:
            logf.close()

    # -- supervision ----------------------------------------------------------------

    async def _supervise(self, rep: ManagedReplica) -> None:
        client = ReplicaClient(rep.url, connect_timeout_s=2.0, read_timeout_s=5.0)
        try:
            while not self._closing and rep.state not in (Lifecycle.STOPPED,):
                if rep.state == Lifecycle.PENDING:
                    await self._await_ready(rep, client)
                elif rep.state in (Lifecycle.READY, Lifecycle.DRAINING):
                    await self._check_health(rep, client)
                    await asyncio.sleep(self.settings.health_interval_s)
                elif rep.state == Lifecycle.FAILED and not await self._restart(rep):
                    return
        finally:
            await client.close()

    async def _await_ready(self, rep: ManagedReplica, client: ReplicaClient) -> None:
        deadline = rep.started_at + self.settings.ready_timeout_s
        while self.clock() < deadline and not self._closing:
            if self._exited(rep):
                self._fail(rep, f"process exited with {_returncode(rep)} while starting")
                return
            if await client.health(timeout_s=2.0):
                with contextlib.suppress(Exception):
                    if rep.spec.name in await client.models():
                        rep.ready_at = self.clock()
                        rep.state = Lifecycle.READY
                        rep.idle_since = rep.ready_at
                        log.info("replica %s: ready after %.1f s", rep.id, rep.cold_start_s or 0.0)
                        self.orch.set_lifecycle(rep.id, "ready", rep.cold_start_s)
                        return
            await asyncio.sleep(0.2)
        if not self._closing:
            self._fail(rep, f"not ready within {self.settings.ready_timeout_s:.0f} s")

    async def _check_health(self, rep: ManagedReplica, client: ReplicaClient) -> None:
        if self._exited(rep):
            self._fail(rep, f"process exited with {_returncode(rep)}")
            return
        if await client.health(timeout_s=5.0):
            rep.health_failures = 0
            return
        rep.health_failures += 1
        if rep.health_failures >= self.settings.health_failures_to_fail:
            self._fail(rep, f"{rep.health_failures} failed health checks")

    def _exited(self, rep: ManagedReplica) -> bool:
        return rep.proc is not None and rep.proc.returncode is not None

    def _fail(self, rep: ManagedReplica, why: str) -> None:
        if rep.state in (Lifecycle.STOPPED, Lifecycle.FAILED):
            return
        log.error("replica %s failed: %s (log: %s)", rep.id, why, rep.log_path)
        rep.state = Lifecycle.FAILED
        self.orch.set_lifecycle(rep.id, "failed")

    async def _restart(self, rep: ManagedReplica) -> bool:
        await self._terminate(rep)
        if rep.restarts >= self.settings.max_restarts:
            log.error("replica %s: gave up after %d restarts", rep.id, rep.restarts)
            return False
        backoff = min(
            self.settings.restart_backoff_s * 2**rep.restarts, self.settings.restart_backoff_max_s
        )
        rep.restarts += 1
        self.orch.note_restart(rep.id)
        log.info("replica %s: restarting in %.1f s (restart %d)", rep.id, backoff, rep.restarts)
        await asyncio.sleep(backoff)
        if self._closing or rep.state == Lifecycle.STOPPED:
            return False
        self.orch.set_lifecycle(rep.id, "pending")
        await self._spawn(rep)
        return True

    # -- stop -----------------------------------------------------------------------

    async def drain(self, replica_id: str) -> None:
        """Scale down one replica: no new work, let in-flight finish, then stop it."""
        rep = self.replicas.get(replica_id)
        if rep is None or rep.state in (Lifecycle.STOPPED, Lifecycle.DRAINING):
            return
        rep.state = Lifecycle.DRAINING
        self.orch.set_lifecycle(rep.id, "draining")
        deadline = self.clock() + self.settings.drain_timeout_s
        while self.clock() < deadline and self.orch.replica_load(rep.id)[0] > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await self._stop(rep)

    async def _stop(self, rep: ManagedReplica) -> None:
        rep.state = Lifecycle.STOPPED
        current = asyncio.current_task()
        for task in rep.tasks:
            if task is not current:
                task.cancel()
        await self._terminate(rep)
        self.slots.release(rep.gpus)
        self.orch.set_lifecycle(rep.id, "stopped")
        await self.orch.remove_replica(rep.id)
        self.replicas.pop(rep.id, None)

    async def _terminate(self, rep: ManagedReplica) -> None:
        """SIGTERM the replica's process group, SIGKILL after the grace period."""
        proc = rep.proc
        if proc is None or proc.returncode is not None:
            _kill_group(proc, signal.SIGKILL)  # reap stragglers of a dead leader
            return
        _kill_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.settings.term_grace_s)
        except TimeoutError:
            log.warning("replica %s: no exit after SIGTERM, sending SIGKILL", rep.id)
            _kill_group(proc, signal.SIGKILL)
            await proc.wait()
        _kill_group(proc, signal.SIGKILL)

    async def shutdown(self) -> None:
        """Stop every replica; nothing is left running afterwards."""
        self._closing = True
        for rep in list(self.replicas.values()):
            for task in rep.tasks:
                task.cancel()
        await asyncio.gather(
            *(self._stop(r) for r in list(self.replicas.values())), return_exceptions=True
        )


def _returncode(rep: ManagedReplica) -> str:
    return "?" if rep.proc is None else str(rep.proc.returncode)


def _kill_group(proc: asyncio.subprocess.Process | None, sig: signal.Signals) -> None:
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
