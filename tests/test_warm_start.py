"""The embedded engine's start: what counts toward a replica's cold start, how soon the
manager sees a replica ready, and that the first ready replica is enough to serve."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from processes import group_alive, wait_for

from cato_lsp.backend import make_backend
from orchestrator.api import TaskKind, TaskRequest
from orchestrator.config import config_from_dict
from orchestrator.emulator import cli as emulate_cli
from orchestrator.emulator.server import EmulatorConfig
from orchestrator.engine_model import load_profile
from orchestrator.replicas.launchers import LaunchSpec
from orchestrator.replicas.manager import Lifecycle, ManagerSettings, ready_polls
from orchestrator.runtime import Runtime


def _config(argv: list[str]) -> EmulatorConfig:
    parser = argparse.ArgumentParser()
    emulate_cli.configure(parser)
    return emulate_cli.config_from_args(parser.parse_args(argv))


def test_the_emulated_cold_start_counts_from_process_start() -> None:
    config = _config(["--profile", "tiny@cpu"])
    assert config.cold_start_s == load_profile("tiny@cpu").cold_start_s == 3.0
    # 1.25 s of imports before serving: 1.75 s are left, not another 3 s.
    assert emulate_cli.from_process_start(config, 10.0, 11.25).cold_start_s == 1.75
    # Imports slower than the whole cold start: ready as soon as it listens.
    assert emulate_cli.from_process_start(config, 10.0, 14.0).cold_start_s == 0.0
    # Everything else is kept.
    left = emulate_cli.from_process_start(config, 10.0, 11.0)
    assert (left.profile, left.models, left.speed) == (config.profile, config.models, 1.0)


def test_readiness_polls_start_fast_and_back_off_to_the_configured_pause() -> None:
    assert list(itertools.islice(ready_polls(0.01, 0.1), 6)) == [0.01, 0.02, 0.04, 0.08, 0.1, 0.1]
    assert next(ready_polls(0.0, 0.1)) == 0.001  # never a busy loop
    assert list(itertools.islice(ready_polls(1.0, 0.2), 2)) == [0.2, 0.2]
    assert ManagerSettings().ready_poll_first_s < ManagerSettings().ready_poll_s


def test_the_language_server_imports_no_http_client_until_remote_mode_needs_one() -> None:
    code = (
        "import sys, cato_lsp.server, cato_lsp.__main__\n"
        "print(sorted(m for m in ('aiohttp', 'orchestrator.runtime') if m in sys.modules))\n"
        "from cato_lsp.backend import make_backend\n"
        "make_backend('remote', url='http://127.0.0.1:9')\n"
        "print('aiohttp' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out == ["[]", "True"]
    assert make_backend("remote", url="http://h:1").describe() == "remote (http://h:1)"


# -- real emulator processes ----------------------------------------------------------------

SETTINGS = ManagerSettings(ready_timeout_s=90.0, health_interval_s=0.3, restart_backoff_s=60.0)


def emulated(cold_start_s: float) -> LaunchSpec:
    return LaunchSpec(name="tiny", engine="emulated", speed=8.0, cold_start_s=cold_start_s)


@contextlib.asynccontextmanager
async def runtime(tmp_path: Path, settings: ManagerSettings = SETTINGS) -> AsyncIterator[Runtime]:
    """A runtime whose replicas the test starts itself; none outlives it."""
    model = {"name": "tiny", "engine": "emulated", "speed": 8.0, "min_replicas": 2}
    rt = Runtime(config_from_dict({"models": [model]}), workdir=tmp_path, settings=settings)
    try:
        yield rt
    finally:
        groups = {r.pid for r in rt.manager.replicas.values() if r.pid is not None}
        await rt.stop()
        assert not [g for g in groups if group_alive(g)], "replica processes outlived stop()"


async def test_the_first_ready_replica_serves_while_the_other_still_starts(
    tmp_path: Path,
) -> None:
    async with runtime(tmp_path) as rt:
        slow = await rt.manager.start(emulated(cold_start_s=600.0))
        fast = await rt.manager.start(emulated(cold_start_s=0.0))
        assert slow is not None and fast is not None
        await rt.first_ready(timeout_s=60.0)
        assert (fast.state, slow.state) == (Lifecycle.READY, Lifecycle.PENDING)
        request = TaskRequest(kind=TaskKind.COMPLETE, prompt="def add(a, b):", max_tokens=8)
        async with contextlib.aclosing(rt.orchestrator.submit(request)) as stream:
            events = [event async for event in stream]
        assert events[-1].type == "done" and events[-1].result
        assert {e.replica for e in events if e.type == "node" and e.replica} == {fast.id}


async def test_no_replica_ready_in_time_is_a_clear_error_naming_the_model_and_logs(
    tmp_path: Path,
) -> None:
    async with runtime(tmp_path) as rt:
        assert await rt.manager.start(emulated(cold_start_s=600.0)) is not None
        with pytest.raises(TimeoutError, match=r"no replica of tiny ready within 0\.5 s") as err:
            await rt.first_ready(timeout_s=0.5)
        assert str(tmp_path) in str(err.value)


async def test_a_replica_that_never_gets_ready_fails_with_the_reason(tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, ready_timeout_s=1.0)
    async with runtime(tmp_path, settings) as rt:
        rep = await rt.manager.start(emulated(cold_start_s=600.0))
        assert rep is not None
        await wait_for(lambda: rep.state is Lifecycle.FAILED, "the start to time out")
        failed = [t for t in rt.manager.transitions if t.state is Lifecycle.FAILED]
        assert [t.why for t in failed] == ["not ready within 1 s"]
        assert rt.orchestrator.status().replicas[0].state == "failed"
