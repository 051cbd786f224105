"""SLA capacity: the highest arrival rate at which at least 90% of tasks meet their SLA.

This is DistServe's goodput definition, the headline figure for comparing schedulers.
For each case (a scenario and how its replicas are provisioned), each scheduler (and,
where replicas autoscale, each autoscaling provisioner) and each seed, the simulator is
driven at arrival rates given as multiples ("loads") of the scenario's reference
capacity C (``capacity_rps``: the replicas' saturation throughput for the task mix),
and the highest load that meets the target is found to within 1% of C.

``capacity_search.find_capacity`` searches each cell: a grid bracket, then bisection,
safe where attainment is not monotone in the rate (its docstring says how).

Every run of a cell sees the same seeded arrivals, only faster (common random numbers):
Poisson arrivals scale with the rate by construction, and bursty ones are drawn here by
``coupled_mmpp`` so that a seed keeps its bursts at every rate. Nearby rates then differ
by load, not by luck, which keeps attainment close to monotone within a seed.

Scheduling claims are tuned on seeds 0-4 only; the figures come from the held-out
seeds 100-109. Each seed draws its own workload pool, arrivals, kinds and tasks; nothing
reads a wall clock, so results are a function of the seeds alone.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import random
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from orchestrator.bench.arrivals import Mmpp, with_kinds, with_tasks
from orchestrator.bench.capacity_search import TARGET, TOLERANCE, Censored, find_capacity
from orchestrator.bench.scenarios import SCENARIOS, Scenario, capacity_rps
from orchestrator.bench.workloads import Workload, build_workload
from orchestrator.config import SchedulerConfig
from orchestrator.policy.provisioner import PROVISIONERS
from orchestrator.sim.clairvoyant import SIM_SCHEDULERS
from orchestrator.sim.config import SimConfig
from orchestrator.sim.results import SimResult
from orchestrator.sim.simulator import SimTask, Simulator
from orchestrator.sim.variants import parse_variant

OVERLOAD = 1.2  # load (x C) of the overload figures
TUNING_SEEDS = tuple(range(5))
HELD_OUT_SEEDS = tuple(range(100, 110))
BASELINES = ("round_robin", "pow2", "least_loaded")
# Loads (x C) every search probes first; both contain OVERLOAD.
GRID = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2)
QUICK_GRID = (0.4, 0.8, 1.2)


def default_scheduler() -> str:
    """The scheduler ``cato.toml`` uses when it names none."""
    return SchedulerConfig().policy


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """A scenario and how its replicas are provisioned, with the run lengths used here
    (long enough for a queue past capacity to cost SLAs, short enough for many seeds)."""

    name: str
    scenario: str
    autoscaling: bool
    duration_s: float
    quick_duration_s: float

    def provisioners(self) -> list[str]:
        """``fixed``, or every registered autoscaling provisioner."""
        if not self.autoscaling:
            return ["fixed"]
        return [p for p in PROVISIONERS if p != "fixed"]


CASES: dict[str, Case] = {
    "rq1": Case("rq1", "rq1", False, duration_s=60.0, quick_duration_s=20.0),
    "rq2": Case("rq2", "rq2", False, duration_s=40.0, quick_duration_s=15.0),
    "rq3_fixed": Case("rq3_fixed", "rq3", False, duration_s=90.0, quick_duration_s=30.0),
    "rq3_auto": Case("rq3_auto", "rq3", True, duration_s=120.0, quick_duration_s=45.0),
    "sessions": Case("sessions", "sessions", False, duration_s=20.0, quick_duration_s=10.0),
}


@dataclass(frozen=True)
class Options:
    """How long and how finely each search runs.

    Quick runs are for CI: a queue past capacity has less time to build, so their
    capacities are optimistic, most where SLAs are long next to the run (rq1's 20 s
    translations in 20 s of arrivals). Figures come from full runs.
    """

    quick: bool = False

    @property
    def grid(self) -> tuple[float, ...]:
        return QUICK_GRID if self.quick else GRID

    @property
    def per_kind(self) -> int:
        return 40 if self.quick else 100

    def duration(self, case: Case) -> float:
        return case.quick_duration_s if self.quick else case.duration_s


# --------------------------------------------------------------------------- runs


def coupled_mmpp(mmpp: Mmpp, duration_s: float, seed: int) -> Iterator[float]:
    """``mmpp``'s arrival times, by time change of a unit-rate Poisson stream.

    The quiet/busy sequence comes from one seeded stream and the unit-rate points
    ``E_k`` from another; arrival ``k`` is where the integrated rate reaches ``E_k``.
    The process is the same as ``Mmpp.times`` draws, but for ``Mmpp.around`` of another
    mean rate the same seed keeps the same bursts and each arrival moves by the ratio
    of the rates (``Mmpp.times`` draws states and arrivals from one stream, so a seed's
    bursts change with the rate).
    """
    states = random.Random(seed)
    unit = random.Random(f"{seed}/arrivals")
    t = integrated = 0.0
    point = unit.expovariate(1.0)
    busy = False
    while t < duration_s:
        until = min(
            t + states.expovariate(1.0 / (mmpp.busy_s if busy else mmpp.quiet_s)), duration_s
        )
        rate = mmpp.busy_rate if busy else mmpp.quiet_rate
        reached = integrated + rate * (until - t)
        while point < reached:
            yield t + (point - integrated) / rate
            point += unit.expovariate(1.0)
        integrated, t, busy = reached, until, not busy


def arrivals(
    scenario: Scenario, rate: float, duration_s: float, workload: Workload, seed: int
) -> Iterator[tuple[float, SimTask]]:
    """``scenario.arrivals``, with bursty times drawn by ``coupled_mmpp``."""
    if not scenario.bursty:
        return scenario.arrivals(rate, duration_s, workload, seed)
    times = coupled_mmpp(Mmpp.around(rate), duration_s, seed)
    return with_tasks(with_kinds(times, scenario.mix, seed + 1), workload, seed + 2)


@dataclass(frozen=True)
class Probe:
    """One simulated run at ``load`` x C (``rate`` tasks/s)."""

    load: float
    rate: float
    attainment: float
    requests: int
    sla_met: int
    goodput_rps: float
    worst_ratio: float  # largest latency / SLA target over tasks that finished
    unfinished: int  # tasks that never finished (failed at the end of the drain)
    replica_seconds: float
    # prompt tokens found in the engines' prefix caches / looked up (None: no caching)
    prefix_hit_rate: float | None = None
    shed: int = 0  # tasks that asked to end rather than answer late, ended so (missed)

    @classmethod
    def of(cls, load: float, rate: float, result: SimResult) -> Probe:
        worst = 0.0
        unfinished = 0
        for r in result.records():
            if r.outcome == "cancelled":
                continue
            latency = r.ttft_ms if r.metric == "ttft" else r.e2e_ms
            if r.outcome != "ok" or latency is None:
                unfinished += 1
            else:
                worst = max(worst, latency / r.target_ms)
        shed = result.counters.get("shed", 0)
        unfinished -= shed  # ended on purpose: counted apart
        overall = result.overall
        queries = result.counters.get("prefix_cache_queries")
        hits = result.counters.get("prefix_cache_hits", 0)
        return cls(
            load=load,
            rate=rate,
            # no task, no miss: a load too low to draw one task meets the target
            attainment=1.0 if overall.goodput_rate is None else overall.goodput_rate,
            requests=overall.requests,
            sla_met=overall.sla_met,
            goodput_rps=result.goodput_rps,
            worst_ratio=worst,
            unfinished=unfinished,
            replica_seconds=sum(result.replica_seconds.values()),
            prefix_hit_rate=hits / queries if queries else None,
            shed=shed,
        )

    @property
    def replica_s_per_met(self) -> float:
        return self.replica_seconds / self.sla_met if self.sla_met else math.inf


@dataclass
class Cell:
    """The search of one (case, scheduler, provisioner, seed)."""

    case: str
    scheduler: str
    provisioner: str
    seed: int
    reference_rps: float  # C of this seed's workload
    capacity: float  # x C
    censored: Censored
    inversions: int
    probes: list[Probe] = field(default_factory=list)

    @property
    def capacity_rps(self) -> float:
        return self.capacity * self.reference_rps

    @property
    def row(self) -> tuple[str, str]:
        return self.scheduler, self.provisioner

    def at(self, load: float) -> Probe | None:
        return next((p for p in self.probes if math.isclose(p.load, load)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "probes"},
            "capacity_rps": self.capacity_rps,
            "probes": [asdict(p) for p in self.probes],
        }


def search_cell(
    case: Case,
    scheduler: str,
    provisioner: str,
    seed: int,
    workload: Workload,
    options: Options,
) -> Cell:
    """Search one cell; every run of it sees the same seeded arrivals, only faster."""
    scenario = SCENARIOS[case.scenario]
    reference = capacity_rps(scenario, workload)
    duration = options.duration(case)
    probes: dict[float, Probe] = {}

    def attainment(load: float) -> float:
        config = scenario.config(scheduler, provisioner, seed)
        rate = load * reference
        result = Simulator(config).run(arrivals(scenario, rate, duration, workload, seed))
        probes[load] = Probe.of(load, rate, result)
        return probes[load].attainment

    found = find_capacity(attainment, options.grid)
    if not any(math.isclose(x, OVERLOAD) for x in probes):
        attainment(OVERLOAD)
    return Cell(
        case.name,
        scheduler,
        provisioner,
        seed,
        reference,
        found.capacity,
        found.censored,
        found.inversions,
        sorted(probes.values(), key=lambda p: p.load),
    )


_Sim = TypeVar("_Sim", bound=Simulator)


def run_at_capacity(
    case_name: str, policy: str, seed: int, make: Callable[[SimConfig], _Sim]
) -> tuple[Cell, _Sim, SimResult]:
    """``policy``'s capacity at ``seed`` on a case, found as ``cato bench capacity``
    finds it, and one more run of the case there, on a simulator from ``make`` (given
    the config): a subclass that records what a diagnostic wants to look at."""
    case = CASES[case_name]
    scenario, options = SCENARIOS[case.scenario], Options(False)
    workload = _workload(seed, options.per_kind, _kinds([case_name]))
    cell = search_cell(case, policy, "fixed", seed, workload, options)
    rate = cell.capacity * capacity_rps(scenario, workload)
    sim = make(scenario.config(policy, "fixed", seed))
    result = sim.run(arrivals(scenario, rate, options.duration(case), workload, seed))
    return cell, sim, result


@dataclass
class CapacityRun:
    """Every cell of a run, and what it was asked to cover."""

    cases: list[str]
    schedulers: list[str]
    seeds: list[int]
    quick: bool
    default_scheduler: str
    cells: list[Cell] = field(default_factory=list)
    # seconds of arrivals per case and the grid: this code's, or those a loaded run used
    durations: dict[str, float] = field(default_factory=dict)
    grid: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        options = Options(self.quick)
        self.grid = self.grid or options.grid
        for name in self.cases:
            self.durations.setdefault(name, options.duration(CASES[name]))

    def rows(self, case: str) -> list[tuple[str, str]]:
        return list(dict.fromkeys(c.row for c in self.cells if c.case == case))

    def cells_of(self, case: str, row: tuple[str, str]) -> list[Cell]:
        return [c for c in self.cells if c.case == case and c.row == row]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": TARGET,
            "tolerance_x_c": TOLERANCE,
            "overload_x_c": OVERLOAD,
            "grid_x_c": list(self.grid),
            "tuning_seeds": list(TUNING_SEEDS),
            "seeds": self.seeds,
            "quick": self.quick,
            "default_scheduler": self.default_scheduler,
            "cases": {
                name: {**asdict(CASES[name]), "duration_used_s": self.durations[name]}
                for name in self.cases
            },
            "cells": [c.to_dict() for c in self.cells],
        }


def load_run(raw: dict[str, Any]) -> CapacityRun:
    """A run back from its ``to_dict`` form (to re-draw its reports without simulating)."""
    try:
        cells = [
            Cell(
                **{k: v for k, v in c.items() if k not in ("probes", "capacity_rps")},
                probes=[Probe(**p) for p in c["probes"]],
            )
            for c in raw["cells"]
        ]
        schedulers = list(dict.fromkeys(c.scheduler for c in cells))
        cases = raw["cases"]
        return CapacityRun(
            list(cases),
            schedulers,
            raw["seeds"],
            raw["quick"],
            raw["default_scheduler"],
            cells,
            durations={name: case["duration_used_s"] for name, case in cases.items()},
            grid=tuple(raw["grid_x_c"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not the JSON of a capacity run: {exc}") from None


def parse_seeds(text: str) -> list[int]:
    """``"100-109"``, ``"1,2,5"`` or a mix of both, in order, without repeats."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            first, _, last = part.partition("-")
            lo, hi = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"bad seed range {part!r}: use N, N-M or a comma list") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"bad seed range {part!r}: seeds are >= 0, low to high")
        seeds.extend(s for s in range(lo, hi + 1) if s not in seeds)
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


