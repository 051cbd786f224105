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

import math
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
    """Observed / prior ratios of one (kind, model, bucket)."""

    window: deque[float]
    ewma: float = 1.0
    count: int = 0


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
        if learned is None:
            return 1.0
        if len(learned.window) >= self.min_samples:
            return max(learned.ewma, percentile(learned.window, self.quantile))
        return learned.ewma

    def baseline(self, node: Node, model: str) -> float:
        """Expected latency of ``node`` served alone, in seconds."""
        return self.prior(node, model) * self.factor(node, model)

    def observe(self, node: Node, model: str, latency_s: float) -> None:
        """Fold in one measured latency of ``node``.

        For an ``llm`` node pass its service latency on the replica (dispatch to first
        token for ``ttft``, to the last token for ``e2e``), without the queueing before
        dispatch: that wait is what the scheduler estimates separately.
        """
        if not math.isfinite(latency_s) or latency_s < 0:
            return
        key = self.key(node, model)
        learned = self._learned.get(key)
        if learned is None:
            learned = self._learned[key] = _Learned(window=deque(maxlen=self.window))
        ratio = latency_s / self.prior(node, model)
        learned.ewma = (
            ratio if learned.count == 0 else learned.ewma + self.alpha * (ratio - learned.ewma)
        )
        learned.window.append(ratio)
        learned.count += 1

    def baselines(self, graph: TaskGraph) -> dict[str, float]:
        return {node.id: self.baseline(node, graph.model) for node in graph.nodes}

    def deadlines(self, graph: TaskGraph, arrival: float) -> dict[str, float]:
        """Absolute deadline of every node (``inf`` for nodes outside the SLA's scope)."""
        budget_s = graph.sla.target_ms / 1000.0
        return slack_deadlines(graph, self.baselines(graph), budget_s, arrival)


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
