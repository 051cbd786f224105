"""Where each model call goes: CATO's slack-aware routing (Algorithm 1) and baselines.

A scheduler answers two questions, both pure (state and ``now`` in, a decision out):

* ``route``: which replica a new call joins, and with what queue priority;
* ``pick``: which queued call a replica serves next (by default the queue's head, which
  orders by priority, then deadline for CATO or arrival for the baselines).

The caller applies a ``Route`` (``route.apply(call, replica)``), and dispatches the
call ``pick`` returns with ``replica.dequeue(call.id)`` and ``replica.start(call, now)``
(or ``replica.dispatch(call, now)``, the two in one).

Priorities (lower is served first): 0 = the call's slack is already gone, 1 = no
replica is expected to meet its deadline, 2 = safe. A waiting call is moved by its
queue to the route's ``promote_to`` (0 for ``cato``) at ``promote_at``, the moment its
slack runs out.

``cato_triage`` is Algorithm 1 with the opposite answer for late calls: priority 3
(``LATE``), behind every call that can still meet its deadline, in the queue and in the
engine alike, whether the call is late on arrival or its slack runs out while it waits
(``promote_to`` is ``LATE``). Past saturation, serving late calls first only makes more
calls late.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar

from orchestrator.policy.state import INF, Call, Rates, ReplicaState

URGENT = 0
AT_RISK = 1
SAFE = 2
LATE = 3
FIFO_PRIORITY = SAFE

_by_route_key = attrgetter("route_key")


class NoReplicaError(LookupError):
    """No replica serves the call's model and accepts work."""


class SchedulerConfigError(ValueError):
    """An unknown scheduler name, or options it does not take."""


@dataclass(frozen=True, slots=True)
class Route:
    """A routing decision: the replica and the queue position the call takes there
    (``priority`` now, ``promote_to`` from ``promote_at`` on if it is still queued)."""

    replica_id: str
    priority: int
    expected_wait_s: float
    expected_completion: float
    sort_key: float
    promote_at: float
    promote_to: int = URGENT

    def apply(self, call: Call, replica: ReplicaState) -> None:
        """Stamp the decision on ``call`` and queue it on ``replica``."""
        if replica.id != self.replica_id:
            raise ValueError(f"route is for replica {self.replica_id!r}, not {replica.id!r}")
        call.priority = self.priority
        call.sort_key = self.sort_key
        call.promote_at = self.promote_at
        call.promote_to = self.promote_to
        replica.enqueue(call)


def service_s(rates: Rates, call: Call) -> float:
    """``Rates.service_s`` inlined: the call's own time on a replica, up to its metric."""
    t = rates.overhead_s + call.prompt_tokens * rates.prefill_s_per_token
    if call.metric == "e2e":
        t += call.expected_output_tokens * rates.tpot_s
    return t


class Scheduler(ABC):
    """Routes calls to replicas; ``replicas`` are those serving the model and accepting."""

    name: ClassVar[str]

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    @abstractmethod
    def route(self, call: Call, replicas: Sequence[ReplicaState], now: float) -> Route: ...

    def pick(self, replica: ReplicaState, now: float) -> Call | None:
        """The call ``replica`` should start next, left on the queue for the caller."""
        return replica.queue.peek(now)


def _require(call: Call, replicas: Sequence[ReplicaState]) -> None:
    if not replicas:
        raise NoReplicaError(f"no accepting replica serves model {call.model!r} (call {call.id})")


