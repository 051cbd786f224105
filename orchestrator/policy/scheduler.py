"""Where each model call goes: CATO's slack-aware routing (Algorithm 1) and baselines.

A scheduler answers two questions, both pure (state and ``now`` in, a decision out):

* ``route``: which replica a new call joins, and with what queue priority;
* ``pick``: which queued call a replica serves next (by default the queue's head, which
  orders by priority, then deadline for CATO or arrival for the baselines).

The caller applies a ``Route`` (``route.apply(call, replica)``), and dispatches the
call ``pick`` returns with ``replica.dequeue(call.id)`` and ``replica.start(call, now)``
(or ``replica.dispatch(call, now)``, the two in one). A route with ``shed`` set is not
applied: the call asked to end at once when late (``Call.shed_late``) and it is late,
so the caller ends it with the error code ``sla_unreachable``.

Priorities (lower is served first, in the queue and, sent along, in the engine):

* 0 ``URGENT``: a waiting call that can still meet its deadline, but whose slack
  (deadline minus now minus its service time) has fallen under ``urgent_margin`` of its
  budget (deadline minus the call's arrival) while it waited: "slack nearly gone". A
  new call is never urgent on arrival: in an engine that takes every call at once,
  urgent arrivals overtake calls that got there first. Measured, that is a principle
  more than a gain: over seeds 0-4 at 1.2x C the worst completion per seed was mixed
  (rq1: 10/75/9/36/8x its SLA with urgency on arrival, 11/10/9/118/8x without; rq2:
  126/126/123/126/47x and 35/130/125/123/122x), goodput the same within a point;
* 1 ``AT_RISK``: no replica is expected to meet its deadline, but its slack is not gone
  (it would meet it with no wait);
* 2 ``SAFE``;
* 3 ``LATE``: its slack is gone (even with no wait it misses its deadline). It is served
  behind every on-time call, but for a bounded time only: at its bound, its deadline
  plus ``late_bound`` times its budget (for a single-call task, arrival + 2 x SLA by
  default) less its service time, it moves to ``SAFE``, where its deadline (long past)
  puts it at the front of the safe calls, ahead of all work queued with a later
  deadline. Moving it to 0 instead puts bound-reached calls ahead of urgent ones in
  the engine too (admission and preemption), which brings back the late-first collapse
  below (rq1 at C, seed 0: 39% against 70%); moving it to 1 costs as much.

The bound is an order, not a guarantee: a bound-reached call still waits behind urgent
and at-risk calls, and a call already in an engine keeps the priority it was sent with
there. Past saturation, at-risk arrivals can therefore still hold it back (rq1 at 1.2x C
with 16 calls per replica: worst completion 152x its SLA, as ``cato_triage``; with 256,
8-118x over seeds 0-4). What bounds every completion is shedding (``Call.shed_late``):
rq1 at 1.2x C, seeds 0-1, worst 1.9x its SLA at 79% goodput.

A waiting call moves through these levels as its slack shrinks (``Call.moves``, all
planned at routing, so the queue never re-sorts): ``SAFE`` -> ``URGENT`` -> ``LATE`` ->
``SAFE`` at its bound. ``cato`` is this policy. ``cato_paper`` is the paper's
Algorithm 1 as written: a late call gets 0 and goes first, which collapses past
saturation (late calls push on-time ones late in turn). ``cato_triage`` is ``cato``
without urgency or bound (late calls last, for ever), kept to show what the bound costs
and buys.
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
# The engine priority a router without slack would give each kind of call, as its user
# would configure it (the peers' setting in ``bench.peers``, a lever of the simulator):
# what the user waits on first (a completion's or generation's first token) first.
KIND_PRIORITY: dict[str, int] = {"complete": 0, "generate": 0, "summarize": 1, "translate": 2}

_by_route_key = attrgetter("route_key")
# sglang-router's cache threshold: the share of a prompt a replica must hold for
# ``cache_aware`` to follow the prefix, and for ``cato`` to let it run the call late by
# up to ``affinity_tolerance``.
AFFINITY_SHARE = 0.3


class NoReplicaError(LookupError):
    """No replica serves the call's model and accepts work."""


