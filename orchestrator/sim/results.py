"""What a simulated run measured: finished tasks in compact arrays, and their statistics.

Statistics follow ``orchestrator.metrics`` (the same definitions as the live service):
``TaskRecord`` views of the stored tasks go through ``kind_stats``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from orchestrator.api import KindStats
from orchestrator.metrics import Outcome, TaskRecord, UtilizationSummary


@dataclass(frozen=True)
class ScaleEvent:
    """One applied provisioner decision."""

    t: float
    model: str
    before: int
    after: int
    reason: str


class RecordStore:
    """Finished tasks in compact arrays (a million tasks fit in tens of MB)."""

    _OUTCOMES: tuple[Outcome, ...] = ("ok", "error", "cancelled")

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self._kind_index: dict[str, int] = {}
        self.kind = array("H")
        self.ttft_metric = array("b")
        self.target_ms = array("d")
        self.arrival = array("d")
        self.first_token = array("d")
        self.done = array("d")
        self.outcome = array("b")

    def __len__(self) -> int:
        return len(self.done)

    def add(
        self,
        kind: str,
        ttft_metric: bool,
        target_ms: float,
        arrival: float,
        first_token: float | None,
        done: float,
        outcome: Outcome,
    ) -> None:
        index = self._kind_index.get(kind)
        if index is None:
            index = self._kind_index[kind] = len(self.kinds)
            self.kinds.append(kind)
        self.kind.append(index)
        self.ttft_metric.append(1 if ttft_metric else 0)
        self.target_ms.append(target_ms)
        self.arrival.append(arrival)
        self.first_token.append(math.nan if first_token is None else first_token)
        self.done.append(done)
        self.outcome.append(self._OUTCOMES.index(outcome))

    def records(self, since: float = -math.inf, kind: str | None = None) -> Iterator[TaskRecord]:
        """``TaskRecord`` views of tasks that arrived at or after ``since``."""
        only = None if kind is None else self._kind_index.get(kind, -1)
        for i in range(len(self.done)):
            if self.arrival[i] < since or (only is not None and self.kind[i] != only):
                continue
            first = self.first_token[i]
            yield TaskRecord(
                task_id=str(i),
                kind=self.kinds[self.kind[i]],
                metric="ttft" if self.ttft_metric[i] else "e2e",
                target_ms=self.target_ms[i],
                arrival=self.arrival[i],
                first_token=None if math.isnan(first) else first,
                done=self.done[i],
                outcome=self._OUTCOMES[self.outcome[i]],
            )


@dataclass
class SimResult:
    """What a run measured; statistics follow ``orchestrator.metrics`` definitions."""

    scheduler: str
    provisioner: str
    seed: int
    kinds: dict[str, KindStats]
    overall: KindStats
    utilization: UtilizationSummary
    start: float
    end: float
    last_arrival: float
    replica_series: dict[str, list[tuple[float, int, int]]]
    scale_events: list[ScaleEvent]
    counters: dict[str, int]
    wall_s: float
    cpu_s: float
    replica_seconds: dict[str, float]
    store: RecordStore = field(repr=False)
    warmup_s: float = 0.0

    def records(self, kind: str | None = None) -> Iterator[TaskRecord]:
        """Every measured task (those that arrived after the warm-up)."""
        return self.store.records(self.warmup_s, kind)

    @property
    def goodput_rate(self) -> float | None:
        return self.overall.goodput_rate

    @property
    def goodput_rps(self) -> float:
        """Tasks that met their SLA per second of arrivals."""
        span = self.last_arrival - max(self.start, self.warmup_s)
        return self.overall.sla_met / span if span > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        util = self.utilization
        return {
            "scheduler": self.scheduler,
            "provisioner": self.provisioner,
            "seed": self.seed,
            "overall": self.overall.model_dump(),
            "kinds": {k: v.model_dump() for k, v in self.kinds.items()},
            "goodput_rps": self.goodput_rps,
            "utilization": util.utilization,
            "mean_batch_occupancy": util.mean_batch_occupancy,
            "replica_seconds": self.replica_seconds,
            "start": self.start,
            "end": self.end,
            "last_arrival": self.last_arrival,
            "replica_series": {m: [list(p) for p in s] for m, s in self.replica_series.items()},
            "scale_events": [vars(e) for e in self.scale_events],
            "counters": self.counters,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
        }
