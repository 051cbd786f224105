"""What each simulated request becomes, resolved once per distinct request.

A ``Template`` holds a request's graph, its nodes' true output lengths and the
profiler's deadline plan, so that the thousands of arrivals of one workload task share
one graph build.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from orchestrator.emulator.textgen import TextGenerator
from orchestrator.engine_model import EngineProfile, block_hashes
from orchestrator.graphs import GraphError, Node, TaskGraph, build_graph
from orchestrator.profiler import DeadlinePlan, Profiler
from orchestrator.sim.config import SimConfig, SimTask


class Template:
    """A request's graph, resolved once: node order, edges, outputs, cached deadlines."""

    __slots__ = (
        "deps_left",
        "error",
        "final",
        "graph",
        "hashes",
        "kind",
        "model",
        "nodes",
        "offsets",
        "offsets_at",
        "outputs",
        "plan",
        "roots",
        "shed_late",
        "succ",
        "target_ms",
        "ttft_metric",
    )

    def __init__(
        self, graph: TaskGraph, plan: DeadlinePlan, outputs: list[int], error: str | None
    ) -> None:
        self.graph = graph
        self.plan = plan
        self.nodes = graph.nodes
        index = {n.id: i for i, n in enumerate(graph.nodes)}
        self.succ: list[list[int]] = [[] for _ in graph.nodes]
        for i, node in enumerate(graph.nodes):
            for dep in node.deps:
                self.succ[index[dep]].append(i)
        self.deps_left = [len(n.deps) for n in graph.nodes]
        self.roots = [i for i, left in enumerate(self.deps_left) if left == 0]
        self.final = [n.final for n in graph.nodes]
        self.outputs = outputs
        self.model = graph.model
        self.kind = graph.request.kind.value
        self.ttft_metric = graph.sla.metric.value == "ttft"
        self.target_ms = graph.sla.target_ms
        self.shed_late = graph.on_late == "shed"
        self.offsets: list[float] = []
        self.offsets_at = -math.inf
        self.error = error
        # Block hashes of each node's prompt, where the model's engines cache prefixes.
        self.hashes: list[tuple[int, ...]] = [() for _ in graph.nodes]


class Templates:
    """Templates by ``SimTask.key``, built on first use."""

    def __init__(
        self, config: SimConfig, profiles: Mapping[str, EngineProfile], profiler: Profiler
    ) -> None:
        self.config = config
        self.profiles = profiles
        self.profiler = profiler
        self.cache: dict[str, Template] = {}
        self._textgens: dict[str, TextGenerator] = {}
        self._caching = {m.name for m in config.models if m.prefix_caching}

    def get(self, task: SimTask) -> Template:
        tpl = self.cache.get(task.key)
        if tpl is None:
            tpl = self.cache[task.key] = self._build(task)
        return tpl

    def _build(self, task: SimTask) -> Template:
        try:
            graph = build_graph(task.request, self.config.defaults)
        except GraphError as exc:
            raise ValueError(f"task {task.key!r}: {exc}") from exc
        profile = self.profiles.get(graph.model)
        if profile is None:
            known = ", ".join(sorted(self.profiles))
            raise ValueError(f"task {task.key!r} needs model {graph.model!r}; simulated: {known}")
        llm_nodes = sum(1 for n in graph.nodes if n.op == "llm")
        outputs = [self._output(task, graph, n, llm_nodes) for n in graph.nodes]
        error = None
        max_len = profile.max_model_len
        for node in graph.nodes:
            if node.op == "llm" and node.prompt_tokens + node.max_tokens > max_len:
                error = f"node {node.id}: prompt + max_tokens exceed max_model_len {max_len}"
        tpl = Template(graph, self.profiler.plan(graph), outputs, error)
        if graph.model in self._caching:
            block = profile.block_size
            tpl.hashes = [
                block_hashes(n.prompt, block) if n.op == "llm" else () for n in graph.nodes
            ]
        return tpl

    def _output(self, task: SimTask, graph: TaskGraph, node: Node, llm_nodes: int) -> int:
        if node.op != "llm":
            return 0
        if self.config.outputs == "workload":
            return task.output_for(node, llm_nodes)
        gen = self._textgens.get(graph.model)
        if gen is None:
            profile = self.profiles[graph.model]
            gen = TextGenerator(
                self.config.emulator_seed, profile.output_mean_tokens, profile.output_sigma
            )
            self._textgens[graph.model] = gen
        return gen.plan(node.prompt, node.max_tokens, stop=node.stop).num_tokens
