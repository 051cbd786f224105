"""vLLM's ``priority`` field against replicas that refuse it (a stock vLLM runs FCFS).

Replicas here are real processes: emulators started with ``--scheduling-policy fcfs``
answer a priority other than 0 with vLLM's own 400, and the fake ``vllm`` on the PATH
(``tests/fake_vllm/vllm.py``) runs FCFS unless its command line asks for priority
scheduling, as vLLM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from processes import group_alive

from orchestrator.api import SLA, SLAMetric, TaskEvent, TaskKind, TaskRequest
from orchestrator.config import PriorityMode, config_from_dict
from orchestrator.emulator.process import RunningEmulator, launch_emulator
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.replicas.launchers import LaunchSpec, build_command
from orchestrator.replicas.manager import ManagerSettings
from orchestrator.replicas.openai_client import (
    Finished,
    ReplicaClient,
    ReplicaHTTPError,
    StreamEvent,
)
from orchestrator.runtime import Runtime, launch_spec

MODEL = "tiny"
FCFS_REFUSAL = "Got priority 2 but Priority scheduling is not enabled."
LAX = SLA(metric=SLAMetric.TTFT, target_ms=120_000)  # every call is safe: priority 2
FAKE_VLLM = Path(__file__).parent / "fake_vllm" / "vllm.py"
WAIT_S = 60.0


@pytest.fixture(scope="module")
def fcfs() -> Iterator[RunningEmulator]:
    """An emulator that schedules like a stock vLLM: first come, first served."""
    with launch_emulator(model=MODEL, speed=20.0, policy="fcfs") as emulator:
        yield emulator


async def stream(client: ReplicaClient, priority: int | None, prompt: str = "x = 1") -> str:
    events: list[StreamEvent] = []
    async with contextlib.aclosing(
        client.stream_completion(MODEL, prompt, max_tokens=6, priority=priority)
    ) as calls:
        async for event in calls:
            events.append(event)
    assert isinstance(events[-1], Finished)
    return events[-1].text


# --------------------------------------------------------------------------- the client


async def test_fcfs_replica_answers_vllms_400_to_a_priority(fcfs: RunningEmulator) -> None:
    async with ReplicaClient(fcfs.url, priority="on") as client:
        assert await stream(client, priority=0)  # priority 0 is FCFS's own: accepted
        with pytest.raises(ReplicaHTTPError) as caught:
            await stream(client, priority=2)
    err = caught.value
    assert err.status == 400
    assert json.loads(err.body)["error"]["message"] == FCFS_REFUSAL
    # priority = "on" says what to change, not just what vLLM said
    assert FCFS_REFUSAL in err.message
    assert "--scheduling-policy priority" in err.message and 'priority = "auto"' in err.message


async def test_auto_drops_a_refused_priority_once_and_logs_it_once(
    fcfs: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="orchestrator.replicas.openai_client")
    async with ReplicaClient(fcfs.url) as client:
        assert client.priority_mode == "auto" and client.sends_priority
        # the first calls go out together: each is refused, each is sent again at once
        first = await asyncio.gather(*(stream(client, 2, f"a{i} = 1") for i in range(4)))
        assert all(first)
        assert not client.sends_priority
        later = [await stream(client, p, f"b{p} = 2") for p in (1, 2, 0)]
        assert all(later)
    warnings = [r for r in caplog.records if "does not take 'priority'" in r.getMessage()]
    assert len(warnings) == 1
    assert FCFS_REFUSAL in warnings[0].getMessage()


async def test_auto_keeps_sending_to_a_replica_that_takes_priorities() -> None:
    with launch_emulator(model=MODEL, speed=20.0, policy="priority") as emulator:
        async with ReplicaClient(emulator.url) as client:
            for p in (2, 1, 0):
                assert await stream(client, p)
            assert client.sends_priority


async def test_off_never_sends_a_priority(fcfs: RunningEmulator) -> None:
    async with ReplicaClient(fcfs.url, priority="off") as client:
        assert not client.sends_priority
        assert await stream(client, priority=2)


async def test_auto_keeps_priority_when_leaving_it_out_does_not_help() -> None:
    """A 400 that names priority but has another cause: one retry, the setting stays."""
    bodies: list[dict[str, Any]] = []

    async def refuse(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        error = {"error": {"message": "prompt too long for priority tier", "code": 400}}
        return web.json_response(error, status=400)

    app = web.Application()
    app.router.add_post("/v1/completions", refuse)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        async with ReplicaClient(f"http://{host}:{port}") as client:
            with pytest.raises(ReplicaHTTPError, match="prompt too long"):
                await stream(client, priority=2)
            assert client.sends_priority
    finally:
        await runner.cleanup()
    assert ["priority" in b for b in bodies] == [True, False]


def test_a_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="priority must be one of auto, on, off"):
        ReplicaClient("http://127.0.0.1:1", priority="always")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the orchestrator


async def run(orch: Orchestrator, i: int) -> list[TaskEvent]:
    request = TaskRequest(kind=TaskKind.COMPLETE, prompt=f"def f{i}():", max_tokens=6, sla=LAX)
    events: list[TaskEvent] = []

    async def consume() -> None:
        async with contextlib.aclosing(orch.submit(request)) as stream:
            async for event in stream:
                events.append(event)

    await asyncio.wait_for(consume(), WAIT_S)
    return events


@contextlib.asynccontextmanager
async def orchestrator(url: str, priority: PriorityMode) -> AsyncIterator[Orchestrator]:
    spec = ReplicaSpec(id="r0", url=url, model=MODEL, concurrency_limit=4, priority=priority)
    orch = Orchestrator([spec])
    try:
        yield orch
    finally:
        await orch.close()


@pytest.mark.parametrize("priority", ["auto", "off"])
async def test_every_call_is_served_by_an_fcfs_replica(
    fcfs: RunningEmulator, priority: PriorityMode
) -> None:
    async with orchestrator(fcfs.url, priority) as orch:
        runs = await asyncio.gather(*(run(orch, i) for i in range(6)))
    for events in runs:
        assert [e.type for e in events if e.type in ("done", "error")] == ["done"]
        assert [e.priority for e in events if e.type == "node" and e.priority is not None]
        assert all(e.priority == 2 for e in events if e.priority is not None)


async def test_priority_on_against_an_fcfs_replica_fails_clearly(fcfs: RunningEmulator) -> None:
    async with orchestrator(fcfs.url, "on") as orch:
        events = await run(orch, 0)
    end = events[-1]
    assert (end.type, end.code) == ("error", "bad_request")
    assert end.error is not None and FCFS_REFUSAL in end.error
    assert "--scheduling-policy priority" in end.error


# --------------------------------------------------------------------------- launching vLLM


def vllm(priority: PriorityMode = "auto", *extra: str) -> LaunchSpec:
    return LaunchSpec(
        name="coder",
        engine="vllm",
        model="org/coder-7b",
        gpus_per_replica=1,
        extra_args=extra,
        entrypoint="serve",
        priority=priority,
    )


def policies(argv: list[str]) -> list[str]:
    """Every ``--scheduling-policy`` value on a command line, in order."""
    found = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--scheduling-policy"]
    return found + [a.split("=", 1)[1] for a in argv if a.startswith("--scheduling-policy=")]


@pytest.mark.parametrize("entrypoint", ["serve", "module"])
@pytest.mark.parametrize("priority", ["auto", "on"])
def test_vllm_replicas_start_with_priority_scheduling(
    priority: PriorityMode, entrypoint: str
) -> None:
    spec = LaunchSpec(
        name="coder", engine="vllm", model="org/coder-7b", gpus_per_replica=1,
        entrypoint=entrypoint, priority=priority, extra_args=("--max-num-seqs", "8"),
    )  # fmt: skip
    argv = build_command(spec, host="127.0.0.1", port=8123)
    assert policies(argv) == ["priority"]
    assert argv[-2:] == ["--max-num-seqs", "8"]  # the user's arguments still come last


@pytest.mark.parametrize("extra", [("--scheduling-policy", "fcfs"), ("--scheduling-policy=fcfs",)])
def test_the_users_own_scheduling_policy_is_not_doubled(extra: tuple[str, ...]) -> None:
    argv = build_command(vllm("auto", *extra), host="127.0.0.1", port=8123)
    assert policies(argv) == ["fcfs"]


def test_priority_off_starts_vllm_without_a_policy() -> None:
    assert policies(build_command(vllm("off"), host="127.0.0.1", port=8123)) == []


def test_cato_toml_priority_reaches_the_launcher_and_defaults_to_auto() -> None:
    def model(**extra: Any) -> dict[str, Any]:
        return {"name": "coder", "engine": "vllm", "model": "org/coder-7b"} | extra

    models = [model(), model(name="other", priority="off")]
    cfg = config_from_dict({"models": models, "gpus": {"devices": [0, 1]}})
    assert [launch_spec(m).priority for m in cfg.models] == ["auto", "off"]
    with pytest.raises(ValueError, match="priority"):
        config_from_dict({"models": [model(priority="always")], "gpus": {"devices": [0]}})
    fcfs = model(priority="on", vllm_args=["--scheduling-policy=fcfs"])
    with pytest.raises(ValueError, match=r"models\[0\]\.priority: \"on\" needs priority sched"):
        config_from_dict({"models": [fcfs], "gpus": {"devices": [0]}})
    fcfs["priority"] = "auto"  # finds out by itself
    assert config_from_dict({"models": [fcfs], "gpus": {"devices": [0]}}).models[0].priority


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``vllm`` on the PATH is the fake; returns the folder its records go to."""
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()
    wrapper = bin_dir / "vllm"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_VLLM}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VLLM_RECORDS", str(records))
    return records


