"""SLA attainment, latency percentiles and replica utilization, one definition for all.

The live service, the simulator and the benchmark reports all compute their numbers
here, so a simulated run and a live run are compared on equal terms. Nothing reads a
clock: callers pass times (seconds on their own clock, live or virtual).

Definitions (DESIGN.md, "Metrics"):

- TTFT: task arrival to the first token of its final ``llm`` node. E2E: arrival to the
  task's last event.
- SLA met: the task ended ``ok`` and its SLA metric (TTFT for ``ttft`` tasks, E2E for
  ``e2e`` tasks) is within the target. A failed task never meets its SLA.
- Goodput rate: tasks that met their SLA / tasks that ended ``ok`` or ``error``.
  Cancelled tasks (the developer moved on) are counted apart and left out.
- Goodput: tasks that met their SLA per second.
- Latency percentiles are over tasks that ended ``ok``.
- Utilization: replica-seconds with at least one running sequence / replica-seconds
  provisioned. Mean batch occupancy: time average of running sequences / concurrency
  limit over the provisioned replica-seconds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.api import KindStats, SLAMetric

Outcome = Literal["ok", "error", "cancelled"]
PERCENTILES: tuple[float, ...] = (50.0, 95.0, 99.0)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between order statistics.

    This is numpy's default (``method="linear"``, Hyndman & Fan type 7): with the values
    sorted as ``x[0..n-1]``, the rank is ``h = (n - 1) * q / 100`` and the result is
    ``x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])``.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside [0, 100]")
    ordered = sorted(values)
    h = (len(ordered) - 1) * q / 100.0
    lo = math.floor(h)
    if lo + 1 >= len(ordered):
        return ordered[-1]
    return ordered[lo] + (h - lo) * (ordered[lo + 1] - ordered[lo])


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """How one task went; times are seconds on the caller's clock.

    ``first_token`` is when the final llm node sent its first token (``None`` if it
    never did); ``done`` is the time of the task's last event. ``metric`` may be given
    as ``"ttft"``/``"e2e"`` and is stored as ``SLAMetric`` (anything else is an error).
    """

    task_id: str
    kind: str
    metric: SLAMetric | str
    target_ms: float
    arrival: float
    first_token: float | None
    done: float
    outcome: Outcome = "ok"

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", SLAMetric(self.metric))
        object.__setattr__(self, "kind", str(self.kind))
        if self.done < self.arrival:
            raise ValueError(f"task {self.task_id} done before it arrived")

    @property
    def ttft_ms(self) -> float | None:
        if self.first_token is None:
            return None
        return (self.first_token - self.arrival) * 1000.0

    @property
    def e2e_ms(self) -> float:
        return (self.done - self.arrival) * 1000.0

    @property
    def sla_met(self) -> bool:
        if self.outcome != "ok":
            return False
        latency = self.ttft_ms if self.metric == SLAMetric.TTFT else self.e2e_ms
        return latency is not None and latency <= self.target_ms


def _percentiles(values: Sequence[float]) -> list[float | None]:
    if not values:
        return [None] * len(PERCENTILES)
    return [percentile(values, q) for q in PERCENTILES]


def kind_stats(records: Iterable[TaskRecord]) -> KindStats:
    """Counts, goodput rate and P50/P95/P99 latencies of a set of records."""
    requests = cancelled = errors = met = 0
    ttfts: list[float] = []
    e2es: list[float] = []
    for r in records:
        if r.outcome == "cancelled":
            cancelled += 1
            continue
        requests += 1
        errors += r.outcome == "error"
        met += r.sla_met
        if r.outcome == "ok":
            e2es.append(r.e2e_ms)
            if r.ttft_ms is not None:
                ttfts.append(r.ttft_ms)
    ttft50, ttft95, ttft99 = _percentiles(ttfts)
    e2e50, e2e95, e2e99 = _percentiles(e2es)
    return KindStats(
        requests=requests,
        cancelled=cancelled,
        errors=errors,
        sla_met=met,
        goodput_rate=met / requests if requests else None,
        ttft_p50_ms=ttft50,
        ttft_p95_ms=ttft95,
        ttft_p99_ms=ttft99,
        e2e_p50_ms=e2e50,
        e2e_p95_ms=e2e95,
        e2e_p99_ms=e2e99,
    )


def stats_by_kind(records: Iterable[TaskRecord]) -> dict[str, KindStats]:
    """``kind_stats`` per task kind, kinds in order of first appearance."""
    groups: dict[str, list[TaskRecord]] = {}
    for r in records:
        groups.setdefault(r.kind, []).append(r)
    return {kind: kind_stats(group) for kind, group in groups.items()}


def goodput(records: Iterable[TaskRecord], start: float, end: float) -> float:
    """Tasks that met their SLA per second, over those done within ``[start, end]``."""
    if end <= start:
        raise ValueError("goodput needs end > start")
    met = sum(1 for r in records if start <= r.done <= end and r.sla_met)
    return met / (end - start)


class Recorder:
    """Task records over a sliding window of ``window_s`` seconds, or all of them.

    The service keeps the last minute for its status; benchmarks pass
    ``window_s=None`` and keep every record. A record belongs to the window while its
    ``done`` time is within ``window_s`` of ``now``.
    """

    def __init__(self, window_s: float | None = 60.0) -> None:
        if window_s is not None and window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self._records: deque[TaskRecord] = deque()
        self._last_ttft_ms: float | None = None

    def record(self, record: TaskRecord) -> None:
        self._records.append(record)
        # Evict here too: a service nobody polls for status must not keep every record.
        self.evict(record.done)
        if record.ttft_ms is not None:
            self._last_ttft_ms = record.ttft_ms

    @property
    def last_ttft_ms(self) -> float | None:
        """TTFT of the latest added record that had a first token."""
        return self._last_ttft_ms

    def _cutoff(self, now: float | None) -> float:
        if self.window_s is None or now is None:
            return -math.inf
        return now - self.window_s

    def evict(self, now: float) -> None:
        """Drop records that left the window (records are mostly added in ``done`` order)."""
        cutoff = self._cutoff(now)
        while self._records and self._records[0].done < cutoff:
            self._records.popleft()

    def records(self, now: float | None = None) -> Iterator[TaskRecord]:
        """Records in the window ending at ``now`` (all of them when ``now`` is None)."""
        if now is not None:
            self.evict(now)
        cutoff = self._cutoff(now)
        return (r for r in self._records if r.done >= cutoff)

    def __len__(self) -> int:
        return len(self._records)

    def kind_stats(self, now: float | None = None) -> dict[str, KindStats]:
        """``KindStats`` per task kind over the window ending at ``now``."""
        return stats_by_kind(self.records(now))

    def overall(self, now: float | None = None) -> KindStats:
        """All kinds together."""
        return kind_stats(self.records(now))

    def goodput(self, now: float, start: float | None = None) -> float:
        """Met SLAs per second over the window ending at ``now`` (or since ``start``)."""
        if start is None:
            if self.window_s is None:
                raise ValueError("an unbounded recorder needs a start time")
            start = now - self.window_s
        return goodput(self.records(now), start, now)


# --------------------------------------------------------------------------- replicas


@dataclass(frozen=True, slots=True)
class Utilization:
    """Integrated replica time; ratios are ``None`` when nothing was provisioned."""

    provisioned_s: float = 0.0
    busy_s: float = 0.0
    occupancy_s: float = 0.0

    @property
    def utilization(self) -> float | None:
        return self.busy_s / self.provisioned_s if self.provisioned_s > 0 else None

    @property
    def mean_batch_occupancy(self) -> float | None:
        return self.occupancy_s / self.provisioned_s if self.provisioned_s > 0 else None

    def __add__(self, other: Utilization) -> Utilization:
        return Utilization(
            self.provisioned_s + other.provisioned_s,
            self.busy_s + other.busy_s,
            self.occupancy_s + other.occupancy_s,
        )


@dataclass(frozen=True, slots=True)
class UtilizationSummary:
    """Totals over all replicas, and each replica's own."""

    total: Utilization
    replicas: dict[str, Utilization]

    @property
    def utilization(self) -> float | None:
        return self.total.utilization

    @property
    def mean_batch_occupancy(self) -> float | None:
        return self.total.mean_batch_occupancy


