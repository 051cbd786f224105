"""Replica lifecycle: start, readiness, health, drain, failure, restart, shutdown.

PENDING -> READY -> DRAINING -> STOPPED, and FAILED from PENDING or READY. A
``Launcher`` runs each replica (a local process group by default, see ``local``; an
actor on a cluster node with ``ray_launcher``) and a ``GpuInventory`` hands out its
GPUs; the manager decides when. The service (a ``LifecycleSink``) is told each transition:
only READY replicas get new work, and the queue of a replica that leaves READY is
re-routed at once. In-flight requests of a dead replica fail on their stream; the
executor retries those that had sent no token yet.

Supervision heals instead of giving up for good. A FAILED replica is restarted with an
exponential backoff; its budget is ``max_restarts`` within ``restart_window_s``, and
``healthy_reset_s`` of READY time forgives the restarts before it (a replica killed
now and then is not a crash loop). A replica that exhausts its budget is retired: its
process group is stopped, its GPUs are freed and it leaves the orchestrator, so the
provisioner sees the capacity as missing and tops it up with a fresh replica (new
port, new process). Until a replacement may start, ``start`` refuses that model for
``replace_backoff_s``, doubled for each retirement in a row and reset once a replica
of the model stays healthy. External replicas (a URL, no process) are never retired:
a fresh one would be the same URL, so they are retried for as long as they fail. A
replica whose place is gone (its actor died, its node left the cluster) is not
restarted in place either: it is forgotten and a fresh one starts where GPUs are free.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from orchestrator.replicas.backend import (
    Address,
    GpuInventory,
    Launcher,
    LaunchError,
    Placement,
    ReplicaHandle,
)
from orchestrator.replicas.launchers import LaunchSpec
from orchestrator.replicas.local import EXIT_WITH_STDIN, LocalLauncher, LocalProcess, free_port
from orchestrator.replicas.openai_client import ReplicaClient, ReplicaHTTPError
from orchestrator.replicas.sink import LifecycleSink, ReplicaSpec

__all__ = [
    "EXIT_WITH_STDIN",
    "Lifecycle",
    "ManagedReplica",
    "ManagerSettings",
    "ReplicaManager",
    "Transition",
    "free_port",
    "ready_polls",
]

log = logging.getLogger(__name__)


class Lifecycle(StrEnum):
    PENDING = "pending"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class Transition:
    """One lifecycle change, kept so that operators (and tests) can see the history."""

    at: float
    replica_id: str
    state: Lifecycle
    why: str = ""


@dataclass(eq=False)
class ManagedReplica:
    id: str
    spec: LaunchSpec
    url: str
    port: int
    gpus: list[int]
    placement: Placement | None = None
    state: Lifecycle = Lifecycle.PENDING
    handle: ReplicaHandle | None = None  # None for external replicas (nothing launched)
    started_at: float = 0.0
    ready_at: float | None = None
    restarts: int = 0
    restart_times: deque[float] = field(default_factory=deque)
    gave_up: bool = False
    health_failures: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # The bearer token this replica's server wants (VLLM_API_KEY), known only here.
    api_key: str | None = None
    warned_auth: bool = False  # a 401/403 on readiness was logged

    @property
    def cold_start_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.started_at

    @property
    def pid(self) -> int | None:
        return None if self.handle is None else self.handle.pid

    @property
    def log_path(self) -> Path | None:
        return None if self.handle is None else self.handle.log_path

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        """The local process, for a replica the local launcher started."""
        return self.handle.proc if isinstance(self.handle, LocalProcess) else None

    @property
    def running(self) -> bool:
        """A server that has not exited yet (external replicas have none)."""
        return self.handle is not None and not self.handle.exited()


@dataclass(frozen=True)
class ManagerSettings:
    host: str = "127.0.0.1"
    ready_timeout_s: float = 900.0
    # Readiness polls start ``ready_poll_first_s`` apart and double up to ``ready_poll_s``:
    # a replica that starts in a second or two (an emulator) is seen ready within a few
    # milliseconds, one that takes minutes (vLLM) is not polled harder for it.
    ready_poll_s: float = 0.1
    ready_poll_first_s: float = 0.01
    health_interval_s: float = 2.0
    health_timeout_s: float = 5.0
    health_failures_to_fail: int = 3
    drain_timeout_s: float = 60.0
    term_grace_s: float = 10.0
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    # At most this many restarts within restart_window_s before a replica is retired.
    max_restarts: int = 5
    restart_window_s: float = 600.0
    # READY this long forgives a replica's earlier restarts (and its model's retirements):
    # a process that serves for a while and is then killed is not crash-looping, and its
    # next restart need not wait longer than the first.
    healthy_reset_s: float = 10.0
    # A retired replica's replacement waits this long, doubled per retirement in a row.
    replace_backoff_s: float = 30.0
    replace_backoff_max_s: float = 300.0


class ReplicaManager:
    """Owns the replicas of one service and keeps the service (its sink) informed.

    Without a ``launcher``, replicas are local processes on ``gpus`` (device ids)."""

    def __init__(
        self,
        orchestrator: LifecycleSink,
        *,
        gpus: list[int] | None = None,
        workdir: Path,
        settings: ManagerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        launcher: Launcher | None = None,
    ) -> None:
        self.orch = orchestrator
        self.workdir = workdir
        self.settings = settings or ManagerSettings()
        self.launcher: Launcher = launcher or LocalLauncher(
            gpus=gpus or [], workdir=workdir, host=self.settings.host
        )
        self.clock = clock
        self.replicas: dict[str, ManagedReplica] = {}
        self.transitions: deque[Transition] = deque(maxlen=1000)
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._ids = itertools.count(1)
        self._closing = False
        # Per model: no new replica before this time, and retirements in a row.
        self._hold_until: dict[str, float] = {}
        self._retired_in_row: dict[str, int] = {}

    # -- queries ----------------------------------------------------------------

    def of_model(self, name: str, *states: Lifecycle) -> list[ManagedReplica]:
        wanted = set(states) or {Lifecycle.PENDING, Lifecycle.READY}
        return [r for r in self.replicas.values() if r.spec.name == name and r.state in wanted]

    def history(self, replica_id: str) -> list[Lifecycle]:
        """The states one replica went through, oldest first."""
        return [t.state for t in self.transitions if t.replica_id == replica_id]

    def held_until(self, model: str) -> float | None:
        """When a model may start a replica again after a retirement (None: it may now)."""
        until = self._hold_until.get(model)
        return until if until is not None and until > self.clock() else None

    @property
    def slots(self) -> GpuInventory:
        """Free and total GPUs (per node: ``slots.free_by_node()``)."""
        return self.launcher.inventory

    @property
    def live_groups(self) -> set[int]:
        """Process groups this manager started that still exist."""
        return self.launcher.leftovers()

    # -- start --------------------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> ManagedReplica | None:
        """Launch one replica of ``spec``; None when no GPU slot is free for it, or
        while the model waits out the backoff after a replica was retired."""
        if self._closing or self.held_until(spec.name) is not None:
            return None
        placement = self.slots.allocate(spec.gpus_per_replica if spec.engine != "external" else 0)
        if placement is None:
            log.warning(
                "model %s: no free GPU slot for another replica (%d of %d free, %d needed)",
                spec.name,
                self.slots.free,
                self.slots.total,
                spec.gpus_per_replica,
            )
            return None
        rid = f"{spec.name}-{next(self._ids)}"
        gpus = list(placement.gpus)
        if spec.engine == "external":
            url = self._pool_url(spec)
            if url is None:
                self.slots.release(placement)
                raise ValueError(f"model {spec.name!r}: engine 'external' needs a url")
            rep = ManagedReplica(rid, spec, url, 0, gpus, placement)
            rep.api_key = spec.api_key
        else:
            try:
                where: Address = await self.launcher.address(rid, spec, placement)
            except LaunchError as exc:
                self.slots.release(placement)
                log.warning("model %s: no place for another replica: %s", spec.name, exc)
                return None
            rep = ManagedReplica(rid, spec, where.url, where.port, gpus, placement)
            # Other users can reach the replica's port: only the service may use it.
            rep.api_key = secrets.token_urlsafe(24)
        self.replicas[rid] = rep
        self.orch.add_replica(self._replica_spec(rep), ready=False)
        self._record(rep, "starting")
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
            priority=rep.spec.priority,
            api_key=rep.api_key,
        )

    def _pool_url(self, spec: LaunchSpec) -> str | None:
        """An external model's next replica takes a pool URL no live replica has."""
        pool = [u.rstrip("/") for u in (spec.urls or ((spec.url,) if spec.url else ()))]
        if not pool:
            return None
        taken = [r.url for r in self.replicas.values() if r.spec.name == spec.name]
        free = [u for u in pool if u not in taken]
        return free[0] if free else pool[len(taken) % len(pool)]

    async def _spawn(self, rep: ManagedReplica) -> None:
        rep.started_at = self.clock()
        rep.ready_at = None
        rep.health_failures = 0
        rep.handle = None
        if rep.spec.engine == "external" or rep.placement is None:
            return
        try:
            rep.handle = await self.launcher.start(
                rep.id,
                rep.spec,
                Address(rep.url, rep.port, rep.placement.node),
                rep.placement,
                rep.api_key,
            )
        except LaunchError as exc:
            self._fail(rep, str(exc))
            return
        rep.gpus = list(rep.handle.gpus)

    # -- supervision ----------------------------------------------------------------

    async def _supervise(self, rep: ManagedReplica) -> None:
        client = ReplicaClient(
            rep.url, connect_timeout_s=2.0, read_timeout_s=5.0, api_key=rep.api_key
        )
        try:
            while not self._closing and rep.state != Lifecycle.STOPPED:
                if rep.state == Lifecycle.PENDING:
                    await self._await_ready(rep, client)
                elif rep.state in (Lifecycle.READY, Lifecycle.DRAINING):
                    await self._check_health(rep, client)
                    if self._serving(rep):  # after a failure, restart without a pause
                        await self._pause(rep, self.settings.health_interval_s)
                elif rep.state == Lifecycle.FAILED and not await self._restart(rep):
                    return
        finally:
            await client.close()

    async def _pause(self, rep: ManagedReplica, seconds: float) -> None:
        """Sleep, waking early when the replica's server exits."""
        if rep.handle is None:
            await asyncio.sleep(seconds)
        else:
            await rep.handle.wait_exit(seconds)

    async def _await_ready(self, rep: ManagedReplica, client: ReplicaClient) -> None:
        deadline = rep.started_at + self.settings.ready_timeout_s
        pauses = ready_polls(self.settings.ready_poll_first_s, self.settings.ready_poll_s)
        while self.clock() < deadline and not self._closing and rep.state == Lifecycle.PENDING:
            if self._exited(rep):
                self._fail(rep, f"{_exit_reason(rep)} while starting")
                return
            if await self._answers(rep, client):
                rep.ready_at = self.clock()
                self._set(rep, Lifecycle.READY, f"ready after {rep.cold_start_s or 0.0:.1f} s")
                self.orch.set_lifecycle(rep.id, "ready", rep.cold_start_s)
                return
            await self._pause(rep, next(pauses))
        if not self._closing and rep.state == Lifecycle.PENDING:
            self._fail(rep, f"not ready within {self.settings.ready_timeout_s:.0f} s")

    async def _answers(self, rep: ManagedReplica, client: ReplicaClient) -> bool:
        """Readiness: ``/health`` is 200 and ``/v1/models`` lists the served name."""
        if not await client.health(timeout_s=2.0):
            return False
        try:
            return rep.spec.name in await client.models()
        except ReplicaHTTPError as exc:
            if exc.status in (401, 403) and not rep.warned_auth:
                rep.warned_auth = True  # once: it stays PENDING until the key is right
                hint = "api_key_env" if rep.spec.engine == "external" else "its VLLM_API_KEY"
                log.warning(
                    "replica %s: %s refuses the service's key (%d); check %s",
                    rep.id,
                    rep.url,
                    exc.status,
                    hint,
                )
            log.debug("replica %s: /v1/models not usable yet: %s", rep.id, exc)
            return False
        except Exception as exc:
            log.debug("replica %s: /v1/models not usable yet: %s", rep.id, exc)
            return False

    async def _check_health(self, rep: ManagedReplica, client: ReplicaClient) -> None:
        if self._exited(rep):
            self._fail(rep, _exit_reason(rep))
            return
        if await client.health(timeout_s=self.settings.health_timeout_s):
            rep.health_failures = 0
            self._forgive(rep)
            self.orch.note_healthy(rep.id)
            return
        rep.health_failures += 1
        if rep.health_failures >= self.settings.health_failures_to_fail:
            self._fail(rep, f"{rep.health_failures} failed health checks")

    def _serving(self, rep: ManagedReplica) -> bool:
        return rep.state in (Lifecycle.READY, Lifecycle.DRAINING) and not self._exited(rep)

    def _exited(self, rep: ManagedReplica) -> bool:
        return rep.handle is not None and rep.handle.exited()

    def _fail(self, rep: ManagedReplica, why: str) -> None:
        if rep.state in (Lifecycle.STOPPED, Lifecycle.FAILED):
            return
        if rep.state == Lifecycle.DRAINING:
            # Being removed anyway: its in-flight calls fail and the drain completes.
            log.warning("replica %s failed while draining: %s", rep.id, why)
            return
        log.error("replica %s failed: %s (log: %s)", rep.id, why, rep.log_path or "-")
        self._set(rep, Lifecycle.FAILED, why)
        self.orch.set_lifecycle(rep.id, "failed")

    def _forgive(self, rep: ManagedReplica) -> None:
        """After ``healthy_reset_s`` of READY time, earlier restarts no longer count."""
        if rep.state is not Lifecycle.READY or rep.ready_at is None:
            return
        if self.clock() - rep.ready_at < self.settings.healthy_reset_s:
            return
        rep.restart_times.clear()
        self._retired_in_row.pop(rep.spec.name, None)

    def _recent_restarts(self, rep: ManagedReplica) -> int:
        horizon = self.clock() - self.settings.restart_window_s
        while rep.restart_times and rep.restart_times[0] < horizon:
            rep.restart_times.popleft()
        return len(rep.restart_times)

    async def _restart(self, rep: ManagedReplica) -> bool:
        lost = rep.handle is not None and rep.handle.lost()
        await self._terminate(rep)
        if lost:
            await self._replace(rep)
            return False
        recent = self._recent_restarts(rep)
        if recent >= self.settings.max_restarts and rep.spec.engine != "external":
            await self._retire(rep, recent)
            return False
        backoff = min(
            self.settings.restart_backoff_s * 2**recent, self.settings.restart_backoff_max_s
        )
        rep.restarts += 1
        rep.restart_times.append(self.clock())
        self.orch.note_restart(rep.id)
        log.info("replica %s: restarting in %.1f s (restart %d)", rep.id, backoff, rep.restarts)
        await asyncio.sleep(backoff)
        if self._closing or rep.state != Lifecycle.FAILED:
            return False
        self._set(rep, Lifecycle.PENDING, f"restart {rep.restarts}")
        self.orch.set_lifecycle(rep.id, "pending")
        await self._spawn(rep)
        return True

    async def _retire(self, rep: ManagedReplica, recent: int) -> None:
        """Give a crash-looping replica up for good and hold its model's next start back.

        Runs in the replica's own supervision task, which ends right after, so this does
        not go through ``_stop`` (that cancels the supervision task)."""
        model = rep.spec.name
        in_row = self._retired_in_row.get(model, 0)
        hold = min(self.settings.replace_backoff_s * 2**in_row, self.settings.replace_backoff_max_s)
        self._retired_in_row[model] = in_row + 1
        self._hold_until[model] = self.clock() + hold
        rep.gave_up = True
        log.error(
            "replica %s: %d restarts within %.0f s; retired, a fresh replica of %s may "
            "start in %.0f s; see %s",
            rep.id,
            recent,
            self.settings.restart_window_s,
            model,
            hold,
            rep.log_path or "its log",
        )
        if self.replicas.get(rep.id) is rep:
            del self.replicas[rep.id]
        rep.state = Lifecycle.STOPPED
        await self._forget(rep, f"retired after {recent} restarts")

    async def _replace(self, rep: ManagedReplica) -> None:
        """Its place is gone: start a fresh replica elsewhere, then forget this one (runs
        in the replica's own supervision task, which ends right after). It stays listed,
        FAILED, until its replacement is, so the provisioner does not start one too."""
        log.error("replica %s: its node or actor is gone; starting a replacement", rep.id)
        if rep.placement is not None:
            self.slots.release(rep.placement)
            rep.placement = None
        await self.launcher.release(rep.id)
        fresh = None if self._closing else await self.start(rep.spec)
        if fresh is None and not self._closing:
            log.warning("model %s: no free GPUs for %s's replacement yet", rep.spec.name, rep.id)
        if self.replicas.get(rep.id) is rep:
            del self.replicas[rep.id]
        rep.state = Lifecycle.STOPPED
        await self._forget(rep, "lost its place; replaced")

    def _set(self, rep: ManagedReplica, state: Lifecycle, why: str = "") -> None:
        rep.state = state
        self._record(rep, why)

    def _record(self, rep: ManagedReplica, why: str) -> None:
        self.transitions.append(Transition(self.clock(), rep.id, rep.state, why))
        if rep.state == Lifecycle.READY:
            log.info("replica %s: %s", rep.id, why)

    # -- stop -----------------------------------------------------------------------

    async def drain(self, replica_id: str) -> None:
        """Scale down one replica: no new work, let in-flight finish, then stop it."""
        rep = self.replicas.get(replica_id)
        if rep is None or rep.state in (Lifecycle.STOPPED, Lifecycle.DRAINING):
            return
        in_flight = self.orch.replica_load(rep.id)[0]
        self._set(rep, Lifecycle.DRAINING, f"draining {in_flight} in-flight calls")
        log.info("replica %s: draining (%d in flight)", rep.id, in_flight)
        self.orch.set_lifecycle(rep.id, "draining")
        deadline = self.clock() + self.settings.drain_timeout_s
        while self.clock() < deadline and self._draining_calls(rep):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await self._stop(rep)

    def _draining_calls(self, rep: ManagedReplica) -> bool:
        """Whether a draining replica still has calls in flight."""
        if rep.state != Lifecycle.DRAINING or self.replicas.get(rep.id) is not rep:
            return False
        return self.orch.replica_load(rep.id)[0] > 0

    async def _stop(self, rep: ManagedReplica) -> None:
        """Stop a replica; the stop runs to its end even if the caller is cancelled."""
        task = self._stopping.get(rep.id)
        if task is None:
            if self.replicas.get(rep.id) is not rep:
                return
            del self.replicas[rep.id]
            task = asyncio.create_task(self._stop_now(rep), name=f"stop {rep.id}")
            self._stopping[rep.id] = task
            task.add_done_callback(lambda _: self._stopping.pop(rep.id, None))
        await asyncio.shield(task)

    async def _stop_now(self, rep: ManagedReplica) -> None:
        rep.state = Lifecycle.STOPPED
        for task in rep.tasks:
            task.cancel()
        await asyncio.gather(*rep.tasks, return_exceptions=True)
        await self._terminate(rep)
        log.info("replica %s: stopped", rep.id)
        await self._forget(rep, "stopped")

    async def _forget(self, rep: ManagedReplica, why: str) -> None:
        """A STOPPED replica whose server is gone: free its GPUs, leave the orchestrator."""
        if rep.placement is not None:
            self.slots.release(rep.placement)
            rep.placement = None
        if rep.spec.engine != "external":
            await self.launcher.release(rep.id)
        self._record(rep, why)
        self.orch.set_lifecycle(rep.id, "stopped")
        await self.orch.remove_replica(rep.id)

    async def _terminate(self, rep: ManagedReplica) -> None:
        """Stop the replica's server: politely, forcefully after the grace period."""
        if rep.handle is not None:
            await self.launcher.stop(rep.handle, self.settings.term_grace_s)

    async def shutdown(self) -> None:
        """Stop every replica; nothing this manager started is left running afterwards."""
        self._closing = True
        await asyncio.gather(
            *(self._stop(r) for r in list(self.replicas.values())), return_exceptions=True
        )
        await asyncio.gather(*self._stopping.values(), return_exceptions=True)
        await self.launcher.close()


def ready_polls(first_s: float, every_s: float) -> Iterator[float]:
    """The pauses between a starting replica's readiness polls: ``first_s`` (1 ms at
    least), doubling each time, then ``every_s`` for as long as it takes."""
    pause = min(max(first_s, 0.001), every_s)
    while True:
        yield pause
        pause = min(pause * 2.0, every_s)


def _exit_reason(rep: ManagedReplica) -> str:
    return "?" if rep.handle is None else rep.handle.exit_reason()