class SchedulerConfigError(ValueError):
    """An unknown scheduler name, or options it does not take."""


@dataclass(frozen=True, slots=True)
class Route:
    """A routing decision: the replica and the queue position the call takes there
    (``priority`` now, ``promote_to`` from ``promote_at`` on if it is still queued,
    then each later ``(time, level)`` of ``moves``). ``shed``: do not queue the call,
    end it (it asked to, and it is late)."""

    replica_id: str
    priority: int
    expected_wait_s: float
    expected_completion: float
    sort_key: float
    promote_at: float
    promote_to: int = URGENT
    moves: tuple[tuple[float, int], ...] = ()
    shed: bool = False

    def apply(self, call: Call, replica: ReplicaState) -> None:
        """Stamp the decision on ``call`` and queue it on ``replica``."""
        if replica.id != self.replica_id:
            raise ValueError(f"route is for replica {self.replica_id!r}, not {replica.id!r}")
        if self.shed:
            raise ValueError(f"call {call.id} is shed (late), not queued")
        call.priority = self.priority
        call.sort_key = self.sort_key
        call.promote_at = self.promote_at
        call.promote_to = self.promote_to
        call.moves = self.moves
        replica.enqueue(call)


def service_s(rates: Rates, call: Call, cached_tokens: int = 0) -> float:
    """``Rates.service_s`` inlined: the call's own time on a replica, up to its metric,
    less the prefill of the ``cached_tokens`` of its prompt the replica holds."""
    t = rates.overhead_s + (call.prompt_tokens - cached_tokens) * rates.prefill_s_per_token
    if call.metric == "e2e":
        t += call.expected_output_tokens * rates.tpot_s
    return t


