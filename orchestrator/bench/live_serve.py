"""Live runs through ``cato serve``: the team service over HTTP, with its own replica
manager and provisioner, in front of the emulated replicas it starts.

``live.py`` runs the embedded orchestrator on a clock sped up to the emulators' speed.
A service runs on wall time, so here time is stretched instead: the emulators run at
``speed`` and the ``cato.toml`` written for each run divides every SLA, provisioner
interval and delay by it (``serve_config``). The arrivals, tasks and seeds are those of
``cato bench sim``; latencies are measured by the client, HTTP included, and reported in
the profile's time. Replica counts and in-flight calls come from polling ``/v1/status``
every ``sample_s``. Each point gets a fresh service: nothing learned carries over.

Output lengths are the workload's, as in ``live.py``: the service is started with the
emulators' table of prompt -> tokens in its environment (``LENGTHS_ENV``), which the
replicas it starts inherit; the service itself never reads it.

Scenarios with a GPU pool (rq3) give every emulated replica one GPU slot of that pool, so
the two models compete for slots as they do in the simulation; replicas start at the
scenario's count (``initial_replicas``) and the provisioner moves them within bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.api import SLA, TaskRequest
from orchestrator.bench.live import LiveOptions, length_counts, length_table, note_lengths
from orchestrator.bench.processes import free_port, proc_cpu_s
from orchestrator.bench.scenarios import Point, Scenario, Sweep, capacity_rps, sweep_rates
from orchestrator.bench.workloads import Workload
from orchestrator.emulator.lengths import LENGTHS_ENV
from orchestrator.engine_model import load_profile
from orchestrator.metrics import UtilizationTracker, kind_stats
from orchestrator.policy.provisioner import PROVISIONERS
from orchestrator.policy.scheduler import SCHEDULERS
from orchestrator.sim.results import RecordStore, ScaleEvent, SimResult
from orchestrator.sim.simulator import SimTask

_SECONDS = (
    "interval_s",
    "window_s",
    "idle_timeout_s",
    "upscale_delay_s",
    "downscale_delay_s",
    "look_back_s",
)


def serve_config(scenario: Scenario, policy: str, provisioner: str, speed: float, seed: int) -> str:
    """The ``cato.toml`` of one point: the scenario's models as emulated replicas, its
    task defaults and provisioner settings, every interval divided by ``speed``."""
    lines = ['[server]\nhost = "127.0.0.1"\nmax_prompt_chars = 1000000\n']
    if scenario.gpus:
        lines.append(f"[gpus]\ndevices = {list(range(scenario.gpus))}\n")
    for plan in scenario.models:
        limit = scenario.concurrency_limit or load_profile(plan.profile).max_num_seqs
        low, high, first = plan.replicas, plan.replicas, plan.replicas
        if provisioner != "fixed":
            low = plan.replicas if plan.min_replicas is None else plan.min_replicas
            high = plan.replicas if plan.max_replicas is None else plan.max_replicas
        lines.append(
            f'[[models]]\nname = {json.dumps(plan.name)}\nengine = "emulated"\n'
            f"profile = {json.dumps(plan.profile)}\nspeed = {speed!r}\n"
            f"gpus_per_replica = {1 if scenario.gpus else 0}\n"
            f"min_replicas = {low}\nmax_replicas = {high}\ninitial_replicas = {first}\n"
            f"concurrency_limit = {limit}\n"
            # as in the simulated twin (rq1-rq3 without, sessions with)
            f"prefix_cache = {str(scenario.prefix_caching).lower()}\n"
        )
    for kind, d in scenario.defaults().kinds.items():
        lines.append(
            f"[tasks.{kind.value}]\nmodel = {json.dumps(d.model)}\n"
            f"sla_metric = {json.dumps(d.sla.metric.value)}\n"
            f"sla_ms = {d.sla.target_ms / speed!r}\nmax_tokens = {d.max_tokens}\n"
        )
    lines.append(f'[scheduler]\npolicy = "{policy}"\nseed = {seed}\n')
    prov = scenario.provisioner_config.model_copy(update={"policy": provisioner})
    settings = prov.model_dump()
    body = [f'policy = "{provisioner}"']
    for key, value in settings.items():
        if key == "policy":
            continue
        body.append(f"{key} = {value / speed if key in _SECONDS else value!r}")
    lines.append("[provisioner]\n" + "\n".join(body) + "\n")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the service


@dataclass
class Service:
    """A ``cato serve`` process (its own process group) and where it answers."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def cpu_s(self) -> float:
        """CPU of the service process itself (its emulator children are not counted)."""
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_service(
    config_text: str, folder: Path, port: int, env: Mapping[str, str] | None = None
) -> Service:
    """``cato serve`` on ``port`` with this config; ``env`` adds to its environment."""
    config = folder / "cato.toml"
    config.write_text(config_text)
    log = folder / "serve.log"
    argv = [sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(config)]
    argv += ["--port", str(port), "--workdir", str(folder / "replicas")]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    return Service(proc, f"http://127.0.0.1:{port}", log)


