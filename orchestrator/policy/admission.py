"""Slack-aware engine admission: may a replica's batch take one more call right now?

Routing (``scheduler``) decides which replica's queue a call joins; admission decides
when a queued call leaves that queue for the replica's running batch. A continuous-
batching engine runs every call it holds in each forward pass, so one more call costs
every call already there: its prompt's prefill chunks lengthen the next steps (each
running call's next token waits for them), and while it decodes, every step costs one
more sequence and its context more. ``slack`` predicts both with an engine timing
model and holds the call back (in the orchestrator's queue, where the scheduler orders
it) if they would push a running call past its deadline that it would meet otherwise;
a call held back starts on another replica whose batch takes it, if one has room.
``slack_net`` lets a call that meets its own deadline only by joining now cost one
running call; it is what ``auto`` (the default) gives ``cato``. Measured in the
simulator (rq1, rq2, seeds 0-4), the gain past saturation comes from the moves: a call
is bound to a replica when a batch can take it, not when it was routed. Held back
without moves, goodput stays where it is without admission.

The replica's limit thus moves with its calls' slack, between 1 running call (a call
is always admitted to an empty batch) and its concurrency limit (the caller checks
that). PURE: state and ``now`` in, a yes or no out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrator.policy.scheduler import URGENT
from orchestrator.policy.state import Call, Rates, ReplicaState

if TYPE_CHECKING:
    from orchestrator.engine_model import EngineProfile


# A prefilling ttft call's delay under this share of its budget is not counted as harm.
DEFAULT_HARM_FLOOR = 0.1
# A running e2e call's delay under this share of the time left to its deadline is not.
DEFAULT_E2E_FLOOR = 0.02
# An e2e call whose prefill takes over this share of a prefilling ttft call's budget
# waits until that call has its first token.
DEFAULT_PREFILL_SHARE = 0.2


class AdmissionConfigError(ValueError):
    """An unknown admission policy name, or options it does not take."""


@dataclass(frozen=True, slots=True)
class StepCosts:
    """What one forward pass of an engine costs (see ``EngineProfile.step_time_s``)."""

    overhead_s: float
    prefill_s_per_token: float
    decode_s_per_seq: float
    kv_read_s_per_token: float
    max_batched_tokens: int

    @classmethod
    def from_profile(cls, profile: EngineProfile) -> StepCosts:
        return cls(
            profile.step_overhead_s,
            profile.prefill_s_per_token,
            profile.decode_s_per_seq,
            profile.kv_read_s_per_token,
            profile.max_num_batched_tokens,
        )

    @classmethod
    def from_rates(cls, rates: Rates) -> StepCosts:
        """A replica whose engine is not profiled: its learned rates, where a step costs
        ``tpot_s`` whatever the batch (only prefill is seen to delay others)."""
        return cls(rates.tpot_s, rates.prefill_s_per_token, 0.0, 0.0, 1 << 30)


class Admission(ABC):
    """Whether a replica with calls running takes ``call`` into its batch now.

    ``moves``: a call held back may start at once on another replica of its model whose
    batch takes it (one with a free slot and nothing queued), instead of waiting.
    """

    name: ClassVar[str]
    moves: bool = False

    @abstractmethod
    def admits(self, replica: ReplicaState, call: Call, now: float) -> bool: ...


class OpenAdmission(Admission):
    """Every call, up to the replica's concurrency limit (the fixed limit)."""

    name = "none"

    def admits(self, replica: ReplicaState, call: Call, now: float) -> bool:
        return True


