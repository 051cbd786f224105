"""The dispatch core: the glue between the pure policies and whoever runs the calls.

The executor (live replicas, asyncio) and the simulator (engine models, a virtual clock)
place, queue, start and release model calls the same way, through this one class:

* ``place``: route a call to an accepting replica of its model (the scheduler chooses),
  park it while the model has replicas starting but none ready, fail it when none;
* ``dispatch``: while a replica has a free slot, start the call the scheduler picks
  from its queue, as long as the admission policy (``policy.admission``) lets it join
  the running batch (a replica with nothing running always takes it); a call held
  back may start on another replica whose batch takes it (``Admission.moves``);
* replicas that stop accepting have their queue placed again, and parked calls are
  placed once their model has a ready replica (or failed once it has none starting);
* ``finish`` / ``release``: a call leaves its replica, and the next one may start;
* ``ended``: a call is over for good; with ``on_outcome`` (Algorithm 2's input) every
  call is counted once, as met or violated: violated as soon as routing predicts a miss
  (or sheds it), so the provisioner hears of overload before the calls finish; else when
  it finishes, by its own metric; a call ended unfinished (cancelled, abandoned, failed)
  counts only once its deadline has passed.

It does no I/O and reads no clock: time comes in as ``now``. What the caller does with
a decision comes back through hooks: ``on_start`` (a call got a slot on a replica: the
executor resolves its future, the simulator adds it to the replica's engine),
``on_batch`` (calls were started on a replica, once per dispatch) and ``on_fail`` (a
call that was placed again, after its replica stopped or once parked, has nowhere to
go). A failure of the first placement is raised to the caller instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

from orchestrator.api import SLA_UNREACHABLE
from orchestrator.policy.admission import Admission
from orchestrator.policy.scheduler import Scheduler
from orchestrator.policy.state import Call, ReplicaState

OnStart = Callable[[Call, ReplicaState, float], None]
OnBatch = Callable[[ReplicaState, float], None]
OnFail = Callable[[Call, "DispatchError"], None]
OnOutcome = Callable[[Call, bool, float], None]


class DispatchError(Exception):
    """A call that cannot be served; ``code`` is the machine-readable reason."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _Model:
    """The replicas of one model, in the order they were added, and its parked calls."""

    __slots__ = ("accepting", "parked", "replicas", "starting")

    def __init__(self) -> None:
        self.replicas: dict[str, ReplicaState] = {}
        self.accepting: list[ReplicaState] = []
        self.starting: set[str] = set()
        self.parked: dict[str, Call] = {}

    def refresh(self) -> None:
        self.accepting = [s for s in self.replicas.values() if s.accepting]


