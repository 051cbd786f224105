"""The replica manager over real child processes: emulated replicas and a fake ``vllm``.

Every replica here is a real process on a 127.0.0.1 port; the fake ``vllm`` (see
``tests/fake_vllm/vllm.py``) records its command line and GPU slots, then serves as
the emulator. Each test ends with the manager shut down and checks that no process
group it started is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from processes import group_alive, wait_for

from orchestrator.api import TaskEvent, TaskKind, TaskRequest
from orchestrator.executor import Orchestrator
from orchestrator.replicas.launchers import LaunchSpec
from orchestrator.replicas.manager import (
    Lifecycle,
    ManagedReplica,
    ManagerSettings,
    ReplicaManager,
)

FAKE_VLLM = Path(__file__).parent / "fake_vllm" / "vllm.py"
SETTINGS = ManagerSettings(
    ready_timeout_s=90.0,
    ready_poll_s=0.05,
    health_interval_s=0.2,
    restart_backoff_s=0.2,
    term_grace_s=10.0,
    drain_timeout_s=60.0,
)
# Outputs run to max_tokens: the emulated model never stops on its own.
LONG_OUTPUTS = ("--mean-output-tokens", "1000000")


def emulated(**overrides: Any) -> LaunchSpec:
    fields: dict[str, Any] = {
        "name": "tiny",
        "engine": "emulated",
        "profile": "tiny@cpu",
        "speed": 10.0,
        "cold_start_s": 0.0,
    }
    return LaunchSpec(**(fields | overrides))


async def run_task(
    orch: Orchestrator, prompt: str, max_tokens: int, seen: list[TaskEvent] | None = None
) -> list[TaskEvent]:
    events = [] if seen is None else seen
    request = TaskRequest(kind=TaskKind.COMPLETE, prompt=prompt, max_tokens=max_tokens)
    async with contextlib.aclosing(orch.submit(request)) as stream:
        async for event in stream:
            events.append(event)
    return events


def replica_of(events: list[TaskEvent]) -> str | None:
    """The replica that last took the task's model call."""
    placed = [e.replica for e in events if e.type == "node" and e.replica]
    return placed[-1] if placed else None


@pytest.fixture
async def orch() -> AsyncIterator[Orchestrator]:
    orchestrator = Orchestrator()
    yield orchestrator
    await orchestrator.close()


@pytest.fixture
async def manager(orch: Orchestrator, tmp_path: Path) -> AsyncIterator[ReplicaManager]:
    mgr = ReplicaManager(orch, gpus=[0, 1, 2], workdir=tmp_path / "replicas", settings=SETTINGS)
    yield mgr
    groups = {r.pid for r in mgr.replicas.values() if r.pid is not None}
    await mgr.shutdown()
    assert not {g for g in groups if group_alive(g)}, "replica processes outlived shutdown"


async def ready(mgr: ReplicaManager, *reps: ManagedReplica) -> None:
    await wait_for(lambda: all(r.state is Lifecycle.READY for r in reps), "replicas ready")


# -- emulated replicas ------------------------------------------------------------------


async def test_emulated_replicas_claim_gpu_slots_like_vllm_ones(
    manager: ReplicaManager, orch: Orchestrator
) -> None:
    """So a GPU box's packing can be rehearsed on emulators: 3 slots, 2 per replica."""
    first = await manager.start(emulated(gpus_per_replica=2))
    assert first is not None and first.gpus == [0, 1]
    assert await manager.start(emulated(gpus_per_replica=2)) is None
    await manager.drain(first.id)
    again = await manager.start(emulated(gpus_per_replica=2))
    assert again is not None and again.gpus == [0, 1]


