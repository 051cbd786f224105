"""CATO next to the routers people deploy in front of vLLM, on the same load.

One set of emulator processes (the rq2 scenario's replicas, or another scenario's with
one model) serves every system in turn: ``cato serve`` over HTTP, plain round robin from the client
(``direct``, the floor), ``vllm-router`` (power of two, round robin), ``sglang-router``
and a Ray Serve app (one fixed replica per engine, and Ray's autoscaling tuned; both with
CPUs for every replica and the engine's concurrency per replica). Each system gets the same
arrivals and the same prompts through ``/v1/completions`` (peers get the prompt CATO's
graph would build, and a fixed per-kind ``priority``), so the emulators generate the same
outputs. Router overhead is the CPU time of the router's process tree per request
(``/proc/PID/stat``) and its latency above ``direct``'s.

Time is the profile's: rates, durations, SLAs and the reported latencies are those of
the engine profile. With ``speed`` below 1 the emulators run that much slower than the
profile and every wall-clock interval is stretched by ``1 / speed`` (CATO's SLAs and
rate prior included), so a load near the replicas' capacity stays within what two cores
can route: that is how the comparison under pressure is run.

Where the scenario's engines cache prompt prefixes (``sessions``), each system gets
fresh emulators (a cache the system before warmed would favour the next), CATO's
config says the replicas cache (``prefix_cache``, so it routes by affinity), and the
emulators' vLLM counters give each system's prefix-cache hit rate: prompt tokens found
cached over those looked up, from the end of the warm-up to the end of the run. The
cache-aware peers are ``sglang-router`` (its default policy is ``cache_aware``) and
``vllm-router-cache`` (``vllm-router --policy cache_aware``). A task CATO runs as several
calls (a long module's translation, one call per chunk) reaches a peer as those calls
at once, as a client would send them; it ends with the last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api import KindStats, SLAMetric, TaskKind, TaskRequest
from orchestrator.bench.frontends import (
    CatoSetup,
    Unavailable,
    serve_cato,
    serve_ray,
    start_frontend,
)
from orchestrator.bench.live import LiveOptions, launch_replicas, stop_replicas
from orchestrator.bench.processes import proc_tree_cpu_s
from orchestrator.bench.scenarios import Scenario, capacity_rps, scenario
from orchestrator.bench.workloads import Workload
from orchestrator.graphs import TaskDefaults, build_graph
from orchestrator.metrics import TaskRecord, kind_stats
from orchestrator.policy.scheduler import KIND_PRIORITY
from orchestrator.sim.simulator import SimTask

PEER_GROUPS: dict[str, tuple[str, ...]] = {
    "cato-triage": ("cato-triage",),
    "vllm-router": ("vllm-router-pow2", "vllm-router-rr"),
    "sglang-router": ("sglang-router",),
    "vllm-router-cache": ("vllm-router-cache",),
    "ray-serve": ("ray-serve", "ray-serve-tuned"),
}


@dataclass(frozen=True)
class PeersOptions:
    """How the comparison is driven. ``rate`` (tasks/s), ``duration_s`` and ``drain_s``
    are in the profile's time; the emulators run ``speed`` times as fast as the profile."""

    rate: float = 4.0
    duration_s: float = 60.0
    warmup_tasks: int = 12
    drain_s: float = 60.0
    start_timeout_s: float = 120.0
    seed: int = 0
    speed: float = 1.0
    # ``[scheduler]`` lines of CATO's config (``key = value``), for a live ablation
    cato_scheduler: tuple[str, ...] = ()
    # peers send each call with its kind's engine priority, as their users would
    kind_priority: bool = True

    @property
    def drain_wall_s(self) -> float:
        return self.drain_s / self.speed


@dataclass
class SystemResult:
    """One system's run: per-kind stats, and the CPU its router processes spent."""

    name: str
    kinds: dict[str, KindStats]
    overall: KindStats
    router_cpu_s: float
    requests: int
    skipped: str | None = None
    # prompt tokens the engines found cached / looked up (None: they cache nothing)
    prefix_hit_rate: float | None = None

    @property
    def cpu_ms_per_request(self) -> float | None:
        return None if not self.requests else 1000.0 * self.router_cpu_s / self.requests

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "skipped": self.skipped,
            "requests": self.requests,
            "router_cpu_s": self.router_cpu_s,
            "cpu_ms_per_request": self.cpu_ms_per_request,
            "prefix_hit_rate": self.prefix_hit_rate,
            "overall": self.overall.model_dump(),
            "kinds": {k: s.model_dump() for k, s in self.kinds.items()},
        }