class SlackAdmission(Admission):
    """Hold a call back if it would push a running call past a deadline it would meet.

    For each call running on the replica whose SLA point is still ahead (an ``e2e``
    call, or a ``ttft`` call before its first token), the time it reaches that point is
    predicted without and with ``call`` in the batch:

    * without: the prefill still owed by the running calls (they prefill first), then,
      for an ``e2e`` call, its remaining tokens at the current decode step time (step
      overhead, plus per sequence and per context token of the batch);
    * with: plus ``call``'s prompt prefill (for a ``ttft`` call still prefilling, only
      what fits in the token budget left in the step that ends that call's prompt:
      the engine prefills in the order calls were started), plus, per step that both
      decode, the cost of one more sequence and its context.

    ``call`` is held back if some running call meets its deadline without it and would
    have less than ``margin_s`` to spare with it: the margin is what later calls may
    not take, so that many small costs do not add up to a miss. A running ``ttft`` call
    still prefilling is not counted as harmed by a delay under ``harm_floor`` of its
    budget: its first token is a step or two away, within what this timing model can
    tell apart, while holding ``call`` back costs it for sure. A running ``e2e`` call
    is not counted as harmed by a delay under ``e2e_floor`` of the time left to its
    deadline: the model's error grows with the decode still ahead, and a floor that
    shrinks as the deadline nears keeps protecting the last steps (a floor on the
    budget let small delays add up over a long decode, and rq2 collapsed past
    saturation). ``prefill_share``: an ``e2e`` call whose own prefill would take longer
    than this share of the budget of a ``ttft`` call still prefilling here waits until
    no such call is, unless its own slack is nearly gone (``URGENT``). It would not
    delay that call (the engine prefills in the order calls started) but the
    completions arriving during its prompt's chunks, which vLLM serves after every
    running prefill: a replica where a completion prefills is one where completions
    arrive. All three are heuristics, tuned on the sessions scenario's seeds 0-4 and
    checked on rq1 and rq2; docs/BENCHMARKS.md ("Prefix cache: editing sessions") has
    their figures and the commands that measure them (variants ``cato/harm_floor=0``,
    ``cato/e2e_floor=0``, ``cato/prefill_share=inf``).

    With ``moves`` (the default) a call held back starts on another replica whose batch
    takes it, if one has a free slot and nothing queued; otherwise it waits. Step costs
    come from the engine profile of the replica's model when known, the prefill rate
    from the replica's learned rates (it follows the engine as it drifts).
    """

    name = "slack"
    # May a call that meets its own deadline by joining cost one running call its own?
    net: ClassVar[bool] = False

    def __init__(
        self,
        *,
        profiles: Mapping[str, EngineProfile] | None = None,
        margin_s: float = 0.0,
        moves: bool = True,
        harm_floor: float = DEFAULT_HARM_FLOOR,
        e2e_floor: float = DEFAULT_E2E_FLOOR,
        prefill_share: float = DEFAULT_PREFILL_SHARE,
    ) -> None:
        if margin_s < 0:
            raise AdmissionConfigError(f"margin_s must be >= 0, got {margin_s}")
        for name, floor in (("harm_floor", harm_floor), ("e2e_floor", e2e_floor)):
            if not 0.0 <= floor < 1.0:
                raise AdmissionConfigError(f"{name} must be in [0, 1), got {floor}")
        if not prefill_share > 0.0:  # inf: never held for it
            raise AdmissionConfigError(f"prefill_share must be > 0, got {prefill_share}")
        self.margin_s = margin_s
        self.harm_floor = harm_floor
        self.e2e_floor = e2e_floor
        self.prefill_share = prefill_share
        self.moves = moves
        self._costs = {name: StepCosts.from_profile(p) for name, p in (profiles or {}).items()}

    def costs(self, replica: ReplicaState) -> StepCosts:
        costs = self._costs.get(replica.model)
        return costs if costs is not None else StepCosts.from_rates(replica.rates)

    def admits(self, replica: ReplicaState, call: Call, now: float) -> bool:
        running = replica.in_flight
        if not running:
            return True
        costs = self.costs(replica)
        per_token = replica.rates.prefill_s_per_token
        kv = costs.kv_read_s_per_token
        context = 0
        for c in running.values():
            context += c.prompt_tokens + c.tokens_done
        step = costs.overhead_s + len(running) * costs.decode_s_per_seq + context * kv
        owed = now + replica.inflight_prefill_tokens * per_token
        # What ``call`` adds: its prefill, and per step that it decodes beside another.
        prompt = call.prompt_tokens
        # Its cached prefix here is not computed again (a call is asked about the
        # replica it is queued on, or, to move, about another one).
        cached = call.cached_tokens if call.replica == replica.id else replica.cached_tokens(call)
        computed = prompt - cached
        extra_prefill = computed * per_token
        extra_step = costs.decode_s_per_seq + (prompt + call.expected_output_tokens // 2) * kv
        its_tokens = max(call.expected_output_tokens, 1)
        margin = self.margin_s
        floor = self.harm_floor
        # ``prefill_share`` weighs ``call``'s prefill against a prefilling ttft call's
        # budget; a call that is not e2e, or whose slack is nearly gone, never waits.
        long_prefill = (
            extra_prefill / self.prefill_share
            if call.metric == "e2e" and call.priority != URGENT
            else 0.0
        )
        # With ``net``, a call that meets its own deadline if it joins now may cost one
        # running call its deadline (one met for one missed); otherwise none may.
        allowed = 0
        if self.net:
            own = owed + extra_prefill + step + extra_step
            if call.metric == "e2e":
                own += (its_tokens - 1) * (step + extra_step)
            allowed = 1 if own <= call.deadline - margin else 0
        harmed = 0
        budget = costs.max_batched_tokens
        ahead = 0  # prompt tokens owed by the calls started before ``c`` and by ``c``
        for c in running.values():  # in the order they were started (the engine's)
            if c.first_token_at is None:
                ahead += c.prefill_tokens
            if c.metric == "ttft":
                if c.first_token_at is not None:
                    continue  # its SLA point is behind it
                budget_s = c.deadline - c.arrival
                if long_prefill > budget_s:
                    return False  # a long prompt waits for the completions' first tokens
                # Its first token comes in the step that ends its prompt; ``call``,
                # started after it, only gets that step's leftover token budget.
                done = now + ahead * per_token + step
                leftover = max(budget - ahead % budget - len(running), 0)
                later = done + min(computed, leftover) * per_token + extra_step
                if later - done < floor * budget_s:
                    continue  # within the model's error (see the class doc)
            else:
                left = max(c.expected_output_tokens - c.tokens_done, 1)
                done = owed + left * step
                later = done + extra_prefill + min(left, its_tokens) * extra_step
                if later - done < self.e2e_floor * (c.deadline - now):
                    continue  # within the model's error over the decode still ahead
            if done <= c.deadline and later > c.deadline - margin:
                harmed += 1
                if harmed > allowed:
                    return False
        return True


class NetSlackAdmission(SlackAdmission):
    """``slack``, except that a call that meets its own deadline if it joins now may
    cost one running call its deadline (a miss for a met deadline, not for nothing)."""

    name = "slack_net"
    net: ClassVar[bool] = True


ADMISSIONS: dict[str, type[Admission]] = {
    cls.name: cls for cls in (OpenAdmission, SlackAdmission, NetSlackAdmission)
}


AUTO = "auto"
# What ``auto`` means per scheduler: CATO holds back calls that would make running ones
# late (simulated rq2, seeds 0-4: goodput 0.30 -> 0.64 at C, 0.05 -> 0.28 at 1.2 C,
# even at 0.8 C; rq1 +1 to +2 points); the others fill a replica up to its limit.
DEFAULT_ADMISSION: dict[str, str] = {"cato": "slack_net"}


def resolve_admission(name: str, scheduler: str) -> str:
    """The admission policy ``name`` stands for next to ``scheduler`` (``auto``: the
    scheduler's default, see ``DEFAULT_ADMISSION``)."""
    if name == AUTO:
        return DEFAULT_ADMISSION.get(scheduler, OpenAdmission.name)
    if name not in ADMISSIONS:
        valid = ", ".join([AUTO, *sorted(ADMISSIONS)])
        raise AdmissionConfigError(f"unknown admission policy {name!r}; valid names: {valid}")
    return name


def make_admission(
    name: str, *, profiles: Mapping[str, EngineProfile] | None = None, **kwargs: Any
) -> Admission:
    """The admission policy registered as ``name`` (``slack`` uses the engine
    ``profiles`` of the models it knows), built with ``kwargs``."""
    cls = ADMISSIONS.get(name)
    if cls is None:
        valid = ", ".join(sorted(ADMISSIONS))
        raise AdmissionConfigError(f"unknown admission policy {name!r}; valid names: {valid}")
    try:
        if issubclass(cls, SlackAdmission):
            return cls(profiles=profiles, **kwargs)
        return cls(**kwargs)
    except TypeError as exc:
        raise AdmissionConfigError(f"bad options for admission {name!r}: {exc}") from None
