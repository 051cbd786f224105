"""A clairvoyant heuristic scheduler, and the scheduler registry of the simulator.

``clairvoyant`` knows every call's true output length (the simulator stamps it on the call
as ``expected_output_tokens``), so the replicas' expected waits and the call's own
service time are computed from exact lengths and the replicas' measured rates. It
routes each call to the replica where it completes earliest, orders queues by deadline
(EDF, no promotion) and sends calls that cannot meet their deadline anywhere to the back
of the queue, where they no longer delay calls that can. Only a simulation knows output
lengths in advance, so it exists only here, as a point of comparison, not something to
deploy. It is a heuristic, not an upper bound: it never moves a queued call, never holds a
call back from a batch, and routes greedily one call at a time, so the real policies beat
it in some cells (it was called ``oracle`` before it was found not to bound them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from orchestrator.engine_model import EngineProfile
from orchestrator.policy.scheduler import (
    SAFE,
    SCHEDULERS,
    NoReplicaError,
    Route,
    Scheduler,
    SchedulerConfigError,
    make_scheduler,
    service_s,
)
from orchestrator.policy.state import INF, Call, ReplicaState

HOPELESS = SAFE + 1


class ClairvoyantScheduler(Scheduler):
    """Clairvoyant earliest-deadline-first: earliest completion, exact output lengths.

    A call's time on a replica is its prefill plus, for an ``e2e`` call, its true output
    length times the step time of the replica's batch with the call in it (from the
    engine profile of the model, when the simulator gives one; otherwise from the
    replica's measured rates).
    """

    name = "clairvoyant"
    clairvoyant: ClassVar[bool] = True

    def __init__(self, *, seed: int = 0, profiles: Mapping[str, EngineProfile] | None = None):
        super().__init__(seed=seed)
        self.profiles = dict(profiles or {})

    def route(self, call: Call, replicas: Sequence[ReplicaState], now: float) -> Route:
        if not replicas:
            raise NoReplicaError(f"no accepting replica serves model {call.model!r}")
        profile = self.profiles.get(call.model)
        best = replicas[0]
        best_key = (INF, 0)
        for replica in replicas:
            done = now + replica.wait_s + self.service_s(call, replica, profile)
            key = (done, replica.load)
            if key < best_key:
                best, best_key = replica, key
        best_done = best_key[0]
        priority = SAFE if best_done <= call.deadline else HOPELESS
        return Route(best.id, priority, best.wait_s, best_done, call.deadline, INF)

    @staticmethod
    def service_s(call: Call, replica: ReplicaState, profile: EngineProfile | None) -> float:
        if profile is None:
            return service_s(replica.rates, call)
        batch = min(len(replica.in_flight) + 1, profile.max_num_seqs)
        context = batch * (call.prompt_tokens + call.expected_output_tokens // 2)
        step = profile.step_time_s(0, batch, context)
        t = step + call.prompt_tokens * profile.prefill_s_per_token
        if call.metric == "e2e":
            t += call.expected_output_tokens * step
        return t


SIM_SCHEDULERS: tuple[str, ...] = (*SCHEDULERS, ClairvoyantScheduler.name)


def is_clairvoyant(scheduler: Scheduler) -> bool:
    """Whether the simulator should tell ``scheduler`` the true output lengths."""
    return bool(getattr(scheduler, "clairvoyant", False))


def make_sim_scheduler(
    name: str,
    *,
    seed: int = 0,
    profiles: Mapping[str, EngineProfile] | None = None,
    **options: Any,
) -> Scheduler:
    """A live scheduler by name with ``options`` (see ``make_scheduler``), or
    ``clairvoyant`` (which alone uses the engine ``profiles`` of the models)."""
    if name == ClairvoyantScheduler.name:
        if options:
            raise SchedulerConfigError(f"clairvoyant takes no options, got {sorted(options)}")
        return ClairvoyantScheduler(seed=seed, profiles=profiles)
    return make_scheduler(name, seed=seed, **options)