class DispatchCore:
    """Places, queues, starts and releases calls over a set of ``ReplicaState``s.

    Replicas are registered with ``add`` and change phase with ``set_phase``: accepting
    (ready for new calls), starting (not yet ready; calls for its model wait for it) or
    neither (draining, failed, stopped). A replica marked ``suspect`` until a time is
    avoided while others are accepting. With an ``admission`` policy, a call the policy
    holds back stays queued until the replica's batch changes (a call finishes, gets
    its first token, or another is queued).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        on_start: OnStart,
        on_fail: OnFail,
        on_batch: OnBatch | None = None,
        admission: Admission | None = None,
        on_outcome: OnOutcome | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.on_outcome = on_outcome
        self.admission = admission
        self.on_start = on_start
        self.on_fail = on_fail
        self.on_batch = on_batch
        self.states: dict[str, ReplicaState] = {}
        self.rerouted = 0  # queued calls placed again after their replica stopped accepting
        self.moved = 0  # calls held back by admission that started on another replica
        self._models: dict[str, _Model] = {}
        self._suspect_until: dict[str, float] = {}

    # -- replicas ---------------------------------------------------------------------

    def add(self, state: ReplicaState, now: float, *, starting: bool = False) -> None:
        """Register a replica (``state.accepting`` says whether it takes calls already);
        a replica registered again under the same id is replaced."""
        old = self.states.get(state.id)
        if old is not None and old.model != state.model:
            self._drop(old)
        self.states[state.id] = state
        entry = self._models.get(state.model)
        if entry is None:
            entry = self._models[state.model] = _Model()
        entry.replicas[state.id] = state
        if starting:
            entry.starting.add(state.id)
        else:
            entry.starting.discard(state.id)
        entry.refresh()
        self.settle(state.model, now)

    def set_phase(self, replica_id: str, now: float, *, accepting: bool, starting: bool) -> None:
        """A replica's new phase: an accepting one starts what is queued on it, one that
        stops accepting has its queue placed elsewhere; parked calls are settled."""
        st = self.states[replica_id]
        entry = self._models[st.model]
        st.accepting = accepting
        if starting:
            entry.starting.add(replica_id)
        else:
            entry.starting.discard(replica_id)
        entry.refresh()
        if accepting:
            self.dispatch(st, now)
        else:
            self.reroute(st, now)
        self.settle(st.model, now)

    def remove(self, replica_id: str, now: float) -> ReplicaState | None:
        """Forget a replica: its queue is placed elsewhere, parked calls are settled.
        Calls still in flight there stay in its state (their callers finish them)."""
        st = self.states.pop(replica_id, None)
        if st is None:
            return None
        st.accepting = False
        self._drop(st)
        self.reroute(st, now)
        self.settle(st.model, now)
        return st

    def _drop(self, st: ReplicaState) -> None:
        entry = self._models[st.model]
        entry.replicas.pop(st.id, None)
        entry.starting.discard(st.id)
        entry.refresh()
        self._suspect_until.pop(st.id, None)

    def suspect(self, replica_id: str, until: float, now: float) -> None:
        """Avoid a replica until ``until`` while others accept; its queue moves now."""
        st = self.states.get(replica_id)
        if st is None:
            return
        self._suspect_until[replica_id] = until
        self.reroute(st, now)

    def trust(self, replica_id: str) -> None:
        """Stop avoiding a replica marked ``suspect``."""
        self._suspect_until.pop(replica_id, None)

    @property
    def parked_count(self) -> int:
        return sum(len(m.parked) for m in self._models.values())

    def models(self) -> list[str]:
        """Models with at least one registered replica, sorted."""
        return sorted(name for name, m in self._models.items() if m.replicas)

    # -- placing ----------------------------------------------------------------------

    def candidates(
        self, model: str, now: float, excluded: Collection[str] = ()
    ) -> Sequence[ReplicaState]:
        """Accepting replicas of ``model`` not in ``excluded``; those not suspect at
        ``now`` if there are any."""
        entry = self._models.get(model)
        if entry is None:
            return ()
        serving: Sequence[ReplicaState] = entry.accepting
        if excluded:
            serving = [s for s in serving if s.id not in excluded]
        suspects = self._suspect_until
        if suspects and serving:
            healthy = [s for s in serving if suspects.get(s.id, -math.inf) <= now]
            return healthy or serving
        return serving

    def place(self, call: Call, now: float, excluded: Collection[str] = ()) -> None:
        """Route ``call`` into a replica's queue (and start it if there is room), or park
        it while its model's replicas start; raise ``DispatchError`` if neither, or
        (code ``sla_unreachable``) if the scheduler sheds it: late, and asked for that."""
        candidates = self.candidates(call.model, now, excluded)
        if candidates:
            route = self.scheduler.route(call, candidates, now)
            if route.shed or route.expected_completion > call.deadline:
                self._count(call, True, now)  # a predicted miss: tell the provisioner now
            if route.shed:
                raise DispatchError(
                    f"no replica can meet the deadline of call {call.id} any more (its "
                    "slack is gone) and its request asked to end rather than answer late",
                    SLA_UNREACHABLE,
                )
            st = self.states[route.replica_id]
            route.apply(call, st)
            self.dispatch(st, now)
            return
        entry = self._models.get(call.model)
        if entry is not None and entry.starting:
            call.replica = None
            entry.parked[call.id] = call
            return
        raise self._no_replica(call.model)

    def _no_replica(self, model: str) -> DispatchError:
        known = self.models()
        if model not in known:
            served = ", ".join(known) or "none"
            return DispatchError(
                f"unknown model {model!r}; served models: {served}", "unknown_model"
            )
        return DispatchError(f"no replica of model {model!r} is available", "no_replica")

    def _place_again(self, call: Call, now: float) -> None:
        try:
            self.place(call, now)
        except DispatchError as exc:
            self.on_fail(call, exc)

    def reroute(self, st: ReplicaState, now: float) -> None:
        """Place the calls queued on a replica that stopped accepting (or is suspect)."""
        for call in st.queue.calls():
            st.dequeue(call.id)
            self.rerouted += 1
            self._place_again(call, now)

    def settle(self, model: str, now: float) -> None:
        """Place the parked calls of ``model`` once it has an accepting replica; fail
        them once it has none starting either."""
        entry = self._models.get(model)
        if entry is None or not entry.parked or (entry.starting and not entry.accepting):
            return
        parked, entry.parked = entry.parked, {}
        for call in parked.values():
            self._place_again(call, now)

    # -- dispatch and release -----------------------------------------------------------

    def dispatch(self, st: ReplicaState, now: float) -> bool:
        """Start queued calls while the replica has free slots; whether any started."""
        in_flight = st.in_flight
        limit = st.concurrency_limit
        if not st.accepting or len(in_flight) >= limit or not len(st.queue):
            return False
        pick = self.scheduler.pick
        on_start = self.on_start
        admits = self.admission.admits if self.admission is not None else None
        started = False
        while len(in_flight) < limit:
            call = pick(st, now)
            if call is None:
                break
            if admits is not None and in_flight and not admits(st, call, now):
                if (
                    self.admission is not None
                    and self.admission.moves
                    and self._move(st, call, now)
                ):
                    continue
                break
            st.dispatch(call, now)
            started = True
            on_start(call, st, now)
        if started and self.on_batch is not None:
            self.on_batch(st, now)
        return started

    def _move(self, st: ReplicaState, call: Call, now: float) -> bool:
        """Start a call held back on ``st`` on another replica of its model that has a
        free slot, nothing queued, and a batch that takes it now (admission prices it
        with the prefill it would pay there); whether one did."""
        assert self.admission is not None
        admits = self.admission.admits
        for other in self.candidates(call.model, now):
            if (
                other is st
                or len(other.queue)
                or len(other.in_flight) >= other.concurrency_limit
                or not admits(other, call, now)
            ):
                continue
            st.dequeue(call.id)
            other.enqueue(call)
            self.moved += 1
            self.dispatch(other, now)
            return True
        return False

    def ended(self, call: Call, now: float, *, finished: bool) -> None:
        """``call`` is over for good: ``finished`` (met or missed by its metric), or
        ended unfinished: a TTFT call that had its first token is judged by it, any other
        counts as a miss only once past its deadline."""
        if call.outcome_counted:
            return
        first = call.first_token_at
        if call.metric == "ttft" and first is not None:  # its metric was reached
            self._count(call, first > call.deadline, now)
        elif finished:
            self._count(call, now > call.deadline, now)
        elif now > call.deadline:
            self._count(call, True, now)

    def _count(self, call: Call, violated: bool, now: float) -> None:
        if call.outcome_counted:
            return
        call.outcome_counted = True
        if self.on_outcome is not None:
            self.on_outcome(call, violated, now)

    def first_token(self, st: ReplicaState, call_id: str, now: float) -> None:
        """A call in flight on ``st`` got its first token (with admission, a call held
        back for its sake may join now)."""
        st.first_token(call_id, now)
        if self.admission is not None and len(st.queue):
            self.dispatch(st, now)

    def finish(
        self, st: ReplicaState, call_id: str, now: float, output_tokens: int | None = None
    ) -> bool:
        """A call in flight on ``st`` is done; whether others started in its place."""
        st.finish(call_id, now, output_tokens)
        return self.dispatch(st, now)

    def release(self, call: Call, now: float, *, queued_only: bool = False) -> None:
        """Take a call out wherever it is: parked, queued, or (unless ``queued_only``
        finds it queued) in flight, letting the next call in."""
        entry = self._models.get(call.model)
        if entry is not None and entry.parked.pop(call.id, None) is not None:
            return
        st = self.states.get(call.replica or "")
        if st is None:
            return
        if queued_only and st.dequeue(call.id) is not None:
            return
        self.finish(st, call.id, now)