async def wait_ready(service: Service, session: aiohttp.ClientSession, timeout_s: float) -> None:
    """Until ``/v1/status`` shows no replica still starting and at least one ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"cato serve exited: {service.log.read_text()[-1500:]}")
        try:
            async with session.get(service.url + "/v1/status") as resp:
                status = await resp.json() if resp.status == 200 else None
        except aiohttp.ClientError:
            status = None
        states = [r["state"] for r in (status or {}).get("replicas", [])]
        if states and "pending" not in states and "ready" in states:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"cato serve not ready after {timeout_s:.0f} s: {service.log}")


# --------------------------------------------------------------------------- one point


@dataclass
class _Observed:
    """What polling ``/v1/status`` saw, in profile time since the first arrival."""

    tracker: UtilizationTracker = field(default_factory=UtilizationTracker)
    series: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    events: list[ScaleEvent] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def record(self, status: dict[str, Any], now: float) -> None:
        present: set[str] = set()
        counts: dict[str, tuple[int, int]] = {m: (0, 0) for m in self.series}
        for rep in status.get("replicas", []):
            state, rid, model = rep["state"], rep["id"], rep["model"]
            if state not in ("ready", "pending"):
                continue
            ready, pending = counts.get(model, (0, 0))
            counts[model] = (ready + (state == "ready"), pending + (state == "pending"))
            present.add(rid)
            if rid not in self.seen:
                self.tracker.replica_state(rid, True, now)
            limit = max(int(rep.get("concurrency_limit") or 0), int(rep["in_flight"]), 1)
            self.tracker.running(rid, int(rep["in_flight"]), limit, now)
        for gone in self.seen - present:
            self.tracker.replica_state(gone, False, now)
        self.seen = present
        for model, (ready, pending) in counts.items():
            series = self.series.setdefault(model, [])
            if series and series[-1][1:] == (ready, pending):
                continue
            if series and sum(series[-1][1:]) != ready + pending:
                before = sum(series[-1][1:])
                self.events.append(ScaleEvent(now, model, before, ready + pending, "observed"))
            series.append((now, ready, pending))


@dataclass(frozen=True)
class ServeRun:
    """One point of a sweep: what runs, and how it is driven."""

    scenario: Scenario
    policy: str
    provisioner: str
    seed: int
    options: LiveOptions


async def run_point(
    run: ServeRun,
    arrivals: Sequence[tuple[float, SimTask]],
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """One run through a fresh ``cato serve``."""
    with tempfile.TemporaryDirectory(prefix="cato-live-serve-") as tmp:
        text = serve_config(run.scenario, run.policy, run.provisioner, run.options.speed, run.seed)
        env: dict[str, str] = {}
        if run.options.lengths == "workload":
            table = Path(tmp) / "output-lengths.json"
            length_table(run.scenario, [arrivals]).save(table)
            env[LENGTHS_ENV] = str(table)
        service = start_service(text, Path(tmp), free_port(), env)
        try:
            return await _measure(run, service, arrivals, progress)
        finally:
            service.stop()


async def _measure(
    run: ServeRun,
    service: Service,
    arrivals: Sequence[tuple[float, SimTask]],
    progress: Callable[[int], None] | None,
) -> SimResult:
    options, scenario = run.options, run.scenario
    speed = options.speed
    timeout = aiohttp.ClientTimeout(total=None, sock_read=options.drain_s / speed + 60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        # replicas take their profile's cold start, stretched like everything else
        cold = max(load_profile(p.profile).cold_start_s for p in scenario.models)
        await wait_ready(service, session, options.start_timeout_s + cold / speed)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        def profile_now() -> float:
            return (loop.time() - t0) * speed

        observed = _Observed()
        sampler = asyncio.create_task(
            _sample(session, service.url, observed, profile_now, options.sample_s / speed)
        )
        wall, cpu = time.perf_counter(), service.cpu_s()
        store = RecordStore()
        try:
            await _drive(
                session, service.url, scenario, arrivals, store, profile_now, options, progress
            )
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        end = profile_now()
        wall_s, cpu_s = time.perf_counter() - wall, service.cpu_s() - cpu
        # each point has a fresh service, so its replicas' counts are this point's (a
        # replica stopped by the provisioner took its own with it)
        status: dict[str, Any] = {}
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(service.url + "/v1/status") as resp:
                status = await resp.json() if resp.status == 200 else {}
    urls = [r["url"] for r in status.get("replicas", []) if r.get("engine") == "emulated"]
    result = _result(run, store, observed, arrivals, end, wall_s, cpu_s)
    note_lengths(result, (0, 0), await length_counts(urls))
    return result


async def _sample(
    session: aiohttp.ClientSession,
    url: str,
    observed: _Observed,
    now: Callable[[], float],
    every_s: float,
) -> None:
    while True:
        try:
            async with session.get(url + "/v1/status") as resp:
                if resp.status == 200:
                    observed.record(await resp.json(), now())
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(every_s)


async def _drive(
    session: aiohttp.ClientSession,
    url: str,
    scenario: Scenario,
    arrivals: Sequence[tuple[float, SimTask]],
    store: RecordStore,
    now: Callable[[], float],
    options: LiveOptions,
    progress: Callable[[int], None] | None,
) -> None:
    """POST each task to ``/v1/tasks`` at its arrival; cancel what outlives the drain."""
    speed = options.speed
    defaults = scenario.defaults()
    running: set[asyncio.Task[None]] = set()
    for n, (at, task) in enumerate(arrivals, 1):
        delay = (at - now()) / speed
        if delay > 0:
            await asyncio.sleep(delay)
        sla = task.request.sla or defaults.for_kind(task.request.kind).sla
        running.add(asyncio.create_task(_one(session, url, task.request, sla, store, now)))
        if progress is not None and n % 20 == 0:
            progress(n)
    last = arrivals[-1][0] if arrivals else 0.0
    if running:
        remaining = max((last + options.drain_s - now()) / speed, 0.0)
        _, late = await asyncio.wait(running, timeout=remaining)
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    if progress is not None:
        progress(len(arrivals))


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    request: TaskRequest,
    sla: SLA,
    store: RecordStore,
    now: Callable[[], float],
) -> None:
    """One task over HTTP; its record (SLA in profile time) goes to ``store`` whatever
    happens."""
    arrival, first, outcome = now(), None, "error"
    body = request.model_dump(mode="json", exclude_none=True)
    try:
        async with session.post(url + "/v1/tasks", json=body) as resp:
            if resp.status == 200:
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data: {"):
                        continue
                    event = json.loads(line[6:])
                    kind = event.get("type")
                    if kind == "token" and first is None and event.get("text"):
                        first = now()
                    elif kind == "done":
                        outcome = "ok"
                    elif kind == "error":
                        outcome = "error"
            else:
                await resp.read()
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError):
        outcome = "error"
    finally:
        if outcome == "ok" and first is None:
            first = now()  # an empty final text: the whole result is the first token
        store.add(
            request.kind.value,
            sla.metric.value == "ttft",
            sla.target_ms,
            arrival,
            first,
            now(),
            outcome,  # type: ignore[arg-type]
        )


def _result(
    run: ServeRun,
    store: RecordStore,
    observed: _Observed,
    arrivals: Sequence[tuple[float, SimTask]],
    end: float,
    wall_s: float,
    cpu_s: float,
) -> SimResult:
    replica_seconds: dict[str, float] = {}
    for model, series in observed.series.items():
        total = 0.0
        for (t, ready, pending), nxt in zip(series, [*series[1:], (end, 0, 0)], strict=True):
            total += (ready + pending) * max(nxt[0] - t, 0.0)
        replica_seconds[model] = total
    return SimResult(
        scheduler=run.policy,
        provisioner=run.provisioner,
        seed=run.seed,
        kinds={k: kind_stats(store.records(kind=k)) for k in store.kinds},
        overall=kind_stats(store.records()),
        utilization=observed.tracker.summary(end),
        start=0.0,
        end=end,
        last_arrival=arrivals[-1][0] if arrivals else 0.0,
        replica_series=observed.series,
        scale_events=observed.events,
        counters={"tasks": len(store)},
        wall_s=wall_s,
        cpu_s=cpu_s,
        replica_seconds=replica_seconds,
        store=store,
    )


# --------------------------------------------------------------------------- the sweep


def run_serve_sweep(
    scenario: Scenario,
    workload: Workload,
    *,
    policies: Sequence[str] = ("cato", "round_robin"),
    provisioners: Sequence[str] | None = None,
    quick: bool = False,
    seed: int = 0,
    duration_s: float | None = None,
    rates: Sequence[tuple[float, float]] | None = None,
    options: LiveOptions | None = None,
    on_run: Callable[[str, float], Callable[[int], None] | None] | None = None,
) -> Sweep:
    """Every (policy, provisioner, rate) of ``scenario`` through ``cato serve``."""
    unknown = [p for p in policies if p not in SCHEDULERS]
    unknown += [p for p in provisioners or () if p not in PROVISIONERS]
    if unknown:
        raise ValueError(f"not available through cato serve: {', '.join(unknown)}")
    chosen_provisioners = tuple(provisioners or scenario.provisioners)
    options = options or LiveOptions()
    capacity = capacity_rps(scenario, workload)
    duration = duration_s or (scenario.quick_duration_s if quick else scenario.duration_s)
    chosen = list(rates) if rates is not None else sweep_rates(capacity, quick)
    sweep = Sweep(
        replace(scenario, provisioners=chosen_provisioners), capacity, duration, seed, quick
    )
    for provisioner in chosen_provisioners:
        for policy in policies:
            for paper, rate in chosen:
                arrivals = list(scenario.arrivals(rate, duration, workload, seed))
                label = f"{scenario.name} {policy}/{provisioner} serve @ {rate:g}/s"
                progress = on_run(label, len(arrivals)) if on_run is not None else None
                run = ServeRun(scenario, policy, provisioner, seed, options)
                result = asyncio.run(run_point(run, arrivals, progress))
                sweep.points.append(Point(policy, provisioner, paper, rate, result))
    return sweep
