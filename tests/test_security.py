"""Security: managed replicas answer only the service, and no secret leaks on the way.

Every managed replica gets a random API key (vLLM's ``VLLM_API_KEY``) that only the
replica manager knows: a local user who finds the replica's port gets 401 on every /v1
path, while the orchestrator's calls go through.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from processes import wait_for

from orchestrator.api import TaskKind, TaskRequest
from orchestrator.config import ConfigError, parse_config
from orchestrator.emulator.process import StartEmulator
from orchestrator.executor import Orchestrator
from orchestrator.replicas.launchers import LaunchSpec
from orchestrator.replicas.manager import (
    Lifecycle,
    ManagedReplica,
    ManagerSettings,
    ReplicaManager,
)
from orchestrator.runtime import launch_spec

SETTINGS = ManagerSettings(ready_timeout_s=90.0, ready_poll_s=0.05, health_interval_s=0.2)


def assert_key_not_shown(rep: ManagedReplica) -> None:
    """The key travels in the environment, never on the command line or in the log."""
    assert rep.pid is not None and rep.api_key is not None and rep.log_path is not None
    cmdline = Path(f"/proc/{rep.pid}/cmdline").read_bytes().decode(errors="replace")
    assert rep.api_key not in cmdline
    assert rep.api_key not in rep.log_path.read_text()


async def test_a_managed_replica_wants_a_key_only_the_service_knows(tmp_path: Path) -> None:
    orch = Orchestrator()
    mgr = ReplicaManager(orch, workdir=tmp_path / "replicas", settings=SETTINGS)
    spec = LaunchSpec(name="tiny", engine="emulated", profile="tiny@cpu", speed=8.0)
    try:
        rep = await mgr.start(spec)
        assert rep is not None and rep.api_key and len(rep.api_key) >= 24
        await wait_for(lambda: rep.state is Lifecycle.READY, "ready", 60)

        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer guessed"}):
                async with http.get(rep.url + "/v1/models", headers=headers) as resp:
                    assert resp.status == 401 and await resp.json() == {"error": "Unauthorized"}
            body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
            async with http.post(rep.url + "/v1/completions", json=body) as resp:
                assert resp.status == 401
            async with http.get(rep.url + "/health") as resp:
                assert resp.status == 200  # health stays open, as in vLLM
            key = {"Authorization": f"Bearer {rep.api_key}"}
            async with http.get(rep.url + "/v1/models", headers=key) as resp:
                assert resp.status == 200

        request = TaskRequest(kind=TaskKind.COMPLETE, prompt="def add(a, b):", max_tokens=4)
        events = [e async for e in orch.submit(request)]
        assert events[-1].type == "done"

        assert_key_not_shown(rep)
    finally:
        await mgr.shutdown()
        await orch.close()


async def test_an_external_server_gets_the_key_api_key_env_names(
    tmp_path: Path, start_emulator: StartEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A team's own vLLM started with --api-key: the key comes from the environment.
    Without it the server never counts as ready, and the log says why."""
    emu = start_emulator(model="ext", speed=8.0, extra_args=["--api-key", "s3cret-key"])
    toml = f"[[models]]\nname = 'ext'\nengine = 'external'\nurl = '{emu.url}'\n"
    keyed = parse_config(toml + "api_key_env = 'EXT_KEY'\n").models[0]
    with pytest.raises(ConfigError, match="'EXT_KEY', but that variable is not set"):
        launch_spec(keyed, environ={})
    with_key = launch_spec(keyed, environ={"EXT_KEY": "s3cret-key"})
    assert "s3cret-key" not in repr(with_key)
    request = TaskRequest(
        kind=TaskKind.COMPLETE, prompt="def add(a, b):", max_tokens=4, model="ext"
    )
    for spec, keyed_ok in ((launch_spec(parse_config(toml).models[0]), False), (with_key, True)):
        orch = Orchestrator()
        mgr = ReplicaManager(orch, workdir=tmp_path / str(keyed_ok), settings=SETTINGS)
        try:
            rep = await mgr.start(spec)
            assert rep is not None
            if not keyed_ok:
                await wait_for(lambda rep=rep: rep.warned_auth, "the 401 warning", 60)
                assert rep.state is Lifecycle.PENDING
                assert "refuses the service's key (401); check api_key_env" in caplog.text
                continue
            await wait_for(lambda rep=rep: rep.state is Lifecycle.READY, "ready", 60)
            events = [e async for e in orch.submit(request)]
            assert events[-1].type == "done", events[-1]
        finally:
            await mgr.shutdown()
            await orch.close()


def test_only_external_models_take_api_key_env() -> None:
    toml = "[[models]]\nname = 'e'\nengine = 'emulated'\napi_key_env = 'K'\n"
    with pytest.raises(ConfigError, match="api_key_env: only for engine 'external'"):
        parse_config(toml)
    with pytest.raises(ConfigError, match="api_key_env"):
        parse_config(
            "[[models]]\nname = 'x'\nengine = 'external'\nurl = 'http://h'\n"
            "api_key_env = 'not a name'\n"
        )
