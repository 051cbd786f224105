"""The executor: runs task graphs over replicas and streams their events.

Each ``llm`` node becomes a ``Call`` routed by the scheduler into a replica's queue; a
replica takes calls off its queue (in the scheduler's order) while it has free slots, so
at most its concurrency limit of sequences are in flight upstream. A call whose model
has no ready replica yet, but one starting, waits ("parked") until one is ready.
Everything a policy needs is kept in ``policy.state`` objects that only this module
mutates.

A failed call moves to another replica while the user has seen none of its text
(always for a chunk of a translation, only before the first token for the node whose
tokens are streamed); the replica is then avoided for ``suspect_s``.

Cancellation: closing the iterator returned by ``submit`` cancels the graph's node tasks;
queued calls leave their queue, and in-flight calls close their HTTP stream, which makes
vLLM abort the sequence.

Tokens are the hot path (a service streams thousands a second): they travel as plain
``TokenDelta`` objects, a read's worth at a time, and become pydantic ``TaskEvent``
models only for the callers that want those (``submit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from orchestrator import graphs
from orchestrator.api import ReplicaInfo, Status, TaskEvent, TaskRequest, Usage
from orchestrator.config import PriorityMode
from orchestrator.dispatch import DispatchCore, DispatchError
from orchestrator.graphs import Node, TaskDefaults, TaskGraph
from orchestrator.metrics import Outcome, Recorder, TaskRecord
from orchestrator.policy.scheduler import Scheduler, make_scheduler
from orchestrator.policy.state import Call, Rates, ReplicaState
from orchestrator.profiler import Profiler
from orchestrator.replicas.openai_client import (
    Finished,
    ReplicaClient,
    ReplicaError,
    ReplicaHTTPError,
    Token,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]
OnToken = Callable[[str, float], None]
# Takes the text deltas of one read and writes them out (awaited by the model call).
TextSink = Callable[[list[str]], Awaitable[None]]
OnDispatch = Callable[[Call], None]

# Statuses that reject the request itself: another replica would answer the same.
REQUEST_ERROR_STATUSES = frozenset({400, 413, 422})


@dataclass(slots=True)
class TokenDelta:
    """A ``token`` event of a task, before (if ever) it becomes a ``TaskEvent``."""

    task_id: str
    node: str
    text: str
    t_ms: float

    def event(self) -> TaskEvent:
        return TaskEvent(
            type="token", task_id=self.task_id, t_ms=self.t_ms, node=self.node, text=self.text
        )


RunItem = TaskEvent | TokenDelta


class TaskFailed(Exception):
    """A task ended in error; ``code`` is the machine-readable reason."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ReplicaSpec:
    """Where a replica is and what it serves; the manager fills these in later."""

    id: str
    url: str
    model: str
    concurrency_limit: int = 16
    served_name: str | None = None
    rates: Rates | None = None
    priority: PriorityMode = "auto"  # what the client does with call priorities
    engine: str = "external"
    gpus: list[int] = field(default_factory=list)