class CatoScheduler(Scheduler):
    """CATO Algorithm 1: the shortest expected wait among replicas that meet the deadline.

    A replica meets a call's deadline ``d`` if ``now + wait + service <= d``, with
    ``wait`` the replica's ``wait_s`` (see ``ReplicaState.estimate_wait_s``) and
    ``service`` the call's own time there. Queues order by (priority, deadline).

    The replica with the shortest wait overall is found with one C-level ``min`` over
    the kept ``route_key``; if it meets ``d`` it is the answer. Only otherwise (rates
    differ between replicas, or nobody meets ``d``) is every replica examined.
    """

    name = "cato"
    # Where a call goes once its slack is gone (on arrival, or while it waits).
    late_priority: ClassVar[int] = URGENT

    def route(self, call: Call, replicas: Sequence[ReplicaState], now: float) -> Route:
        _require(call, replicas)
        late = self.late_priority
        best = min(replicas, key=_by_route_key)
        wait = best.wait_s
        service = service_s(best.rates, call)
        deadline = call.deadline
        if now + wait + service <= deadline:
            done = now + wait + service
            return Route(best.id, SAFE, wait, done, deadline, deadline - service, late)
        meeting = self._shortest_wait_meeting(call, replicas, now)
        if meeting is not None:
            best = meeting
            wait = best.wait_s
            service = service_s(best.rates, call)
            priority = SAFE
        elif deadline - now - service < 0:
            if late != URGENT:  # queued as late from the start: nothing left to promote
                return Route(best.id, late, wait, now + wait + service, deadline, INF, late)
            priority = URGENT
        else:
            priority = AT_RISK
        done = now + wait + service
        return Route(best.id, priority, wait, done, deadline, deadline - service, late)

    @staticmethod
    def _shortest_wait_meeting(
        call: Call, replicas: Sequence[ReplicaState], now: float
    ) -> ReplicaState | None:
        slack = call.deadline - now
        prompt = call.prompt_tokens
        output = call.expected_output_tokens if call.metric == "e2e" else 0
        chosen: ReplicaState | None = None
        chosen_key = INF
        for replica in replicas:
            wait = replica.wait_s
            if wait > slack:
                continue
            rates = replica.rates
            need = (
                wait + rates.overhead_s + prompt * rates.prefill_s_per_token + output * rates.tpot_s
            )
            if need <= slack and replica.route_key < chosen_key:
                chosen, chosen_key = replica, replica.route_key
        return chosen


class CatoTriageScheduler(CatoScheduler):
    """Algorithm 1, except that late calls go last: priority ``LATE``, never raised.

    A call whose slack is gone on arrival is routed as in ``cato`` but queued (and sent
    to the engine) behind on-time work. One whose slack runs out while it waits is
    moved there by its queue's timer (``promote_to`` is ``LATE``), where ``cato``'s
    would raise it to the front.
    """

    name = "cato_triage"
    late_priority: ClassVar[int] = LATE


class _FifoScheduler(Scheduler):
    """Baselines: one replica chosen by ``choose``, first come first served there."""

    def route(self, call: Call, replicas: Sequence[ReplicaState], now: float) -> Route:
        _require(call, replicas)
        replica = self.choose(replicas)
        wait = replica.wait_s
        done = now + wait + service_s(replica.rates, call)
        return Route(replica.id, FIFO_PRIORITY, wait, done, call.arrival, INF)

    @abstractmethod
    def choose(self, replicas: Sequence[ReplicaState]) -> ReplicaState: ...


class RoundRobinScheduler(_FifoScheduler):
    """Each call to the next replica in turn."""

    name = "round_robin"

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self._next = 0

    def choose(self, replicas: Sequence[ReplicaState]) -> ReplicaState:
        i = self._next % len(replicas)
        self._next = i + 1
        return replicas[i]


class PowerOfTwoScheduler(_FifoScheduler):
    """Ray Serve's default: two distinct replicas at random, the one with fewer calls.

    Ties go to the first of the two drawn. The draws come from a ``random.Random``
    seeded with ``seed``, so a run is reproducible.
    """

    name = "pow2"

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self._rng = random.Random(seed)

    def choose(self, replicas: Sequence[ReplicaState]) -> ReplicaState:
        if len(replicas) == 1:
            return replicas[0]
        i, j = self._rng.sample(range(len(replicas)), 2)
        a, b = replicas[i], replicas[j]
        return b if b.load < a.load else a


class LeastLoadedScheduler(_FifoScheduler):
    """The replica with the fewest calls queued or running (ties: smallest id)."""

    name = "least_loaded"

    def choose(self, replicas: Sequence[ReplicaState]) -> ReplicaState:
        return min(replicas, key=lambda r: (r.load, r.id))


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (
        CatoScheduler,
        CatoTriageScheduler,
        RoundRobinScheduler,
        PowerOfTwoScheduler,
        LeastLoadedScheduler,
    )
}


def make_scheduler(name: str, **kwargs: Any) -> Scheduler:
    """The scheduler registered as ``name``, built with ``kwargs`` (all accept ``seed``)."""
    cls = SCHEDULERS.get(name)
    if cls is None:
        valid = ", ".join(sorted(SCHEDULERS))
        raise SchedulerConfigError(f"unknown scheduler {name!r}; valid names: {valid}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SchedulerConfigError(f"bad options for scheduler {name!r}: {exc}") from None
