"""Live runs of a scenario: the embedded ``Orchestrator`` over real emulator processes.

Each replica of the scenario is an emulator process (``launch_emulator``) running the
scenario's engine profile ``speed`` times faster than real time. The orchestrator runs
on a clock sped up by the same factor, so its SLAs, deadlines, learned rates and the
recorded latencies are all in the profile's time, directly comparable with a simulated
run: the arrivals, tasks and seeds are those of ``cato bench sim``.

Output lengths are the workload's (``LiveOptions.lengths = "workload"``): each model
call generates exactly the tokens the simulator gives it, so live pressure is the
workload's pressure. The orchestrator under test never sees them: the emulators get a
table of prompt -> tokens (``length_table``; see ``orchestrator/emulator/lengths.py``)
and serve a listed prompt as a request with ``min_tokens = max_tokens`` would be.
With ``lengths = "emulator"`` the emulators draw lengths themselves and the twin
reproduces their draws (``outputs="emulator"``).

What differs from the simulation (and is why the twin run exists):

* HTTP, streaming and Python overheads are real, and count ``speed`` times over in
  profile time;
* utilization is sampled from the orchestrator's in-flight calls every ``sample_s``;
* only fixed provisioning: there is no replica manager in these runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.bench.scenarios import Point, Scenario, Sweep, capacity_rps, sweep_rates
from orchestrator.bench.workloads import Workload
from orchestrator.emulator.lengths import LengthTable
from orchestrator.emulator.process import RunningEmulator, launch_emulator
from orchestrator.engine_model import load_profile
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.graphs import build_graph
from orchestrator.metrics import TaskRecord, UtilizationTracker, kind_stats
from orchestrator.policy.scheduler import SCHEDULERS, make_scheduler
from orchestrator.policy.state import Rates
from orchestrator.sim.results import RecordStore, SimResult
from orchestrator.sim.simulator import OutputModel, SimTask, Simulator

log = logging.getLogger(__name__)

LIVE_POLICIES: tuple[str, ...] = tuple(SCHEDULERS)  # every live router (no clairvoyant)
_KEEP_ALL_S = 1e12  # the recorder's window: keep every task of a run


@dataclass(frozen=True)
class LiveOptions:
    """How live runs are driven; ``lengths`` says whose output lengths the engines
    generate: the workload's (exactly, as the simulator has them) or their own draws."""

    speed: float = 2.0
    drain_s: float = 120.0  # profile seconds to wait for stragglers after the last arrival
    sample_s: float = 0.05  # profile seconds between utilization samples
    start_timeout_s: float = 60.0
    lengths: OutputModel = "workload"


def length_table(
    scenario: Scenario, runs: Iterable[Sequence[tuple[float, SimTask]]]
) -> LengthTable:
    """Every model call's output length as the simulator gives it, by the call's prompt
    (graphs built with the scenario's defaults, as the orchestrator builds them)."""
    defaults = scenario.defaults()
    table = LengthTable()
    seen: set[str] = set()
    for arrivals in runs:
        for _, task in arrivals:
            if task.key in seen:
                continue
            seen.add(task.key)
            llm = [n for n in build_graph(task.request, defaults).nodes if n.op == "llm"]
            for node in llm:
                table.add(node.prompt, task.output_for(node, len(llm)))
    if table.conflicts:
        log.warning("%d prompts recur with other output lengths (first kept)", table.conflicts)
    return table


@dataclass
class _Replica:
    spec: ReplicaSpec
    emulator: RunningEmulator


async def length_counts(urls: Iterable[str]) -> tuple[int, int]:
    """How many calls the emulators at ``urls`` have served with a length from their
    table, and how many with a length of their own (the prompt was not listed)."""
    counts = {"hit": 0, "miss": 0}
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in urls:
            try:
                async with session.get(url + "/metrics") as resp:
                    text = await resp.text()
            except (aiohttp.ClientError, TimeoutError):
                continue  # a replica that went away: its calls are not counted
            for family in text_string_to_metric_families(text):
                if family.name != "cato_emulator_fixed_lengths":
                    continue
                for sample in family.samples:
                    result = sample.labels.get("result", "")
                    if sample.name.endswith("_total") and result in counts:
                        counts[result] += int(sample.value)
    return counts["hit"], counts["miss"]


def note_lengths(result: SimResult, before: tuple[int, int], after: tuple[int, int]) -> None:
    """Put the calls served with the workload's length, and those that were not, in
    ``result.counters`` (``fixed_lengths``, ``drawn_lengths``)."""
    fixed, drawn = after[0] - before[0], after[1] - before[1]
    result.counters["fixed_lengths"] = fixed
    result.counters["drawn_lengths"] = drawn
    if drawn and fixed:
        log.warning("%d of %d calls were not in the length table", drawn, fixed + drawn)