@dataclass(eq=False)
class _Replica:
    spec: ReplicaSpec
    state: ReplicaState
    client: ReplicaClient
    lifecycle: str = "ready"
    cold_start_s: float | None = None
    restarts: int = 0


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
        window_s: float = 60.0,
    ) -> None:
        self.defaults = defaults or TaskDefaults()
        self.scheduler = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        self.clock = clock
        self.max_attempts = max_attempts
        self.suspect_s = suspect_s
        self.recorder = Recorder(window_s=window_s)
        self._replicas: dict[str, _Replica] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._core = DispatchCore(self.scheduler, on_start=self._on_start, on_fail=self._on_fail)
        self._priors: dict[str, Rates] = {}
        self._run_ids = itertools.count(1)
        for spec in replicas:
            self.add_replica(spec)
        self.profiler = profiler or Profiler(self._priors)
        self._last_ttft_ms: float | None = None
        # Told of every finished model call: (call, missed its deadline, now).
        self.on_call_done: Callable[[Call, bool, float], None] | None = None

    # -- replicas -------------------------------------------------------------

    def set_prior(self, model: str, rates: Rates) -> None:
        """The service rates assumed for a model's replicas before they are measured."""
        self._priors[model] = rates

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
        )
        lifecycle = "ready" if ready else "pending"
        client = ReplicaClient(spec.url, priority=spec.priority)
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
        self._core.set_phase(
            replica_id, now, accepting=lifecycle == "ready", starting=lifecycle == "pending"
        )

    def note_restart(self, replica_id: str) -> None:
        rep = self._replicas.get(replica_id)
        if rep is not None:
            rep.restarts += 1

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
        return _TaskRun(self, request, next(self._run_ids)).events()

    def submit_batches(
        self, request: TaskRequest, sink: TextSink | None = None
    ) -> AsyncGenerator[list[RunItem], None]:
        """``submit`` for a service: the events that are ready together come as one
        list, tokens as ``TokenDelta``; closing the iterator cancels the same way.

        With a ``sink``, the final node's text deltas are not queued: its model call
        awaits ``sink(texts)`` with those of each read, which saves a hand-off between
        tasks per token (a sink that waits holds back reading from the replica).
        """
        return _TaskRun(self, request, next(self._run_ids), sink).batches()

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
    ) -> tuple[str, Usage]:
        """Route, wait for a slot, stream the call; retry elsewhere while that is safe.

        ``on_dispatch`` is told each time the call gets a slot on a replica (again
        after a retry); ``on_token`` gets every text delta with its time, then
        ``on_texts`` (awaited) those of each read.
        """
        excluded: set[str] = set()
        for attempt in itertools.count(1):
            rep = await self._wait_for_slot(call, excluded)
            if on_dispatch is not None:
                on_dispatch(call)
            failure: ReplicaError | None = None
            try:
                result = await self._stream(rep, call, node, on_token, on_texts)
            except ReplicaError as exc:
                failure = exc
                self._suspect(rep, exc)
            finally:
                self._release(call)
            if failure is None:
                self._call_done(call)
                return result
            self._before_retry(rep, call, node, failure, attempt, excluded)
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
        """Avoid a failing replica for a while, and move the calls queued on it."""
        if _rejects_request(exc):
            return
        now = self.clock()
        self._core.suspect(rep.state.id, now + self.suspect_s, now)

    def _call_done(self, call: Call) -> None:
        if self.on_call_done is None:
            return
        now = self.clock()
        reached = call.first_token_at if call.metric == "ttft" else now
        self.on_call_done(call, (reached or now) > call.deadline, now)

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
                        st.first_token(call.id, now)
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
        done = self.clock()
        ttft = (first_at or done) - started
        st.observe(
            usage.prompt_tokens,
            ttft,
            usage.completion_tokens,
            done - (first_at or done),
            contended=call.peers_at_start > 0,
        )
        return "".join(parts), usage


def _rejects_request(exc: ReplicaError) -> bool:
    return isinstance(exc, ReplicaHTTPError) and exc.status in REQUEST_ERROR_STATUSES


def _service_time(call: Call, now: float) -> float:
    """The call's time on its replica, up to what its deadline bounds (not queueing)."""
    start = call.started_at if call.started_at is not None else call.arrival
    end = call.first_token_at if call.metric == "ttft" and call.first_token_at is not None else now
    return max(end - start, 0.0)


def _rate_fields(r: Rates) -> dict[str, float]:
    return {
        "overhead_s": r.overhead_s,
        "prefill_s_per_token": r.prefill_s_per_token,
        "tpot_s": r.tpot_s,
        "alpha": r.alpha,
    }


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


