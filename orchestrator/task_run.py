"""One task's run: its graph's nodes as asyncio tasks feeding one ordered event queue.

The ``Orchestrator`` (``orchestrator.executor``) starts a ``TaskRun`` per submitted
task; each ``llm`` node's call goes back to it (``run_call``) to be placed, streamed and
retried. Tokens are the hot path: they travel as plain ``TokenDelta`` objects, a read's
worth at a time, and become pydantic ``TaskEvent`` models only for the callers that
want those. A service can take them sooner: a ``TextSink`` gets the final call's text
deltas, and a ``ByteSink`` its replica's stream as bytes, when no later step reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_str
from typing import TYPE_CHECKING, Protocol

from orchestrator import graphs
from orchestrator.api import TaskEvent, TaskRequest, Usage
from orchestrator.graphs import Node, TaskGraph
from orchestrator.metrics import Outcome, TaskRecord
from orchestrator.policy.state import Call

if TYPE_CHECKING:
    from orchestrator.executor import Orchestrator

log = logging.getLogger(__name__)

OnToken = Callable[[str, float], None]
# Takes the text deltas of one read and writes them out (awaited by the model call).
TextSink = Callable[[list[str]], Awaitable[None]]
OnDispatch = Callable[[Call], None]


class ByteSink(Protocol):
    """Takes a final model call's stream as the replica framed it (vLLM's SSE events,
    ``[DONE]`` left out), one write per read; ``model`` is the name the client asked
    for, ``keep_usage`` whether it wants the usage chunk. ``last`` marks the read that
    ended the stream: a sink may hold it and write it with the end of its response."""

    model: str
    keep_usage: bool

    async def forward(self, data: bytes, *, last: bool = False) -> None: ...


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

    def json(self) -> str:
        """The JSON of ``event()`` (as ``model_dump_json(exclude_none=True)`` has it, up
        to how a float and a non-ASCII character are spelt), without the model."""
        return (
            '{"type":"token","task_id":' + _json_str(self.task_id)
            + ',"t_ms":' + repr(self.t_ms)
            + ',"node":' + _json_str(self.node)
            + ',"text":' + _json_str(self.text)
            + ',"diagnostics":[]}'
        )  # fmt: skip


RunItem = TaskEvent | TokenDelta


class TaskFailed(Exception):
    """A task ended in error; ``code`` is the machine-readable reason."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _service_time(call: Call, now: float) -> float:
    """The call's time on its replica, up to what its deadline bounds (not queueing)."""
    start = call.started_at if call.started_at is not None else call.arrival
    end = call.first_token_at if call.metric == "ttft" and call.first_token_at is not None else now
    return max(end - start, 0.0)


def _is_chain(graph: TaskGraph) -> bool:
    """Whether each node waits for the one before it (complete, generate, summarize), so
    that running them in order loses no parallelism."""
    nodes = graph.nodes
    return all(nodes[i - 1].id in nodes[i].deps for i in range(1, len(nodes)))


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


class TaskRun:
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
        relay: ByteSink | None = None,
        *,
        graph: TaskGraph | None = None,
        progress: bool = True,
    ) -> None:
        self.orch = orch
        self.request = request
        self.run_id = run_id
        self.sink = sink
        self.relay = relay
        self.progress = progress  # whether ``node`` events are wanted
        self.arrival = orch.clock()
        self.pending: deque[RunItem] = deque()
        self._ended = False  # nothing more will be queued
        self._wakeup: asyncio.Future[None] | None = None
        self._graph: TaskGraph | None = graph
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

    def _node_event(self, **fields: object) -> None:
        if self.progress:
            self._put(self._event(type="node", **fields))

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
            if self._graph is None:
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
        if _is_chain(graph):  # one node after the other: no task per node needed
            results: dict[str, str] = {}
            for node in graph.nodes:
                inputs = [results[d] for d in node.deps]
                if node.op == "llm":
                    results[node.id] = await self._llm(graph, node, deadlines[node.id])
                else:
                    results[node.id] = self._local(graph, node, inputs)
            return results[graph.result_node]
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
        self._node_event(node=node.id, state="running")
        started = self.orch.clock()
        out = graphs.run_local(node, inputs, self.request)
        self.diagnostics.extend(out.diagnostics)
        self.orch.profiler.observe(node, graph.model, self.orch.clock() - started)
        self._node_event(node=node.id, state="finished", progress=self._progress())
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
            shed_late=graph.on_late == "shed",
            block_hashes=self.orch.prompt_hashes(graph.model, node.prompt),
        )

    async def _llm(self, graph: TaskGraph, node: Node, deadline: float) -> str:
        call = self._call(graph, node, deadline)
        task_id, node_id, arrival, put = self.request.id, node.id, self.arrival, self._put
        # The replica's bytes go straight out only when no later step reads the text.
        relay = self.relay if node.final and node.id == graph.result_node else None
        sink = self.sink if node.final and relay is None else None
        queued = sink is None and relay is None

        def on_token(text: str, t: float) -> None:
            if not node.final:
                return
            if self.first_token_at is None:
                self.first_token_at = t
            if queued:
                put(TokenDelta(task_id, node_id, text, (t - arrival) * 1000.0))

        def on_dispatch(c: Call) -> None:
            self._node_event(node=node.id, state="running", replica=c.replica, priority=c.priority)

        try:
            text, usage = await self.orch.run_call(call, node, on_token, on_dispatch, sink, relay)
        except TaskFailed:
            self._node_event(
                node=node.id, state="failed", replica=call.replica, priority=call.priority
            )
            raise
        self.orch.profiler.observe(node, graph.model, _service_time(call, self.orch.clock()))
        if node.final and self.first_token_at is None:
            self.first_token_at = self.orch.clock()
        self.usage = Usage(
            prompt_tokens=self.usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens + usage.completion_tokens,
        )
        self.llm_done += 1
        self._node_event(
            node=node.id, state="finished", replica=call.replica, priority=call.priority,
            progress=self._progress(),
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
