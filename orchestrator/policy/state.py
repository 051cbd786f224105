"""The state the pure policies read: model calls, replicas, their queues and rates.

The executor (live) and the simulator (virtual clock) own these objects and mutate them
through the methods below; the policies only read them and return decisions. Aggregates
are kept incrementally so that a routing decision is O(replicas), not O(queued calls).
Times are seconds on the caller's clock; nothing here reads a clock.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from orchestrator.engine_model import EngineProfile

Metric = Literal["ttft", "e2e"]
INF = math.inf
# Added to a replica's ``route_key`` per call queued or running there, so that among
# replicas with the same expected wait (idle ones, typically) the emptier one wins.
TIE_BREAK_S = 1e-9


@dataclass
class Rates:
    """Learned service rates of one replica (or a model's prior before it has data).

    TTFT of a call alone ~ ``overhead_s + prompt_tokens * prefill_s_per_token``; each
    further token ~ ``tpot_s``. Observations move the rates by an EWMA, so drift in
    the engine (a busier GPU, a longer context) is followed.
    """

    overhead_s: float = 0.02
    prefill_s_per_token: float = 1e-4
    tpot_s: float = 0.02
    alpha: float = 0.2

    @classmethod
    def from_profile(cls, profile: EngineProfile) -> Rates:
        """The prior for replicas running ``profile``: one sequence alone on the engine."""
        return cls(
            overhead_s=profile.step_overhead_s,
            prefill_s_per_token=profile.prefill_s_per_token,
            tpot_s=profile.step_overhead_s + profile.decode_s_per_seq,
        )

    def prefill_s(self, prompt_tokens: int) -> float:
        return self.overhead_s + prompt_tokens * self.prefill_s_per_token

    def decode_s(self, output_tokens: int) -> float:
        return output_tokens * self.tpot_s

    def service_s(self, call: Call) -> float:
        """Expected time on the replica until the call's SLA metric is reached."""
        t = self.prefill_s(call.prompt_tokens - call.cached_tokens)
        if call.metric == "e2e":
            t += self.decode_s(call.expected_output_tokens)
        return t

    def observe(
        self,
        prompt_tokens: int,
        ttft_s: float,
        output_tokens: int,
        decode_s: float,
        *,
        contended: bool = False,
    ) -> None:
        """Fold one finished call (TTFT on the replica, and the decode time after it) in.

        A ``contended`` call started while others ran on the replica: its TTFT holds
        time spent waiting inside the engine, which the scheduler already counts as
        queue wait, so it teaches the decode rate only, never the prefill rate.
        """
        a = self.alpha
        if contended:
            pass
        elif prompt_tokens > 0 and ttft_s > self.overhead_s:
            per_token = (ttft_s - self.overhead_s) / prompt_tokens
            self.prefill_s_per_token += a * (per_token - self.prefill_s_per_token)
        elif ttft_s > 0:
            self.overhead_s += a * (ttft_s - self.overhead_s)
        if output_tokens > 1 and decode_s > 0:
            tpot = decode_s / (output_tokens - 1)
            self.tpot_s += a * (tpot - self.tpot_s)

    def observe_call(
        self, call: Call, started: float, first_token: float, done: float, produced: int
    ) -> None:
        """Fold ``call`` in, run from ``started`` to ``done``, its first token at
        ``first_token``: its prefill counts the tokens the engine was expected to
        compute (its cached prefix aside), in the units ``service_s`` charges, which
        is what live replicas and the simulator both teach."""
        self.observe(
            call.prefill_tokens,
            first_token - started,
            produced,
            done - first_token,
            contended=call.peers_at_start > 0,
        )


@dataclass(eq=False, slots=True)
class Call:
    """One llm node: a single model call with its own deadline.

    ``metric`` says which latency the node's deadline bounds (``ttft`` for a node whose
    first token is what the user waits for, ``e2e`` otherwise). While queued, the call
    moves to priority ``promote_to`` at ``promote_at``, then through ``moves`` (later
    ``(time, level)`` pairs, in time order): the routing policy plans every move a
    waiting call will make (its slack nearly gone, gone, its bounded wait over) when it
    routes it. ``shed_late``: the request asked to end at once rather than run late.
    ``block_hashes``: the prompt's KV blocks as the engine's prefix cache keys them
    (empty where the engine caches nothing); ``cached_tokens``: how much of the prompt
    the replica it is queued on is expected to hold (set by ``ReplicaState.enqueue``).
    """

    id: str
    model: str
    deadline: float
    prompt_tokens: int
    expected_output_tokens: int
    arrival: float
    metric: Metric = "e2e"
    task_id: str = ""
    kind: str = ""
    # Set by routing and dispatch.
    priority: int = 2
    replica: str | None = None
    sort_key: float = 0.0
    promote_at: float = INF
    promote_to: int = 0
    moves: tuple[tuple[float, int], ...] = ()
    shed_late: bool = False
    block_hashes: tuple[int, ...] = ()
    cached_tokens: int = 0
    started_at: float | None = None
    first_token_at: float | None = None
    tokens_done: int = 0
    peers_at_start: int = 0
    outcome_counted: bool = False  # told the provisioner: met or violated (once)
    _token: int = field(default=-1, repr=False)

    @property
    def remaining_output_tokens(self) -> int:
        return max(self.expected_output_tokens - self.tokens_done, 0)

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens the replica is expected to compute (its cached prefix aside)."""
        return self.prompt_tokens - self.cached_tokens


class PrefixIndex:
    """Which prompt blocks a replica probably holds in its prefix cache.

    The block hashes of the calls routed to the replica, most recent last, at most
    ``capacity`` of them (the engine's KV blocks: it cannot hold more); the oldest go
    first, as the engine evicts its least recently used free blocks. An estimate: the
    engine also spends blocks on outputs and on running sequences, so under pressure
    it holds less than this says.
    """

    __slots__ = ("_blocks", "block_tokens", "capacity")

    def __init__(self, block_tokens: int, capacity: int) -> None:
        if block_tokens < 1 or capacity < 1:
            raise ValueError("block_tokens and capacity must be >= 1")
        self.block_tokens = block_tokens
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match_tokens(self, hashes: Sequence[int]) -> int:
        """Tokens of the longest leading run of ``hashes`` held here."""
        blocks = self._blocks
        n = 0
        for h in hashes:
            if h not in blocks:
                break
            n += 1
        return n * self.block_tokens

    def add(self, hashes: Sequence[int]) -> None:
        """A prompt with these blocks is sent here: they become the most recent."""
        blocks = self._blocks
        for h in hashes:
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)


class ReplicaQueue:
    """Calls waiting for one replica, ordered by (priority, key) with lazy re-evaluation.

    A call's priority changes only at times known when it was routed: to
    ``promote_to`` at ``promote_at``, then to each level of ``moves`` at its time (a
    handful at most). So instead of re-sorting at every dispatch, a timer heap moves
    calls as ``now`` passes those times: push, pop and remove are all O(log n).
    """

    def __init__(self) -> None:
        self._urgent: list[tuple[float, int, Call]] = []
        self._normal: list[tuple[int, float, int, Call]] = []
        self._timers: list[tuple[float, int, Call]] = []
        self._live: dict[str, Call] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._live

    def calls(self) -> list[Call]:
        return list(self._live.values())

    def push(self, call: Call) -> None:
        token = next(self._seq)
        call._token = token
        self._live[call.id] = call
        if call.priority == 0:
            heapq.heappush(self._urgent, (call.sort_key, token, call))
        else:
            heapq.heappush(self._normal, (call.priority, call.sort_key, token, call))
        if call.promote_at < INF:
            heapq.heappush(self._timers, (call.promote_at, token, call))

    def remove(self, call_id: str) -> Call | None:
        call = self._live.pop(call_id, None)
        if call is not None:
            call._token = -1  # entries left in the heaps are now stale
        return call

    def promote(self, now: float) -> None:
        """Make every move due by ``now``: a call goes to its ``promote_to``, and its
        next move (if any) becomes its ``promote_at``/``promote_to``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, token, call = heapq.heappop(timers)
            if call._token != token or call.id not in self._live:
                continue
            level = call.priority = call.promote_to
            new = call._token = next(self._seq)
            if call.moves:
                (call.promote_at, call.promote_to), call.moves = call.moves[0], call.moves[1:]
                heapq.heappush(timers, (call.promote_at, new, call))
            else:
                call.promote_at = INF  # done: a re-push must not move it again
            if level == 0:
                heapq.heappush(self._urgent, (call.sort_key, new, call))
            else:
                heapq.heappush(self._normal, (level, call.sort_key, new, call))

    def peek(self, now: float) -> Call | None:
        timers = self._timers
        if timers and timers[0][0] <= now:
            self.promote(now)
        urgent = self._urgent
        while urgent:
            _, token, call = urgent[0]
            if call._token == token and call.id in self._live:
                return call
            heapq.heappop(urgent)  # stale: removed, re-pushed or promoted
        normal = self._normal
        while normal:
            _, _, token, call = normal[0]
            if call._token == token and call.id in self._live:
                return call
            heapq.heappop(normal)
        return None

    def pop(self, now: float) -> Call | None:
        call = self.peek(now)
        if call is not None:
            self.remove(call.id)
        return call


@dataclass(eq=False)
class ReplicaState:
    """One replica as the policies see it: limits, rates, queue, calls in flight.

    ``wait_s`` (the expected wait of a call routed here now) and ``route_key`` are kept
    current by every method that changes the replica, so that routing reads one plain
    attribute per replica. Change ``rates`` or ``concurrency_limit`` through
    ``observe`` or follow the change with ``refresh()``.
    """

    id: str
    model: str
    concurrency_limit: int
    rates: Rates = field(default_factory=Rates)
    accepting: bool = True
    queue: ReplicaQueue = field(default_factory=ReplicaQueue)
    in_flight: dict[str, Call] = field(default_factory=dict)
    # The prompts sent here, for prefix-cache affinity (None: not tracked).
    prefixes: PrefixIndex | None = None
    # Aggregates over queue and in_flight, kept by the methods below.
    queued_prompt_tokens: int = 0
    queued_output_tokens: int = 0
    inflight_prefill_tokens: int = 0
    inflight_output_tokens: int = 0
    busy_since: float | None = None
    idle_since: float | None = 0.0
    # Derived from the above by refresh().
    wait_s: float = field(default=0.0, init=False)
    route_key: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.refresh()

    @property
    def free_slots(self) -> int:
        return max(self.concurrency_limit - len(self.in_flight), 0)

    @property
    def load(self) -> int:
        """Requests queued or running here: what queue-length baselines compare."""
        return len(self.queue) + len(self.in_flight)

    def estimate_wait_s(self) -> float:
        """Expected time before a call routed here now starts being served.

        With a free slot and an empty queue: the prefill still owed by the calls in
        flight. The engine admits the call at once, but prefill is compute-bound and a
        step's token budget goes to the prompts already being prefilled, so a short
        completion behind a long summary's prompt waits for it; counting calls alone
        (least loaded) would miss that. Otherwise the prefill still owed to
        the calls ahead (they prefill first; prefill is compute-bound, so serial), plus
        the time until enough of them finish to free a slot: decode runs up to
        ``concurrency_limit`` sequences per step, so the decode work ahead drains at
        that many tokens per ``tpot_s``, and a slot is needed once ``ahead - limit + 1``
        of the ``ahead`` calls are done. The whole queue counts as ahead (a call with
        an earlier deadline may overtake it, so this errs on the safe side).
        """
        return self._wait_s(len(self.queue), len(self.in_flight))

    def _wait_s(self, queued: int, running: int) -> float:
        limit = max(self.concurrency_limit, 1)
        rates = self.rates
        if queued == 0 and running < limit:
            return self.inflight_prefill_tokens * rates.prefill_s_per_token
        wait = (
            self.inflight_prefill_tokens + self.queued_prompt_tokens
        ) * rates.prefill_s_per_token + queued * rates.overhead_s
        ahead = queued + running
        if ahead >= limit:
            decode = (self.inflight_output_tokens + self.queued_output_tokens) * rates.tpot_s
            wait += decode / limit * (ahead - limit + 1) / ahead
        return wait

    def refresh(self) -> None:
        """Recompute ``wait_s`` and ``route_key`` after a change to the replica."""
        # This runs after every change: ``len`` of the queue's dict (not ``__len__``),
        # and the usual answer of ``_wait_s`` (a free slot, nothing queued) inline.
        queued = len(self.queue._live)
        running = len(self.in_flight)
        if queued == 0 and (running < self.concurrency_limit or running == 0):
            wait = self.inflight_prefill_tokens * self.rates.prefill_s_per_token
        else:
            wait = self._wait_s(queued, running)
        self.wait_s = wait
        self.route_key = wait + (queued + running) * TIE_BREAK_S

    def observe_call(
        self, call: Call, started: float, first_token: float, done: float, produced: int
    ) -> None:
        """Fold one finished call into the replica's rates (``Rates.observe_call``) and
        the wait estimate that depends on them."""
        self.rates.observe_call(call, started, first_token, done, produced)
        self.refresh()

    def observe_unanswered(self, call: Call, now: float) -> None:
        """``call`` ran here without a first token until ``now``, when it was shed: it
        took at least that long, so fold that in as its TTFT (a lower bound). Rates too
        fast to see their own error would otherwise route every such call as on time,
        shed it, and never learn. The executor and the simulator both call this."""
        if call.started_at is not None and call.first_token_at is None:
            self.observe_call(call, call.started_at, now, now, 0)

    def cached_tokens(self, call: Call) -> int:
        """Tokens of ``call``'s prompt this replica is expected to have cached."""
        if self.prefixes is None or not call.block_hashes:
            return 0
        return self.prefixes.match_tokens(call.block_hashes)

    def enqueue(self, call: Call) -> None:
        call.replica = self.id
        # What the engine will hold of its prompt; the prompt itself counts once the
        # call starts here (a queued call may still move to another replica).
        if self.prefixes is not None and call.block_hashes:
            call.cached_tokens = self.prefixes.match_tokens(call.block_hashes)
        else:
            call.cached_tokens = 0
        self.queue.push(call)
        self.queued_prompt_tokens += call.prompt_tokens - call.cached_tokens
        self.queued_output_tokens += call.expected_output_tokens
        self.refresh()

    def dequeue(self, call_id: str) -> Call | None:
        call = self._unqueue(call_id)
        if call is not None:
            self.refresh()
        return call

    def start(self, call: Call, now: float) -> None:
        """Move a call (already taken off the queue) into flight."""
        self._start(call, now)
        self.refresh()

    def dispatch(self, call: Call, now: float) -> None:
        """``dequeue`` then ``start``: the call ``pick`` chose goes into flight (one
        refresh instead of two; a call is dispatched once per run, so this is hot)."""
        self._unqueue(call.id)
        self._start(call, now)
        self.refresh()

    def _unqueue(self, call_id: str) -> Call | None:
        call = self.queue.remove(call_id)
        if call is not None:
            self.queued_prompt_tokens -= call.prompt_tokens - call.cached_tokens
            self.queued_output_tokens -= call.expected_output_tokens
        return call

    def _start(self, call: Call, now: float) -> None:
        call.started_at = now
        call.replica = self.id
        call.peers_at_start = len(self.in_flight)
        self.in_flight[call.id] = call
        if self.prefixes is not None and call.block_hashes:
            self.prefixes.add(call.block_hashes)
        if call.first_token_at is None:
            self.inflight_prefill_tokens += call.prompt_tokens - call.cached_tokens
        self.inflight_output_tokens += max(call.expected_output_tokens - call.tokens_done, 0)
        if self.busy_since is None:
            self.busy_since = now
        self.idle_since = None

    def first_token(self, call_id: str, now: float) -> None:
        call = self.in_flight.get(call_id)
        if call is None or call.first_token_at is not None:
            return
        call.first_token_at = now
        self.inflight_prefill_tokens -= call.prompt_tokens - call.cached_tokens
        self.refresh()

    def tokens(self, call_id: str, n: int = 1) -> None:
        call = self.in_flight.get(call_id)
        if call is None:
            return
        before = call.remaining_output_tokens
        call.tokens_done += n
        self.inflight_output_tokens -= before - call.remaining_output_tokens
        self.refresh()

    def finish(self, call_id: str, now: float, output_tokens: int | None = None) -> Call | None:
        """Take a call out of flight; ``output_tokens``, if given, is its final count
        (``tokens`` for what ``tokens`` was not told yet, without another refresh)."""
        call = self.in_flight.pop(call_id, None)
        if call is None:
            return None
        if call.first_token_at is None:
            self.inflight_prefill_tokens -= call.prompt_tokens - call.cached_tokens
        self.inflight_output_tokens -= call.remaining_output_tokens
        if output_tokens is not None and output_tokens > call.tokens_done:
            call.tokens_done = output_tokens
        if not self.in_flight:
            self.busy_since = None
            self.idle_since = now
        self.refresh()
        return call
