"""Benchmark workloads from real code, arrival processes, and the report writer."""

from __future__ import annotations

import math
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.bench import report
from orchestrator.bench.arrivals import (
    Mmpp,
    per_kind_poisson,
    poisson,
    read_trace,
    with_kinds,
    with_tasks,
    write_trace,
)
from orchestrator.bench.scenarios import SCENARIOS, capacity_rps, run_sweep, sweep_rates
from orchestrator.bench.workloads import (
    FIM_TEMPLATE,
    KINDS,
    TRANSLATE_RATIOS,
    Workload,
    build_workload,
    format_profiles,
    generate_tasks,
    profile_workload,
)
from orchestrator.graphs import build_graph


@pytest.fixture(scope="module")
def workload() -> Workload:
    return build_workload(seed=3, per_kind=10, modules=40)


def test_workloads_build_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("no network while building a workload")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    built = build_workload(seed=1, per_kind=5, modules=40)
    assert [k for k in KINDS if len(built.tasks[k]) == 5] == list(KINDS)


def test_same_seed_same_tasks_other_seed_other_tasks(workload: Workload) -> None:
    again = build_workload(seed=3, per_kind=10, modules=40)
    other = build_workload(seed=4, per_kind=10, modules=40)
    keys = {k: [t.key for t in v] for k, v in workload.tasks.items()}
    assert keys == {k: [t.key for t in v] for k, v in again.tasks.items()}
    assert keys["complete"] != [t.key for t in other.tasks["complete"]]
    # HumanEval is a fixed set: the first problems whatever the seed.
    assert keys["generate"] == [t.key for t in other.tasks["generate"]]


def test_every_task_builds_a_graph_with_a_real_output_length(workload: Workload) -> None:
    for kind in KINDS:
        for task in workload.tasks[kind]:
            graph = build_graph(task.request)
            llms = graph.llm_nodes()
            assert llms, task.key
            for node in llms:
                assert 1 <= task.output_for(node, len(llms)) <= node.max_tokens


def test_completions_are_fim_prompts_cut_inside_real_functions(workload: Workload) -> None:
    head, _, _ = FIM_TEMPLATE.partition("{prefix}")
    for task in workload.tasks["complete"]:
        prompt = task.request.prompt or ""
        assert prompt.startswith(head) and prompt.endswith("<fim_middle>")
        assert task.key.startswith("complete/") and ".py:" in task.key
        assert task.output_tokens is not None and task.output_tokens >= 1


def test_humaneval_supplies_all_generation_problems() -> None:
    tasks = generate_tasks()
    assert len(tasks) == 164
    assert tasks[0].key == "humaneval/HumanEval/0"
    assert "def " in (tasks[0].request.code or "")
    assert all(t.output_tokens and t.output_tokens > 0 for t in tasks)


def test_translations_run_per_chunk_at_the_targets_ratio(workload: Workload) -> None:
    for task in workload.tasks["translate"]:
        target = task.request.target_language or ""
        assert task.output_ratio is not None
        assert 0.6 < task.output_ratio / TRANSLATE_RATIOS[target] < 1.6


def test_the_length_table_covers_every_kind(workload: Workload) -> None:
    profiles = profile_workload(workload)
    assert [p.kind for p in profiles] == list(KINDS)
    by_kind = {p.kind: p for p in profiles}
    assert by_kind["translate"].calls_mean >= 1
    assert by_kind["complete"].output[3] <= 64  # capped by the kind's max_tokens
    table = format_profiles(profiles)
    assert all(f"| {k} |" in table for k in KINDS)


# --------------------------------------------------------------------------- arrivals


def test_poisson_has_its_rate_and_is_seeded() -> None:
    times = list(poisson(50.0, 400.0, seed=1))
    assert abs(len(times) / 400.0 - 50.0) < 2.5
    assert times == sorted(times)
    assert times == list(poisson(50.0, 400.0, seed=1))
    assert times != list(poisson(50.0, 400.0, seed=2))


