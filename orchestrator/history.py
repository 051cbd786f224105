"""The service's recent past, for the dashboard: a bounded ring buffer of samples.

``/v1/status`` is the last minute as one table; a chart needs the minute before that
too. Every ``interval_s`` (5 s by default) the service's own loop takes one sample:
per task kind what finished in that interval (SLA met, latency percentiles), goodput,
queue depth, in-flight calls, replicas per model and state, and what each user asked
for. ``capacity`` samples are kept (720: an hour at 5 s); the oldest falls out. Scale
events, with the provisioner's reason, are kept over the same span. Readers only read:
a dashboard polling ``/v1/status/history`` costs a JSON dump, never a sample.

Per-user counts come from the finished tasks the HTTP layer reports (``UserUsage``);
they are also Prometheus counters, so the Grafana board shows the same numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tracemalloc
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from orchestrator.api import SLA, Status, TaskEvent
from orchestrator.metrics import Recorder, TaskRecord, stats_by_kind
from orchestrator.prometheus import Children

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
DEFAULT_CAPACITY = 720  # one hour at 5 s
ANONYMOUS = "-"  # requests without a user (a service with no users configured)
OTHERS = "(others)"  # users past ``max_users``: a client-chosen name must not grow memory

# Per kind and sample: counts, then latency percentiles (None: no task in the interval).
KIND_FIELDS = (
    "requests",
    "sla_met",
    "errors",
    "cancelled",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
    "e2e_p50_ms",
    "e2e_p95_ms",
    "e2e_p99_ms",
)
_Ms = float | None
KindRow = tuple[int, int, int, int, _Ms, _Ms, _Ms, _Ms, _Ms, _Ms]


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """One applied provisioner decision; ``t`` is wall time (Unix seconds)."""

    t: float
    model: str
    before: int
    after: int
    reason: str


@dataclass(frozen=True, slots=True)
class Sample:
    """The service over ``(t - interval, t]``; ``t`` is wall time (Unix seconds).

    ``kinds`` maps a task kind to ``KIND_FIELDS`` of the tasks that ended in the
    interval; ``replicas`` maps ``(model, state)`` to a count; ``users`` maps a user to
    ``(requests, tokens)`` ended in the interval. Tuples, not models: 720 of these are
    kept, and a small object per number would be most of the memory.
    """

    t: float
    kinds: dict[str, KindRow]
    goodput: float
    queued: int
    in_flight: int
    replicas: dict[tuple[str, str], int]
    users: dict[str, tuple[int, int]]

    def to_json(self) -> dict[str, Any]:
        replicas: dict[str, dict[str, int]] = {}
        for (model, state), n in self.replicas.items():
            replicas.setdefault(model, {})[state] = n
        return {
            "t": round(self.t, 3),
            "kinds": {
                k: {name: _round(v) for name, v in zip(KIND_FIELDS, row, strict=True)}
                for k, row in self.kinds.items()
            },
            "goodput": round(self.goodput, 4),
            "queued": self.queued,
            "in_flight": self.in_flight,
            "replicas": replicas,
            "users": {u: {"requests": r, "tokens": t} for u, (r, t) in self.users.items()},
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


class UserUsage:
    """Requests and tokens (prompt + completion) per user, since the service started.

    With a ``registry``, also the counters ``cato_user_requests_total{user}`` and
    ``cato_user_tokens_total{user,type}``. At most ``max_users`` names are kept apart
    (the configured users are few; without users the name is whatever the client
    sent); later ones count as ``(others)``.
    """

    def __init__(self, registry: CollectorRegistry | None = None, max_users: int = 100) -> None:
        if max_users < 1:
            raise ValueError("max_users must be >= 1")
        self.max_users = max_users
        self.totals: dict[str, tuple[int, int]] = {}
        self._requests: Children | None = None
        self._tokens: Children | None = None
        if registry is not None:
            self._requests = Children(
                Counter("cato_user_requests", "Tasks ended, by user.", ["user"], registry=registry)
            )
            self._tokens = Children(
                Counter(
                    "cato_user_tokens", "Tokens used, by user.", ["user", "type"], registry=registry
                )
            )

    def name(self, user: str | None) -> str:
        name = user or ANONYMOUS
        if name in self.totals or len(self.totals) < self.max_users - 1:
            return name
        return OTHERS

    def observe(self, user: str | None, last: TaskEvent | None) -> None:
        """Count one ended task (done, failed or cancelled) of ``user``."""
        name = self.name(user)
        prompt = completion = 0
        if last is not None and last.usage is not None:
            prompt, completion = last.usage.prompt_tokens, last.usage.completion_tokens
        requests, tokens = self.totals.get(name, (0, 0))
        self.totals[name] = (requests + 1, tokens + prompt + completion)
        if self._requests is not None and self._tokens is not None:
            self._requests(name).inc()
            self._tokens(name, "prompt").inc(prompt)
            self._tokens(name, "completion").inc(completion)


class History:
    """The ring buffer and its sampler; ``sample`` is called by ``run``, never by readers.

    ``status``: the service's status (replicas, queue, in-flight); ``recorder``: its
    finished tasks (a sliding window at least ``interval_s`` long); ``scale_events``:
    the runtime's list of applied decisions, read from where the last sample left off
    (an empty list for a service without autoscaling). ``clock`` is the recorder's
    clock; ``wall`` gives the sample times shown to people.
    """

    def __init__(
        self,
        status: Callable[[], Status],
        recorder: Recorder,
        *,
        targets: dict[str, SLA] | None = None,
        usage: UserUsage | None = None,
        scale_events: Sequence[tuple[float, str, int, int, str]] = (),
        interval_s: float = DEFAULT_INTERVAL_S,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if recorder.window_s is not None and recorder.window_s < interval_s:
            raise ValueError(
                f"interval_s {interval_s:g} is longer than the recorder's window "
                f"{recorder.window_s:g} s: tasks would end unseen"
            )
        self.get_status = status
        self.recorder = recorder
        self.targets = dict(targets or {})
        self.usage = usage or UserUsage()
        self.scale_source = scale_events
        self.interval_s = interval_s
        self.capacity = capacity
        self.clock = clock
        self.wall = wall
        self.samples: deque[Sample] = deque(maxlen=capacity)
        self.scale_events: deque[ScaleEvent] = deque()
        self._scale_seen = 0
        self._last = clock()
        self._users_last: dict[str, tuple[int, int]] = {}

    # -- sampling -------------------------------------------------------------------

    def sample(self) -> Sample:
        """Take one sample of what happened since the previous one and keep it."""
        now, wall = self.clock(), self.wall()
        since, self._last = self._last, now
        ended = [r for r in self.recorder.records(now) if since < r.done <= now]
        kinds = {k: _kind_row(v) for k, v in stats_by_kind(ended).items()}
        met = sum(1 for r in ended if r.sla_met)
        status = self.get_status()
        replicas: dict[tuple[str, str], int] = {}
        for rep in status.replicas:
            replicas[(rep.model, rep.state)] = replicas.get((rep.model, rep.state), 0) + 1
        sample = Sample(
            t=wall,
            kinds=kinds,
            goodput=met / (now - since) if now > since else 0.0,
            queued=status.queued,
            in_flight=status.in_flight,
            replicas=replicas,
            users=self._user_deltas(),
        )
        self.samples.append(sample)
        self._take_scale_events(now, wall)
        return sample

    def _user_deltas(self) -> dict[str, tuple[int, int]]:
        deltas = {}
        for user, (requests, tokens) in self.usage.totals.items():
            r0, t0 = self._users_last.get(user, (0, 0))
            if requests != r0:
                deltas[user] = (requests - r0, tokens - t0)
        self._users_last = dict(self.usage.totals)
        return deltas

    def _take_scale_events(self, now: float, wall: float) -> None:
        """New runtime events (on the recorder's clock) to wall time; old ones out."""
        for t, model, before, after, reason in self.scale_source[self._scale_seen :]:
            self.scale_events.append(ScaleEvent(wall - (now - t), model, before, after, reason))
        self._scale_seen = len(self.scale_source)
        horizon = wall - self.capacity * self.interval_s
        while self.scale_events and self.scale_events[0].t < horizon:
            self.scale_events.popleft()

    async def run(self) -> None:
        """Sample every ``interval_s`` until cancelled; a failed sample is logged, not fatal."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sample()
            except Exception:
                log.exception("history sample failed")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[History]:
        task = asyncio.create_task(self.run(), name="cato history")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- reading --------------------------------------------------------------------

    def to_json(self, since: float | None = None) -> dict[str, Any]:
        """Samples (and scale events) after wall time ``since``, or all of them; times
        are rounded to the millisecond, so a reader passes back the last ``t`` it saw."""
        cut = -1.0 if since is None else since
        return {
            "interval_s": self.interval_s,
            "capacity": self.capacity,
            "targets": {
                k: {"metric": s.metric.value, "target_ms": s.target_ms}
                for k, s in self.targets.items()
            },
            "samples": [s.to_json() for s in self.samples if round(s.t, 3) > cut],
            "scale_events": [
                {
                    "t": round(e.t, 3),
                    "model": e.model,
                    "before": e.before,
                    "after": e.after,
                    "reason": e.reason,
                }
                for e in self.scale_events
                if round(e.t, 3) > cut
            ],
            "users": {u: {"requests": r, "tokens": t} for u, (r, t) in self.usage.totals.items()},
        }


def _kind_row(stats: Any) -> KindRow:
    return (
        stats.requests,
        stats.sla_met,
        stats.errors,
        stats.cancelled,
        stats.ttft_p50_ms,
        stats.ttft_p95_ms,
        stats.ttft_p99_ms,
        stats.e2e_p50_ms,
        stats.e2e_p95_ms,
        stats.e2e_p99_ms,
    )


# --------------------------------------------------------------------------- memory


def full_buffer_bytes(
    *, capacity: int = DEFAULT_CAPACITY, kinds: int = 4, models: int = 2, users: int = 10
) -> int:
    """Bytes a full ring buffer holds, measured with ``tracemalloc``: every sample with
    every kind, ``models`` models in two states each and ``users`` active users (a busy
    hour; a quiet one holds less)."""
    from orchestrator.api import ReplicaInfo

    status = Status(
        replicas=[ReplicaInfo(id=f"m{m}-0", model=f"model-{m}", url="", state="ready")
                  for m in range(models)]
        + [ReplicaInfo(id=f"m{m}-1", model=f"model-{m}", url="", state="pending")
           for m in range(models)]
    )  # fmt: skip
    recorder = Recorder(window_s=5.0)  # keeps about one interval's tasks, not an hour's
    usage = UserUsage()
    t = [0.0]
    history = History(
        lambda: status, recorder, usage=usage, capacity=capacity, clock=lambda: t[0],
        wall=lambda: 1.7e9 + t[0],
    )  # fmt: skip
    names = ("complete", "generate", "summarize", "translate", "kind4", "kind5")[:kinds]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(capacity):
            t[0] = (i + 1) * history.interval_s
            for n, kind in enumerate(names):
                recorder.record(
                    TaskRecord(f"{i}-{n}", kind, "ttft", 500.0, t[0] - 0.7 - n * 0.01,
                               t[0] - 0.5 - n * 0.01, t[0] - 0.1)
                )  # fmt: skip
            for u in range(users):
                r, k = usage.totals.get(f"user-{u}", (0, 0))
                usage.totals[f"user-{u}"] = (r + 1, k + 100 + i)
            history.sample()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def main() -> None:
    """``python -m orchestrator.history``: the memory of a full buffer (docs/DASHBOARD.md)."""
    print("| samples | kinds | models | users | bytes | MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for users in (0, 10, 100):
        n = full_buffer_bytes(users=users)
        print(f"| {DEFAULT_CAPACITY} | 4 | 2 | {users} | {n} | {n / 2**20:.2f} |")


if __name__ == "__main__":
    main()