@dataclass
class PeersRun:
    """Every system of one comparison."""

    rate: float
    duration_s: float
    seed: int
    replicas: int
    results: list[SystemResult] = field(default_factory=list)
    speed: float = 1.0
    capacity_rps: float | None = None
    scenario: str = "rq2"

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "seed": self.seed,
            "replicas": self.replicas,
            "speed": self.speed,
            "capacity_rps": self.capacity_rps,
            "systems": [r.to_dict() for r in self.results],
        }


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Job:
    """One task as each kind of front end wants it: CATO's one request, and the model
    calls a peer gets for it (one, but for a translation in several chunks)."""

    kind: str
    sla_metric: SLAMetric
    sla_ms: float
    cato_body: dict[str, Any]
    peer_bodies: tuple[dict[str, Any], ...]
    # The request asks to end rather than answer late (``on_late="shed"``, as the
    # language server's completions do): CATO is told so, and the client hangs up on
    # any front end at the SLA point, as a language server in front of a peer would.
    shed: bool = False

    @property
    def peer_body(self) -> dict[str, Any]:
        return self.peer_bodies[0]


def make_job(
    request: TaskRequest, model: str, defaults: TaskDefaults, kind_priority: bool = True
) -> Job:
    """The CATO request, and the model calls a peer gets for it: those of the graph,
    which must not depend on each other (a translation's chunks do not), each with its
    kind's engine priority (``KIND_PRIORITY``; without ``kind_priority``, none)."""
    graph = build_graph(request, defaults)
    nodes = graph.llm_nodes()
    if len(nodes) > 1 and any(graph.node(d).op == "llm" for n in nodes for d in n.deps):
        raise ValueError(f"{request.kind} tasks chain {len(nodes)} calls; peers take one")
    text = request.prompt if request.kind is TaskKind.COMPLETE else request.code
    ext: dict[str, Any] = {"task": request.kind.value}
    shed = request.on_late == "shed"
    if shed:
        ext["on_late"] = "shed"
    if request.language:
        ext["language"] = request.language
    if request.target_language:
        ext["target_language"] = request.target_language
    common = {"model": model, "stream": True, "temperature": 0.0}
    cato = {**common, "prompt": text, "cato": ext}
    if request.max_tokens is not None:
        cato["max_tokens"] = request.max_tokens
    if request.context:
        cato["cato"] = ext  # context travels in the prompt for completions
    peers = tuple(
        {
            **common,
            "prompt": node.prompt,
            "max_tokens": node.max_tokens,
            "stop": list(node.stop),
            "priority": KIND_PRIORITY.get(request.kind.value, 0) if kind_priority else 0,
        }
        for node in nodes
    )
    sla = defaults.for_kind(request.kind).sla
    return Job(request.kind.value, sla.metric, sla.target_ms, cato, peers, shed)


@dataclass
class _Timing:
    arrival: float
    first: float | None = None
    done: float = 0.0
    ok: bool = False


async def _stream(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    expire_s: float | None = None,
    ttft: bool = False,
) -> _Timing:
    """POST a streaming completion; note when the first text arrives and when it ends.

    It is ok once ``[DONE]`` arrives after no error chunk. An answer without text (a
    translation whose chunks the graph's checks leave empty) counts as answered at its
    first chunk. With ``expire_s``, hang up (the engine aborts) if the SLA point (the
    first text with ``ttft``, else the end) has not come after that many seconds."""
    loop = asyncio.get_running_loop()
    t = _Timing(loop.time())
    answered: float | None = None
    failed = done = False
    expiry = asyncio.timeout(expire_s)
    try:
        async with expiry, session.post(url, json=body) as resp:
            if resp.status != 200:
                await resp.read()
                t.done = loop.time()
                return t
            async for raw in resp.content:
                line = raw.strip()
                if line == b"data: [DONE]":
                    done = True
                if not line.startswith(b"data:") or done:
                    continue
                text, error = _chunk(line[5:])
                failed = failed or error
                if answered is None:
                    answered = loop.time()
                if t.first is None and text:
                    t.first = loop.time()
                    if ttft:
                        expiry.reschedule(None)
            if t.first is None:
                t.first = answered
            t.ok = done and not failed and t.first is not None
    except (TimeoutError, aiohttp.ClientError):
        t.ok = False
    t.done = loop.time()
    return t


