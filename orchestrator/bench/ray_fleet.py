"""One ``cato serve`` over a fleet of emulated replicas on a local multi-node Ray cluster.

The service joins the cluster (``[cluster] backend = "ray"``), starts ``replicas``
emulated replicas (one actor and one emulator process each, one logical GPU each) and
serves ``clients`` closed-loop streamed completions over HTTP for ``duration_s``. The
report: how long startup took (``cato serve`` launched until every replica was READY),
how the replicas spread over the nodes (Ray's own list of live actors), the memory the
service and its replicas took (``MemAvailable`` before and at its lowest), and how
every request ended. See ``ray_cluster`` for the command line.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.bench.ray_cluster import Ended, LocalCluster, closed_loop, mem_available_gib

IDLE_S = 5.0  # the service's idle CPU is measured over this long
CHAOS_TO_OUTCOME = {"finished": "done", "error": "error", "hung": "hung", "garbled": "broken"}


@dataclass(frozen=True)
class FleetOptions:
    replicas: int = 32
    gpus_per_node: int = 12  # 36 logical GPUs over three nodes
    clients: int = 64
    duration_s: float = 20.0
    max_tokens: int = 32
    speed: float = 8.0  # tiny@cpu's 3 s cold start at 8x: the engine is ready in 0.4 s
    hang_s: float = 30.0
    ready_timeout_s: float = 480.0


@dataclass
class FleetReport:
    options: FleetOptions
    startup_s: float  # cato serve launched -> every replica READY
    first_ready_s: float
    nodes: dict[str, int]  # live replica actors per node
    gpus_total: int
    gpus_free: int
    counts: dict[str, int]
    streams_per_s: float
    e2e_p50_ms: float
    e2e_p95_ms: float
    mem_used_gib: float  # MemAvailable before the service less its lowest during the run
    ready_after_load: int
    restarts: int
    idle_cpu_share: float = 0.0  # of one core: the service with every replica READY, no load
    cpu_ms_per_request: float = 0.0  # the service's CPU per request under the load, idle off
    errors: list[str] = field(default_factory=list)  # the first few, for the record

    def lines(self) -> list[str]:
        o = self.options
        c = self.counts
        return [
            f"fleet: one cato serve over {o.replicas} emulated replicas (tiny@cpu at "
            f"{o.speed:g}x) on {len(self.nodes)} Ray nodes, {self.gpus_total} logical GPUs",
            f"  startup: first replica READY after {self.first_ready_s:.1f} s, all "
            f"{o.replicas} after {self.startup_s:.1f} s; replicas per node "
            f"{sorted(self.nodes.values(), reverse=True)}; {self.gpus_free} GPUs left free",
            f"  load: {o.clients} clients streaming {o.max_tokens} tokens for "
            f"{o.duration_s:g} s: {sum(c.values())} requests, {c['done']} done, "
            f"{c['error']} errors, {c['hung']} hung, {c['broken']} broken; "
            f"{self.streams_per_s:.1f} streams/s, end to end p50 {self.e2e_p50_ms:.0f} ms, "
            f"p95 {self.e2e_p95_ms:.0f} ms",
            f"  cato serve's CPU: {self.idle_cpu_share:.1%} of a core idle (health checks "
            f"of {o.replicas} replicas), {self.cpu_ms_per_request:.2f} ms per request under "
            "the load (idle taken off)",
            f"  afterwards {self.ready_after_load}/{o.replicas} READY, {self.restarts} "
            f"restarts; memory taken by the service and its replicas: "
            f"{self.mem_used_gib:.1f} GiB",
        ]


def fleet_config(address: str, o: FleetOptions) -> str:
    return (
        '[server]\nhost = "127.0.0.1"\n\n'
        f"[cluster]\nbackend = 'ray'\naddress = '{address}'\n\n"
        '[[models]]\nname = "tiny"\nengine = "emulated"\nprofile = "tiny@cpu"\n'
        f"speed = {o.speed!r}\ngpus_per_replica = 1\n"
        f"min_replicas = {o.replicas}\nmax_replicas = {o.replicas}\n\n"
        '[provisioner]\npolicy = "fixed"\ninterval_s = 0.5\n'
    )


def replicas_per_node(address: str) -> dict[str, int]:
    """Live replica actors per node, from Ray's state API."""
    from orchestrator.replicas.ray_launcher import import_ray

    ray = import_ray()
    from ray.util.state import list_actors

    owns = not ray.is_initialized()
    if owns:
        ray.init(address=address, log_to_driver=False, namespace="cato-bench")
    try:
        actors = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
    finally:
        if owns:
            ray.shutdown()
    nodes: dict[str, int] = {}
    for actor in actors:
        if "ReplicaActor" in str(actor.class_name):
            node = str(actor.node_id)[:12]
            nodes[node] = nodes.get(node, 0) + 1
    return nodes


