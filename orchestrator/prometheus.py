"""The service's Prometheus metrics: per task kind latency, SLA outcomes, replicas by state."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from orchestrator.api import Status, TaskEvent

_LATENCY_BUCKETS = (
    0.025,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    0.75,
    1,
    1.5,
    2,
    3,
    5,
    7.5,
    10,
    15,
    20,
    30,
    60,
    120,
)
_STATES = ("pending", "ready", "draining", "stopped", "failed")


class Children:
    """A labelled metric's children, each looked up once: ``labels()`` checks its
    arguments and takes a lock on every call, several times per request otherwise.
    For metrics whose children are never removed, with a bounded set of label values."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self.metric.labels(*values)
        return child


class ServiceMetrics:
    """A private registry, so two services in one process (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cato_requests", "Tasks received, by kind and outcome.", ["kind", "outcome"], registry=r
        )
        self.ttft = Histogram(
            "cato_ttft_seconds", "Time to first token per task kind.", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "cato_e2e_seconds", "End-to-end latency per task kind.", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.sla = Counter(
            "cato_sla", "Tasks that met or missed their SLA.", ["kind", "result"], registry=r
        )
        self.replicas = Gauge(
            "cato_replicas", "Replicas by model and state.", ["model", "state"], registry=r
        )
        self.queued = Gauge("cato_queued_calls", "Model calls waiting for a replica.", registry=r)
        self.in_flight = Gauge(
            "cato_in_flight_calls", "Model calls running on replicas.", registry=r
        )
        self._requests = Children(self.requests)
        self._ttft = Children(self.ttft)
        self._e2e = Children(self.e2e)
        self._sla = Children(self.sla)

    def observe_end(self, kind: str, last: TaskEvent | None) -> None:
        """Count one finished, failed or cancelled task from its last event."""
        requests = self._requests
        if last is None or last.type not in ("done", "error"):
            requests(kind, "cancelled").inc()
            return
        if last.type == "error":
            requests(kind, "error").inc()
            return
        requests(kind, "ok").inc()
        if last.ttft_ms is not None:
            self._ttft(kind).observe(last.ttft_ms / 1000.0)
        if last.e2e_ms is not None:
            self._e2e(kind).observe(last.e2e_ms / 1000.0)
        self._sla(kind, "met" if last.sla_met else "missed").inc()

    def render(self, status: Status) -> bytes:
        self.replicas.clear()  # models that no longer have replicas drop out
        for model in {r.model for r in status.replicas}:
            for state in _STATES:
                n = sum(1 for r in status.replicas if r.model == model and r.state == state)
                self.replicas.labels(model, state).set(n)
        self.queued.set(status.queued)
        self.in_flight.set(status.in_flight)
        return generate_latest(self.registry)
