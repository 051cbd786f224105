"""Metric definitions: percentiles, SLA attainment, windows and replica utilization."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.api import KindStats, SLAMetric, TaskKind
from orchestrator.metrics import (
    Outcome,
    Recorder,
    TaskRecord,
    Utilization,
    UtilizationTracker,
    goodput,
    kind_stats,
    percentile,
    stats_by_kind,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)

# --------------------------------------------------------------------------- percentiles


def test_percentile_known_values() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([10.0, 20.0, 30.0], 25) == 15.0
    assert percentile([7.0], 99) == 7.0
    # h = 99 * 0.95 = 94.05 -> x[94] + 0.05 * (x[95] - x[94]) = 95 + 0.05
    assert percentile([float(v) for v in range(100, 0, -1)], 95) == pytest.approx(95.05)


@pytest.mark.parametrize(("values", "q"), [([], 50.0), ([1.0], -1.0), ([1.0], 100.5)])
def test_percentile_rejects_bad_input(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


@given(st.lists(finite, min_size=1, max_size=50), st.floats(0, 100), st.floats(0, 100))
def test_percentile_bounded_and_monotone(values: list[float], q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    p_lo, p_hi = percentile(values, lo), percentile(values, hi)
    assert min(values) <= p_lo <= p_hi + 1e-9 * (1 + abs(p_hi))
    assert p_hi <= max(values)


@given(st.lists(finite, min_size=1, max_size=50), st.sampled_from([0.0, 50.0, 95.0, 99.0, 100.0]))
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    np = pytest.importorskip("numpy")
    expected = float(np.percentile(values, q, method="linear"))
    assert percentile(values, q) == pytest.approx(expected, rel=1e-9, abs=1e-6)


# --------------------------------------------------------------------------- records


def rec(
    arrival: float,
    first_token: float | None,
    done: float,
    *,
    metric: SLAMetric = SLAMetric.TTFT,
    target_ms: float = 500.0,
    outcome: Outcome = "ok",
    kind: str = "complete",
) -> TaskRecord:
    return TaskRecord(
        task_id=f"t{arrival}-{done}",
        kind=kind,
        metric=metric,
        target_ms=target_ms,
        arrival=arrival,
        first_token=first_token,
        done=done,
        outcome=outcome,
    )


def test_record_latencies_and_sla() -> None:
    r = rec(10.0, 10.25, 13.0)
    assert r.ttft_ms == pytest.approx(250.0)
    assert r.e2e_ms == pytest.approx(3000.0)
    assert r.sla_met, "a ttft task is judged on TTFT only"
    assert not rec(10.0, 10.75, 10.8).sla_met
    assert not rec(0.0, None, 0.1).sla_met, "no first token, no TTFT"
    assert rec(0.0, 0.1, 2.0, metric=SLAMetric.E2E, target_ms=2000.0).sla_met
    assert not rec(0.0, 0.1, 2.1, metric=SLAMetric.E2E, target_ms=2000.0).sla_met
    assert not rec(0.0, 0.1, 0.2, outcome="error").sla_met, "a failed task misses its SLA"


def test_record_accepts_plain_strings_and_checks_times() -> None:
    r = TaskRecord("a", TaskKind.SUMMARIZE, "e2e", 1000.0, 0.0, None, 0.5)
    assert r.metric is SLAMetric.E2E
    assert r.kind == "summarize" and type(r.kind) is str
    with pytest.raises(ValueError):
        TaskRecord("b", "complete", "latency", 1.0, 0.0, None, 1.0)
    with pytest.raises(ValueError):
        rec(5.0, None, 4.0)


def test_kind_stats_goodput_rate_with_missed_cancelled_and_errors() -> None:
    records = [
        rec(0.0, 0.1, 1.0),  # met, ttft 100, e2e 1000
        rec(0.0, 0.2, 2.0),  # met, ttft 200, e2e 2000
        rec(0.0, 0.4, 3.0),  # met, ttft 400, e2e 3000
        rec(0.0, 0.8, 4.0),  # missed, ttft 800, e2e 4000
        rec(0.0, 0.05, 0.3, outcome="error"),
        rec(0.0, None, 0.2, outcome="cancelled"),
        rec(0.0, 0.01, 0.02, outcome="cancelled"),
    ]
    stats = kind_stats(records)
    assert (stats.requests, stats.errors, stats.cancelled, stats.sla_met) == (5, 1, 2, 3)
    assert stats.goodput_rate == pytest.approx(3 / 5)
    # Latencies of the four ok tasks; P50 = midpoint of the two middle ones.
    assert stats.ttft_p50_ms == pytest.approx(300.0)
    assert stats.e2e_p50_ms == pytest.approx(2500.0)
    # P95: h = 3 * 0.95 = 2.85 -> 400 + 0.85 * 400 and 3000 + 0.85 * 1000.
    assert stats.ttft_p95_ms == pytest.approx(740.0)
    assert stats.e2e_p95_ms == pytest.approx(3850.0)
    assert stats.ttft_p99_ms == pytest.approx(400.0 + 0.97 * 400.0)


def test_kind_stats_empty_and_all_cancelled() -> None:
    assert kind_stats([]) == KindStats()
    stats = kind_stats([rec(0.0, None, 1.0, outcome="cancelled")])
    assert (stats.requests, stats.cancelled, stats.goodput_rate) == (0, 1, None)
    assert stats.ttft_p50_ms is None and stats.e2e_p99_ms is None


def test_stats_by_kind_separates_kinds() -> None:
    records = [
        rec(0.0, 0.1, 0.5, kind="complete"),
        rec(0.0, 0.1, 9.0, kind="translate", metric=SLAMetric.E2E, target_ms=5000.0),
        rec(1.0, 1.1, 3.0, kind="translate", metric=SLAMetric.E2E, target_ms=5000.0),
    ]
    by_kind = stats_by_kind(records)
    assert list(by_kind) == ["complete", "translate"]
    assert by_kind["complete"].goodput_rate == 1.0
    assert by_kind["translate"].goodput_rate == 0.5
    assert by_kind["translate"].e2e_p50_ms == pytest.approx((9000.0 + 2000.0) / 2)


def test_goodput_counts_met_tasks_done_inside_the_interval() -> None:
    records = [rec(0.0, 0.1, 1.0), rec(0.0, 0.1, 5.0), rec(0.0, 0.9, 5.0), rec(0.0, 0.1, 12.0)]
    assert goodput(records, 0.0, 10.0) == pytest.approx(2 / 10)
    with pytest.raises(ValueError):
        goodput(records, 3.0, 3.0)


# --------------------------------------------------------------------------- recorder


def test_window_evicts_old_records() -> None:
    recorder = Recorder(window_s=60.0)
    for done in (10.0, 50.0, 70.0):
        recorder.record(rec(done - 1.0, done - 0.9, done))
    assert recorder.overall(now=70.0).requests == 3
    assert recorder.overall(now=100.0).requests == 2
    assert len(recorder) == 2, "the record done at 10 s left the window"
    recorder.record(rec(19.0, 19.1, 20.0))  # reported late, already outside the window
    assert recorder.overall(now=100.0).requests == 2
    assert recorder.kind_stats(now=111.0)["complete"].requests == 1
    assert recorder.kind_stats(now=200.0) == {}
    assert len(recorder) == 0


def test_a_recorder_nobody_reads_keeps_only_its_window() -> None:
    """A service whose status nobody polls: recording alone must not grow without bound."""
    recorder = Recorder(window_s=60.0)
    for i in range(10_000):
        done = i * 0.1  # 10 tasks a second for 1,000 s
        recorder.record(rec(done - 0.05, done - 0.04, done))
    assert len(recorder) <= 601


def test_window_goodput_and_last_ttft() -> None:
    recorder = Recorder(window_s=10.0)
    recorder.record(rec(0.0, 0.2, 1.0))
    recorder.record(rec(4.0, 4.9, 5.0))  # missed: ttft 900 ms
    recorder.record(rec(5.0, 5.3, 8.0))
    assert recorder.goodput(now=10.0) == pytest.approx(2 / 10)
    assert recorder.goodput(now=12.0) == pytest.approx(1 / 10)
    assert recorder.last_ttft_ms == pytest.approx(300.0)
    recorder.record(rec(9.0, None, 9.5, outcome="cancelled"))
    assert recorder.last_ttft_ms == pytest.approx(300.0)


def test_unbounded_recorder_keeps_everything() -> None:
    recorder = Recorder(window_s=None)
    recorder.record(rec(0.0, 0.1, 1.0))
    recorder.record(rec(1000.0, 1000.1, 1001.0))
    assert recorder.overall(now=1e6).requests == 2
    assert recorder.goodput(now=1001.0, start=2.0) == pytest.approx(1 / 999)
    assert recorder.goodput(now=1001.0, start=1.0) == pytest.approx(2 / 1000)
    with pytest.raises(ValueError):
        recorder.goodput(now=1001.0)
    with pytest.raises(ValueError):
        Recorder(window_s=0.0)


# --------------------------------------------------------------------------- utilization


def test_two_replicas_one_busy_half_the_time() -> None:
    tracker = UtilizationTracker()
    for rid in ("a", "b"):
        tracker.replica_state(rid, provisioned=True, t=0.0)
        tracker.running(rid, 0, 4, t=0.0)
    tracker.running("a", 2, 4, t=0.0)
    tracker.running("a", 0, 4, t=5.0)
    summary = tracker.summary(t_end=10.0)
    # busy 5 of 2 * 10 replica-seconds; occupancy 5 s * 2/4 over 20 s.
    assert summary.utilization == pytest.approx(5 / 20)
    assert summary.mean_batch_occupancy == pytest.approx(2.5 / 20)
    assert summary.replicas["a"] == Utilization(10.0, 5.0, 2.5)
    assert summary.replicas["b"] == Utilization(10.0, 0.0, 0.0)


def test_pending_release_and_running_outside_provisioned_time() -> None:
    tracker = UtilizationTracker()
    tracker.replica_state("a", provisioned=True, t=0.0)  # PENDING from 0, READY later
    tracker.running("a", 1, 2, t=4.0)
    tracker.running("a", 3, 2, t=6.0)  # over the limit: occupancy capped at 1
    tracker.replica_state("a", provisioned=False, t=8.0)  # draining: no longer counted
    tracker.running("a", 0, 2, t=9.0)
    tracker.replica_state("b", provisioned=True, t=5.0)
    tracker.running("b", 1, 1, t=3.0)  # stale event: counts as happening at 5 s
    summary = tracker.summary(t_end=10.0)
    assert summary.replicas["a"] == Utilization(
        provisioned_s=8.0, busy_s=4.0, occupancy_s=2 * 0.5 + 2 * 1.0
    )
    assert summary.replicas["b"] == Utilization(5.0, 5.0, 5.0)
    assert summary.utilization == pytest.approx(9.0 / 13.0)
    assert summary.mean_batch_occupancy == pytest.approx(8.0 / 13.0)


def test_summary_is_a_snapshot() -> None:
    tracker = UtilizationTracker()
    assert tracker.summary(5.0).utilization is None
    tracker.replica_state("a", provisioned=True, t=0.0)
    tracker.running("a", 1, 1, t=0.0)
    assert tracker.summary(2.0).total == tracker.summary(2.0).total == Utilization(2.0, 2.0, 2.0)
    tracker.running("a", 0, 1, t=4.0)
    assert tracker.summary(8.0).total == Utilization(8.0, 4.0, 4.0)
    with pytest.raises(ValueError):
        tracker.running("a", -1, 1, t=9.0)