async def test_replica_goes_pending_then_ready_and_reports_its_cold_start(
    manager: ReplicaManager, orch: Orchestrator
) -> None:
    rep = await manager.start(emulated(cold_start_s=1.0))
    assert rep is not None and rep.pid is not None
    assert rep.state is Lifecycle.PENDING
    assert [r.state for r in orch.status().replicas] == ["pending"]
    assert not orch.status().ok

    await ready(manager, rep)
    assert manager.history(rep.id) == [Lifecycle.PENDING, Lifecycle.READY]
    assert rep.cold_start_s is not None and rep.cold_start_s >= 1.0  # the emulator's delay
    (info,) = orch.status().replicas
    assert (info.state, info.engine, info.cold_start_s) == ("ready", "emulated", rep.cold_start_s)
    assert rep.log_path is not None and "--exit-with-stdin" in rep.log_path.read_text()

    events = await run_task(orch, "def add(a, b):", 8)
    assert events[-1].type == "done" and events[-1].result
    assert replica_of(events) == rep.id


async def test_drain_lets_the_in_flight_call_finish_then_stops_the_process(
    manager: ReplicaManager, orch: Orchestrator
) -> None:
    spec = emulated(speed=1.0, extra_args=LONG_OUTPUTS)
    a, b = await manager.start(spec), await manager.start(spec)
    assert a is not None and b is not None
    await ready(manager, a, b)

    long_task = asyncio.create_task(run_task(orch, "def slow():", 300))
    await wait_for(lambda: sum(orch.replica_load(r.id)[0] for r in (a, b)) == 1, "a call in flight")
    busy, other = (a, b) if orch.replica_load(a.id)[0] == 1 else (b, a)
    assert busy.pid is not None
    drain = asyncio.create_task(manager.drain(busy.id))
    await wait_for(lambda: busy.state is Lifecycle.DRAINING, "draining")
    assert manager.transitions[-1].why == "draining 1 in-flight calls"
    states = {r.id: r.state for r in orch.status().replicas}
    assert states == {busy.id: "draining", other.id: "ready"}

    newcomer = await run_task(orch, "def quick():", 4)  # new work avoids the draining one
    assert newcomer[-1].type == "done" and replica_of(newcomer) == other.id

    finished = await long_task
    assert finished[-1].type == "done"
    assert finished[-1].usage is not None and finished[-1].usage.completion_tokens == 300
    await drain
    assert busy.proc is not None and busy.proc.returncode is not None
    assert not group_alive(busy.pid)
    assert manager.history(busy.id)[-2:] == [Lifecycle.DRAINING, Lifecycle.STOPPED]
    assert [r.id for r in orch.status().replicas] == [other.id]


async def test_kill_9_mid_stream_ends_requests_cleanly_and_restarts_the_replica(
    manager: ReplicaManager, orch: Orchestrator
) -> None:
    spec = emulated(speed=1.0, extra_args=LONG_OUTPUTS)
    reps = [await manager.start(spec), await manager.start(spec)]
    a, b = (r for r in reps if r is not None)
    await ready(manager, a, b)

    seen: list[list[TaskEvent]] = [[] for _ in range(4)]
    streams = [asyncio.create_task(run_task(orch, f"def f{i}():", 400, seen[i])) for i in range(4)]
    await wait_for(
        lambda: all(any(e.type == "token" for e in s) for s in seen), "tokens from every task"
    )
    victim = max((a, b), key=lambda r: orch.replica_load(r.id)[0])
    doomed = orch.replica_load(victim.id)[0]
    old_pid = victim.pid
    assert old_pid is not None and doomed >= 1
    os.kill(old_pid, signal.SIGKILL)
    late = [asyncio.create_task(run_task(orch, f"def g{i}():", 8)) for i in range(3)]

    results = await asyncio.wait_for(asyncio.gather(*streams, *late), 90)
    ends = [events[-1] for events in results]
    errors = [e for e in ends if e.type == "error"]
    assert all(e.type in ("done", "error") for e in ends)
    assert all(e.code == "replica_error" and e.error for e in errors)
    assert len(errors) == doomed  # the calls that had streamed tokens from the victim
    assert all(e.type == "done" for e in ends[4:])  # later ones went (or were retried) elsewhere

    await wait_for(lambda: victim.restarts == 1 and victim.state is Lifecycle.READY, "restart")
    assert manager.history(victim.id) == [
        Lifecycle.PENDING,
        Lifecycle.READY,
        Lifecycle.FAILED,
        Lifecycle.PENDING,
        Lifecycle.READY,
    ]
    assert victim.pid != old_pid and not group_alive(old_pid)
    info = {r.id: r for r in orch.status().replicas}[victim.id]
    assert (info.state, info.restarts) == ("ready", 1)


