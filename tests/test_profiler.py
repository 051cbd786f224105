"""Baselines learned online and the SLA split over a graph's critical path."""

from __future__ import annotations

import math

import pytest

from orchestrator.api import SLA, SLAMetric, TaskKind, TaskRequest
from orchestrator.graphs import Node, TaskDefaults, TaskGraph, build_graph
from orchestrator.policy.state import Rates
from orchestrator.profiler import (
    Profiler,
    critical_path,
    percentile,
    size_bucket,
    slack_deadlines,
)

FLAT_15S = Rates(overhead_s=15.0, prefill_s_per_token=0.0, tpot_s=0.0)


def chain_graph(target_ms: float) -> TaskGraph:
    """context -> llm -> validate under an E2E SLA (the paper's three-node example)."""
    sla = SLA(metric=SLAMetric.E2E, target_ms=target_ms)
    req = TaskRequest(kind=TaskKind.GENERATE, code="# sort a list", sla=sla)
    return build_graph(req)


def test_paper_example_splits_50s_as_10_30_10() -> None:
    profiler = Profiler({"tiny": FLAT_15S}, local_s={"context": 5.0, "validate": 5.0})
    graph = chain_graph(50_000)
    assert profiler.baselines(graph) == pytest.approx(
        {"context": 5.0, "llm": 15.0, "validate": 5.0}
    )
    d = profiler.deadlines(graph, arrival=100.0)
    assert d == pytest.approx({"context": 110.0, "llm": 140.0, "validate": 150.0})


def test_slack_deadlines_is_proportional_on_a_chain() -> None:
    graph = chain_graph(12_000)
    d = slack_deadlines(graph, {"context": 1.0, "llm": 2.0, "validate": 3.0}, 12.0, 0.0)
    assert [d["context"], d["llm"], d["validate"]] == pytest.approx([2.0, 6.0, 12.0])


def translate_graph(sizes: list[int], target_ms: float = 20_000) -> TaskGraph:
    code = "\n\n".join(
        f"def f{i}():\n" + "".join(f"    x{j} = {j}\n" for j in range(n))
        for i, n in enumerate(sizes)
    )
    req = TaskRequest(
        kind=TaskKind.TRANSLATE,
        code=code,
        target_language="go",
        sla=SLA(metric=SLAMetric.E2E, target_ms=target_ms),
    )
    return build_graph(req, TaskDefaults(chunk_tokens=1))


def test_fan_out_critical_path_is_the_longest_chunk() -> None:
    graph = translate_graph([5, 60, 20])
    profiler = Profiler({"tiny": Rates(overhead_s=0.0, prefill_s_per_token=1e-3, tpot_s=0.01)})
    base = profiler.baselines(graph)
    chunks = [n.id for n in graph.llm_nodes()]
    assert len(chunks) == 3
    longest = max(chunks, key=lambda c: base[c])
    assert longest == "llm-1"
    assert critical_path(graph, base) == ["split", "llm-1", "assemble", "validate"]

    d = profiler.deadlines(graph, arrival=10.0)
    cp = base["split"] + base["llm-1"] + base["assemble"] + base["validate"]
    scale = 20.0 / cp
    assert d["validate"] == pytest.approx(30.0)
    assert d["assemble"] == pytest.approx(30.0 - base["validate"] * scale)
    assert d["llm-1"] == pytest.approx(10.0 + (base["split"] + base["llm-1"]) * scale)
    # Shorter chunks run in parallel: they must be done when assemble must start.
    assert d["llm-0"] == pytest.approx(d["llm-1"]) and d["llm-2"] == pytest.approx(d["llm-1"])
    assert d["split"] == pytest.approx(10.0 + base["split"] * scale)
    assert d["split"] < d["llm-0"] < d["assemble"] < d["validate"]


def test_ttft_budget_ends_at_the_final_llm_first_token() -> None:
    rates = Rates(overhead_s=0.3, prefill_s_per_token=0.0, tpot_s=1.0)
    profiler = Profiler({"tiny": rates}, local_s={"context": 0.1, "validate": 0.5})
    graph = build_graph(TaskRequest(kind=TaskKind.GENERATE, code="# parse a date"))
    assert graph.sla.metric is SLAMetric.TTFT
    # The ttft llm node's baseline is its prefill only, not its decode.
    assert profiler.baseline(graph.node("llm"), "tiny") == pytest.approx(0.3)
    d = profiler.deadlines(graph, arrival=0.0)
    assert d["llm"] == pytest.approx(1.0)
    assert d["context"] == pytest.approx(0.25)
    assert math.isinf(d["validate"])


def test_e2e_llm_baseline_includes_decode() -> None:
    rates = Rates(overhead_s=0.1, prefill_s_per_token=0.001, tpot_s=0.02)
    graph = build_graph(TaskRequest(kind=TaskKind.SUMMARIZE, code="x = 1\n" * 100))
    node = graph.node("llm")
    expected = 0.1 + node.prompt_tokens * 0.001 + node.expected_output_tokens * 0.02
    assert Profiler({"tiny": rates}).baseline(node, "tiny") == pytest.approx(expected)
    # An unknown model falls back to the default rates.
    assert Profiler({}, default_rates=rates).baseline(node, "other") == pytest.approx(expected)


def llm_node(prompt_tokens: int, node_id: str = "llm") -> Node:
    return Node(
        node_id, "llm", prompt_tokens=prompt_tokens, expected_output_tokens=10, metric="e2e"
    )