class Scheduler(ABC):
    """Routes calls to replicas; ``replicas`` are those serving the model and accepting."""

    name: ClassVar[str]
    # Whether routing reads ``ReplicaState.prefixes`` (the caller keeps them then).
    tracks_prefixes: bool = False

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
    """CATO: Algorithm 1's routing with overload-safe priorities (see the module doc).

    A replica meets a call's deadline ``d`` if ``now + wait + service <= d``, with
    ``wait`` the replica's ``wait_s`` (see ``ReplicaState.estimate_wait_s``) and
    ``service`` the call's own time there. Among those, the shortest wait wins; with
    ``best_fit``, the busiest one (most calls) whose margin is still at least
    ``fit_margin`` of the call's budget, so that other replicas stay idle (and can be
    released). The margin is wide because the wait estimate does not see what a bigger
    batch costs (slower steps, KV pressure): with 50% of the budget, best fit saved 11%
    of rq3's replica-seconds at 20% of C but lost 7 points of goodput at 50%; with 80%
    it saved 4% and lost nothing (seed 0). Queues order by (priority, deadline).

    The replica with the shortest wait overall is found with one C-level ``min`` over
    the kept ``route_key``; if it meets ``d`` (and ``best_fit`` is off) it is the
    answer. Only otherwise is every replica examined.

    With ``affinity`` (on by default) and replicas whose prompts are tracked
    (``ReplicaState.prefixes``, where the engines cache prefixes), a call whose prompt
    has block hashes is charged on each replica the prefill it would really pay there:
    its prompt less the prefix that replica is expected to hold. Slack then buys
    efficiency: among the replicas expected to meet its deadline (with
    ``affinity_margin`` of its budget to spare), the one that holds the most of its
    prompt (the least work to add), ties to the shortest wait; if none meets it, the
    same among all (the call misses anyway; the least work spares the others). A
    cached prefix is a saving weighed against the deadline, not a rule: a replica
    with the prefix but a queue too long for the deadline loses to one without it
    that meets it. Calls without hashes take the path above, unchanged. Tuned on the
    sessions scenario (seed 1): choosing the earliest expected completion instead
    found 54% of prompt tokens cached at 1.4 x C; the most cached within half the
    budget, 51% and 84% goodput at 1.7 x C; this rule, 62% and 96% there (60% and
    86% at 2.0 x C, where falling back to the earliest completion gave 57% and 79%).

    ``affinity_tolerance``: a replica that holds at least ``AFFINITY_SHARE`` of the
    prompt counts as meeting the deadline while it is expected late by at most that
    many budgets. Leaving it has a cost the call's own slack does not see: the
    document's next prompts find their prefix on neither replica whole, and pay for
    it in prefill there. A heuristic, tuned on the sessions scenario, seeds 0-4
    (capacity x C, mean): 2.02 without it, 2.15 at 0.5 budgets, 2.14 at 1, 2.20 at 2,
    2.15 at 1000 (about no limit); every seed gained at each value, but the values
    differ by less than their spread over seeds (+-0.24): the gain is the tolerance,
    not the choice of 2 (``cato bench capacity --scenario sessions --seeds 0-4
    --policies cato/affinity_tolerance=0,cato/affinity_tolerance=0.5,...``).

    ``urgent_margin`` (in [0, 1)): a call still waiting when its slack falls below this
    share of its budget becomes ``URGENT``; 0 turns urgency off. ``late_bound`` (> 0,
    ``inf`` for none): a late call leaves ``LATE`` for ``SAFE`` (sorted by its past
    deadline, so ahead of the other safe calls) once this many budgets past its
    deadline, less its service.
    """

    name = "cato"
    default_urgent_margin: ClassVar[float] = 0.1
    default_late_bound: ClassVar[float] = 1.0

    def __init__(
        self,
        *,
        seed: int = 0,
        urgent_margin: float | None = None,
        late_bound: float | None = None,
        best_fit: bool = False,
        fit_margin: float = 0.8,
        affinity: bool = True,
        affinity_margin: float = 0.0,
        affinity_tolerance: float = 2.0,
    ) -> None:
        super().__init__(seed=seed)
        self.affinity = self.tracks_prefixes = bool(affinity)
        if not 0.0 <= affinity_margin < 1.0:
            raise SchedulerConfigError(f"affinity_margin must be in [0, 1), got {affinity_margin}")
        if not 0.0 <= affinity_tolerance < INF:
            raise SchedulerConfigError(
                f"affinity_tolerance must be finite and >= 0, got {affinity_tolerance}"
            )
        self.affinity_margin = affinity_margin
        self.affinity_tolerance = affinity_tolerance
        margin = self.default_urgent_margin if urgent_margin is None else urgent_margin
        bound = self.default_late_bound if late_bound is None else late_bound
        if not 0.0 <= margin < 1.0:
            raise SchedulerConfigError(f"urgent_margin must be in [0, 1), got {margin}")
        if not bound > 0.0:
            raise SchedulerConfigError(f"late_bound must be > 0 (inf: no bound), got {bound}")
        self.urgent_margin = margin
        self.late_bound = bound
        if not 0.0 <= fit_margin < 1.0:
            raise SchedulerConfigError(f"fit_margin must be in [0, 1), got {fit_margin}")
        self.best_fit = best_fit
        self.fit_margin = fit_margin

    def route(self, call: Call, replicas: Sequence[ReplicaState], now: float) -> Route:
        _require(call, replicas)
        deadline = call.deadline
        budget = max(deadline - call.arrival, 0.0)
        margin = self.urgent_margin * budget
        if self.affinity and call.block_hashes and replicas[0].prefixes is not None:
            room = deadline - now - self.affinity_margin * budget
            tolerance = self.affinity_tolerance * budget
            best, service = self._most_cached_meeting(call, replicas, room, tolerance)
            return self._route_on(call, best, best.wait_s, service, now)
        best = min(replicas, key=_by_route_key)
        wait = best.wait_s
        service = service_s(best.rates, call)
        chosen = None
        if self.best_fit:
            fit_margin = max(self.fit_margin * budget, margin)
            chosen = self._best_fit(call, replicas, now, fit_margin)
        if chosen is None and now + wait + service > deadline:
            chosen = self._shortest_wait_meeting(call, replicas, now)
        if chosen is not None:
            best = chosen
            wait = best.wait_s
            service = service_s(best.rates, call)
        return self._route_on(call, best, wait, service, now)

    def _route_on(
        self, call: Call, best: ReplicaState, wait: float, service: float, now: float
    ) -> Route:
        """The queue priority and planned moves of ``call`` on the chosen replica."""
        deadline = call.deadline
        budget = max(deadline - call.arrival, 0.0)
        margin = self.urgent_margin * budget
        done = now + wait + service
        gone_at = deadline - service  # its slack is gone from then on
        bound_at = INF if self.late_bound == INF else deadline + self.late_bound * budget - service
        if gone_at < now:  # late: behind on-time work until its bound
            if call.shed_late:
                return Route(best.id, LATE, wait, done, deadline, INF, shed=True)
            if bound_at <= now:
                return Route(best.id, SAFE, wait, done, deadline, INF)
            return Route(
                best.id, LATE, wait, done, deadline, bound_at, SAFE if bound_at < INF else LATE
            )
        moves: tuple[tuple[float, int], ...] = () if bound_at == INF else ((bound_at, SAFE),)
        if done > deadline:
            return Route(best.id, AT_RISK, wait, done, deadline, gone_at, LATE, moves)
        urgent_at = gone_at - margin  # if it is still waiting then
        if margin > 0.0 and urgent_at > now:
            moves = ((gone_at, LATE), *moves)
            return Route(best.id, SAFE, wait, done, deadline, urgent_at, URGENT, moves)
        return Route(best.id, SAFE, wait, done, deadline, gone_at, LATE, moves)

    @staticmethod
    def _most_cached_meeting(
        call: Call, replicas: Sequence[ReplicaState], room: float, tolerance: float = 0.0
    ) -> tuple[ReplicaState, float]:
        """Among replicas expected to serve the call within ``room`` seconds (one that
        holds at least ``AFFINITY_SHARE`` of its prompt: within ``room + tolerance``),
        the one holding most of its prompt, then the shortest wait; if none is, the
        same among all (the call misses anyway: the least work for the others). With
        the call's service time there (its cached prefix counted)."""
        best, best_key, best_service = replicas[0], (True, 1, INF), 0.0
        held = AFFINITY_SHARE * call.prompt_tokens
        for replica in replicas:
            cached = replica.cached_tokens(call)
            service = service_s(replica.rates, call, cached)
            limit = room + tolerance if cached >= held else room
            key = (replica.route_key + service > limit, -cached, replica.route_key)
            if key < best_key:
                best, best_key, best_service = replica, key, service
        return best, best_service

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

    @staticmethod
    def _best_fit(
        call: Call, replicas: Sequence[ReplicaState], now: float, margin: float
    ) -> ReplicaState | None:
        """The busiest replica (most calls, then longest wait) that still meets the
        deadline with ``margin`` to spare; None if none does."""
        room = call.deadline - now - margin
        chosen: ReplicaState | None = None
        chosen_key: tuple[int, float] = (-1, -INF)
        for replica in replicas:
            wait = replica.wait_s
            if wait > room:
                continue
            if wait + service_s(replica.rates, call) <= room:
                key = (replica.load, wait)
                if key > chosen_key:
                    chosen, chosen_key = replica, key
        return chosen