def test_mmpp_has_its_mean_rate_and_is_burstier_than_poisson() -> None:
    process = Mmpp.around(20.0, peak_ratio=5.0, busy_share=0.2, cycle_s=20.0)
    assert process.mean_rate == pytest.approx(20.0)
    duration = 4_000.0
    bursty = list(process.times(duration, seed=3))
    steady = list(poisson(20.0, duration, seed=3))
    assert abs(len(bursty) / duration - 20.0) < 2.0

    def dispersion(times: list[float]) -> float:
        counts = Counter(int(t // 5.0) for t in times)
        values = [counts.get(i, 0) for i in range(int(duration // 5.0))]
        mean = sum(values) / len(values)
        return sum((v - mean) ** 2 for v in values) / len(values) / mean

    assert dispersion(steady) < 1.5 < 3 < dispersion(bursty)


def test_kinds_follow_the_mix_and_tasks_match_their_kind(workload: Workload) -> None:
    arrivals = list(with_kinds(poisson(100.0, 100.0, 5), {"complete": 3, "summarize": 1}, 5))
    share = sum(1 for _, k in arrivals if k == "complete") / len(arrivals)
    assert 0.7 < share < 0.8
    for _, task in with_tasks(arrivals[:200], workload, 5):
        assert task.request.kind.value in ("complete", "summarize")


def test_per_kind_streams_merge_in_time_order() -> None:
    arrivals = list(per_kind_poisson({"complete": 10.0, "translate": 1.0}, 50.0, 2))
    assert [t for t, _ in arrivals] == sorted(t for t, _ in arrivals)
    assert {k for _, k in arrivals} == {"complete", "translate"}


def test_traces_round_trip_and_reject_disorder(tmp_path: Path) -> None:
    arrivals = [(10.0, "complete"), (10.5, "translate"), (12.25, "complete")]
    path = tmp_path / "trace.jsonl"
    assert write_trace(path, arrivals) == 3
    assert list(read_trace(path)) == [(0.0, "complete"), (0.5, "translate"), (2.25, "complete")]
    path.write_text('{"t": 2, "kind": "complete"}\n{"t": 1, "kind": "complete"}\n')
    with pytest.raises(ValueError, match="out of time order"):
        list(read_trace(path))
    path.write_text('{"when": 2}\n')
    with pytest.raises(ValueError, match=":1:"):
        list(read_trace(path))


# --------------------------------------------------------------------------- scenarios


def test_sweep_rates_scale_the_papers_rates_to_capacity(workload: Workload) -> None:
    capacity = capacity_rps(SCENARIOS["rq2"], workload)
    assert capacity > 0
    points = sweep_rates(capacity, quick=False)
    assert [p for p, _ in points] == [0.67, 1.33, 2.0, 2.67, 3.33]
    assert points[-1][1] == pytest.approx(capacity, rel=1e-3)
    assert all(math.isclose(r / p, points[0][1] / 0.67, rel_tol=1e-2) for p, r in points)


def test_reports_write_tables_and_plots(workload: Workload, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sweep = run_sweep(
        SCENARIOS["rq1"], workload, policies=["cato"], quick=True, duration_s=5.0, seed=2
    )
    files, problem = report.write_report(sweep, tmp_path)
    assert problem is None
    names = {f.name for f in files}
    assert {"rq1.json", "rq1.md", "rq1-goodput.png", "rq1-p99.png"} <= names
    assert (tmp_path / "rq1-goodput.png").stat().st_size < 200_000
    text = (tmp_path / "rq1.md").read_text()
    assert "| paper req/s | tasks/s | cato |" in text


def test_reports_without_matplotlib_say_why(
    workload: Workload, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    sweep = run_sweep(
        SCENARIOS["rq2"], workload, policies=["cato"], quick=True, duration_s=3.0, seed=2
    )
    files, problem = report.write_report(sweep, tmp_path)
    assert problem is not None and "matplotlib" in problem
    assert {f.name for f in files} == {"rq2.json", "rq2.md"}