def test_online_learning_moves_the_baseline_to_observed_latency() -> None:
    profiler = Profiler({"m": Rates(overhead_s=0.5, prefill_s_per_token=0.0, tpot_s=0.05)})
    node = llm_node(100)
    assert profiler.baseline(node, "m") == pytest.approx(1.0)
    profiler.observe(node, "m", 2.0)
    assert profiler.baseline(node, "m") == pytest.approx(2.0)  # the first one replaces the prior
    for _ in range(20):
        profiler.observe(node, "m", 3.0)
    assert profiler.baseline(node, "m") == pytest.approx(3.0, rel=0.02)


def test_window_percentile_follows_drift_up_then_down() -> None:
    profiler = Profiler({"m": Rates(overhead_s=1.0, prefill_s_per_token=0.0, tpot_s=0.0)})
    node = llm_node(10)
    for _ in range(40):
        profiler.observe(node, "m", 1.0)
    assert profiler.baseline(node, "m") == pytest.approx(1.0)
    for _ in range(4):
        profiler.observe(node, "m", 3.0)
    assert profiler.baseline(node, "m") == pytest.approx(3.0)  # the tail shows within the window
    for _ in range(profiler.window):
        profiler.observe(node, "m", 1.0)
    assert profiler.baseline(node, "m") == pytest.approx(1.0, rel=0.01)


def test_learning_is_per_bucket_and_scales_within_a_bucket() -> None:
    rates = Rates(overhead_s=0.0, prefill_s_per_token=0.01, tpot_s=0.0)
    profiler = Profiler({"m": rates})
    small, same_bucket, big = llm_node(64), llm_node(100), llm_node(1_000)
    assert size_bucket(64) == size_bucket(100) != size_bucket(1_000)
    profiler.observe(small, "m", 2 * profiler.prior(small, "m"))
    assert profiler.baseline(same_bucket, "m") == pytest.approx(2 * 100 * 0.01)
    assert profiler.baseline(big, "m") == pytest.approx(1_000 * 0.01)
    assert profiler.baseline(small, "other-model") == pytest.approx(Profiler().prior(small, "x"))


def test_bad_observations_are_ignored() -> None:
    profiler = Profiler({"m": FLAT_15S})
    node = llm_node(10)
    for bad in (-1.0, math.nan, math.inf):
        profiler.observe(node, "m", bad)
    assert profiler.baseline(node, "m") == pytest.approx(15.0)


def test_percentile_nearest_rank() -> None:
    assert percentile(range(1, 11), 90) == 9
    assert percentile([5.0], 90) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_planned_deadlines_and_observations_equal_the_graph_walk() -> None:
    """``deadline_list`` over a kept plan gives ``slack_deadlines`` exactly (float for
    float), and ``observe_planned`` learns what ``observe`` would."""
    rates = Rates(overhead_s=0.02, prefill_s_per_token=2e-4, tpot_s=0.03)
    graphs = [
        translate_graph([5, 60, 20]),
        chain_graph(9_000),
        build_graph(TaskRequest(kind=TaskKind.GENERATE, code="# parse a date")),
        build_graph(TaskRequest(kind=TaskKind.SUMMARIZE, code="x = 1\n" * 40)),
        build_graph(TaskRequest(kind=TaskKind.COMPLETE, prompt="def f(x):\n    return")),
    ]
    planned, walked = Profiler({"tiny": rates}), Profiler({"tiny": rates})
    plans = [planned.plan(g) for g in graphs]
    for step in range(60):
        graph, plan = graphs[step % len(graphs)], plans[step % len(graphs)]
        arrival = 0.37 * step
        expected = slack_deadlines(
            graph, walked.baselines(graph), graph.sla.target_ms / 1000.0, arrival
        )
        assert planned.deadline_list(plan, arrival) == [expected[n.id] for n in graph.nodes]
        assert planned.deadlines(graph, arrival) == expected
        for i, node in enumerate(graph.nodes):
            latency = (1.0 + (step * 7 + i) % 5) * walked.prior(node, graph.model)
            walked.observe(node, graph.model, latency)
            planned.observe_planned(plan, i, latency)
        assert planned.baselines(graph) == walked.baselines(graph)


SAME_THEN_MIXED = [0.0] * 45 + [[0.5, 2.0, 1.25, 0.0, 3.5, 1.25][i % 6] for i in range(50)]


@pytest.mark.parametrize(
    "sequence",
    [
        [[0.5, 2.0, 1.25, 0.0, 3.5, 1.25][i % 6] * (1 + i % 7 / 10) for i in range(100)],
        SAME_THEN_MIXED + [2.0] * 80 + SAME_THEN_MIXED,
    ],
    ids=["mixed", "runs-of-one-value"],
)
def test_factor_is_the_ewma_or_the_window_percentile_after_any_observations(
    sequence: list[float],
) -> None:
    """The sorted window kept beside the ratios gives ``percentile`` of the window (and
    a long run of one value, which moves nothing, keeps it)."""
    profiler = Profiler({"m": Rates(overhead_s=1.0, prefill_s_per_token=0.0, tpot_s=0.0)})
    node = llm_node(10)
    ratios: list[float] = []
    ewma = 1.0
    for ratio in sequence:
        profiler.observe(node, "m", ratio)  # the prior is 1 s: latency = ratio
        ewma = ratio if not ratios else ewma + profiler.alpha * (ratio - ewma)
        ratios.append(ratio)
        window = ratios[-profiler.window :]
        expected = ewma
        if len(window) >= profiler.min_samples:
            expected = max(ewma, percentile(window, profiler.quantile))
        assert profiler.factor(node, "m") == expected
