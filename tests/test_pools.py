"""Multi-URL pools: ``engine = "external"`` over ``urls = [...]``, one replica per server.

The servers are real emulator processes; a pool member that dies is left out of
routing while it fails its health checks and comes back once it answers again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from processes import wait_for

from orchestrator.api import TaskKind, TaskRequest
from orchestrator.config import ConfigError, parse_config
from orchestrator.emulator.process import StartEmulator
from orchestrator.replicas.manager import Lifecycle, ManagerSettings
from orchestrator.runtime import Runtime, launch_spec

FAST = ManagerSettings(
    ready_timeout_s=60.0,
    ready_poll_s=0.05,
    health_interval_s=0.1,
    health_timeout_s=0.5,
    health_failures_to_fail=2,
    restart_backoff_s=0.1,
    restart_backoff_max_s=0.2,
)


def pool_toml(urls: list[str], extra: str = "") -> str:
    listed = ", ".join(f"'{u}'" for u in urls)
    return f"[[models]]\nname = 'ext'\nengine = 'external'\nurls = [{listed}]\n{extra}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("url = 'http://a:1'\n", r"urls: give url \(one server\) or urls \(a pool\), not both"),
        ("max_replicas = 3\n", "a pool of 2 URLs serves at most 2 replicas, got 3"),
    ],
)
def test_a_pool_refuses_a_second_source_of_replicas(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(pool_toml(["http://a:1", "http://b:1"], extra))


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ([], "urls: an empty list"),
        (["http://a:1", "ftp://b"], r"urls\[1\]: expected an http:// or https:// URL"),
        (["http://a:1", "http://a:1/"], r"urls\[1\]: 'http://a:1/' is listed twice"),
        (["http://a:port"], r"urls\[0\]: not a URL"),
        (["http:///v1"], "with a host"),
    ],
)
def test_bad_pool_urls_are_named(urls: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(pool_toml(urls))


def test_only_external_models_take_urls() -> None:
    with pytest.raises(ConfigError, match="urls: only for engine 'external'"):
        parse_config("[[models]]\nname = 'e'\nengine = 'emulated'\nurls = ['http://a:1']\n")


def test_a_pool_has_a_replica_per_url_and_shares_the_key() -> None:
    config = parse_config(pool_toml(["http://a:1", "http://b:1"], "api_key_env = 'K'\n"))
    model = config.models[0]
    assert (model.min_replicas, model.replicas_max, model.pool) == (2, 2, model.urls)
    spec = launch_spec(model, environ={"K": "pool-key"})
    assert spec.urls == ("http://a:1", "http://b:1") and spec.api_key == "pool-key"


async def test_a_pool_member_that_dies_is_ejected_then_readmitted(
    tmp_path: Path, start_emulator: StartEmulator
) -> None:
    """Two keyed servers, one replica each; one dies: calls go to the other; it comes
    back on the same port: READY again and routed to."""
    key = ["--api-key", "pool-key"]
    emus = [start_emulator(model="ext", speed=8.0, extra_args=key) for _ in range(2)]
    config = parse_config(pool_toml([e.url for e in emus], "api_key_env = 'POOL_KEY'\n"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("POOL_KEY", "pool-key")
        rt = Runtime(config, workdir=tmp_path, settings=FAST)
    request = TaskRequest(kind=TaskKind.COMPLETE, prompt="def f(x):", max_tokens=24, model="ext")

    async def one() -> set[str]:
        events = [e async for e in rt.orchestrator.submit(request)]
        assert events[-1].type == "done", events[-1]
        return {e.replica for e in events if e.type == "node" and e.replica}

    async def served_by() -> set[str]:
        """Where 8 calls at once went (together they spread over the live members)."""
        return set().union(*await asyncio.gather(*(one() for _ in range(8))))

    try:
        await rt.start(wait_ready_s=60)
        reps = sorted(rt.manager.replicas.values(), key=lambda r: r.id)
        assert [r.url for r in reps] == [e.url for e in emus]
        assert all(r.state is Lifecycle.READY for r in reps)
        assert await served_by() == {r.id for r in reps}

        victim, other = reps
        port = emus[0].port
        emus[0].stop()
        await wait_for(lambda: victim.state is not Lifecycle.READY, "the dead member ejected", 30)
        assert await served_by() == {other.id}

        start_emulator(model="ext", speed=8.0, extra_args=[*key, "--port", str(port)])
        await wait_for(lambda: victim.state is Lifecycle.READY, "the member back", 30)
        assert await served_by() == {victim.id, other.id}
    finally:
        await rt.stop()
