"""Scale-out measured on a local multi-node Ray cluster: a node lost under load, and a fleet.

Both start ``ray.cluster_utils.Cluster`` on this machine: a head and worker nodes, each
a raylet of its own that declares GPUs as logical resources, with emulated replicas
placed on them by the Ray launcher (``[cluster] backend = "ray"``).

- ``node-loss``: the embedded service (``Runtime``) over ``replicas`` replicas with a
  small ``concurrency_limit``, so that a closed-loop streamed load keeps every replica
  full and goodput (completed streams per second, in 1 s windows) is set by the
  replicas, not by this machine's CPU. After a warm-up and a baseline, the worker node
  holding the most replicas is removed; the run records when its replicas were FAILED
  and when their replacements were READY (against the replacements' own cold start),
  and when goodput came back to 90% of its level before the loss and stayed there for
  ``hold`` windows.
- ``fleet``: one ``cato serve`` over ``replicas`` emulated replicas spread over the
  nodes, a streamed load over HTTP; how long startup took, how the replicas spread,
  the memory the whole cluster took, and how every request ended.

Every call ends as exactly one of ``done`` (finished stream), ``error`` (a clean error
event or HTTP error), ``hung`` (nothing for ``hang_s``), or ``broken`` (an exception,
a garbled stream). Run by hand (Ray is the ``.[ray]`` extra)::

    python3 -m orchestrator.bench.ray_cluster node-loss [--out bench-results/ray]
    python3 -m orchestrator.bench.ray_cluster fleet --replicas 32 [--out bench-results/ray]

``tests/test_ray.py`` runs both (the fleet at a smaller count) and prints the same report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.replicas.manager import Lifecycle, ManagerSettings

# A replica's supervision at test speed: failures seen within a second.
FAST = ManagerSettings(
    ready_timeout_s=90.0,
    ready_poll_s=0.1,
    health_interval_s=0.3,
    health_timeout_s=1.0,
    health_failures_to_fail=2,
    restart_backoff_s=0.2,
    restart_backoff_max_s=1.0,
)
RECOVERED_SHARE = 0.9  # goodput is back at this share of its level before the loss


# --------------------------------------------------------------------------- the cluster


@dataclass
class LocalCluster:
    """A head and workers on this machine; ``workers`` are the removable nodes."""

    cluster: Any
    workers: list[Any]

    @property
    def address(self) -> str:
        return str(self.cluster.address)


@contextmanager
def local_cluster(
    gpus_per_node: int, *, workers: int = 2, cpus_per_node: int = 2
) -> Iterator[LocalCluster]:
    """``ray.cluster_utils.Cluster`` with a head and ``workers`` nodes, each declaring
    ``gpus_per_node`` logical GPUs (and a small object store: replicas use none)."""
    from orchestrator.replicas.ray_launcher import import_ray

    ray = import_ray()
    from ray.cluster_utils import Cluster

    node: dict[str, Any] = {
        "num_cpus": cpus_per_node,
        "num_gpus": gpus_per_node,
        "object_store_memory": 100 * 1024 * 1024,
    }
    cluster: Any = Cluster(initialize_head=True, head_node_args=node)
    try:
        added = [cluster.add_node(**node) for _ in range(workers)]
        cluster.wait_for_nodes()
        yield LocalCluster(cluster, added)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def mem_available_gib() -> float:
    """``MemAvailable`` of this machine (Linux), in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Ended:
    """One call of the load: when it started and ended (seconds since the load's
    start), and how."""

    start: float
    end: float
    outcome: str  # done | error | hung | broken
    detail: str = ""


OneCall = Callable[[int, int], Awaitable[tuple[str, str]]]


async def closed_loop(
    one: OneCall,
    clients: int,
    stop: asyncio.Event,
    t0: float,
    hang_s: float,
    ended: list[Ended],
) -> None:
    """``clients`` loops, each sending its next call when the last ended, until ``stop``;
    each call goes to ``ended`` as it ends. A call that takes longer than ``hang_s`` is
    cut and counted ``hung``."""

    async def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            start = time.monotonic() - t0
            try:
                outcome, detail = await asyncio.wait_for(one(n, i), hang_s)
            except TimeoutError:
                outcome, detail = "hung", f"nothing for {hang_s:g} s"
            except Exception as exc:
                outcome, detail = "broken", repr(exc)
            ended.append(Ended(start, time.monotonic() - t0, outcome, detail))
            i += 1
            if outcome != "done":
                await asyncio.sleep(0.05)  # a client backs off a little after a failure

    await asyncio.gather(*(client(n) for n in range(clients)))


