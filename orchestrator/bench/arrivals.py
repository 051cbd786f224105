"""Arrival processes: when tasks arrive, and of which kind.

``poisson`` (independent arrivals at a constant rate), ``bursty`` (a two-state
Markov-modulated Poisson process: quiet and busy periods of exponential length) and
``read_trace`` (replay of a JSONL trace, one ``{"t": seconds, "kind": ...}`` per line).
All are generators of times, seeded, so a million arrivals cost no memory; ``with_kinds``
and ``with_tasks`` turn times into the ``(time, SimTask)`` pairs the simulator takes.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.bench.workloads import Workload
from orchestrator.sim.simulator import SimTask


def poisson(rate: float, duration_s: float, seed: int = 0, start: float = 0.0) -> Iterator[float]:
    """Arrival times of a Poisson process of ``rate`` per second over ``duration_s``."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    rng = random.Random(seed)
    t = start
    end = start + duration_s
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return
        yield t


@dataclass(frozen=True)
class Mmpp:
    """A two-state Markov-modulated Poisson process.

    The process stays in the quiet state for an exponential time of mean ``quiet_s``,
    then in the busy state for a mean of ``busy_s``, arriving at ``quiet_rate`` and
    ``busy_rate`` per second in each.
    """

    quiet_rate: float
    busy_rate: float
    quiet_s: float
    busy_s: float

    def __post_init__(self) -> None:
        if min(self.quiet_rate, self.busy_rate) < 0 or max(self.quiet_rate, self.busy_rate) <= 0:
            raise ValueError("rates must be >= 0 and one of them > 0")
        if self.quiet_s <= 0 or self.busy_s <= 0:
            raise ValueError("mean state durations must be > 0")

    @property
    def mean_rate(self) -> float:
        span = self.quiet_s + self.busy_s
        return (self.quiet_rate * self.quiet_s + self.busy_rate * self.busy_s) / span

    @classmethod
    def around(
        cls, rate: float, peak_ratio: float = 4.0, busy_share: float = 0.2, cycle_s: float = 60.0
    ) -> Mmpp:
        """An MMPP of mean ``rate`` whose busy state is ``peak_ratio`` times the quiet one
        and takes ``busy_share`` of the time, over cycles of ``cycle_s`` on average."""
        if not 0 < busy_share < 1 or peak_ratio < 1:
            raise ValueError("busy_share must be in (0, 1) and peak_ratio >= 1")
        quiet_rate = rate / (busy_share * peak_ratio + 1.0 - busy_share)
        return cls(
            quiet_rate, quiet_rate * peak_ratio, cycle_s * (1 - busy_share), cycle_s * busy_share
        )

    def times(self, duration_s: float, seed: int = 0, start: float = 0.0) -> Iterator[float]:
        """Arrival times over ``duration_s``, starting in the quiet state."""
        rng = random.Random(seed)
        t = start
        end = start + duration_s
        busy = False
        while t < end:
            stay = rng.expovariate(1.0 / (self.busy_s if busy else self.quiet_s))
            until = min(t + stay, end)
            rate = self.busy_rate if busy else self.quiet_rate
            if rate > 0:
                while True:
                    t += rng.expovariate(rate)
                    if t >= until:
                        break
                    yield t
            t = until  # memoryless: restarting the clock at the switch is exact
            busy = not busy


def bursty(
    rate: float, duration_s: float, seed: int = 0, peak_ratio: float = 4.0
) -> Iterator[float]:
    """``Mmpp.around(rate, peak_ratio)`` arrival times."""
    return Mmpp.around(rate, peak_ratio).times(duration_s, seed)


def with_kinds(
    times: Iterable[float], mix: Mapping[str, float], seed: int = 0
) -> Iterator[tuple[float, str]]:
    """Give each arrival a kind drawn from ``mix`` (kind -> weight)."""
    kinds = [k for k, w in mix.items() if w > 0]
    if not kinds:
        raise ValueError("the mix needs a kind with a positive weight")
    total = sum(mix[k] for k in kinds)
    cumulative = []
    acc = 0.0
    for k in kinds:
        acc += mix[k] / total
        cumulative.append(acc)
    rng = random.Random(seed)
    for t in times:
        u = rng.random()
        index = next((i for i, c in enumerate(cumulative) if u < c), len(kinds) - 1)
        yield t, kinds[index]


def with_tasks(
    arrivals: Iterable[tuple[float, str]], workload: Workload, seed: int = 0
) -> Iterator[tuple[float, SimTask]]:
    """Give each ``(time, kind)`` arrival a task of that kind from ``workload``."""
    rng = random.Random(seed)
    for t, kind in arrivals:
        yield t, workload.pick(kind, rng)


def merge(*streams: Iterable[tuple[float, str]]) -> Iterator[tuple[float, str]]:
    """Several time-ordered streams as one (e.g. one Poisson stream per kind)."""
    return heapq.merge(*streams, key=lambda a: a[0])


def per_kind_poisson(
    rates: Mapping[str, float], duration_s: float, seed: int = 0
) -> Iterator[tuple[float, str]]:
    """Independent Poisson arrivals of each kind at its own rate."""
    streams = [
        _labelled(poisson(rate, duration_s, seed * 1_000 + i), kind)
        for i, (kind, rate) in enumerate(sorted(rates.items()))
        if rate > 0
    ]
    return merge(*streams)


def _labelled(times: Iterable[float], kind: str) -> Iterator[tuple[float, str]]:
    for t in times:
        yield t, kind


# --------------------------------------------------------------------------- traces


def read_trace(path: str | Path) -> Iterator[tuple[float, str]]:
    """``(time, kind)`` from a JSONL file of ``{"t": seconds, "kind": kind}`` objects.

    Times are made relative to the first arrival; lines must be in time order.
    """
    first: float | None = None
    last = -1.0
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                t, kind = float(entry["t"]), str(entry["kind"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: expected {{'t': ..., 'kind': ...}}") from exc
            if first is None:
                first = t
            if t - first < last:
                raise ValueError(f"{path}:{number}: arrivals out of time order")
            last = t - first
            yield last, kind


def write_trace(path: str | Path, arrivals: Iterable[tuple[float, str]]) -> int:
    """Write ``(time, kind)`` arrivals as a JSONL trace; returns how many."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for t, kind in arrivals:
            out.write(json.dumps({"t": round(t, 6), "kind": kind}) + "\n")
            count += 1
    return count