@dataclass(slots=True)
class _ReplicaSignal:
    """Piecewise-constant state of one replica and its integral up to ``since``."""

    since: float
    provisioned: bool = False
    n_running: int = 0
    limit: int = 0
    acc: Utilization = field(default_factory=Utilization)

    def span(self, t: float) -> Utilization:
        """The integral of the current state from ``since`` to ``t``."""
        dt = max(t - self.since, 0.0)
        if not self.provisioned or dt == 0.0:
            return Utilization()
        busy = dt if self.n_running > 0 else 0.0
        occupancy = dt * min(self.n_running / self.limit, 1.0) if self.limit > 0 else 0.0
        return Utilization(dt, busy, occupancy)

    def advance(self, t: float) -> None:
        self.acc = self.acc + self.span(t)
        self.since = max(self.since, t)


class UtilizationTracker:
    """Integrates replica events into utilization and batch occupancy.

    Feed it every change: ``replica_state`` when a replica becomes provisioned (PENDING
    or READY) or stops being so, ``running`` when its number of running sequences or its
    concurrency limit changes. Between events the signals are constant. Busy time
    counts only while provisioned, so utilization stays within [0, 1]; occupancy per
    replica is capped at 1. An event older than a replica's last one counts as
    happening at that last time.
    """

    def __init__(self) -> None:
        self._replicas: dict[str, _ReplicaSignal] = {}

    def _at(self, replica_id: str, t: float) -> _ReplicaSignal:
        signal = self._replicas.get(replica_id)
        if signal is None:
            signal = self._replicas[replica_id] = _ReplicaSignal(since=t)
        signal.advance(t)
        return signal

    def replica_state(self, replica_id: str, provisioned: bool, t: float) -> None:
        self._at(replica_id, t).provisioned = provisioned

    def running(self, replica_id: str, n_running: int, limit: int, t: float) -> None:
        if n_running < 0 or limit < 0:
            raise ValueError("running sequences and limit must be >= 0")
        signal = self._at(replica_id, t)
        signal.n_running = n_running
        signal.limit = limit

    def summary(self, t_end: float) -> UtilizationSummary:
        """Totals from each replica's first event up to ``t_end``; changes nothing."""
        per_replica = {rid: s.acc + s.span(t_end) for rid, s in self._replicas.items()}
        total = sum(per_replica.values(), Utilization())
        return UtilizationSummary(total=total, replicas=per_replica)


__all__ = [
    "PERCENTILES",
    "Outcome",
    "Recorder",
    "TaskRecord",
    "Utilization",
    "UtilizationSummary",
    "UtilizationTracker",
    "goodput",
    "kind_stats",
    "percentile",
    "stats_by_kind",
]
