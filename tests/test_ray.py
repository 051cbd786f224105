"""The Ray launcher on a real multi-node Ray cluster on this machine.

``ray.cluster_utils.Cluster`` runs a head and worker nodes as separate raylets, each
declaring GPUs as logical resources; every replica is an emulator process its actor
started. Marked ``ray`` (own stage: ``scripts/test-ray``); skipped without Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from processes import wait_for

from orchestrator.api import TaskEvent, TaskKind, TaskRequest
from orchestrator.config import config_from_dict
from orchestrator.replicas.manager import Lifecycle, ManagerSettings
from orchestrator.runtime import Runtime

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

FAST = ManagerSettings(
    ready_timeout_s=90.0,
    ready_poll_s=0.1,
    health_interval_s=0.3,
    health_timeout_s=1.0,
    health_failures_to_fail=2,
    restart_backoff_s=0.2,
    restart_backoff_max_s=1.0,
)
NODE = {"num_cpus": 2, "num_gpus": 2}


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A head and two workers, 2 logical GPUs each."""
    c = cluster_utils.Cluster(initialize_head=True, head_node_args=NODE)
    workers = [c.add_node(**NODE) for _ in range(2)]
    c.wait_for_nodes()
    c.workers = workers
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


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


async def test_replicas_spread_over_nodes_and_survive_a_node_loss(
    cluster: Any, tmp_path: Path
) -> None:
    rt = Runtime(ray_config(cluster.address, 4), workdir=tmp_path, settings=FAST)
    try:
        await rt.start(wait_ready_s=120)
        reps = list(rt.manager.replicas.values())
        assert len(reps) == 4 and all(r.state is Lifecycle.READY for r in reps)
        by_node: dict[str, list[int]] = {}
        for r in reps:
            assert r.placement is not None
            by_node.setdefault(r.placement.node, []).extend(r.gpus)
        assert len(by_node) == 3  # spread: no node takes a third replica while one is empty
        assert all(len(g) == len(set(g)) for g in by_node.values())  # distinct GPU ids
        assert rt.manager.slots.total == 6 and rt.manager.slots.free == 2
        assert (await run_one(rt)).type == "done"

        # Lose the node that holds the most replicas while a streamed load runs.
        worker_ids = {w.node_id: w for w in cluster.workers}
        target = max((n for n in by_node if n in worker_ids), key=lambda n: len(by_node[n]))
        victims = {r.id for r in reps if r.placement and r.placement.node == target}
        load = [asyncio.create_task(run_one(rt, 32)) for _ in range(24)]
        await asyncio.sleep(0.3)
        lost_at = time.monotonic()
        cluster.remove_node(worker_ids[target])
        ends = await asyncio.wait_for(asyncio.gather(*load), 120)  # no hung request
        done = sum(e.type == "done" for e in ends)
        assert done >= len(ends) - 2 * len(victims), [e for e in ends if e.type != "done"]

        await wait_for(
            lambda: (
                len(rt.manager.of_model("tiny", Lifecycle.READY)) == 4
                and not victims & set(rt.manager.replicas)
            ),
            "replacements READY on the other nodes",
            60,
        )
        replaced_s = time.monotonic() - lost_at
        nodes = {r.placement.node for r in rt.manager.replicas.values() if r.placement}
        assert target not in nodes
        assert len(rt.manager.replicas) == 4  # replaced once: no extra start on the side
        assert all([(await run_one(rt)).type == "done" for _ in range(4)])
        print(
            f"node loss: {len(victims)} replicas replaced in {replaced_s:.1f} s; "
            f"{done}/{len(ends)} calls done under load"
        )
    finally:
        await rt.stop()


async def test_scale_up_places_replicas_where_gpus_are_free(cluster: Any, tmp_path: Path) -> None:
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


async def test_cato_serve_on_ray_answers_the_openai_client(cluster: Any, tmp_path: Path) -> None:
    from openai import AsyncOpenAI

    from orchestrator.bench.live_serve import start_service, wait_ready
    from orchestrator.bench.peers import free_port

    text = (
        f"[cluster]\nbackend = 'ray'\naddress = '{cluster.address}'\n\n"
        "[[models]]\nname = 'tiny'\nengine = 'emulated'\nspeed = 8.0\n"
        "gpus_per_replica = 1\nmin_replicas = 3\nmax_replicas = 3\n"
    )
    service = start_service(text, tmp_path, free_port())
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(service, session, 120)
            async with session.get(service.url + "/v1/status") as resp:
                status = await resp.json()
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


async def test_a_killed_actor_is_replaced_not_restarted_in_place(
    cluster: Any, tmp_path: Path
) -> None:
    """An actor killed on a live node: its place is gone; a fresh replica (new id, new
    actor) takes over and the old one's GPU is free again."""
    from orchestrator.replicas.ray_launcher import RayReplica

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
    finally:
        await rt.stop()
