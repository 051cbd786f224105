"""Security: managed replicas answer only the service, and no secret leaks on the way.

Every managed replica gets a random API key (vLLM's ``VLLM_API_KEY``) that only the
replica manager knows: a local user who finds the replica's port gets 401 on every /v1
path, while the orchestrator's calls go through.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from processes import wait_for

from orchestrator.api import TaskKind, TaskRequest
from orchestrator.executor import Orchestrator
from orchestrator.replicas.launchers import LaunchSpec
from orchestrator.replicas.manager import (
    Lifecycle,
    ManagedReplica,
    ManagerSettings,
    ReplicaManager,
)

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
