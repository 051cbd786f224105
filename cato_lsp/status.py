"""What the editor learns about the orchestrator: the `cato/status` notification and messages.

A failing orchestrator must not flood the editor: a `window/showMessage` goes out once
per kind of failure (unreachable, unauthorized, ...) until a task succeeds again, while
`window/logMessage` carries every detail. Messages never include the bearer token: they
are built from error texts that do not hold it, and the token is scrubbed regardless.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from lsprotocol import types

from orchestrator.api import Status

STATUS_METHOD: Final = "cato/status"

_USER_MESSAGES: Final = {
    "unreachable": "CATO: the orchestrator cannot be reached",
    "unauthorized": "CATO: the orchestrator refused the token; check the `cato.token` setting",
    "config": "CATO: the orchestrator configuration is invalid",
    "unavailable": "CATO: the orchestrator has no replica available",
    "settings": "CATO: invalid settings",
}


_SUGGEST_WINDOW: Final = 200  # the most recent suggestions the percentiles cover


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of non-empty `values` (share in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class _KindTally:
    met: int = 0
    total: int = 0


@dataclass
class StatusReporter:
    """Tracks reachability, TTFT and SLA attainment; decides what to tell the editor."""

    notify: Callable[[str, Any], None]
    show: Callable[[types.MessageType, str], None]
    log: Callable[[types.MessageType, str], None]
    secret: Callable[[], str | None] = lambda: None
    clock: Callable[[], float] = time.monotonic
    min_interval_s: float = 2.0
    state: str = "idle"
    detail: str | None = None
    last_ttft_ms: float | None = None
    _tallies: dict[str, _KindTally] = field(default_factory=dict)
    _shown: set[str] = field(default_factory=set)
    _last_publish: float | None = None
    _suggest_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_SUGGEST_WINDOW))

    def _scrub(self, text: str) -> str:
        token = self.secret()
        return text.replace(token, "***") if token else text

    def task_done(self, kind: str, ttft_ms: float | None, sla_met: bool | None) -> bool:
        """Record a task that got its answer; True when the state changed (publish now)."""
        if ttft_ms is not None:
            self.last_ttft_ms = ttft_ms
        if sla_met is not None:
            tally = self._tallies.setdefault(kind, _KindTally())
            tally.total += 1
            tally.met += bool(sla_met)
        changed = self.state != "ready"
        self.state, self.detail = "ready", None
        self._shown.clear()
        return changed

    def starting(self) -> bool:
        """The replicas are being started; True when the state changed."""
        changed = self.state != "starting"
        self.state, self.detail = "starting", None
        return changed

    def ready(self) -> bool:
        """The replicas are up (no task yet); True when the state changed."""
        changed = self.state != "ready"
        self.state, self.detail = "ready", None
        self._shown.clear()
        return changed

    def failure(self, code: str, message: str) -> bool:
        """Log a failure, show it once per code; True when the state changed."""
        message = self._scrub(message)
        self.log(types.MessageType.Error, f"cato: {code}: {message}")
        if code not in self._shown:
            self._shown.add(code)
            headline = _USER_MESSAGES.get(code, "CATO: a request failed")
            self.show(types.MessageType.Error, f"{headline} ({message})")
        changed = self.state != code
        self.state, self.detail = code, message
        return changed

    def suggested(self, elapsed_ms: float) -> None:
        """A suggestion went back to the editor `elapsed_ms` after its request arrived."""
        self._suggest_ms.append(elapsed_ms)

    def suggest_latency(self) -> dict[str, float | int | None]:
        """Keystroke to suggestion (request in to items out) over the recent suggestions."""
        values = list(self._suggest_ms)
        if not values:
            return {"p50": None, "p90": None, "p99": None, "last": None, "count": 0}
        return {
            "p50": round(percentile(values, 0.50), 1),
            "p90": round(percentile(values, 0.90), 1),
            "p99": round(percentile(values, 0.99), 1),
            "last": round(values[-1], 1),
            "count": len(values),
        }

    def attainment(self) -> dict[str, float]:
        return {k: t.met / t.total for k, t in self._tallies.items() if t.total}

    def payload(self, status: Status | None, extra: dict[str, Any]) -> dict[str, Any]:
        """The `cato/status` params: state, replicas, last TTFT, keystroke-to-suggestion
        percentiles (what the user waits for, where TTFT is what the replica took), SLA
        attainment, more."""
        replicas = [] if status is None else status.replicas
        ready = sum(1 for r in replicas if r.state == "ready")
        last_ttft = self.last_ttft_ms
        if status is not None and status.last_ttft_ms is not None:
            last_ttft = status.last_ttft_ms
        return {
            "state": self.state,
            "reachable": self.state in ("ready", "starting", "idle"),
            "detail": None if self.detail is None else self._scrub(self.detail),
            "replicasReady": ready,
            "replicasTotal": len(replicas),
            "lastTtftMs": last_ttft,
            "suggestMs": self.suggest_latency(),
            "slaAttainment": self.attainment(),
            **extra,
        }

    def due(self, force: bool = False) -> bool:
        """Whether a notification may go out now (at most one per `min_interval_s`)."""
        now = self.clock()
        last = self._last_publish
        if not force and last is not None and now - last < self.min_interval_s:
            return False
        self._last_publish = now
        return True

    def publish(self, status: Status | None, extra: dict[str, Any]) -> dict[str, Any]:
        body = self.payload(status, extra)
        self.notify(STATUS_METHOD, body)
        return body