class CatoPaperScheduler(Scheduler):
    """The paper's Algorithm 1 as written: 0 = slack already gone (served first), 1 = no
    replica meets the deadline, 2 = safe; a waiting call rises to 0 when its slack runs
    out. Kept for comparisons: past saturation, serving late calls first makes on-time
    calls late in turn."""

    name = "cato_paper"

    def route(self, call: Call, replicas: Sequence[ReplicaState], now: float) -> Route:
        _require(call, replicas)
        best = min(replicas, key=_by_route_key)
        wait = best.wait_s
        service = service_s(best.rates, call)
        deadline = call.deadline
        if now + wait + service <= deadline:
            done = now + wait + service
            return Route(best.id, SAFE, wait, done, deadline, deadline - service)
        meeting = CatoScheduler._shortest_wait_meeting(call, replicas, now)
        if meeting is not None:
            best = meeting
            wait = best.wait_s
            service = service_s(best.rates, call)
            priority = SAFE
        elif deadline - now - service < 0:
            if call.shed_late:
                return Route(best.id, URGENT, wait, now + wait + service, deadline, INF, shed=True)
            priority = URGENT
        else:
            priority = AT_RISK
        done = now + wait + service
        return Route(best.id, priority, wait, done, deadline, deadline - service)


class CatoTriageScheduler(CatoScheduler):
    """``cato`` with no urgency and no bound: late calls go last and stay there, so a
    late call can starve while on-time work keeps coming. Kept for comparisons."""

    name = "cato_triage"
    default_urgent_margin: ClassVar[float] = 0.0
    default_late_bound: ClassVar[float] = INF