@functools.lru_cache(maxsize=2)
def _workload(seed: int, per_kind: int, kinds: tuple[str, ...]) -> Workload:
    return build_workload(seed=seed, per_kind=per_kind, kinds=kinds)


def _kinds(cases: Sequence[str]) -> tuple[str, ...]:
    # a scenario of editing sessions builds its own tasks (from the workload's seed)
    scenarios = [SCENARIOS[CASES[c].scenario] for c in cases]
    wanted = {k for s in scenarios if not s.sessions for k in s.mix}
    return tuple(sorted(wanted))


Unit = tuple[str, int, tuple[tuple[str, str], ...], tuple[str, ...], bool]


def _search_unit(unit: Unit) -> list[Cell]:
    """All rows of one (case, seed): one workload build serves them all."""
    case_name, seed, rows, kinds, quick = unit
    options = Options(quick)
    workload = _workload(seed, options.per_kind, kinds)
    case = CASES[case_name]
    return [search_cell(case, s, p, seed, workload, options) for s, p in rows]


def run_capacity(
    cases: Sequence[str],
    schedulers: Sequence[str],
    seeds: Sequence[int],
    *,
    quick: bool = False,
    provisioners: Sequence[str] | None = None,
    jobs: int = 1,
    on_cells: Callable[[list[Cell], int, int], None] | None = None,
) -> CapacityRun:
    """Search every (case, scheduler, provisioner, seed); ``jobs`` processes share the
    (case, seed) units. ``provisioners`` narrows the autoscaling cases' provisioners.
    Results do not depend on ``jobs``. ``on_cells(cells, done, total)`` hears of each unit.
    """
    for name in cases:
        if name not in CASES:
            raise ValueError(f"unknown case {name!r}; known: {', '.join(CASES)}")
    if not schedulers:
        raise ValueError(f"no schedulers given; known: {', '.join(SIM_SCHEDULERS)}")
    for name in schedulers:
        parse_variant(name)  # VariantError (a ValueError) names what is wrong
    if not seeds:
        raise ValueError("no seeds given")
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    run = CapacityRun(list(cases), list(schedulers), list(seeds), quick, default_scheduler())
    kinds = _kinds(cases)
    units: list[Unit] = []
    for seed in seeds:
        for name in cases:
            provs = CASES[name].provisioners()
            if provisioners is not None and CASES[name].autoscaling:
                provs = [p for p in provs if p in provisioners]
            rows = tuple((s, p) for p in provs for s in schedulers)
            if rows:
                units.append((name, seed, rows, kinds, quick))
    for done, cells in enumerate(_map(units, jobs), start=1):  # in unit order
        run.cells.extend(cells)
        if on_cells is not None:
            on_cells(cells, done, len(units))
    return run


def _map(units: list[Unit], jobs: int) -> Iterator[list[Cell]]:
    """Search the units in order, over ``jobs`` worker processes. An interrupted run
    (Ctrl-C, SIGTERM, an error) terminates its workers instead of letting them finish
    the queued units."""
    if jobs == 1 or len(units) <= 1:
        yield from map(_search_unit, units)
        return
    context = multiprocessing.get_context("fork" if "fork" in _start_methods() else "spawn")
    pool = context.Pool(min(jobs, len(units)), initializer=_worker_signals)
    try:
        yield from pool.imap(_search_unit, units)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _worker_signals() -> None:
    """Workers leave Ctrl-C to the parent and die at once on SIGTERM (the parent's
    handler would turn it into an exception the worker survives)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start_methods() -> list[str]:
    return multiprocessing.get_all_start_methods()