async def _status(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url + "/v1/status") as resp:
            return await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def _ready(status: dict[str, Any] | None) -> int:
    return sum(r["state"] == "ready" for r in (status or {}).get("replicas", []))


@dataclass
class _Run:
    first_ready_s: float = 0.0
    startup_s: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    ended: list[Ended] = field(default_factory=list)
    lowest_gib: float = float("inf")
    idle_cpu_share: float = 0.0  # of one core, all replicas READY, no load
    load_cpu_s: float = 0.0  # the service's CPU over the load, its idle rate taken off


async def _drive(
    url: str, pid: int, proc_alive: Callable[[], bool], o: FleetOptions, launched: float
) -> _Run:
    from orchestrator.bench.chaos import request_once
    from orchestrator.bench.processes import proc_cpu_s

    run = _Run()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    connector = aiohttp.TCPConnector(limit=o.clients + 8)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        while True:
            if not proc_alive():
                raise RuntimeError("cato serve exited while its replicas started")
            status = await _status(session, url)
            ready = _ready(status)
            if ready and not run.first_ready_s:
                run.first_ready_s = time.monotonic() - launched
            if ready >= o.replicas and status is not None:
                run.status = status
                break
            if time.monotonic() - launched > o.ready_timeout_s:
                raise TimeoutError(
                    f"{ready} of {o.replicas} replicas READY after {o.ready_timeout_s:g} s"
                )
            await asyncio.sleep(0.25)
        run.startup_s = time.monotonic() - launched
        # Idle: health checks of every replica, the provisioner, Ray's driver threads.
        cpu0, t_idle = proc_cpu_s(pid), time.monotonic()
        await asyncio.sleep(IDLE_S)
        idle_rate = (proc_cpu_s(pid) - cpu0) / (time.monotonic() - t_idle)
        run.idle_cpu_share = idle_rate

        async def one(n: int, i: int) -> tuple[str, str]:
            prompt = f"def handler_{n}_{i}(request):\n"
            outcome, detail = await request_once(session, url, prompt, o.max_tokens, o.hang_s)
            return CHAOS_TO_OUTCOME[outcome], detail

        stop = asyncio.Event()
        run.lowest_gib = mem_available_gib()
        cpu0 = proc_cpu_s(pid)
        t0 = time.monotonic()
        load = asyncio.create_task(closed_loop(one, o.clients, stop, t0, o.hang_s, run.ended))
        while time.monotonic() - t0 < o.duration_s:
            await asyncio.sleep(0.5)
            run.lowest_gib = min(run.lowest_gib, mem_available_gib())
        stop.set()
        await asyncio.wait_for(load, o.hang_s + 10)
        busy_s = time.monotonic() - t0
        run.load_cpu_s = max(proc_cpu_s(pid) - cpu0 - idle_rate * busy_s, 0.0)
        run.after = await _status(session, url) or {}
    return run


def fleet(cluster: LocalCluster, workdir: Path, options: FleetOptions | None = None) -> FleetReport:
    """Start ``cato serve`` on ``cluster``, wait for every replica, load it; see the module."""
    from orchestrator.bench.live_serve import start_service
    from orchestrator.bench.processes import free_port

    o = options or FleetOptions()
    workdir.mkdir(parents=True, exist_ok=True)
    mem_before = mem_available_gib()
    launched = time.monotonic()
    service = start_service(fleet_config(cluster.address, o), workdir, free_port())
    try:
        run = asyncio.run(
            _drive(service.url, service.proc.pid, lambda: service.proc.poll() is None, o, launched)
        )
        nodes = replicas_per_node(cluster.address)
    finally:
        service.stop()
    done = sorted(e.end - e.start for e in run.ended if e.outcome == "done")
    counts = dict.fromkeys(("done", "error", "hung", "broken"), 0)
    for e in run.ended:
        counts[e.outcome] += 1
    return FleetReport(
        options=o,
        startup_s=run.startup_s,
        first_ready_s=run.first_ready_s,
        nodes=nodes,
        gpus_total=int(run.status.get("gpus_total", 0)),
        gpus_free=int(run.status.get("gpus_free", 0)),
        counts=counts,
        streams_per_s=counts["done"] / o.duration_s,
        e2e_p50_ms=1000 * statistics.median(done) if done else 0.0,
        e2e_p95_ms=1000 * done[int(0.95 * (len(done) - 1))] if done else 0.0,
        mem_used_gib=mem_before - run.lowest_gib,
        ready_after_load=_ready(run.after),
        restarts=sum(int(r.get("restarts", 0)) for r in run.after.get("replicas", [])),
        idle_cpu_share=run.idle_cpu_share,
        cpu_ms_per_request=1000 * run.load_cpu_s / max(len(run.ended), 1),
        errors=[e.detail for e in run.ended if e.outcome != "done"][:5],
    )
