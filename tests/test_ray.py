"""The Ray launcher on a real multi-node Ray cluster on this machine.

``ray.cluster_utils.Cluster`` runs a head and worker nodes as separate raylets, each
declaring GPUs as logical resources; every replica is an emulator process its actor
started. Marked ``ray`` (own stage: ``scripts/test-ray``); skipped without Ray.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from processes import wait_for

from orchestrator.api import TaskEvent, TaskKind, TaskRequest
from orchestrator.bench.ray_cluster import (
    FAST,
    LocalCluster,
    NodeLossOptions,
    local_cluster,
    node_loss,
    write_report,
)
from orchestrator.bench.ray_fleet import FleetOptions, fleet
from orchestrator.config import config_from_dict
from orchestrator.replicas.manager import Lifecycle
from orchestrator.runtime import Runtime

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

NODE_GPUS = 2


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A head and two workers, 2 logical GPUs each."""
    with local_cluster(NODE_GPUS) as c:
        yield c


def report(name: str, lines: Any) -> None:
    """Print a measured report; also write it under $CATO_REPORT_DIR when set."""
    print("\n" + "\n".join(lines.lines()))
    if folder := os.environ.get("CATO_REPORT_DIR"):
        write_report(Path(folder), name, lines)


def ray_config(address: str, replicas: int) -> Any:
    return config_from_dict(
        {
            "cluster": {"backend": "ray", "address": address},
            "models": [
                {
                    "name": "tiny",
                    "engine": "emulated",
                    "profile": "tiny@cpu",
                    "speed": 8.0,
                    "gpus_per_replica": 1,
                    "min_replicas": replicas,
                    "max_replicas": replicas,
                }
            ],
            "provisioner": {"interval_s": 0.5},
        },
        "ray-test",
    )


async def run_one(rt: Runtime, max_tokens: int = 16) -> TaskEvent:
    request = TaskRequest(kind=TaskKind.COMPLETE, prompt="def add(a, b):", max_tokens=max_tokens)
    return [e async for e in rt.orchestrator.submit(request)][-1]


async def test_replicas_spread_over_nodes_and_survive_a_node_loss(tmp_path: Path) -> None:
    """Six replicas, two per node (3 logical GPUs each); a worker removed under a
    closed-loop streamed load that keeps every replica full. Measured and printed: when
    the lost replicas were FAILED and replaced, and when goodput was back."""
    options = NodeLossOptions()

    async def spread(rt: Runtime) -> None:
        reps = list(rt.manager.replicas.values())
        assert len(reps) == 6 and all(r.state is Lifecycle.READY for r in reps)
        by_node: dict[str, list[int]] = {}
        for r in reps:
            assert r.placement is not None
            by_node.setdefault(r.placement.node, []).extend(r.gpus)
        assert sorted(len(g) for g in by_node.values()) == [2, 2, 2]  # spread evenly
        assert all(len(g) == len(set(g)) for g in by_node.values())  # distinct GPU ids
        assert rt.manager.slots.total == 9 and rt.manager.slots.free == 3
        assert (await run_one(rt)).type == "done"

    with local_cluster(options.gpus_per_node) as c:
        result = await node_loss(c, tmp_path, options, on_ready=spread)
    report("node-loss", result)
    counts = result.counts
    assert result.lost == 2
    assert counts["hung"] == 0 and counts["broken"] == 0, result.errors  # every call ended
    # Only the streams already under way on the lost node may fail; the calls queued
    # there, and those that had sent no token, went to the other replicas.
    assert counts["error"] <= result.lost * options.concurrency_limit, result.errors
    assert counts["done"] > 10 * options.clients
    # Replaced once, elsewhere, within the run's 60 s (a sanity bound, not the goal).
    assert result.failed_s is not None and result.replaced_s is not None
    assert sum(result.replacement_nodes.values()) == 2 and not result.lost_node_used
    assert result.replicas_after == 6
    # Goodput came back at least halfway (the report gives when it reached 90%).
    assert statistics.fmean(result.after[-3:]) >= 0.5 * result.level > 0


def test_cato_serve_fronts_32_replicas_over_three_nodes(tmp_path: Path) -> None:
    """One cato serve, 32 emulated replicas over a head and two workers of 12 logical
    GPUs each, a streamed load over HTTP: spread 11/11/10, no request fails."""
    options = FleetOptions(replicas=32, gpus_per_node=12, clients=64, duration_s=15.0)
    with local_cluster(options.gpus_per_node) as c:
        result = fleet(c, tmp_path, options)
    report("fleet-32", result)
    assert sorted(result.nodes.values()) == [10, 11, 11]
    assert result.gpus_total == 36 and result.gpus_free == 4
    assert result.counts["done"] > 0, result.errors
    assert result.counts["error"] == result.counts["hung"] == result.counts["broken"] == 0, (
        result.errors
    )
    assert result.ready_after_load == 32 and result.restarts == 0