def launch_replicas(
    scenario: Scenario, options: LiveOptions, seed: int, lengths: Path | None = None
) -> list[_Replica]:
    """One emulator process per replica of each model, serving the output lengths of the
    table saved at ``lengths`` when given; the caller stops them."""
    extra = ["--output-lengths", str(lengths)] if lengths is not None else []
    if scenario.prefix_caching:  # the engines of the simulated twin cache prefixes too
        extra.append("--enable-prefix-caching")
    started: list[_Replica] = []
    try:
        for plan in scenario.models:
            profile = load_profile(plan.profile)
            limit = scenario.concurrency_limit or profile.max_num_seqs
            for i in range(plan.replicas):
                emulator = launch_emulator(
                    model=plan.name,
                    profile=plan.profile,
                    speed=options.speed,
                    seed=seed,
                    timeout_s=options.start_timeout_s,
                    extra_args=extra,
                )
                spec = ReplicaSpec(
                    id=f"{plan.name}-{i}",
                    url=emulator.url,
                    model=plan.name,
                    concurrency_limit=limit,
                    rates=Rates.from_profile(profile),
                    engine="emulator",
                )
                started.append(_Replica(spec, emulator))
    except BaseException:
        stop_replicas(started)
        raise
    return started


def stop_replicas(replicas: Sequence[_Replica]) -> None:
    for rep in replicas:
        rep.emulator.stop()


def run_live_sweep(
    scenario: Scenario,
    workload: Workload,
    *,
    policies: Sequence[str] = LIVE_POLICIES,
    quick: bool = False,
    seed: int = 0,
    duration_s: float | None = None,
    rates: Sequence[tuple[float, float]] | None = None,
    options: LiveOptions = LiveOptions(),
    on_run: Callable[[str, float], Callable[[int], None] | None] | None = None,
) -> Sweep:
    """Every (policy, rate) live, each over the arrivals ``run_sweep`` would simulate."""
    unknown = [p for p in policies if p not in LIVE_POLICIES]
    if unknown:
        raise ValueError(f"not available live: {', '.join(unknown)}")
    capacity = capacity_rps(scenario, workload)
    duration = duration_s or (scenario.quick_duration_s if quick else scenario.duration_s)
    chosen = list(rates) if rates is not None else sweep_rates(capacity, quick)
    sweep = Sweep(_fixed(scenario), capacity, duration, seed, quick)
    runs = {rate: list(scenario.arrivals(rate, duration, workload, seed)) for _, rate in chosen}
    with tempfile.TemporaryDirectory(prefix="cato-live-") as tmp:
        table = None
        if options.lengths == "workload":
            table = Path(tmp) / "output-lengths.json"
            length_table(scenario, runs.values()).save(table)
        replicas = launch_replicas(scenario, options, seed, table)
        try:
            for policy in policies:
                for paper, rate in chosen:
                    arrivals = runs[rate]
                    label = f"{scenario.name} {policy} live @ {rate:g}/s"
                    progress = on_run(label, len(arrivals)) if on_run is not None else None
                    result = asyncio.run(
                        _run_point(scenario, replicas, policy, arrivals, seed, options, progress)
                    )
                    sweep.points.append(Point(policy, "fixed", paper, rate, result))
        finally:
            stop_replicas(replicas)
    return sweep


def twin_sweep(
    live: Sweep,
    workload: Workload,
    emulator_seed: int | None = None,
    *,
    lengths: OutputModel = "workload",
) -> Sweep:
    """The simulator's run of exactly the live sweep's points, with the output lengths
    the live replicas generated: ``lengths`` as in the live run's ``LiveOptions``; for
    ``"emulator"``, their draws with ``emulator_seed`` (default the sweep's)."""
    scenario = live.scenario
    twin = Sweep(scenario, live.capacity_rps, live.duration_s, live.seed, live.quick)
    for point in live.points:
        config = replace(
            scenario.config(point.policy, point.provisioner, live.seed),
            outputs=lengths,
            emulator_seed=live.seed if emulator_seed is None else emulator_seed,
        )
        arrivals = scenario.arrivals(point.rate, live.duration_s, workload, live.seed)
        result = Simulator(config).run(arrivals)
        twin.points.append(Point(point.policy, "fixed", point.paper_rate, point.rate, result))
    return twin


def _fixed(scenario: Scenario) -> Scenario:
    return replace(scenario, provisioners=("fixed",))


# --------------------------------------------------------------------------- one run


