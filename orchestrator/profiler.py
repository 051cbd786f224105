"""Node latency baselines, learned online, and the SLA apportioned over a graph as slack.

Baselines are kept per (node kind, model, size bucket). An ``llm`` node's kind includes
its metric (a ``ttft`` node is measured to its first token, an ``e2e`` node to its last)
and its bucket is the power of two of its prompt tokens. A baseline starts at a prior
(from the model's ``Rates`` for ``llm`` nodes, small constants for local steps) and
learns a correction factor over that prior from observed latencies:

* an EWMA of observed / prior, which follows the first few observations at once;
* once a sliding window holds ``min_samples`` ratios, the larger of the EWMA and the
  window's 90th percentile. An SLA has to cover the tail, not the mean, and a sliding
  window forgets old regimes within its length, so drift is followed both ways.

Learning a factor over the prior (not seconds) keeps the prior's size dependence
inside a bucket, whose prompts differ by up to 2x.

``deadlines`` then splits the SLA over the graph in proportion to baselines, as
latest finish times of the critical-path method: every baseline is scaled by
SLA / (longest baseline path), so nodes on the critical path share the SLA in
proportion (5 s, 15 s, 5 s under 50 s get 10 s, 30 s, 10 s), and a node off it must
finish when its earliest-due successor must start. Under a ``ttft`` SLA the path ends
at the first token of the final ``llm`` node; nodes after it (``validate``) are
outside the budget and get no deadline (``inf``).

Pure: nothing here reads a clock or does I/O; callers pass times in.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from orchestrator.api import SLAMetric
from orchestrator.graphs import Node, TaskGraph
from orchestrator.policy.state import Rates

INF = math.inf
MIN_BASELINE_S = 1e-4
# Typical cost of the local steps, before any is observed (seconds).
LOCAL_PRIORS_S: Mapping[str, float] = {
    "context": 0.002,
    "split": 0.0,
    "assemble": 0.001,
    "validate": 0.005,
}

BaselineKey = tuple[str, str, int]


def size_bucket(prompt_tokens: int) -> int:
    """Power-of-two bucket: 0 for no prompt, then 1, 2-3, 4-7, ... tokens."""
    return max(prompt_tokens, 0).bit_length()


def node_kind(node: Node) -> str:
    return f"llm-{node.metric}" if node.op == "llm" else node.op


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty collection."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass
class _Learned:
    """Observed / prior ratios of one (kind, model, bucket).

    ``ordered`` is the window kept sorted, so that its percentile is one lookup, and
    ``factor`` caches the learned correction until the next observation that moves it:
    deadlines are asked for at every arrival.
    """

    window: deque[float]
    ewma: float = 1.0
    count: int = 0
    factor: float | None = None
    ordered: list[float] = field(default_factory=list)


class DeadlinePlan:
    """A graph resolved once for the profiler: every node's baseline key and prior, and
    the scope and edges of ``slack_deadlines``.

    A caller that sees the same graph again and again (the simulator, per distinct
    request) keeps the plan and asks ``Profiler.deadline_list`` for fresh deadlines
    (the arithmetic is ``slack_deadlines``'s, so the results are equal) and tells
    ``Profiler.observe_planned`` what the nodes took. The priors are read when the plan
    is made: make a new plan after changing them.
    """

    __slots__ = (
        "budget_s",
        "deps",
        "edges",
        "graph",
        "keys",
        "priors",
        "scoped",
        "succ",
        "unbounded",
    )

    def __init__(self, profiler: Profiler, graph: TaskGraph) -> None:
        self.graph = graph
        self.budget_s = graph.sla.target_ms / 1000.0
        self.keys = [profiler.key(n, graph.model) for n in graph.nodes]
        self.priors = [profiler.prior(n, graph.model) for n in graph.nodes]
        self.unbounded = [INF] * len(graph.nodes)  # the deadline of a node out of scope
        shape = tuple((n.id, n.deps) for n in graph.nodes)
        self.scoped, self.deps, self.succ = _edges(shape, graph.sla.metric, graph.final_node)
        self.edges = any(self.succ)


@functools.lru_cache(maxsize=256)
def _edges(
    shape: tuple[tuple[str, tuple[str, ...]], ...], metric: SLAMetric, final: str | None
) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """The scope of a graph's SLA (node positions) and, per scoped node by its position
    in that list, the positions of its deps within the scope and of its successors.
    Computed once per shape of graph (read only: callers never change them)."""
    if metric is SLAMetric.E2E or final is None:
        scope = {node_id for node_id, _ in shape}
    else:
        scope = {final}
        for node_id, deps in reversed(shape):
            if node_id in scope:
                scope.update(deps)
    scoped = [i for i, (node_id, _) in enumerate(shape) if node_id in scope]
    position = {shape[i][0]: k for k, i in enumerate(scoped)}
    dep_lists: list[list[int]] = []
    succ: list[list[int]] = [[] for _ in scoped]
    for k, i in enumerate(scoped):
        deps = shape[i][1]
        dep_lists.append([position[d] for d in deps if d in position])
        for d in deps:
            succ[position[d]].append(k)
    return scoped, dep_lists, succ


@dataclass
class Profiler:
    """Latency baselines per node and the slack deadlines derived from them.

    ``priors`` maps a model name to its engine ``Rates`` (a model absent from it uses
    ``default_rates``); ``local_s`` overrides the priors of local steps.
    """

    priors: Mapping[str, Rates] = field(default_factory=dict)
    default_rates: Rates = field(default_factory=Rates)
    local_s: Mapping[str, float] = field(default_factory=lambda: dict(LOCAL_PRIORS_S))
    alpha: float = 0.2
    window: int = 32
    min_samples: int = 8
    quantile: float = 90.0
    _learned: dict[BaselineKey, _Learned] = field(default_factory=dict, init=False, repr=False)

    def key(self, node: Node, model: str) -> BaselineKey:
        return (node_kind(node), model, size_bucket(node.prompt_tokens))

    def prior(self, node: Node, model: str) -> float:
        """The baseline before observations: from the engine's rates for a model call."""
        if node.op != "llm":
            return max(self.local_s.get(node.op, MIN_BASELINE_S), MIN_BASELINE_S)
        rates = self.priors.get(model, self.default_rates)
        seconds = rates.prefill_s(node.prompt_tokens)
        if node.metric != "ttft":
            seconds += rates.decode_s(node.expected_output_tokens)
        return max(seconds, MIN_BASELINE_S)

    def factor(self, node: Node, model: str) -> float:
        """The learned correction over the prior (1.0 before any observation)."""
        learned = self._learned.get(self.key(node, model))
        return 1.0 if learned is None else self._factor(learned)

    def _factor(self, learned: _Learned) -> float:
        found = learned.factor
        if found is None:
            found = learned.ewma
            ordered = learned.ordered
            if len(ordered) >= self.min_samples:  # ``percentile`` of the window
                rank = max(math.ceil(self.quantile / 100 * len(ordered)), 1)
                found = max(found, ordered[rank - 1])
            learned.factor = found
        return found

    def baseline(self, node: Node, model: str) -> float:
        """Expected latency of ``node`` served alone, in seconds."""
        return self.prior(node, model) * self.factor(node, model)

    def observe(self, node: Node, model: str, latency_s: float) -> None:
        """Fold in one measured latency of ``node``.

        For an ``llm`` node pass its service latency on the replica (dispatch to first
        token for ``ttft``, to the last token for ``e2e``), without the queueing before
        dispatch: that wait is what the scheduler estimates separately.
        """
        if math.isfinite(latency_s) and latency_s >= 0:
            self._learn(self.key(node, model), latency_s / self.prior(node, model))

    def observe_planned(self, plan: DeadlinePlan, index: int, latency_s: float) -> None:
        """``observe`` for node ``index`` of the plan's graph (its key and prior known)."""
        if math.isfinite(latency_s) and latency_s >= 0:
            self._learn(plan.keys[index], latency_s / plan.priors[index])

    def _learn(self, key: BaselineKey, ratio: float) -> None:
        learned = self._learned.get(key)
        if learned is None:
            learned = self._learned[key] = _Learned(window=deque(maxlen=self.window))
        window, ordered = learned.window, learned.ordered
        full = len(window) == window.maxlen
        if full and ordered and ordered[0] == ratio == ordered[-1] == learned.ewma:
            # The ratio a full window holds throughout, and the EWMA too (a local step
            # that always takes 0 s, say): nothing moves, and the factor stays known.
            learned.count += 1
            return
        learned.ewma = (
            ratio if learned.count == 0 else learned.ewma + self.alpha * (ratio - learned.ewma)
        )
        if full:  # slide the window, and its sorted copy
            del ordered[bisect_left(ordered, window[0])]
        window.append(ratio)
        insort(ordered, ratio)
        learned.count += 1
        learned.factor = None

    def baselines(self, graph: TaskGraph) -> dict[str, float]:
        return {node.id: self.baseline(node, graph.model) for node in graph.nodes}

    def deadlines(self, graph: TaskGraph, arrival: float) -> dict[str, float]:
        """Absolute deadline of every node (``inf`` for nodes outside the SLA's scope)."""
        found = self.deadline_list(self.plan(graph), arrival)
        return {node.id: d for node, d in zip(graph.nodes, found, strict=True)}

    def plan(self, graph: TaskGraph) -> DeadlinePlan:
        """``graph`` resolved for ``deadline_list`` (keep it to ask again later)."""
        return DeadlinePlan(self, graph)

    def deadline_list(self, plan: DeadlinePlan, arrival: float) -> list[float]:
        """``deadlines`` of the plan's graph, in node order: ``slack_deadlines`` over the
        current baselines, step for step (the simulator asks this for every task)."""
        due = arrival + plan.budget_s
        found = plan.unbounded.copy()
        if not plan.edges:  # every node in scope is due at the end, whatever its baseline
            for i in plan.scoped:
                found[i] = due
            return found
        learned = self._learned
        keys, priors = plan.keys, plan.priors
        baselines = []  # ``baseline`` (a prior times 1.0 is the prior)
        for i in plan.scoped:
            entry = learned.get(keys[i])
            if entry is None:
                baselines.append(priors[i])
            else:
                factor = entry.factor
                if factor is None:
                    factor = self._factor(entry)
                baselines.append(priors[i] * factor)
        ends: list[float] = []  # ``critical_path_s``
        k = 0
        for deps in plan.deps:
            if not deps:
                ends.append(0.0 + baselines[k])
            elif len(deps) == 1:
                ends.append(ends[deps[0]] + baselines[k])
            else:
                ends.append(max([ends[d] for d in deps]) + baselines[k])
            k += 1
        longest = max(ends)
        scale = plan.budget_s / longest if longest > 0 else 0.0
        succ = plan.succ
        scoped = plan.scoped
        finish = [due] * k  # latest finish, by position in ``scoped``
        while k:
            k -= 1
            latest = due
            for j in succ[k]:
                start = finish[j] - baselines[j] * scale
                if start < latest:  # ``min``
                    latest = start
            finish[k] = latest
            found[scoped[k]] = latest
        return found


def sla_scope(graph: TaskGraph) -> set[str]:
    """Nodes the SLA bounds: all of them for ``e2e``; up to the final llm for ``ttft``."""
    if graph.sla.metric is SLAMetric.E2E or graph.final_node is None:
        return {node.id for node in graph.nodes}
    scope = {graph.final_node}
    for node in reversed(graph.nodes):
        if node.id in scope:
            scope.update(node.deps)
    return scope


def slack_deadlines(
    graph: TaskGraph, baselines: Mapping[str, float], budget_s: float, arrival: float
) -> dict[str, float]:
    """Latest finish times with baselines scaled to fill ``budget_s`` on the critical path."""
    scope = sla_scope(graph)
    nodes = [n for n in graph.nodes if n.id in scope]
    longest = critical_path_s(nodes, baselines)
    scale = budget_s / longest if longest > 0 else 0.0
    succ: dict[str, list[str]] = {n.id: [] for n in nodes}
    for node in nodes:
        for dep in node.deps:
            succ[dep].append(node.id)
    finish: dict[str, float] = {n.id: INF for n in graph.nodes}
    for node in reversed(nodes):
        due = arrival + budget_s
        for s in succ[node.id]:
            due = min(due, finish[s] - baselines[s] * scale)
        finish[node.id] = due
    return finish


def critical_path_s(nodes: Iterable[Node], baselines: Mapping[str, float]) -> float:
    """Length of the longest baseline path through ``nodes`` (topologically ordered)."""
    ends: dict[str, float] = {}
    for node in nodes:
        start = max((ends[d] for d in node.deps if d in ends), default=0.0)
        ends[node.id] = start + baselines[node.id]
    return max(ends.values(), default=0.0)


def critical_path(graph: TaskGraph, baselines: Mapping[str, float]) -> list[str]:
    """Node ids on the longest baseline path within the SLA's scope, in order."""
    scope = sla_scope(graph)
    ends: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for node in graph.nodes:
        if node.id not in scope:
            continue
        deps = [d for d in node.deps if d in ends]
        best = max(deps, key=lambda d: ends[d], default=None)
        ends[node.id] = (ends[best] if best is not None else 0.0) + baselines[node.id]
        via[node.id] = best
    last: str | None = max(ends, key=lambda n: ends[n], default=None)
    path: list[str] = []
    while last is not None:
        path.append(last)
        last = via[last]
    return path[::-1]