class _FifoScheduler(Scheduler):
    """Baselines: one replica chosen by ``choose``, first come first served there."""

    def route(self, call: Call, replicas: Sequence[ReplicaState], now: float) -> Route:
        _require(call, replicas)
        replica = self.choose_for(call, replicas)
        wait = replica.wait_s
        service = service_s(replica.rates, call)
        done = now + wait + service
        shed = call.shed_late and now + service > call.deadline
        return Route(replica.id, FIFO_PRIORITY, wait, done, call.arrival, INF, shed=shed)

    @abstractmethod
    def choose(self, replicas: Sequence[ReplicaState]) -> ReplicaState: ...

    def choose_for(self, call: Call, replicas: Sequence[ReplicaState]) -> ReplicaState:
        """The replica for ``call`` (by default ``choose``, which ignores the call)."""
        return self.choose(replicas)


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


class CacheAwareScheduler(_FifoScheduler):
    """sglang-router's default ``cache_aware`` policy (vllm-router's too), on CATO's
    prefix tracking: when the replicas' loads (calls queued or running) are balanced,
    the replica holding the longest prefix of the prompt if it covers more than
    ``cache_threshold`` of it, else the least loaded; when they are not (the largest
    load exceeds the smallest by more than ``balance_abs_threshold`` and by a factor of
    more than ``balance_rel_threshold``), the least loaded. Defaults are sglang-router's.
    Where sglang-router then picks the replica with the smallest prefix tree, this
    picks the least loaded one. First come first served on each replica.
    """

    name = "cache_aware"
    tracks_prefixes = True

    def __init__(
        self,
        *,
        seed: int = 0,
        cache_threshold: float = AFFINITY_SHARE,
        balance_abs_threshold: int = 64,
        balance_rel_threshold: float = 1.5,
    ) -> None:
        super().__init__(seed=seed)
        if not 0.0 <= cache_threshold <= 1.0:
            raise SchedulerConfigError(f"cache_threshold must be in [0, 1], got {cache_threshold}")
        if balance_abs_threshold < 0 or balance_rel_threshold < 1.0:
            raise SchedulerConfigError(
                "balance_abs_threshold must be >= 0 and balance_rel_threshold >= 1"
            )
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold

    def choose(self, replicas: Sequence[ReplicaState]) -> ReplicaState:
        return min(replicas, key=lambda r: (r.load, r.id))

    def choose_for(self, call: Call, replicas: Sequence[ReplicaState]) -> ReplicaState:
        least = self.choose(replicas)
        most = max(r.load for r in replicas)
        if (
            most - least.load > self.balance_abs_threshold
            and most > least.load * self.balance_rel_threshold
        ) or not call.block_hashes:
            return least
        best, matched = least, -1
        for replica in replicas:
            cached = replica.cached_tokens(call)
            if cached > matched or (cached == matched and replica.load < best.load):
                best, matched = replica, cached
        if matched > self.cache_threshold * call.prompt_tokens:
            return best
        return least


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (
        CatoScheduler,
        CatoPaperScheduler,
        CatoTriageScheduler,
        RoundRobinScheduler,
        PowerOfTwoScheduler,
        LeastLoadedScheduler,
        CacheAwareScheduler,
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