async def _run_point(
    scenario: Scenario,
    replicas: Sequence[_Replica],
    policy: str,
    arrivals: Sequence[tuple[float, SimTask]],
    seed: int,
    options: LiveOptions,
    progress: Callable[[int], None] | None,
) -> SimResult:
    speed = options.speed
    loop = asyncio.get_running_loop()

    def clock() -> float:
        return loop.time() * speed

    orch = Orchestrator(
        [rep.spec for rep in replicas],
        defaults=scenario.defaults(),
        scheduler=make_scheduler(policy, seed=seed),
        clock=clock,
        window_s=_KEEP_ALL_S,
    )
    if scenario.prefix_caching:  # the emulators cache prefixes: affinity routes by them
        for plan in scenario.models:
            profile = load_profile(plan.profile)
            orch.set_prefix_cache(plan.name, profile.block_size, profile.num_kv_blocks)
    tracker = UtilizationTracker()
    urls = [rep.emulator.url for rep in replicas]
    lengths_before = await length_counts(urls)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    t0 = clock()
    for rep in replicas:
        tracker.replica_state(rep.spec.id, True, 0.0)
    sampler = asyncio.create_task(_sample(orch, replicas, tracker, t0, options.sample_s, speed))
    try:
        await _drive(orch, arrivals, t0, speed, options.drain_s, progress)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await orch.close()
    end = clock() - t0
    result = _result(
        orch,
        policy,
        seed,
        tracker,
        t0,
        end,
        arrivals,
        replicas,
        time.perf_counter() - wall_start,
        time.process_time() - cpu_start,
    )
    note_lengths(result, lengths_before, await length_counts(urls))
    return result


async def _drive(
    orch: Orchestrator,
    arrivals: Sequence[tuple[float, SimTask]],
    t0: float,
    speed: float,
    drain_s: float,
    progress: Callable[[int], None] | None,
) -> None:
    """Submit each task at its arrival time; cancel what is still running after the drain."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()
    for n, (at, task) in enumerate(arrivals, 1):
        delay = (t0 + at) / speed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        running.add(asyncio.create_task(_consume(orch, task)))
        if progress is not None and n % 20 == 0:
            progress(n)
    last = arrivals[-1][0] if arrivals else 0.0
    remaining = max((t0 + last + drain_s) / speed - loop.time(), 0.0)
    if running:
        _, late = await asyncio.wait(running, timeout=remaining)
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    if progress is not None:
        progress(len(arrivals))


async def _consume(orch: Orchestrator, task: SimTask) -> None:
    async with contextlib.aclosing(orch.submit(task.request)) as events:
        async for _ in events:
            pass


async def _sample(
    orch: Orchestrator,
    replicas: Sequence[_Replica],
    tracker: UtilizationTracker,
    t0: float,
    every_s: float,
    speed: float,
) -> None:
    """Feed the utilization tracker the orchestrator's in-flight calls per replica."""
    while True:
        now = orch.clock() - t0
        for rep in replicas:
            in_flight, _ = orch.replica_load(rep.spec.id)
            tracker.running(rep.spec.id, in_flight, rep.spec.concurrency_limit, now)
        await asyncio.sleep(every_s / speed)


def _result(
    orch: Orchestrator,
    policy: str,
    seed: int,
    tracker: UtilizationTracker,
    t0: float,
    end: float,
    arrivals: Sequence[tuple[float, SimTask]],
    replicas: Sequence[_Replica],
    wall_s: float,
    cpu_s: float,
) -> SimResult:
    store = RecordStore()
    for rec in sorted(orch.recorder.records(), key=lambda r: r.arrival):
        _store(store, rec, t0)
    per_model: dict[str, int] = {}
    for rep in replicas:
        per_model[rep.spec.model] = per_model.get(rep.spec.model, 0) + 1
    util = tracker.summary(end)
    return SimResult(
        scheduler=policy,
        provisioner="fixed",
        seed=seed,
        kinds={k: kind_stats(store.records(kind=k)) for k in store.kinds},
        overall=kind_stats(store.records()),
        utilization=util,
        start=0.0,
        end=end,
        last_arrival=arrivals[-1][0] if arrivals else 0.0,
        replica_series={m: [(0.0, n, 0)] for m, n in per_model.items()},
        scale_events=[],
        counters={"tasks": len(store)},
        wall_s=wall_s,
        cpu_s=cpu_s,
        replica_seconds={m: n * end for m, n in per_model.items()},
        store=store,
    )


def _store(store: RecordStore, rec: TaskRecord, t0: float) -> None:
    first = None if rec.first_token is None else rec.first_token - t0
    store.add(
        rec.kind,
        rec.metric == "ttft",
        rec.target_ms,
        rec.arrival - t0,
        first,
        rec.done - t0,
        rec.outcome,
    )