class _TaskRun:
    """One task's graph run: node tasks feeding one ordered event queue.

    Events: ``started``; per node ``running`` then ``finished`` (or ``failed``), an
    ``llm`` node's ``running`` sent when a replica takes the call and naming it and the
    call's priority (sent again if the call moves to another replica); ``token``
    events of the final ``llm`` node; one ``done`` or ``error``. The consumer takes
    everything queued at once, so the tokens of one read cost it one wake-up.
    """

    def __init__(
        self,
        orch: Orchestrator,
        request: TaskRequest,
        run_id: int,
        sink: TextSink | None = None,
    ) -> None:
        self.orch = orch
        self.request = request
        self.run_id = run_id
        self.sink = sink
        self.arrival = orch.clock()
        self.pending: deque[RunItem] = deque()
        self._ended = False  # nothing more will be queued
        self._wakeup: asyncio.Future[None] | None = None
        self._graph: TaskGraph | None = None
        self._runner: asyncio.Task[None] | None = None
        self._outcome: Outcome = "cancelled"
        self.first_token_at: float | None = None
        self.usage = Usage()
        self.diagnostics: list[str] = []
        self.llm_total = 0
        self.llm_done = 0

    def _t_ms(self, t: float | None = None) -> float:
        return ((self.orch.clock() if t is None else t) - self.arrival) * 1000.0

    def _event(self, **fields: object) -> TaskEvent:
        return TaskEvent(task_id=self.request.id, t_ms=self._t_ms(), **fields)  # type: ignore[arg-type]

    def _emit(self, **fields: object) -> None:
        self._put(self._event(**fields))

    def _put(self, item: RunItem) -> None:
        self.pending.append(item)
        if self._wakeup is not None:
            self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    async def _take(self) -> list[RunItem]:
        """Everything queued since the last take: waits for an item or the end. After
        the take that returns the last items, ``_ended`` is true."""
        while not self.pending and not self._ended:
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        items = list(self.pending)
        self.pending.clear()
        return items

    def _error_event(self, message: str, code: str) -> TaskEvent:
        return self._event(type="error", error=message, code=code)

    def _start(self) -> TaskEvent:
        """Build the graph and start running it; return the first event (``started``,
        or the ``error`` of a request whose graph cannot be built)."""
        try:
            self._graph = graphs.build_graph(self.request, self.orch.defaults)
        except ValueError as exc:
            self._outcome = "error"
            return self._error_event(str(exc), "bad_request")
        self._runner = asyncio.create_task(self._run(self._graph), name=f"task {self.request.id}")
        return self._event(type="started")

    async def _stop(self) -> None:
        """Cancel what still runs (the consumer left early) and record the task."""
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._record(self._graph, self._outcome)

    def _over(self) -> bool:
        """Nothing left to hand out: the run never started, or ended and was drained."""
        return self._runner is None or (self._ended and not self.pending)

    def _note_end(self, event: TaskEvent) -> None:
        if event.type in ("done", "error"):
            self._outcome = "ok" if event.type == "done" else "error"

    async def events(self) -> AsyncGenerator[TaskEvent, None]:
        try:
            yield self._start()
            while not self._over():
                for item in await self._take():
                    if isinstance(item, TokenDelta):
                        yield item.event()
                    else:
                        self._note_end(item)
                        yield item
        finally:
            await self._stop()

    async def batches(self) -> AsyncGenerator[list[RunItem], None]:
        try:
            yield [self._start()]
            while not self._over():
                items = await self._take()
                if self._ended and items and isinstance(last := items[-1], TaskEvent):
                    self._note_end(last)  # done or error is queued right before the end
                if items:
                    yield items
        finally:
            await self._stop()

    async def _run(self, graph: TaskGraph) -> None:
        try:
            result = await self._run_graph(graph)
        except Exception as exc:
            self._put(self._failure_event(exc))
        else:
            self._finish(graph, result)
        self._end()

    def _failure_event(self, exc: Exception) -> TaskEvent:
        """The error event of a failed graph: its first ``TaskFailed``, else a bug."""
        leaves = _leaves(exc)
        for leaf in leaves:
            if isinstance(leaf, TaskFailed):
                return self._error_event(str(leaf), leaf.code)
        log.error("task %s failed", self.request.id, exc_info=leaves[0])
        return self._error_event(f"internal error: {leaves[0]!r}", "internal")

    def _finish(self, graph: TaskGraph, result: str) -> None:
        now = self.orch.clock()
        ttft_ms = None if self.first_token_at is None else self._t_ms(self.first_token_at)
        e2e_ms = self._t_ms(now)
        measured = ttft_ms if graph.sla.metric == "ttft" else e2e_ms
        sla_met = measured is not None and measured <= graph.sla.target_ms
        if ttft_ms is not None:
            self.orch._last_ttft_ms = ttft_ms
        self._emit(
            type="done",
            result=result,
            diagnostics=self.diagnostics,
            ttft_ms=ttft_ms,
            e2e_ms=e2e_ms,
            sla_met=sla_met,
            usage=self.usage,
        )

    async def _run_graph(self, graph: TaskGraph) -> str:
        deadlines = self.orch.profiler.deadlines(graph, self.arrival)
        self.llm_total = len(graph.llm_nodes())
        tasks: dict[str, asyncio.Task[str]] = {}
        async with asyncio.TaskGroup() as tg:
            for node in graph.nodes:
                deps = [tasks[d] for d in node.deps]
                tasks[node.id] = tg.create_task(self._node(graph, node, deps, deadlines[node.id]))
        return tasks[graph.result_node].result()

    async def _node(
        self, graph: TaskGraph, node: Node, deps: list[asyncio.Task[str]], deadline: float
    ) -> str:
        inputs = [await d for d in deps]
        if node.op == "llm":
            return await self._llm(graph, node, deadline)
        return self._local(graph, node, inputs)

    def _progress(self) -> float | None:
        """Share of the graph's ``llm`` nodes done."""
        return self.llm_done / self.llm_total if self.llm_total else None

    def _local(self, graph: TaskGraph, node: Node, inputs: list[str]) -> str:
        self._emit(type="node", node=node.id, state="running")
        started = self.orch.clock()
        out = graphs.run_local(node, inputs, self.request)
        self.diagnostics.extend(out.diagnostics)
        self.orch.profiler.observe(node, graph.model, self.orch.clock() - started)
        self._emit(type="node", node=node.id, state="finished", progress=self._progress())
        return out.text

    def _call(self, graph: TaskGraph, node: Node, deadline: float) -> Call:
        """The scheduler's view of an ``llm`` node, with an id unique in the orchestrator
        (clients may reuse task ids)."""
        return Call(
            id=f"{self.request.id}#{self.run_id}/{node.id}",
            model=graph.model,
            deadline=deadline,
            prompt_tokens=node.prompt_tokens,
            expected_output_tokens=node.expected_output_tokens,
            arrival=self.orch.clock(),
            metric=node.metric,
            task_id=self.request.id,
            kind=self.request.kind.value,
        )

    async def _llm(self, graph: TaskGraph, node: Node, deadline: float) -> str:
        call = self._call(graph, node, deadline)
        task_id, node_id, arrival, put = self.request.id, node.id, self.arrival, self._put
        sink = self.sink if node.final else None

        def on_token(text: str, t: float) -> None:
            if not node.final:
                return
            if self.first_token_at is None:
                self.first_token_at = t
            if sink is None:
                put(TokenDelta(task_id, node_id, text, (t - arrival) * 1000.0))

        def on_dispatch(c: Call) -> None:
            self._emit(
                type="node", node=node.id, state="running", replica=c.replica, priority=c.priority
            )

        try:
            text, usage = await self.orch.run_call(call, node, on_token, on_dispatch, sink)
        except TaskFailed:
            self._emit(
                type="node", node=node.id, state="failed", replica=call.replica,
                priority=call.priority,
            )  # fmt: skip
            raise
        self.orch.profiler.observe(node, graph.model, _service_time(call, self.orch.clock()))
        if node.final and self.first_token_at is None:
            self.first_token_at = self.orch.clock()
        self.usage = Usage(
            prompt_tokens=self.usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens + usage.completion_tokens,
        )
        self.llm_done += 1
        self._emit(
            type="node", node=node.id, state="finished", replica=call.replica,
            priority=call.priority, progress=self._progress(),
        )  # fmt: skip
        return text

    def _record(self, graph: TaskGraph | None, outcome: Outcome) -> None:
        sla = graph.sla if graph is not None else None
        self.orch.recorder.record(
            TaskRecord(
                task_id=self.request.id,
                kind=self.request.kind.value,
                metric=sla.metric.value if sla else "e2e",
                target_ms=sla.target_ms if sla else 0.0,
                arrival=self.arrival,
                first_token=self.first_token_at,
                done=self.orch.clock(),
                outcome=outcome,
            )
        )