def per_window(ended: list[Ended], start: float, end: float, width: float = 1.0) -> list[int]:
    """Calls ``done`` per window of ``width`` seconds in [start, end) (whole windows)."""
    counts = [0] * max(int((end - start) // width), 0)
    for e in ended:
        if e.outcome == "done" and start <= e.end:
            k = int((e.end - start) // width)
            if k < len(counts):
                counts[k] += 1
    return counts


def back_at(level: float, after: list[int], hold: int = 3, width: float = 1.0) -> float | None:
    """When goodput was back: 0 when no window after the loss fell below
    ``RECOVERED_SHARE`` of ``level``; otherwise the start of the first ``hold`` windows,
    after the first that fell below, whose mean is at or above it (None: not yet)."""
    floor = RECOVERED_SHARE * level
    dips = [k for k, n in enumerate(after) if n < floor]
    if not dips:
        return 0.0
    for k in range(dips[0] + 1, len(after) - hold + 1):
        if statistics.fmean(after[k : k + hold]) >= floor:
            return k * width
    return None


def outcomes(ended: list[Ended]) -> dict[str, int]:
    counts = dict.fromkeys(("done", "error", "hung", "broken"), 0)
    for e in ended:
        counts[e.outcome] = counts.get(e.outcome, 0) + 1
    return counts


class RetryCounter(logging.Handler):
    """Counts the executor's "retrying elsewhere" warnings while attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.retried = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying elsewhere" in record.getMessage():
            self.retried += 1

    @contextmanager
    def attached(self) -> Iterator[RetryCounter]:
        logger = logging.getLogger("orchestrator.executor")
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "not within the run" if value is None else f"{value:.{digits}f} s"


# --------------------------------------------------------------------------- node loss


@dataclass(frozen=True)
class NodeLossOptions:
    replicas: int = 6
    gpus_per_node: int = 3
    concurrency_limit: int = 2
    clients: int = 18  # 1.5 x the slots: every replica stays full, calls queue
    max_tokens: int = 64
    speed: float = 1.0  # tiny@cpu's own time: a 3 s cold start
    warmup_s: float = 3.0
    baseline_s: float = 6.0
    settle_s: float = 60.0  # the most the load runs on after the loss
    min_after_s: float = 8.0  # the least
    hold: int = 3
    hang_s: float = 30.0


@dataclass
class NodeLossReport:
    options: NodeLossOptions
    nodes: dict[str, int]  # replicas per node before the loss
    lost: int  # replicas on the removed node
    level: float  # completed streams/s before the loss (mean of 1 s windows)
    counts: dict[str, int]
    retried: int
    failed_s: float | None  # loss -> every lost replica FAILED (or gone)
    replaced_s: float | None  # loss -> every replacement READY
    # The slowest replacement's own cold start: its actor placed (a worker process
    # started on its node), then its engine started until READY.
    cold_start_s: float | None
    back_s: float | None  # loss -> goodput back (see ``back_at``)
    before: list[int] = field(default_factory=list)
    after: list[int] = field(default_factory=list)
    replacement_nodes: dict[str, int] = field(default_factory=dict)
    startup_s: float = 0.0
    replicas_after: int = 0  # replicas listed at the end (replaced once: as many as before)
    lost_node_used: bool = False  # whether any replica ended up on the removed node
    errors: list[str] = field(default_factory=list)  # the first few, for the record

    @property
    def margin_s(self) -> float | None:
        """Replacement time beyond the replacement's own cold start (goal: <= 10 s)."""
        if self.replaced_s is None or self.cold_start_s is None:
            return None
        return self.replaced_s - self.cold_start_s

    def lines(self) -> list[str]:
        o = self.options
        c = self.counts
        return [
            f"node loss: {o.replicas} emulated replicas (tiny@cpu at {o.speed:g}x, "
            f"{o.concurrency_limit} calls each) on {len(self.nodes)} Ray nodes "
            f"{sorted(self.nodes.values(), reverse=True)}, {o.clients} clients streaming "
            f"{o.max_tokens} tokens; the worker with {self.lost} replicas removed",
            f"  calls: {sum(c.values())}: {c['done']} done, {c['error']} clean errors, "
            f"{c['hung']} hung, {c['broken']} broken; {self.retried} retried on another "
            "replica",
            f"  lost replicas FAILED after {_fmt(self.failed_s, 2)}; replacements READY after "
            f"{_fmt(self.replaced_s)} (their cold start {_fmt(self.cold_start_s)}, beyond it "
            f"{_fmt(self.margin_s, 2)}; goal <= 10 s) on nodes "
            f"{sorted(self.replacement_nodes.values(), reverse=True)}",
            f"  goodput before: {self.level:.1f} streams/s; lowest 1 s window after: "
            f"{min(self.after, default=0)}; back to {RECOVERED_SHARE:.0%} of it after "
            f"{_fmt(self.back_s)} (goal <= 60 s)",
            f"  streams per 1 s window: before {self.before}; after {self.after}",
        ]


def _ray_config(
    address: str, replicas: int, speed: float, concurrency_limit: int | None = None
) -> Any:
    from orchestrator.config import config_from_dict

    model: dict[str, Any] = {
        "name": "tiny",
        "engine": "emulated",
        "profile": "tiny@cpu",
        "speed": speed,
        "gpus_per_replica": 1,
        "min_replicas": replicas,
        "max_replicas": replicas,
    }
    if concurrency_limit is not None:
        model["concurrency_limit"] = concurrency_limit
    return config_from_dict(
        {
            "cluster": {"backend": "ray", "address": address},
            "models": [model],
            "provisioner": {"policy": "fixed", "interval_s": 0.5},
        },
        "ray-bench",
    )


def _per_node(replicas: Any) -> dict[str, int]:
    nodes: dict[str, int] = {}
    for r in replicas:
        if r.placement is not None:
            nodes[r.placement.node] = nodes.get(r.placement.node, 0) + 1
    return nodes


async def node_loss(
    cluster: LocalCluster,
    workdir: Path,
    options: NodeLossOptions | None = None,
    on_ready: Callable[[Any], Awaitable[None]] | None = None,
) -> NodeLossReport:
    """Remove the worker node with the most replicas under a streamed load; see the
    module. ``on_ready`` is awaited with the ``Runtime`` once every replica is READY."""
    from orchestrator.api import TaskKind, TaskRequest
    from orchestrator.runtime import Runtime

    o = options or NodeLossOptions()
    config = _ray_config(cluster.address, o.replicas, o.speed, o.concurrency_limit)
    rt = Runtime(config, workdir=workdir, settings=FAST)
    t_start = time.monotonic()
    try:
        await rt.start(wait_ready_s=120)
        startup_s = time.monotonic() - t_start
        if on_ready is not None:
            await on_ready(rt)
        before_loss = list(rt.manager.replicas.values())
        nodes = _per_node(before_loss)
        workers = {w.node_id: w for w in cluster.workers}
        target = max((n for n in nodes if n in workers), key=lambda n: (nodes[n], n))
        victims = {r.id for r in before_loss if r.placement and r.placement.node == target}

        async def one(n: int, i: int) -> tuple[str, str]:
            request = TaskRequest(
                kind=TaskKind.COMPLETE, prompt=f"def f_{n}_{i}(a, b):", max_tokens=o.max_tokens
            )
            last = None
            async for event in rt.orchestrator.submit(request):
                last = event
            if last is None:
                return "broken", "no event"
            return ("done", "") if last.type == "done" else (last.type, last.error or "")

        stop = asyncio.Event()
        ended: list[Ended] = []
        t0 = time.monotonic()
        with RetryCounter().attached() as retries:
            load = asyncio.create_task(closed_loop(one, o.clients, stop, t0, o.hang_s, ended))
            await asyncio.sleep(o.warmup_s + o.baseline_s)
            lost_at = time.monotonic() - t0
            # Off the event loop: the load keeps running while the raylet is stopped.
            await asyncio.to_thread(cluster.cluster.remove_node, workers[target])
            while (now := time.monotonic() - t0) - lost_at < o.settle_s:
                ready = rt.manager.of_model("tiny", Lifecycle.READY)
                replaced = len(ready) == o.replicas and not victims & set(rt.manager.replicas)
                level = _mean(per_window(ended, lost_at - o.baseline_s, lost_at))
                back = back_at(level, per_window(ended, lost_at, now), o.hold)
                if replaced and back is not None and now - lost_at >= o.min_after_s:
                    break
                await asyncio.sleep(0.05)
            end = time.monotonic() - t0
            stop.set()
            await asyncio.wait_for(load, o.hang_s + 10)
            retried = retries.retried
        fresh = [r for r in rt.manager.replicas.values() if r.id not in {b.id for b in before_loss}]
        placed = getattr(rt.manager.launcher, "placed_in_s", {})
        colds = [
            placed.get(r.id, 0.0) + r.cold_start_s for r in fresh if r.cold_start_s is not None
        ]
        # When, from the manager's own records (its clock is time.monotonic).
        lost_abs = t0 + lost_at
        failed_s = _last_first(rt.manager.transitions, victims, FAILED_OR_GONE, lost_abs)
        ready_ids = {r.id for r in fresh}
        if len(fresh) < len(victims):
            replaced_s = None  # not every lost replica was replaced within the run
        else:
            replaced_s = _last_first(rt.manager.transitions, ready_ids, {Lifecycle.READY}, lost_abs)
        before = per_window(ended, lost_at - o.baseline_s, lost_at)
        after = per_window(ended, lost_at, end)
        return NodeLossReport(
            options=o,
            nodes={k[:12]: v for k, v in nodes.items()},
            lost=len(victims),
            level=_mean(before),
            counts=outcomes(ended),
            retried=retried,
            failed_s=failed_s,
            replaced_s=replaced_s,
            cold_start_s=max(colds) if colds else None,
            back_s=back_at(_mean(before), after, o.hold),
            before=before,
            after=after,
            replacement_nodes={k[:12]: v for k, v in _per_node(fresh).items()},
            startup_s=startup_s,
            replicas_after=len(rt.manager.replicas),
            lost_node_used=target in _per_node(rt.manager.replicas.values()),
            errors=[e.detail for e in ended if e.outcome != "done"][:5],
        )
    finally:
        await rt.stop()


FAILED_OR_GONE = {Lifecycle.FAILED, Lifecycle.STOPPED}


def _last_first(
    transitions: Iterable[Any], ids: set[str], states: set[Lifecycle], since: float
) -> float | None:
    """Seconds from ``since`` until every replica of ``ids`` had entered one of
    ``states`` (its first such transition after ``since``); None if one never did."""
    first: dict[str, float] = {}
    for t in transitions:
        if t.replica_id in ids and t.state in states and t.at >= since:
            first.setdefault(t.replica_id, t.at)
    if not ids or set(first) != ids:
        return None
    return max(first.values()) - since


def _mean(values: list[int]) -> float:
    return statistics.fmean(values) if values else 0.0


# --------------------------------------------------------------------------- command line


def write_report(out: Path, name: str, report: Any) -> Path:
    """``name``.json (every figure) and ``name``.txt (the report's lines) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data = asdict(report)
    data["lines"] = report.lines()
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    path = out / f"{name}.txt"
    path.write_text("\n".join(report.lines()) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m orchestrator.bench.ray_cluster",
        description="Scale-out on a local multi-node Ray cluster (needs the .[ray] extra).",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/ray"))
    sub = parser.add_subparsers(dest="what", required=True)
    loss = sub.add_parser("node-loss", help="remove a worker node under a streamed load")
    loss.add_argument("--replicas", type=int, default=NodeLossOptions.replicas)
    loss.add_argument("--clients", type=int, default=NodeLossOptions.clients)
    fleet_cmd = sub.add_parser("fleet", help="one cato serve over many replicas")
    fleet_cmd.add_argument("--replicas", type=int, default=32)
    fleet_cmd.add_argument("--gpus-per-node", type=int, default=None)
    fleet_cmd.add_argument("--clients", type=int, default=64)
    fleet_cmd.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="cato-ray-bench-"))
    if args.what == "node-loss":
        gpus = -(-(args.replicas + 2) // 3)  # room for the lost replicas' replacements
        options = NodeLossOptions(replicas=args.replicas, gpus_per_node=gpus, clients=args.clients)
        with local_cluster(options.gpus_per_node) as cluster:
            report: Any = asyncio.run(node_loss(cluster, work, options))
        name = "node-loss"
    else:
        from orchestrator.bench.ray_fleet import FleetOptions, fleet

        gpus = args.gpus_per_node or -(-args.replicas * 9 // 8 // 3)  # an eighth spare
        fleet_options = FleetOptions(
            replicas=args.replicas,
            gpus_per_node=gpus,
            clients=args.clients,
            duration_s=args.duration,
        )
        with local_cluster(gpus) as cluster:
            report = fleet(cluster, work, fleet_options)
        name = f"fleet-{args.replicas}"
    print("\n".join(report.lines()))
    print(f"(written: {write_report(args.out, name, report)} and .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