async def _stream_all(
    session: aiohttp.ClientSession,
    targets: Sequence[str],
    bodies: Sequence[dict[str, Any]],
    expire_s: float | None = None,
    ttft: bool = False,
) -> _Timing:
    """A task's calls at once (the ``n``-th to ``targets[n % len]``): its first text is
    the first of any, it ends with the last, and is ok if every call was."""
    if len(bodies) == 1:
        return await _stream(session, targets[0], bodies[0], expire_s, ttft)
    loop = asyncio.get_running_loop()
    arrival = loop.time()
    parts = await asyncio.gather(
        *(
            _stream(session, targets[n % len(targets)], b, expire_s, ttft)
            for n, b in enumerate(bodies)
        )
    )
    firsts = [p.first for p in parts if p.first is not None]
    return _Timing(
        arrival,
        min(firsts) if firsts else None,
        max(p.done for p in parts),
        all(p.ok for p in parts),
    )


def _chunk(payload: bytes) -> tuple[bool, bool]:
    """(whether an SSE chunk carries text, whether it reports an error)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return False, True
    if not isinstance(data, dict):
        return False, True
    choices = data.get("choices") or []
    return any(c.get("text") for c in choices), "error" in data


async def drive(
    targets: Sequence[str],
    arrivals: Sequence[tuple[float, Job]],
    *,
    cato: bool,
    warmup: Sequence[Job],
    drain_s: float,
    before: Any = None,
    speed: float = 1.0,
) -> list[TaskRecord]:
    """Send warm-up jobs one by one, call ``before()``, then every arrival on time
    (round robin over ``targets``, which is one URL except for ``direct``). Arrival
    times are the profile's (wall = profile / ``speed``), ``drain_s`` is wall seconds,
    and the records are in profile time."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=drain_s)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for n, job in enumerate(warmup):
            await _stream_all(session, _rotate(targets, n), _bodies(job, cato))
        if before is not None:
            before()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = []
        for n, (at, job) in enumerate(arrivals):
            delay = t0 + at / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            expire_s = job.sla_ms / 1000 / speed if job.shed else None
            ttft = job.sla_metric is SLAMetric.TTFT
            call = _stream_all(session, _rotate(targets, n), _bodies(job, cato), expire_s, ttft)
            tasks.append(asyncio.create_task(call))
        last = arrivals[-1][0] / speed if arrivals else 0.0
        _, late = await asyncio.wait(tasks, timeout=max(t0 + last + drain_s - loop.time(), 1))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    return [
        _record(n, job, task, t0, speed)
        for n, ((_, job), task) in enumerate(zip(arrivals, tasks, strict=True))
    ]


def _bodies(job: Job, cato: bool) -> tuple[dict[str, Any], ...]:
    return (job.cato_body,) if cato else job.peer_bodies


def _rotate(targets: Sequence[str], n: int) -> list[str]:
    """``targets`` starting at the ``n``-th: round robin over tasks (and their calls)."""
    k = n % len(targets)
    return [*targets[k:], *targets[:k]]


