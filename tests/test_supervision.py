"""Replica supervision that heals: restart budgets over a window, forgiveness after healthy
time, retirement of crash-looping replicas and their replacement by fresh ones.

Every replica is a real emulator process; a crash loop is an emulator started with a flag
it does not know (it exits at once), a kill is SIGKILL to the replica's process.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from processes import group_alive, wait_for
from test_manager import emulated

from orchestrator.api import TaskKind, TaskRequest
from orchestrator.bench.processes import free_port
from orchestrator.config import config_from_dict
from orchestrator.emulator.process import launch_emulator
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.replicas.manager import Lifecycle, ManagedReplica, ManagerSettings, ReplicaManager
from orchestrator.runtime import Runtime

FAST = ManagerSettings(
    ready_timeout_s=90.0,
    ready_poll_s=0.05,
    health_interval_s=0.1,
    restart_backoff_s=0.05,
    restart_backoff_max_s=0.2,
    term_grace_s=10.0,
)


@pytest.fixture
async def orch() -> AsyncIterator[Orchestrator]:
    orchestrator = Orchestrator()
    yield orchestrator
    await orchestrator.close()


def manager_with(orch: Orchestrator, tmp_path: Path, **settings: Any) -> ReplicaManager:
    fields = {k: getattr(FAST, k) for k in FAST.__dataclass_fields__}
    return ReplicaManager(
        orch,
        gpus=[0],
        workdir=tmp_path / "replicas",
        settings=ManagerSettings(**(fields | settings)),
    )


async def kill_and_wait_ready(mgr: ReplicaManager, rep: ManagedReplica) -> None:
    """SIGKILL the replica's process and wait until it is READY again on a new process."""
    pid = rep.pid
    assert pid is not None and rep.state is Lifecycle.READY
    before = rep.restarts
    os.kill(pid, signal.SIGKILL)
    await wait_for(
        lambda: rep.restarts == before + 1 and rep.state is Lifecycle.READY, "restarted", 30
    )
    assert rep.pid != pid and not group_alive(pid)


async def test_crash_loop_retires_the_replica_frees_its_gpu_and_holds_the_model_back(
    orch: Orchestrator, tmp_path: Path
) -> None:
    mgr = manager_with(orch, tmp_path, max_restarts=2, replace_backoff_s=1.5)
    try:
        broken = await mgr.start(emulated(gpus_per_replica=1, extra_args=("--no-such-flag",)))
        assert broken is not None and broken.gpus == [0]
        await wait_for(lambda: broken.gave_up, "the crash-looping replica to be retired", 30)

        # Retired for good: out of the manager and the orchestrator, its GPU free again.
        assert mgr.history(broken.id) == [
            Lifecycle.PENDING,
            Lifecycle.FAILED,
            Lifecycle.PENDING,
            Lifecycle.FAILED,
            Lifecycle.PENDING,
            Lifecycle.FAILED,
            Lifecycle.STOPPED,
        ]
        assert broken.id not in mgr.replicas and orch.status().replicas == []
        assert mgr.slots.free == 1 and broken.pid is not None and not group_alive(broken.pid)

        # The model waits out the backoff, then a fresh replica (new id, new port) starts.
        assert mgr.held_until("tiny") is not None
        assert await mgr.start(emulated()) is None
        await wait_for(lambda: mgr.held_until("tiny") is None, "the backoff to pass", 10)
        fresh = await mgr.start(emulated())
        assert fresh is not None and (fresh.id, fresh.port) != (broken.id, broken.port)
        await wait_for(lambda: fresh.state is Lifecycle.READY, "the fresh replica", 30)
        assert [r.state for r in orch.status().replicas] == ["ready"]
    finally:
        await mgr.shutdown()