async def test_a_stock_fcfs_vllm_serves_every_call_through_the_runtime(
    fake_vllm: Path, tmp_path: Path
) -> None:
    """cato.toml to process: the user's vLLM arguments choose FCFS, priority is auto."""
    model = {
        "name": MODEL, "engine": "vllm", "model": "org/tiny-coder", "entrypoint": "serve",
        "vllm_args": ["--scheduling-policy", "fcfs"], "concurrency_limit": 4,
    }  # fmt: skip
    cfg = config_from_dict({"models": [model], "gpus": {"devices": [0]}})
    settings = ManagerSettings(ready_timeout_s=90.0, ready_poll_s=0.05, health_interval_s=0.3)
    rt = Runtime(cfg, workdir=tmp_path / "replicas", settings=settings)
    try:
        await rt.start(wait_ready_s=90)
        runs = await asyncio.gather(*(run(rt.orchestrator, i) for i in range(5)))
        pids = {r.pid for r in rt.manager.replicas.values() if r.pid is not None}
    finally:
        await rt.stop()
    assert [[e.type for e in events][-1] for events in runs] == ["done"] * 5
    assert not [p for p in pids if group_alive(p)]
    (record,) = records_of(fake_vllm)
    assert policies(record["argv"]) == ["fcfs"]


def records_of(folder: Path) -> list[dict[str, Any]]:
    """What each fake ``vllm`` process recorded about how it was started."""
    return [json.loads(p.read_text()) for p in folder.glob("*.json")]