async def test_scale_up_places_replicas_where_gpus_are_free(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Two replicas to start; each start takes the node with the most free GPUs, and
    once all six are taken a start is refused (the provisioner sees no free GPU)."""
    rt = Runtime(ray_config(cluster.address, 2), workdir=tmp_path, settings=FAST)
    try:
        await rt.start(wait_ready_s=120)
        spec = rt.specs["tiny"]
        for _ in range(4):
            assert await rt.manager.start(spec) is not None
        assert await rt.manager.start(spec) is None
        assert rt.manager.slots.free_by_node() == dict.fromkeys(rt.manager.slots.free_by_node(), 0)
        assert rt.cluster_view(0.0).free_gpus == 0
        await wait_for(
            lambda: len(rt.manager.of_model("tiny", Lifecycle.READY)) == 6, "six ready", 90
        )
        per_node: dict[str, int] = {}
        for r in rt.manager.replicas.values():
            assert r.placement is not None
            per_node[r.placement.node] = per_node.get(r.placement.node, 0) + 1
        assert sorted(per_node.values()) == [2, 2, 2]
    finally:
        await rt.stop()


async def test_cato_serve_on_ray_answers_the_openai_client(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    from openai import AsyncOpenAI

    from orchestrator.bench.live_serve import start_service, wait_ready
    from orchestrator.bench.processes import free_port

    text = (
        f"[cluster]\nbackend = 'ray'\naddress = '{cluster.address}'\n\n"
        "[[models]]\nname = 'tiny'\nengine = 'emulated'\nspeed = 8.0\n"
        "gpus_per_replica = 1\nmin_replicas = 3\nmax_replicas = 3\n"
    )
    service = start_service(text, tmp_path, free_port())
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(service, session, 120)
            # The service starts replicas one after the other, each once its actor is
            # placed: wait_ready may see the first READY before the others are listed.
            deadline = time.monotonic() + 120
            while True:
                async with session.get(service.url + "/v1/status") as resp:
                    status = await resp.json()
                states = [r["state"] for r in status["replicas"]]
                if states.count("ready") == 3 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        assert status["gpus_total"] == 6 and status["gpus_free"] == 3
        assert len([r for r in status["replicas"] if r["state"] == "ready"]) == 3
        client = AsyncOpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)
        async with client:
            done = await client.completions.create(model="tiny", prompt="def f(x):", max_tokens=8)
            assert done.choices[0].text and done.usage is not None
            stream = await client.completions.create(
                model="tiny", prompt="def g(y):", max_tokens=8, stream=True
            )
            chunks = [c.choices[0].text async for c in stream if c.choices]
            assert "".join(chunks)
    finally:
        service.stop()


async def test_a_killed_actor_is_replaced_and_a_crashed_engine_restarted_in_place(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """An actor killed on a live node: its place is gone; a fresh replica (new id, new
    actor) takes over and the old one's GPU is free again. An engine that exits under a
    live actor is restarted in place: same replica, same actor, same URL."""
    from orchestrator.replicas.ray_launcher import RayLauncher, RayReplica

    rt = Runtime(ray_config(cluster.address, 2), workdir=tmp_path, settings=FAST)
    try:
        await rt.start(wait_ready_s=120)
        victim, survivor = sorted(rt.manager.replicas.values(), key=lambda r: r.id)
        assert isinstance(victim.handle, RayReplica)
        ray.kill(victim.handle.actor)
        await wait_for(
            lambda: (
                victim.id not in rt.manager.replicas
                and len(rt.manager.of_model("tiny", Lifecycle.READY)) == 2
            ),
            "a replacement READY",
            60,
        )
        assert victim.gave_up is False and victim.restarts == 0  # replaced, not restarted
        assert survivor.state is Lifecycle.READY and survivor.restarts == 0
        assert len(rt.manager.replicas) == 2 and rt.manager.slots.free == 4
        assert "lost its place; replaced" in [
            t.why for t in rt.manager.transitions if t.replica_id == victim.id
        ]
        assert (await run_one(rt)).type == "done"

        # The engine dies, its actor lives: the actor's watch call answers at once.
        assert isinstance(survivor.handle, RayReplica) and survivor.pid is not None
        old_pid, url, actor = survivor.pid, survivor.url, survivor.handle.actor
        os.kill(old_pid, signal.SIGKILL)  # the nodes are this machine
        await wait_for(
            lambda: survivor.restarts == 1 and survivor.state is Lifecycle.READY,
            "the engine restarted in place",
            60,
        )
        assert isinstance(survivor.handle, RayReplica) and survivor.handle.actor is actor
        assert survivor.pid != old_pid and survivor.url == url
        assert survivor.id in rt.manager.replicas and len(rt.manager.replicas) == 2

        # An actor that dies before it starts its engine (a restart in place that races
        # its node's loss) gives a handle whose place is gone: replaced, not retried.
        launcher = rt.manager.launcher
        placement = rt.manager.slots.allocate(1)
        assert placement is not None
        spec = rt.specs["tiny"]
        address = await launcher.address("probe", spec, placement)
        assert isinstance(launcher, RayLauncher)
        ray.kill(launcher._actors["probe"])
        handle = await launcher.start("probe", spec, address, placement, None)
        assert handle.exited() and handle.lost() and "actor lost" in handle.exit_reason()
        await launcher.release("probe")
        rt.manager.slots.release(placement)
    finally:
        await rt.stop()