async def test_shutdown_leaves_no_replica_process_behind(
    orch: Orchestrator, tmp_path: Path
) -> None:
    mgr = ReplicaManager(orch, workdir=tmp_path, settings=SETTINGS)
    reps = [await mgr.start(emulated()) for _ in range(2)]
    started = [r for r in reps if r is not None]
    await ready(mgr, *started)
    pids = [r.pid for r in started if r.pid is not None]
    assert len(pids) == 2 and all(group_alive(p) for p in pids)

    await mgr.shutdown()
    assert not [p for p in pids if group_alive(p)]
    assert mgr.replicas == {} and orch.status().replicas == []
    assert mgr.live_groups == set()
    assert await mgr.start(emulated()) is None  # a closed manager starts nothing


# -- the vLLM launcher, through a fake ``vllm`` on the PATH ------------------------------


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a ``vllm`` command first on the PATH; returns the folder of its records."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "vllm"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_VLLM}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    records = tmp_path / "records"
    records.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_VLLM_RECORDS", str(records))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return records


def records_of(folder: Path) -> dict[int, dict[str, Any]]:
    """What each fake ``vllm`` process recorded, by pid."""
    found = {}
    for path in folder.glob("*.json"):
        entry = json.loads(path.read_text())
        found[int(entry["pid"])] = entry
    return found


def vllm_spec(name: str, model: str, gpus: int, *extra: str) -> LaunchSpec:
    return LaunchSpec(
        name=name,
        engine="vllm",
        model=model,
        gpus_per_replica=gpus,
        extra_args=extra,
        entrypoint="serve",
    )


def expected_argv(rep: ManagedReplica, model: str, *extra: str) -> list[str]:
    return [
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(rep.port),
        "--served-model-name",
        rep.spec.name,
        "--scheduling-policy",
        "priority",
        *extra,
    ]


async def test_vllm_command_line_and_gpu_slots(
    fake_vllm: Path, manager: ReplicaManager, orch: Orchestrator
) -> None:
    big = vllm_spec("big", "org/big-coder-7b", 2, "--max-num-seqs", "8", "--enforce-eager")
    small = vllm_spec("small", "org/small-coder-1b", 1)
    first = await manager.start(big)
    second = await manager.start(small)
    assert first is not None and second is not None
    assert await manager.start(small) is None  # GPUs 0,1 and 2 are taken
    assert await manager.start(big) is None
    assert (manager.slots.free, len(manager.replicas)) == (0, 2)
    await ready(manager, first, second)

    records = records_of(fake_vllm)
    assert set(records) == {first.pid, second.pid}  # no process for the refused starts
    one, two = records[first.pid or 0], records[second.pid or 0]
    assert one["argv"] == expected_argv(first, "org/big-coder-7b", "--max-num-seqs", "8",
                                        "--enforce-eager")  # fmt: skip
    assert two["argv"] == expected_argv(second, "org/small-coder-1b")
    assert (one["cuda_visible_devices"], two["cuda_visible_devices"]) == ("0,1", "2")
    assert {r.id: r.gpus for r in orch.status().replicas} == {first.id: [0, 1], second.id: [2]}
    assert {r.id: r.state for r in orch.status().replicas} == {
        first.id: "ready",
        second.id: "ready",
    }

    await manager.drain(first.id)  # its two GPUs come back
    assert manager.slots.free == 2
    third = await manager.start(small)
    fourth = await manager.start(small)
    assert third is not None and fourth is not None
    assert await manager.start(small) is None
    await ready(manager, third, fourth)
    records = records_of(fake_vllm)
    slots = {records[r.pid or 0]["cuda_visible_devices"] for r in (second, third, fourth)}
    assert slots == {"0", "1", "2"}  # never two replicas on one GPU
