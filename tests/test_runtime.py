"""A ``Runtime`` built from a config: autoscaling under real load, and ``cato status``.

The replicas are emulator processes; the CATO provisioner gets short windows so that a
burst that violates the SLAs scales the model up within seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from processes import group_alive, wait_for
from rich.console import Console

from orchestrator.api import TaskEvent, TaskKind, TaskRequest
from orchestrator.commands import status as status_command
from orchestrator.commands.serve import service_options
from orchestrator.config import CatoConfig, config_from_dict
from orchestrator.replicas.manager import Lifecycle, ManagerSettings
from orchestrator.runtime import Runtime
from orchestrator.server import bound_port, create_app, serve_app

SETTINGS = ManagerSettings(ready_timeout_s=90.0, ready_poll_s=0.05, health_interval_s=0.3)


def config(**sections: Any) -> CatoConfig:
    model = {"name": "tiny", "engine": "emulated", "profile": "tiny@cpu", "speed": 8.0}
    return config_from_dict({"models": [model | sections.pop("model", {})], **sections})


@contextlib.asynccontextmanager
async def running(cfg: CatoConfig, workdir: Path) -> AsyncIterator[Runtime]:
    """A started runtime; every replica process it ran is gone afterwards."""
    rt = Runtime(cfg, workdir=workdir, settings=SETTINGS)
    pids: set[int] = set()
    try:
        await rt.start(wait_ready_s=90)
        yield rt
    finally:
        pids |= {r.pid for r in rt.manager.replicas.values() if r.pid is not None}
        await rt.stop()
        assert not [p for p in pids if group_alive(p)], "replica processes outlived stop()"


async def complete(rt: Runtime, prompt: str, max_tokens: int = 24) -> TaskEvent:
    request = TaskRequest(kind=TaskKind.COMPLETE, prompt=prompt, max_tokens=max_tokens)
    last: TaskEvent | None = None
    async with contextlib.aclosing(rt.orchestrator.submit(request)) as events:
        async for event in events:
            last = event
    assert last is not None
    return last


async def load_until(rt: Runtime, done: Callable[[], bool], concurrency: int) -> list[TaskEvent]:
    """Keep ``concurrency`` tasks running until ``done()``; returns their last events."""
    ends: list[TaskEvent] = []

    async def worker(w: int) -> None:
        i = 0
        while not done():
            ends.append(await complete(rt, f"def handler_{w}_{i}(request):"))
            i += 1

    await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(concurrency))), 90)
    return ends


async def test_sla_violations_scale_up_then_idle_replicas_are_released(tmp_path: Path) -> None:
    cfg = config(
        model={"min_replicas": 1, "max_replicas": 2, "concurrency_limit": 2},
        tasks={"complete": {"sla_ms": 40}},
        # The paper's late-first scheduler, so that the burst breaks most SLAs: the
        # default serves on-time calls first and keeps most of this closed-loop burst in
        # its SLA (too few violations, for too long, to test scaling on).
        scheduler={"policy": "cato_paper"},
        provisioner={
            "policy": "cato",
            "interval_s": 0.2,
            "window_s": 0.5,
            "violation_threshold": 0.2,
            "windows_in_row": 2,
            "idle_timeout_s": 1.5,
        },
    )
    async with running(cfg, tmp_path) as rt:
        (first,) = rt.manager.replicas.values()
        assert rt.provisioner.name == "cato"

        ends = await load_until(rt, lambda: len(rt.manager.replicas) > 1, concurrency=12)
        assert ends and all(e.type == "done" for e in ends)
        assert sum(not e.sla_met for e in ends) > 0.2 * len(ends)  # the burst broke the SLA
        (_, model, before, after, reason) = rt.scale_events[0]
        assert (model, before, after) == ("tiny", 1, 2)
        assert "violated their slack" in reason  # Algorithm 2's violation proportion
        (added,) = (r for r in rt.manager.replicas.values() if r is not first)
        await wait_for(lambda: added.state is Lifecycle.READY, "the added replica ready")
        assert rt.manager.history(added.id)[:2] == [Lifecycle.PENDING, Lifecycle.READY]
        assert added.cold_start_s is not None and added.cold_start_s > 0

        # Quiet now: after idle_timeout_s one replica is drained, back to min_replicas.
        def stopped() -> list[str]:
            return [t.replica_id for t in rt.manager.transitions if t.state is Lifecycle.STOPPED]

        await wait_for(lambda: len(stopped()) == 1, "scale-down to min_replicas")
        gone = {first.id: first, added.id: added}[stopped()[0]]
        assert rt.manager.history(gone.id)[-2:] == [Lifecycle.DRAINING, Lifecycle.STOPPED]
        assert len(rt.manager.replicas) == 1
        assert gone.pid is not None and not group_alive(gone.pid)
        assert (await complete(rt, "def after():")).type == "done"
        assert [r.state for r in rt.status().replicas] == ["ready"]


async def test_status_table_shows_replicas_and_task_stats(tmp_path: Path) -> None:
    cfg = config(model={"min_replicas": 2, "max_replicas": 2})
    async with running(cfg, tmp_path) as rt:
        # start() returns once replicas started together are all up
        assert [r.state for r in rt.manager.replicas.values()] == [Lifecycle.READY] * 2
        app = create_app(rt.orchestrator, service_options(cfg), status=rt.status)
        runner = await serve_app(app, "127.0.0.1", 0)
        try:
            assert (await complete(rt, "def hello():")).type == "done"
            url = f"http://127.0.0.1:{bound_port(runner)}"
            status = await status_command.fetch(url, None)
        finally:
            await runner.cleanup()
    console = Console(record=True, width=160, color_system=None)
    status_command.render(status, console)
    text = console.export_text()
    ids = sorted(r.id for r in status.replicas)
    assert ids == ["tiny-1", "tiny-2"]
    rows = [line for line in text.splitlines() if "tiny-" in line]
    assert len(rows) == 2
    for rid, row in zip(ids, sorted(rows), strict=True):
        assert rid in row and "ready" in row and "emulated" in row
    assert "scheduler cato" in text and "provisioner cato" in text
    (complete_row,) = (line.split() for line in text.splitlines() if "complete" in line)
    assert complete_row[:2] == ["complete", "1"]  # one task in the window


def test_status_command_reports_an_unreachable_service(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(url="http://127.0.0.1:9", token=None, json=False)
    assert status_command.run(args) == 1
    assert "cato status: " in capsys.readouterr().err


async def test_a_log_folder_the_runtime_made_is_removed_at_stop(tmp_path: Path) -> None:
    cfg = config(model={"min_replicas": 0})
    made = Runtime(cfg, settings=SETTINGS)
    assert made.workdir.is_dir()
    await made.stop()
    assert not made.workdir.exists()
    (tmp_path / "logs").mkdir()
    named = Runtime(cfg, workdir=tmp_path / "logs", settings=SETTINGS)
    await named.stop()
    assert (tmp_path / "logs").is_dir()


async def test_initial_replicas_start_with_the_service(tmp_path: Path) -> None:
    cfg = config(model={"min_replicas": 1, "max_replicas": 3, "initial_replicas": 2})
    async with running(cfg, tmp_path) as rt:
        assert len(rt.manager.of_model("tiny", Lifecycle.READY)) == 2
