"""The executor: runs task graphs over replicas and streams their events.

Each ``llm`` node becomes a ``Call`` routed by the scheduler into a replica's queue; a
replica takes calls off its queue (in the scheduler's order) while it has free slots, so
at most its concurrency limit of sequences are in flight upstream. Everything a policy
needs is kept in ``policy.state`` objects that only this module mutates.

Cancellation: closing the iterator returned by ``submit`` cancels the graph's node tasks;
queued calls leave their queue, and in-flight calls close their HTTP stream, which makes
vLLM abort the sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from orchestrator import graphs
from orchestrator.api import ReplicaInfo, Status, TaskEvent, TaskRequest, Usage
from orchestrator.graphs import Node, TaskDefaults, TaskGraph
from orchestrator.metrics import Outcome, Recorder, TaskRecord
from orchestrator.policy.scheduler import Route, Scheduler, make_scheduler
from orchestrator.policy.state import Call, Rates, ReplicaState
from orchestrator.profiler import Profiler
from orchestrator.replicas.openai_client import (
    Finished,
    ReplicaClient,
    ReplicaError,
    ReplicaUnreachable,
    Token,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]


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
    send_priority: bool = True
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
    suspect_until: float = 0.0


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
        self._priors: dict[str, Rates] = {}
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
        )
        self._replicas[spec.id] = _Replica(spec, state, ReplicaClient(spec.url))
        self._replicas[spec.id].lifecycle = "ready" if ready else "pending"

    def set_lifecycle(
        self, replica_id: str, lifecycle: str, cold_start_s: float | None = None
    ) -> None:
        """Record a replica's lifecycle state; only READY replicas get new work."""
        rep = self._replicas[replica_id]
        rep.lifecycle = lifecycle
        if cold_start_s is not None:
            rep.cold_start_s = cold_start_s
        rep.state.accepting = lifecycle == "ready"
        if lifecycle == "ready":
            self._dispatch(rep)
        else:
            self._reroute_queue(rep)

    def note_restart(self, replica_id: str) -> None:
        rep = self._replicas.get(replica_id)
        if rep is not None:
            rep.restarts += 1

    async def remove_replica(self, replica_id: str) -> None:
        rep = self._replicas.pop(replica_id, None)
        if rep is None:
            return
        rep.state.accepting = False
        self._reroute_queue(rep)
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
        return _TaskRun(self, request).events()

    def status(self) -> Status:
        now = self.clock()
        infos = [self._info(rep) for rep in self._replicas.values()]
        return Status(
            scheduler=self.scheduler.name,
            replicas=infos,
            queued=sum(i.queued for i in infos),
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

    # -- routing and dispatch ---------------------------------------------------

    def _candidates(self, model: str, excluded: set[str]) -> list[ReplicaState]:
        now = self.clock()
        serving = [
            r
            for r in self._replicas.values()
            if r.state.model == model and r.state.accepting and r.state.id not in excluded
        ]
        healthy = [r.state for r in serving if r.suspect_until <= now]
        return healthy or [r.state for r in serving]

    def _enqueue(self, call: Call, excluded: set[str]) -> asyncio.Future[None]:
        candidates = self._candidates(call.model, excluded)
        if not candidates:
            known = sorted({r.state.model for r in self._replicas.values()})
            if call.model not in known:
                raise TaskFailed(
                    f"unknown model {call.model!r}; served models: {', '.join(known) or 'none'}",
                    "unknown_model",
                )
            raise TaskFailed(f"no replica of model {call.model!r} is available", "no_replica")
        now = self.clock()
        route = self.scheduler.route(call, candidates, now)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[call.id] = fut
        self._apply(call, route)
        return fut

    def _apply(self, call: Call, route: Route) -> None:
        rep = self._replicas[route.replica_id]
        route.apply(call, rep.state)
        self._dispatch(rep)

    def _dispatch(self, rep: _Replica) -> None:
        st = rep.state
        while st.accepting and st.free_slots > 0:
            now = self.clock()
            call = self.scheduler.pick(st, now)
            if call is None:
                return
            st.dequeue(call.id)
            st.start(call, now)
            fut = self._waiters.pop(call.id, None)
            if fut is None or fut.done():
                st.finish(call.id, now)  # its task went away meanwhile
                continue
            fut.set_result(None)

    def _reroute_queue(self, rep: _Replica) -> None:
        """Move every call queued on a replica that stopped accepting to the others."""
        for call in rep.state.queue.calls():
            rep.state.dequeue(call.id)
            candidates = self._candidates(call.model, {rep.state.id})
            fut = self._waiters.get(call.id)
            if not candidates:
                if fut is not None and not fut.done():
                    self._waiters.pop(call.id, None)
                    fut.set_exception(
                        TaskFailed(f"no replica of model {call.model!r} is available", "no_replica")
                    )
                continue
            self._apply(call, self.scheduler.route(call, candidates, self.clock()))

    def _release(self, call: Call, *, cancelled_in_queue: bool = False) -> None:
        """Take a call out of its replica (queue or flight) and let the next one in."""
        self._waiters.pop(call.id, None)
        rep = self._replicas.get(call.replica or "")
        if rep is None:
            return
        if cancelled_in_queue and rep.state.dequeue(call.id) is not None:
            return
        rep.state.finish(call.id, self.clock())
        self._dispatch(rep)

    def _mark_suspect(self, replica_id: str) -> None:
        rep = self._replicas.get(replica_id)
        if rep is not None:
            rep.suspect_until = self.clock() + self.suspect_s

    async def run_call(
        self, call: Call, node: Node, on_token: Callable[[str, float], None]
    ) -> tuple[str, Usage]:
        """Route, wait for a slot, stream the call; retry elsewhere while no token came."""
        excluded: set[str] = set()
        for attempt in range(1, self.max_attempts + 1):
            fut = self._enqueue(call, excluded)
            try:
                await fut
            except BaseException:
                self._release(call, cancelled_in_queue=True)
                raise
            rep = self._replicas[call.replica or ""]
            try:
                result = await self._stream(rep, call, node, on_token)
            except ReplicaError as exc:
                self._release(call)
                if isinstance(exc, ReplicaUnreachable):
                    self._mark_suspect(rep.state.id)
                if exc.after_first_token or attempt == self.max_attempts:
                    raise TaskFailed(
                        f"replica {rep.state.id} failed: {exc}", "replica_error"
                    ) from exc
                log.warning(
                    "replica %s failed before the first token (%s); retrying", rep.state.id, exc
                )
                excluded.add(rep.state.id)
                call.started_at = call.first_token_at = None
                call.tokens_done = 0
            except BaseException:
                self._release(call)
                raise
            self._call_done(call)
            return result
        raise AssertionError("unreachable")

    def _call_done(self, call: Call) -> None:
        if self.on_call_done is None:
            return
        now = self.clock()
        reached = call.first_token_at if call.metric == "ttft" else now
        self.on_call_done(call, (reached or now) > call.deadline, now)

    async def _stream(
        self, rep: _Replica, call: Call, node: Node, on_token: Callable[[str, float], None]
    ) -> tuple[str, Usage]:
        st = rep.state
        parts: list[str] = []
        usage = Usage(prompt_tokens=call.prompt_tokens)
        started = self.clock()
        first_at: float | None = None
        stream = rep.client.stream_completion(
            rep.spec.served_name or call.model,
            node.prompt or "",
            max_tokens=node.max_tokens,
            stop=list(node.stop),
            temperature=0.0,
            priority=call.priority if rep.spec.send_priority else None,
        )
        async with contextlib.aclosing(stream) as events:
            async for ev in events:
                now = self.clock()
                if isinstance(ev, Token):
                    if first_at is None:
                        first_at = now
                        st.first_token(call.id, now)
                    st.tokens(call.id, 1)
                    parts.append(ev.text)
                    on_token(ev.text, now)
                elif isinstance(ev, Finished) and ev.usage is not None:
                    usage = Usage(
                        prompt_tokens=ev.usage.prompt_tokens,
                        completion_tokens=ev.usage.completion_tokens,
                    )
        done = self.clock()
        ttft = (first_at or done) - started
        st.observe(usage.prompt_tokens, ttft, usage.completion_tokens, done - (first_at or done))
        self._release(call)
        return "".join(parts), usage


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


class _TaskRun:
    """One task's graph run: node tasks feeding one ordered event queue."""

    def __init__(self, orch: Orchestrator, request: TaskRequest) -> None:
        self.orch = orch
        self.request = request
        self.arrival = orch.clock()
        self.queue: asyncio.Queue[TaskEvent | None] = asyncio.Queue()
        self.first_token_at: float | None = None
        self.usage = Usage()
        self.diagnostics: list[str] = []
        self.llm_total = 0
        self.llm_done = 0

    def _t_ms(self, t: float | None = None) -> float:
        return ((self.orch.clock() if t is None else t) - self.arrival) * 1000.0

    def _emit(self, **fields: object) -> None:
        self.queue.put_nowait(TaskEvent(task_id=self.request.id, t_ms=self._t_ms(), **fields))  # type: ignore[arg-type]

    async def events(self) -> AsyncGenerator[TaskEvent, None]:
        try:
            graph = graphs.build_graph(self.request, self.orch.defaults)
        except ValueError as exc:
            yield self._error_event(str(exc), "bad_request")
            self._record(None, "error")
            return
        yield TaskEvent(type="started", task_id=self.request.id, t_ms=self._t_ms())
        runner = asyncio.create_task(self._run(graph))
        outcome: Outcome = "cancelled"
        try:
            while True:
                event = await self.queue.get()
                if event is None:
                    break
                if event.type in ("done", "error"):
                    outcome = "ok" if event.type == "done" else "error"
                yield event
        finally:
            if not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            self._record(graph, outcome)

    def _error_event(self, message: str, code: str) -> TaskEvent:
        return TaskEvent(
            type="error", task_id=self.request.id, t_ms=self._t_ms(), error=message, code=code
        )

    async def _run(self, graph: TaskGraph) -> None:
        try:
            result = await self._run_graph(graph)
        except* TaskFailed as group:
            exc = group.exceptions[0]
            assert isinstance(exc, TaskFailed)
            self.queue.put_nowait(self._error_event(str(exc), exc.code))
        except* Exception as group:
            exc0 = group.exceptions[0]
            log.exception("task %s failed", self.request.id, exc_info=exc0)
            self.queue.put_nowait(self._error_event(f"internal error: {exc0}", "internal"))
        else:
            self._finish(graph, result)
        self.queue.put_nowait(None)

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
        self.llm_total = sum(1 for n in graph.nodes if n.op == "llm")
        tasks: dict[str, asyncio.Task[str]] = {}
        async with asyncio.TaskGroup() as tg:
            for node in graph.nodes:
                deps = [tasks[d] for d in node.deps]
                tasks[node.id] = tg.create_task(self._node(graph, node, deps, deadlines[node.id]))
        return tasks[graph.nodes[-1].id].result()

    async def _node(
        self, graph: TaskGraph, node: Node, deps: list[asyncio.Task[str]], deadline: float
    ) -> str:
        inputs = [await d for d in deps]
        self._emit(type="node", node=node.id, state="running")
        if node.op == "llm":
            text = await self._llm(graph, node, deadline)
        else:
            started = self.orch.clock()
            out = graphs.run_local(node, inputs, self.request)
            text = out.text
            self.diagnostics.extend(out.diagnostics)
            self.orch.profiler.observe(node, graph.model, self.orch.clock() - started)
        progress = self.llm_done / self.llm_total if self.llm_total else None
        self._emit(type="node", node=node.id, state="finished", progress=progress)
        return text

    async def _llm(self, graph: TaskGraph, node: Node, deadline: float) -> str:
        now = self.orch.clock()
        call = Call(
            id=f"{self.request.id}:{node.id}",
            model=graph.model,
            deadline=deadline,
            prompt_tokens=node.prompt_tokens,
            expected_output_tokens=node.expected_output_tokens,
            arrival=now,
            metric=node.metric,
            task_id=self.request.id,
            kind=self.request.kind.value,
        )

        def on_token(text: str, t: float) -> None:
            if not node.final:
                return
            if self.first_token_at is None:
                self.first_token_at = t
            self._emit(type="token", node=node.id, text=text)

        text, usage = await self.orch.run_call(call, node, on_token)
        self.orch.profiler.observe(node, graph.model, _service_time(call, self.orch.clock()))
        if node.final and self.first_token_at is None:
            self.first_token_at = self.orch.clock()
        self.usage = Usage(
            prompt_tokens=self.usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens + usage.completion_tokens,
        )
        self.llm_done += 1
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
