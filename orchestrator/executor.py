"""The executor: runs task graphs over live replicas and streams their events.

Each ``llm`` node becomes a ``Call`` that the dispatch core (``orchestrator.dispatch``,
shared with the simulator) routes by the scheduler into a replica's queue; a replica
takes calls off its queue (in the scheduler's order) while it has free slots, so at most
its concurrency limit of sequences are in flight upstream. A call whose model has no
ready replica yet, but one starting, waits ("parked") until one is ready. The call's
task awaits a future that the core's ``on_start`` resolves.

A failed call moves to another replica while the user has seen none of its text
(always for a chunk of a translation, only before the first token for the node whose
tokens are streamed); the replica is then avoided for ``suspect_s``, and after
``eject_after`` failures in a row until a health check passes (outlier ejection).

Cancellation: closing the iterator returned by ``submit`` cancels the graph's node tasks
(``orchestrator.task_run``); queued calls leave their queue, and in-flight calls close
their HTTP stream, which makes vLLM abort the sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from orchestrator.api import SLA_UNREACHABLE, ReplicaInfo, Status, TaskEvent, TaskRequest, Usage
from orchestrator.dispatch import DispatchCore, DispatchError
from orchestrator.engine_model import block_hashes
from orchestrator.graphs import Node, TaskDefaults, TaskGraph
from orchestrator.metrics import Recorder
from orchestrator.policy.admission import Admission, make_admission, resolve_admission
from orchestrator.policy.scheduler import Scheduler, make_scheduler
from orchestrator.policy.state import Call, PrefixIndex, Rates, ReplicaState
from orchestrator.profiler import Profiler
from orchestrator.replicas.openai_client import (
    Finished,
    ReplicaClient,
    ReplicaError,
    ReplicaHTTPError,
    Token,
)
from orchestrator.replicas.relay import RelayOptions
from orchestrator.replicas.sink import ReplicaSpec
from orchestrator.task_run import (
    ByteSink,
    OnDispatch,
    OnToken,
    RunItem,
    TaskFailed,
    TaskRun,
    TextSink,
    TokenDelta,
)

__all__ = [
    "Orchestrator",
    "ReplicaSpec",
    "RunItem",
    "TaskFailed",
    "TextSink",
    "TokenDelta",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Statuses that reject the request itself: another replica would answer the same.
REQUEST_ERROR_STATUSES = frozenset({400, 413, 422})


@dataclass(eq=False)
class _Replica:
    spec: ReplicaSpec
    state: ReplicaState
    client: ReplicaClient
    lifecycle: str = "ready"
    cold_start_s: float | None = None
    restarts: int = 0
    failures_in_row: int = 0
    ejected_at: float | None = None


class Orchestrator:
    """Slack-aware execution of task graphs over a set of OpenAI-compatible replicas."""

    def __init__(
        self,
        replicas: Sequence[ReplicaSpec] = (),
        *,
        defaults: TaskDefaults | None = None,
        scheduler: Scheduler | str = "cato",
        profiler: Profiler | None = None,
        clock: Clock = time.monotonic,
        max_attempts: int = 3,
        suspect_s: float = 5.0,
        eject_after: int = 3,
        window_s: float = 60.0,
        admission: Admission | str | None = "auto",
    ) -> None:
        self.defaults = defaults or TaskDefaults()
        self.scheduler = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        self.clock = clock
        self.max_attempts = max_attempts
        self.suspect_s = suspect_s
        self.eject_after = eject_after
        self.recorder = Recorder(window_s=window_s)
        self._replicas: dict[str, _Replica] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._expiries: dict[str, asyncio.Timeout] = {}  # shed-when-late TTFT calls
        if isinstance(admission, str):
            name = resolve_admission(admission, self.scheduler.name)
            admission = None if name == "none" else make_admission(name)
        self._core = DispatchCore(
            self.scheduler,
            on_start=self._on_start,
            on_fail=self._on_fail,
            admission=admission,
            on_outcome=self._on_outcome,
        )
        self._priors: dict[str, Rates] = {}
        # model -> (tokens per KV block, KV blocks per replica) where its engines cache
        # prompt prefixes: see ``set_prefix_cache``.
        self._prefix_caches: dict[str, tuple[int, int]] = {}
        self._run_ids = itertools.count(1)
        for spec in replicas:
            self.add_replica(spec)
        self.profiler = profiler or Profiler(self._priors)
        self._last_ttft_ms: float | None = None
        # Told of every model call once, (call, violated, now): see ``DispatchCore.ended``.
        self.on_call_done: Callable[[Call, bool, float], None] | None = None

    # -- replicas -------------------------------------------------------------

    def set_prior(self, model: str, rates: Rates) -> None:
        """The service rates assumed for a model's replicas before they are measured."""
        self._priors[model] = rates

    def set_prefix_cache(self, model: str, block_tokens: int | None, blocks: int = 0) -> None:
        """Whether a model's engines cache prompt prefixes (``block_tokens`` None: not).

        Where they do, and the scheduler routes by cached prefixes
        (``Scheduler.tracks_prefixes``), each replica of the model tracks the prompts it
        was sent (a ``PrefixIndex`` of at most ``blocks`` blocks, its engine's KV cache)
        and every call of the model carries its prompt's block hashes, hashed as the
        engine model hashes them (``engine_model.block_hashes``), so an emulator counts
        the same blocks as hits."""
        if block_tokens is None:
            self._prefix_caches.pop(model, None)
        else:
            if block_tokens < 1 or blocks < 1:
                raise ValueError("block_tokens and blocks must be >= 1")
            self._prefix_caches[model] = (block_tokens, blocks)
        for rep in self._replicas.values():
            if rep.spec.model == model:
                rep.state.prefixes = self._prefix_index(model)

    def _prefix_index(self, model: str) -> PrefixIndex | None:
        cache = self._prefix_caches.get(model)
        if cache is None or not self.scheduler.tracks_prefixes:
            return None
        return PrefixIndex(*cache)

    def prompt_hashes(self, model: str, prompt: str) -> tuple[int, ...]:
        """The block hashes a call of ``model`` with this prompt carries (none where its
        engines cache nothing or the scheduler does not route by them)."""
        cache = self._prefix_caches.get(model)
        if cache is None or not prompt or not self.scheduler.tracks_prefixes:
            return ()
        return block_hashes(prompt, cache[0])

    def add_replica(self, spec: ReplicaSpec, *, ready: bool = True) -> None:
        rates = spec.rates or self._priors.get(spec.model) or Rates()
        self._priors.setdefault(spec.model, Rates(**_rate_fields(rates)))
        state = ReplicaState(
            id=spec.id,
            model=spec.model,
            concurrency_limit=spec.concurrency_limit,
            rates=Rates(**_rate_fields(rates)),
            accepting=ready,
            idle_since=self.clock() if ready else None,
            prefixes=self._prefix_index(spec.model),
        )
        lifecycle = "ready" if ready else "pending"
        client = ReplicaClient(spec.url, priority=spec.priority, api_key=spec.api_key)
        self._replicas[spec.id] = _Replica(spec, state, client, lifecycle)
        self._core.add(state, self.clock(), starting=not ready)

    def set_lifecycle(
        self, replica_id: str, lifecycle: str, cold_start_s: float | None = None
    ) -> None:
        """Record a replica's lifecycle state; only READY replicas get new work."""
        rep = self._replicas[replica_id]
        rep.lifecycle = lifecycle
        if cold_start_s is not None:
            rep.cold_start_s = cold_start_s
        now = self.clock()
        if lifecycle == "ready" and not rep.state.in_flight:
            rep.state.idle_since = now  # idle from now, not from clock zero
        if lifecycle == "ready":
            self._readmit(rep)  # a fresh process: its predecessor's failures do not count
        self._core.set_phase(
            replica_id, now, accepting=lifecycle == "ready", starting=lifecycle == "pending"
        )

    def note_healthy(self, replica_id: str) -> None:
        """A health check passed: an ejected replica is routed to again, once it has
        been out for ``suspect_s`` at least."""
        rep = self._replicas.get(replica_id)
        if rep is None or rep.ejected_at is None:
            return
        if self.clock() - rep.ejected_at >= self.suspect_s:
            log.info("replica %s: healthy again, back in routing", replica_id)
            self._readmit(rep)

    def _readmit(self, rep: _Replica) -> None:
        rep.failures_in_row = 0
        if rep.ejected_at is not None:
            rep.ejected_at = None
            self._core.trust(rep.state.id)

    def note_restart(self, replica_id: str) -> None:
        rep = self._replicas.get(replica_id)
        if rep is not None:
            rep.restarts += 1
            if rep.state.prefixes is not None:  # a new process starts with an empty cache
                rep.state.prefixes = self._prefix_index(rep.spec.model)

    async def remove_replica(self, replica_id: str) -> None:
        rep = self._replicas.pop(replica_id, None)
        if rep is None:
            return
        self._core.remove(replica_id, self.clock())
        await rep.client.close()

    def idle_since(self, replica_id: str) -> float | None:
        rep = self._replicas.get(replica_id)
        return None if rep is None else rep.state.idle_since

    def replica_load(self, replica_id: str) -> tuple[int, int]:
        """(in flight, queued) of one replica."""
        st = self._replicas[replica_id].state
        return len(st.in_flight), len(st.queue)

    async def close(self) -> None:
        for rep in self._replicas.values():
            await rep.client.close()

    # -- tasks ----------------------------------------------------------------

    def submit(self, request: TaskRequest) -> AsyncGenerator[TaskEvent, None]:
        """Run one task as a stream of events.

        Closing the iterator (``aclose``, or ``contextlib.aclosing`` around the loop)
        cancels the task, upstream requests included.
        """
        return TaskRun(self, request, next(self._run_ids)).events()

    def submit_batches(
        self,
        request: TaskRequest,
        sink: TextSink | None = None,
        relay: ByteSink | None = None,
        *,
        graph: TaskGraph | None = None,
        progress: bool = True,
    ) -> AsyncGenerator[list[RunItem], None]:
        """``submit`` for a service: the events that are ready together come as one
        list, tokens as ``TokenDelta``; closing the iterator cancels the same way.

        With a ``sink``, the final node's text deltas are not queued: its model call
        awaits ``sink(texts)`` with those of each read, which saves a hand-off between
        tasks per token (a sink that waits holds back reading from the replica). With a
        ``relay``, a final node whose text no later step reads sends the replica's
        stream there as bytes. ``graph``: the request's, when the caller built it
        already; ``progress=False`` leaves out the ``node`` events.
        """
        run = TaskRun(
            self, request, next(self._run_ids), sink, relay, graph=graph, progress=progress
        )
        return run.batches()

    def status(self) -> Status:
        now = self.clock()
        infos = [self._info(rep) for rep in self._replicas.values()]
        return Status(
            scheduler=self.scheduler.name,
            replicas=infos,
            queued=sum(i.queued for i in infos) + self._core.parked_count,
            in_flight=sum(i.in_flight for i in infos),
            window_s=self.recorder.window_s or 0.0,
            kinds=self.recorder.kind_stats(now),
            last_ttft_ms=self._last_ttft_ms,
            ok=any(i.state == "ready" for i in infos),
        )

    def queued(self) -> int:
        """Calls waiting for a replica: ``status().queued`` without building the rest
        of the status (its per-kind statistics walk every recent task)."""
        return sum(len(r.state.queue) for r in self._replicas.values()) + self._core.parked_count

    def prompt_tokens_within(self, model: str, within_s: float) -> int | None:
        """The most prompt tokens a call to ``model`` sent now could have prefilled within
        ``within_s``: on the ready replica with the shortest estimated wait, at its learned
        prefill rate. A client sizes its context with it (less under load, more with
        slack). None when no replica of the model is ready."""
        best: int | None = None
        for rep in self._replicas.values():
            st = rep.state
            if st.model != model or rep.lifecycle != "ready" or not st.accepting:
                continue
            left = within_s - st.estimate_wait_s() - st.rates.overhead_s
            tokens = max(0, int(left / max(st.rates.prefill_s_per_token, 1e-9)))
            best = tokens if best is None else max(best, tokens)
        return best

    def _info(self, rep: _Replica) -> ReplicaInfo:
        st = rep.state
        return ReplicaInfo(
            id=st.id,
            model=st.model,
            url=rep.spec.url,
            state=rep.lifecycle,  # type: ignore[arg-type]
            engine=rep.spec.engine,
            gpus=rep.spec.gpus,
            in_flight=len(st.in_flight),
            queued=len(st.queue),
            concurrency_limit=st.concurrency_limit,
            cold_start_s=rep.cold_start_s,
            restarts=rep.restarts,
        )

    # -- placing and releasing calls (through the dispatch core) -------------------

    def _on_start(self, call: Call, st: ReplicaState, now: float) -> None:
        fut = self._waiters.pop(call.id, None)
        if fut is None or fut.done():
            st.finish(call.id, now)  # its task went away meanwhile
            return
        fut.set_result(None)

    def _on_fail(self, call: Call, exc: DispatchError) -> None:
        fut = self._waiters.pop(call.id, None)
        if fut is not None and not fut.done():
            fut.set_exception(TaskFailed(str(exc), exc.code))

    def _enqueue(self, call: Call, excluded: set[str]) -> asyncio.Future[None]:
        """Place a call; the future resolves when it gets a slot on ``call.replica``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[call.id] = fut
        try:
            self._core.place(call, self.clock(), excluded)
        except DispatchError as exc:
            del self._waiters[call.id]
            raise TaskFailed(str(exc), exc.code) from None
        return fut

    def _release(self, call: Call, *, cancelled_in_queue: bool = False) -> None:
        """Take a call out of its replica (queue or flight) and let the next one in."""
        self._waiters.pop(call.id, None)
        self._core.release(call, self.clock(), queued_only=cancelled_in_queue)

    # -- model calls ------------------------------------------------------------

    async def run_call(
        self,
        call: Call,
        node: Node,
        on_token: OnToken,
        on_dispatch: OnDispatch | None = None,
        on_texts: TextSink | None = None,
        relay: ByteSink | None = None,
    ) -> tuple[str, Usage]:
        """Route, wait for a slot, stream the call; retry elsewhere while that is safe.

        ``on_dispatch`` is told each time the call gets a slot on a replica (again
        after a retry); ``on_token`` gets every text delta with its time, then
        ``on_texts`` (awaited) those of each read. With ``relay`` the replica's stream
        goes to it as bytes instead, ``on_token`` gets ``""`` once per read that held
        tokens, and the text returned is empty.
        """
        expiry = self._expiry(call)
        try:
            async with expiry:
                return await self._run_call(call, node, on_token, on_dispatch, on_texts, relay)
        except TimeoutError:
            if not expiry.expired():
                raise
            rep = self._replicas.get(call.replica or "")
            if rep is not None:
                rep.state.observe_unanswered(call, self.clock())
            raise TaskFailed(
                f"call {call.id} did not reach its SLA point by its deadline, and its "
                "request asked to end rather than answer late",
                SLA_UNREACHABLE,
            ) from None
        finally:
            self._expiries.pop(call.id, None)

    def _expiry(self, call: Call) -> asyncio.Timeout:
        """``on_late="shed"`` past routing: a call that asked to end rather than answer
        late ends at its deadline unless it reached its SLA point by then (its first
        token for ``ttft``, its end for ``e2e``); leaving cancels its stream, and with
        it the engine's work on it."""
        if not call.shed_late:
            return asyncio.timeout(None)
        expiry = asyncio.timeout(max(call.deadline - self.clock(), 0.0))
        if call.metric == "ttft":
            self._expiries[call.id] = expiry
        return expiry

    def _reached_first_token(self, st: ReplicaState, call: Call, now: float) -> None:
        self._core.first_token(st, call.id, now)
        if call.metric == "ttft":
            expiry = self._expiries.pop(call.id, None)
            if expiry is not None:
                expiry.reschedule(None)

    async def _run_call(
        self,
        call: Call,
        node: Node,
        on_token: OnToken,
        on_dispatch: OnDispatch | None,
        on_texts: TextSink | None,
        relay: ByteSink | None,
    ) -> tuple[str, Usage]:
        excluded: set[str] = set()
        try:
            for attempt in itertools.count(1):
                rep = await self._wait_for_slot(call, excluded)
                if on_dispatch is not None:
                    on_dispatch(call)
                failure: ReplicaError | None = None
                try:
                    if relay is None:
                        result = await self._stream(rep, call, node, on_token, on_texts)
                    else:
                        result = await self._relay(rep, call, node, on_token, relay)
                except ReplicaError as exc:
                    failure = exc
                    self._suspect(rep, exc)
                finally:
                    self._release(call)
                if failure is None:
                    if rep.failures_in_row:
                        self._readmit(rep)
                    self._core.ended(call, self.clock(), finished=True)
                    return result
                self._before_retry(rep, call, node, failure, attempt, excluded)
        except BaseException:  # cancelled, failed or shed: a miss once past its deadline
            self._core.ended(call, self.clock(), finished=False)
            raise
        raise AssertionError("unreachable")

    async def _wait_for_slot(self, call: Call, excluded: set[str]) -> _Replica:
        """Queue the call and wait until a replica starts it; return that replica."""
        while True:
            fut = self._enqueue(call, excluded)
            try:
                await fut
            except BaseException:
                self._release(call, cancelled_in_queue=True)
                raise
            rep = self._replicas.get(call.replica or "")
            if rep is not None:
                return rep
            excluded.add(call.replica or "")  # removed after it took the call

    def _before_retry(
        self,
        rep: _Replica,
        call: Call,
        node: Node,
        exc: ReplicaError,
        attempt: int,
        excluded: set[str],
    ) -> None:
        """Raise ``TaskFailed`` unless the failed call may move to another replica."""
        rid = rep.state.id
        if _rejects_request(exc):
            raise TaskFailed(f"replica {rid} rejected the request: {exc}", "bad_request") from exc
        excluded.add(rid)
        seen = exc.after_first_token and node.final
        now = self.clock()
        if (
            seen
            or attempt >= self.max_attempts
            or not self._core.candidates(call.model, now, excluded)
        ):
            raise TaskFailed(f"replica {rid} failed: {exc}", "replica_error") from exc
        log.warning("call %s failed on replica %s (%s); retrying elsewhere", call.id, rid, exc)
        call.started_at = call.first_token_at = None
        call.tokens_done = 0

    def _suspect(self, rep: _Replica, exc: ReplicaError) -> None:
        """Avoid a failing replica for ``suspect_s``, and move the calls queued on it.

        Outlier ejection: after ``eject_after`` failed calls in a row it is avoided until
        a health check passes (``note_healthy``), a call there succeeds (it is still
        used when no other replica accepts) or it is restarted."""
        if _rejects_request(exc):
            return
        now = self.clock()
        rep.failures_in_row += 1
        if rep.ejected_at is None and rep.failures_in_row >= self.eject_after:
            rep.ejected_at = now
            log.warning(
                "replica %s: %d failed calls in a row; out of routing until healthy",
                rep.state.id,
                rep.failures_in_row,
            )
        until = math.inf if rep.ejected_at is not None else now + self.suspect_s
        self._core.suspect(rep.state.id, until, now)

    def _on_outcome(self, call: Call, violated: bool, now: float) -> None:
        if self.on_call_done is not None:
            self.on_call_done(call, violated, now)

    async def _stream(
        self,
        rep: _Replica,
        call: Call,
        node: Node,
        on_token: OnToken,
        on_texts: TextSink | None = None,
    ) -> tuple[str, Usage]:
        st = rep.state
        parts: list[str] = []
        usage = Usage(prompt_tokens=call.prompt_tokens)
        started = self.clock()
        first_at: float | None = None
        stream = rep.client.stream_completion_batches(
            rep.spec.served_name or call.model,
            node.prompt or "",
            max_tokens=node.max_tokens,
            stop=list(node.stop),
            temperature=0.0,
            priority=call.priority,
        )
        async with contextlib.aclosing(stream) as batches:
            async for batch in batches:
                now = self.clock()
                texts = [ev.text for ev in batch if isinstance(ev, Token)]
                if texts:
                    if first_at is None:
                        first_at = now
                        self._reached_first_token(st, call, now)
                    st.tokens(call.id, len(texts))
                    parts += texts
                    for text in texts:
                        on_token(text, now)
                    if on_texts is not None:
                        await on_texts(texts)
                if len(texts) < len(batch):
                    for ev in batch:
                        if isinstance(ev, Finished) and ev.usage is not None:
                            usage = ev.usage
        self._observe(st, call, usage, started, first_at)
        return "".join(parts), usage

    async def _relay(
        self, rep: _Replica, call: Call, node: Node, on_token: OnToken, sink: ByteSink
    ) -> tuple[str, Usage]:
        """``_stream`` for a call whose stream goes to ``sink`` as the replica sent it:
        the scheduler counts chunks (a token each) and reads the usage chunk alone."""
        st = rep.state
        served = rep.spec.served_name or call.model
        started = self.clock()
        first_at: float | None = None
        options = RelayOptions.for_client(
            keep_usage=sink.keep_usage, served=served, client=sink.model
        )
        relay, stream = rep.client.relay_completion(
            served,
            node.prompt or "",
            max_tokens=node.max_tokens,
            options=options,
            stop=list(node.stop),
            temperature=0.0,
            priority=call.priority,
        )
        async with contextlib.aclosing(stream) as reads:
            async for data, count in reads:
                if count:
                    now = self.clock()
                    if first_at is None:
                        first_at = now
                        self._reached_first_token(st, call, now)
                    st.tokens(call.id, count)
                    on_token("", now)
                await sink.forward(data, last=relay.done)
        usage = relay.usage or Usage(
            prompt_tokens=call.prompt_tokens, completion_tokens=relay.chunks
        )
        self._observe(st, call, usage, started, first_at)
        return "", usage

    def _observe(
        self, st: ReplicaState, call: Call, usage: Usage, started: float, first_at: float | None
    ) -> None:
        """Teach the replica's rates what one finished call took (as the simulator
        does: by the prompt tokens the engine computed, not the usage's whole prompt,
        which on a prefix-cache hit made the prefill rate look several times faster)."""
        done = self.clock()
        st.observe_call(call, started, first_at or done, done, usage.completion_tokens)


def _rejects_request(exc: ReplicaError) -> bool:
    return isinstance(exc, ReplicaHTTPError) and exc.status in REQUEST_ERROR_STATUSES


def _rate_fields(r: Rates) -> dict[str, float]:
    return {
        "overhead_s": r.overhead_s,
        "prefill_s_per_token": r.prefill_s_per_token,
        "tpot_s": r.tpot_s,
        "alpha": r.alpha,
    }