def _record(n: int, job: Job, task: asyncio.Task[_Timing], t0: float, speed: float) -> TaskRecord:
    """The task's times since ``t0`` in profile time (wall seconds x ``speed``)."""
    if task.cancelled():
        t = _Timing(t0, None, t0, False)
        outcome = "cancelled"
    else:
        t = task.result()
        outcome = "ok" if t.ok else "error"

    def profile(at: float) -> float:
        return (at - t0) * speed

    return TaskRecord(
        f"t{n}",
        job.kind,
        job.sla_metric,
        job.sla_ms,
        profile(t.arrival),
        None if t.first is None else profile(t.first),
        profile(max(t.done, t.arrival)),
        outcome,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- the run


def systems(peers: Sequence[str]) -> list[str]:
    """CATO, direct, then each chosen group's configurations."""
    return ["cato", "direct", *(name for group in peers for name in PEER_GROUPS[group])]


def jobs_for(
    chosen: Scenario, workload: Workload, options: PeersOptions
) -> tuple[list[tuple[float, Job]], list[Job]]:
    """The arrivals (seconds, job) of the run, and the warm-up jobs."""
    defaults = chosen.defaults()
    model = chosen.models[0].name

    def job(task: SimTask) -> Job:
        return make_job(task.request, model, defaults, options.kind_priority)

    arrivals = [
        (at, job(t))
        for at, t in chosen.arrivals(options.rate, options.duration_s, workload, options.seed)
    ]
    warm = chosen.arrivals(options.rate, 1e6, workload, options.seed + 100)
    warmup = [job(t) for _, t in _take(warm, options.warmup_tasks)]
    return arrivals, warmup


def _take(it: Iterator[tuple[float, SimTask]], n: int) -> list[tuple[float, SimTask]]:
    out: list[tuple[float, SimTask]] = []
    for item in it:
        if len(out) >= n:
            break
        out.append(item)
    return out


def run_peers(
    workload: Workload,
    peers: Sequence[str],
    options: PeersOptions,
    log: Any = print,
    scenario_name: str = "rq2",
    only: Sequence[str] = (),
) -> PeersRun:
    """Every system over the same emulators and arrivals, one after the other (each on
    fresh emulators where they cache prefixes); with ``only``, just those systems."""
    chosen = scenario(scenario_name)
    if len(chosen.models) != 1:
        raise ValueError(
            f"scenario {scenario_name!r} has {len(chosen.models)} models; peers take one"
        )
    arrivals, warmup = jobs_for(chosen, workload, options)
    model = chosen.models[0].name
    live = LiveOptions(speed=options.speed, start_timeout_s=options.start_timeout_s)
    setup = CatoSetup(
        chosen.defaults(),
        chosen.models[0].profile,
        options.speed,
        chosen.prefix_caching,
        options.cato_scheduler,
    )
    run = PeersRun(
        options.rate,
        options.duration_s,
        options.seed,
        chosen.models[0].replicas,
        speed=options.speed,
        capacity_rps=capacity_rps(chosen, workload),
        scenario=chosen.name,
    )
    fresh = chosen.prefix_caching
    replicas = [] if fresh else launch_replicas(chosen, live, options.seed)
    try:
        with tempfile.TemporaryDirectory(prefix="cato-peers-") as tmp:
            for name in systems(peers):
                if only and name not in only:
                    continue
                log(f"{name}: starting")
                if fresh:
                    stop_replicas(replicas)
                    replicas = launch_replicas(chosen, live, options.seed)
                urls = [r.emulator.url for r in replicas]
                result = run_system(name, urls, model, Path(tmp), arrivals, warmup, options, setup)
                log(f"{name}: {result.skipped or _line(result)}")
                run.results.append(result)
    finally:
        stop_replicas(replicas)
    return run


def _line(result: SystemResult) -> str:
    g = result.overall.goodput_rate
    cpu = result.cpu_ms_per_request
    line = f"goodput {100 * (g or 0):.1f}%, router CPU {cpu or 0:.2f} ms/request"
    if result.prefix_hit_rate is not None:
        line += f", {100 * result.prefix_hit_rate:.1f}% of prompt tokens cached"
    return line


def run_system(
    name: str,
    urls: Sequence[str],
    model: str,
    folder: Path,
    arrivals: Sequence[tuple[float, Job]],
    warmup: Sequence[Job],
    options: PeersOptions,
    setup: CatoSetup | None = None,
) -> SystemResult:
    try:
        front = start_frontend(name, urls, model, folder, options.start_timeout_s, setup)
    except Unavailable as exc:
        return SystemResult(name, {}, KindStats(), 0.0, 0, skipped=f"skipped: {exc}")
    cpu_start: list[float] = []
    cache_start: list[tuple[float, float] | None] = []
    pid = front.pid

    def before() -> None:
        cpu_start.append(proc_tree_cpu_s(pid) if pid is not None else 0.0)
        cache_start.append(prefix_cache_counts(urls) if setup and setup.prefix_cache else None)

    try:
        records = asyncio.run(
            drive(
                front.targets,
                arrivals,
                cato=front.cato,
                warmup=warmup,
                drain_s=options.drain_wall_s,
                before=before,
                speed=options.speed,
            )
        )
        cpu = (proc_tree_cpu_s(pid) if pid is not None else 0.0) - cpu_start[0]
    finally:
        front.stop()
    hit_rate = None
    if cache_start and cache_start[0] is not None:
        (queries0, hits0), (queries, hits) = cache_start[0], prefix_cache_counts(urls)
        hit_rate = (hits - hits0) / (queries - queries0) if queries > queries0 else None
    kinds = sorted({r.kind for r in records})
    return SystemResult(
        name,
        {k: kind_stats(r for r in records if r.kind == k) for k in kinds},
        kind_stats(records),
        cpu,
        len(records),
        prefix_hit_rate=hit_rate,
    )


def prefix_cache_counts(urls: Sequence[str]) -> tuple[float, float]:
    """(prompt tokens looked up, found cached) so far, summed over the emulators at
    ``urls`` (vLLM's ``prefix_cache_queries`` and ``prefix_cache_hits`` counters)."""
    queries = hits = 0.0
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "vllm:prefix_cache_queries_total":
                    queries += sample.value
                elif sample.name == "vllm:prefix_cache_hits_total":
                    hits += sample.value
    return queries, hits


# --------------------------------------------------------------------------- report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(run: PeersRun) -> str:
    """The goodput/latency table per system and kind, and the overhead table."""
    load = f" ({100 * run.rate / run.capacity_rps:.0f}% of C)" if run.capacity_rps else ""
    lines = [
        f"{run.scenario} mix, {run.replicas} emulated replicas at speed {run.speed:g}, "
        f"{run.rate:g} tasks/s{load} for {run.duration_s:g} s (profile time), seed {run.seed}",
        "",
        "| system | kind | goodput | TTFT p50 | p95 | p99 | E2E p50 | p95 | p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in run.results:
        if r.skipped:
            lines.append(f"| {r.name} | {' '.join(r.skipped.split())[:200]} | | | | | | | |")
            continue
        for kind, s in r.kinds.items():
            lines.append(
                f"| {r.name} | {kind} | {_pct(s.goodput_rate)} | {_ms(s.ttft_p50_ms)} | "
                f"{_ms(s.ttft_p95_ms)} | {_ms(s.ttft_p99_ms)} | {_ms(s.e2e_p50_ms)} | "
                f"{_ms(s.e2e_p95_ms)} | {_ms(s.e2e_p99_ms)} |"
            )
    lines += ["", *overhead_table(run)]
    return "\n".join(lines) + "\n"


def merged_table(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One row per system of each labelled run (``peers.json`` as ``write`` saves it):
    what an ablation changed, side by side. The rows come from separate runs, and the
    table says so."""
    lines = [
        f"Merged from {len(runs)} runs of `cato bench peers` (one per label).",
        "",
        "| run | system | goodput | complete goodput | complete TTFT p95 | p99 "
        "| summarize goodput | prompt tokens cached |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, run in runs:
        for system in run["systems"]:
            if system["skipped"] or system["name"] == "direct":
                continue
            kinds = system["kinds"]
            complete, summarize = kinds.get("complete", {}), kinds.get("summarize", {})
            lines.append(
                f"| {label} | {system['name']} | {_pct(system['overall']['goodput_rate'])} "
                f"| {_pct(complete.get('goodput_rate'))} | {_ms(complete.get('ttft_p95_ms'))} "
                f"| {_ms(complete.get('ttft_p99_ms'))} | {_pct(summarize.get('goodput_rate'))} "
                f"| {_pct(system['prefix_hit_rate'])} |"
            )
    return "\n".join(lines)


def overhead_table(run: PeersRun) -> list[str]:
    """CPU per request of the router's processes, and P50 latency above ``direct``'s."""
    direct = next((r for r in run.results if r.name == "direct" and not r.skipped), None)
    kinds = sorted({k for r in run.results for k in r.kinds})
    cached = any(r.prefix_hit_rate is not None for r in run.results)
    head = (
        "| system | goodput | "
        + ("prompt tokens cached | " if cached else "")
        + "router CPU ms/request | "
        + " | ".join(f"{k} +TTFT p50 | {k} +E2E p50" for k in kinds)
    )
    lines = [head + " |", "|---|---|---|" + "---|" * (2 * len(kinds) + cached)]
    for r in run.results:
        if r.skipped:
            continue
        cells = [r.name, _pct(r.overall.goodput_rate)]
        if cached:
            cells.append(_pct(r.prefix_hit_rate))
        cells.append(f"{r.cpu_ms_per_request or 0:.2f}")
        for k in kinds:
            mine = r.kinds.get(k) or KindStats()
            base = (direct.kinds.get(k) if direct else None) or KindStats()
            cells.append(_delta(mine.ttft_p50_ms, base.ttft_p50_ms))
            cells.append(_delta(mine.e2e_p50_ms, base.e2e_p50_ms))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _delta(mine: float | None, base: float | None) -> str:
    if mine is None or base is None:
        return "-"
    return f"{mine - base:+.0f}"


def write(run: PeersRun, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data, text = out / "peers.json", out / "peers.md"
    data.write_text(json.dumps(run.to_dict(), indent=2))
    text.write_text(markdown(run))
    return [data, text]


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover
    """Entry points of the router processes this module starts."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.bench.peers")
    sub = parser.add_subparsers(dest="what", required=True)
    cato = sub.add_parser("serve-cato")
    cato.add_argument("config")
    cato.add_argument("port", type=int)
    ray_ = sub.add_parser("serve-ray")
    ray_.add_argument("port", type=int)
    ray_.add_argument("urls", nargs="+")
    ray_.add_argument("--tuned", action="store_true")
    ray_.add_argument("--max-ongoing", type=int, default=256)
    args = parser.parse_args(argv)
    if args.what == "serve-cato":
        serve_cato(args.config, args.port)
    else:
        serve_ray(args.port, args.urls, args.tuned, args.max_ongoing)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