async def test_restarts_within_the_window_exhaust_the_budget(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """Killed again before it was healthy for ``healthy_reset_s``: the kills add up."""
    mgr = manager_with(orch, tmp_path, max_restarts=1, healthy_reset_s=60.0)
    try:
        rep = await mgr.start(emulated())
        assert rep is not None
        await wait_for(lambda: rep.state is Lifecycle.READY, "ready", 30)
        await kill_and_wait_ready(mgr, rep)
        assert rep.pid is not None
        os.kill(rep.pid, signal.SIGKILL)
        await wait_for(lambda: rep.gave_up, "retirement after the second kill", 30)
        assert rep.restarts == 1 and mgr.replicas == {}
    finally:
        await mgr.shutdown()


async def test_healthy_time_forgives_earlier_restarts(orch: Orchestrator, tmp_path: Path) -> None:
    """A replica killed now and then, healthy in between, is never given up."""
    mgr = manager_with(orch, tmp_path, max_restarts=1, healthy_reset_s=0.5)
    try:
        rep = await mgr.start(emulated())
        assert rep is not None
        await wait_for(lambda: rep.state is Lifecycle.READY, "ready", 30)
        for _ in range(3):
            await kill_and_wait_ready(mgr, rep)
            await wait_for(lambda: not rep.restart_times, "the restart to be forgiven", 30)
        assert rep.restarts == 3 and not rep.gave_up and mgr.replicas == {rep.id: rep}
    finally:
        await mgr.shutdown()


async def test_an_exit_is_restarted_without_waiting_a_health_interval(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """With health checks 60 s apart, a killed replica is back long before the next one."""
    mgr = manager_with(orch, tmp_path, health_interval_s=60.0)
    try:
        rep = await mgr.start(emulated())
        assert rep is not None
        await wait_for(lambda: rep.state is Lifecycle.READY, "ready", 30)
        await asyncio.sleep(0.2)  # the supervisor is now in its pause between checks
        await kill_and_wait_ready(mgr, rep)  # waits at most 30 s, half the interval
    finally:
        await mgr.shutdown()


async def test_the_runtime_tops_a_retired_replica_up_with_a_fresh_one(tmp_path: Path) -> None:
    """The outage of a chaos run: every replica given up and none ever replaced."""
    cfg = config_from_dict(
        {
            "models": [
                {
                    "name": "tiny",
                    "engine": "emulated",
                    "profile": "tiny@cpu",
                    "speed": 8.0,
                    "min_replicas": 2,
                    "max_replicas": 2,
                }
            ],
            "provisioner": {"policy": "fixed", "interval_s": 0.1},
        }
    )
    settings = ManagerSettings(
        ready_timeout_s=90.0,
        ready_poll_s=0.05,
        health_interval_s=0.1,
        restart_backoff_s=0.05,
        max_restarts=1,
        healthy_reset_s=60.0,
        replace_backoff_s=0.5,
    )
    rt = Runtime(cfg, workdir=tmp_path / "replicas", settings=settings)
    try:
        await rt.start(wait_ready_s=90)
        first = dict(rt.manager.replicas)
        victim = next(iter(first.values()))
        for _ in range(2):  # one restart is allowed, the second failure retires it
            await wait_for(lambda: victim.state is Lifecycle.READY, "victim ready", 30)
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            await wait_for(lambda: victim.state is not Lifecycle.READY, "victim down", 30)
        await wait_for(lambda: victim.gave_up, "victim retired", 30)
        view = rt.cluster_view(rt.clock()).models[0]
        assert victim.id not in {r.id for r in view.replicas}  # not counted as pending

        def two_ready() -> bool:
            ready = [r for r in rt.manager.replicas.values() if r.state is Lifecycle.READY]
            return len(ready) == 2

        await wait_for(two_ready, "a fresh replica in the retired one's place", 30)
        fresh = set(rt.manager.replicas) - set(first)
        assert len(fresh) == 1 and victim.id not in rt.manager.replicas
        request = TaskRequest(kind=TaskKind.COMPLETE, prompt="def add(a, b):", max_tokens=8)
        ends = [
            [e async for e in rt.orchestrator.submit(request)][-1] for _ in range(4)
        ]  # served by both replicas
        assert all(e.type == "done" for e in ends)
    finally:
        await rt.stop()


async def test_a_replica_failing_calls_in_a_row_is_ejected_until_healthy() -> None:
    """Outlier ejection: three failed calls in a row take a replica out of routing past
    its short suspicion; a passing health check brings it back."""
    with launch_emulator(model="tiny", profile="tiny@cpu", speed=8.0) as live:
        dead = ReplicaSpec(id="dead", url=f"http://127.0.0.1:{free_port()}", model="tiny")
        good = ReplicaSpec(id="good", url=live.url, model="tiny")
        orch = Orchestrator([dead, good], suspect_s=0.05, eject_after=3)
        request = TaskRequest(kind=TaskKind.COMPLETE, prompt="def add(a, b):", max_tokens=4)

        async def first_replica() -> str | None:
            """Where the task's model call went first (idle replicas tie: ``dead`` first)."""
            await asyncio.sleep(0.1)  # past the suspicion of the last failure
            events = [e async for e in orch.submit(request)]
            assert events[-1].type == "done"
            placed = [e.replica for e in events if e.type == "node" and e.replica]
            return placed[0] if placed else None

        try:
            assert [await first_replica() for _ in range(3)] == ["dead"] * 3
            # Ejected: suspicion alone would have expired, yet ``dead`` is not tried.
            assert [await first_replica() for _ in range(3)] == ["good"] * 3
            orch.note_healthy("dead")
            assert await first_replica() == "dead"  # back in routing (and fails again)
        finally:
            await orch.close()
