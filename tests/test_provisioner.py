"""Autoscaling policies on a virtual clock: CATO Algorithm 2, Ray Serve's rule, fixed."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.config import ProvisionerConfig
from orchestrator.policy.provisioner import (
    PROVISIONERS,
    CatoProvisioner,
    ClusterView,
    FixedProvisioner,
    ModelView,
    Provisioner,
    QueueLengthProvisioner,
    ReplicaView,
    ScaleDecision,
    ViolationWindow,
    make_provisioner,
)

WINDOW = 10.0


def model_view(
    name: str = "m",
    loads: tuple[int, ...] = (3, 3),
    pending: int = 0,
    idle_since: tuple[float, ...] = (),
    min_replicas: int = 1,
    max_replicas: int = 8,
    gpus: int = 1,
    waiting: int = 0,
) -> ModelView:
    """Ready replicas with the given loads, idle ones idle since the given times, pending."""
    replicas = [ReplicaView(f"{name}-r{i}", in_flight=load) for i, load in enumerate(loads)]
    replicas += [
        ReplicaView(f"{name}-i{i}", idle_since=since, ready_at=0.0)
        for i, since in enumerate(idle_since)
    ]
    replicas += [ReplicaView(f"{name}-p{i}", phase="pending", started_at=i) for i in range(pending)]
    return ModelView(name, replicas, gpus, min_replicas, max_replicas, waiting)


def cato(**knobs: float) -> CatoProvisioner:
    settings_ = {"window_s": WINDOW, "violation_threshold": 0.1, "windows_in_row": 2}
    settings_.update(knobs)
    return CatoProvisioner(ProvisionerConfig.model_validate({"policy": "cato", **settings_}))


def feed_window(
    prov: CatoProvisioner, start: float, total: int, violated: int, model: str = "m"
) -> None:
    """``total`` finished calls spread over the window starting at ``start``."""
    for i in range(total):
        prov.observe_task(model, i < violated, start + i * WINDOW / (total + 1))


def decide_one(
    prov: Provisioner, view: ModelView, now: float, free_gpus: int = 8
) -> ScaleDecision | None:
    decisions = prov.decide(ClusterView([view], free_gpus), now)
    assert all(not d.empty for d in decisions)
    assert len(decisions) <= 1
    return decisions[0] if decisions else None


# ---------------------------------------------------------------- CATO Algorithm 2


def test_windows_count_calls_and_streaks() -> None:
    w = ViolationWindow(window_s=10, threshold=0.1)
    w.record(True, 0.0)
    w.record(False, 5.0)
    assert (w.total, w.violated, w.closed) == (2, 1, 0)
    w.record(False, 10.0)  # first call of the second window
    assert (w.closed, w.streak, w.last_total, w.last_violated) == (1, 1, 2, 1)
    w.roll(45.0)  # the second window closes clean, then two empty ones
    assert (w.closed, w.streak, w.start) == (4, 0, 40.0)


def test_sustained_violations_scale_up_in_proportion() -> None:
    prov = cato()
    view = model_view(loads=(3, 3))
    feed_window(prov, 0.0, total=40, violated=30)
    assert decide_one(prov, view, 10.0) is None  # one bad window is not a trend
    feed_window(prov, 10.0, total=40, violated=30)
    decision = decide_one(prov, view, 20.0)
    # 20 calls per ready replica; 30 unabsorbed violations -> ceil(30 / 20) = 2
    assert decision is not None and decision.add == 2 and decision.remove == []
    assert "30/40" in decision.reason


def test_scale_factor_scales_the_addition() -> None:
    prov = cato(scale_factor=2.0)
    view = model_view(loads=(3, 3))
    for start in (0.0, 10.0):
        feed_window(prov, start, total=40, violated=30)
    decision = decide_one(prov, view, 20.0)
    assert decision is not None and decision.add == math.ceil(2.0 * 30 / 20)


@pytest.mark.parametrize(
    ("free_gpus", "gpus", "max_replicas", "expected"),
    [(8, 1, 8, 4), (2, 1, 8, 2), (5, 2, 8, 2), (8, 1, 4, 2), (0, 1, 8, 0), (0, 0, 8, 4)],
)
def test_scale_up_is_bounded_by_free_gpus_and_max(
    free_gpus: int, gpus: int, max_replicas: int, expected: int
) -> None:
    prov = cato(scale_factor=2.0)
    view = model_view(loads=(5, 5), gpus=gpus, max_replicas=max_replicas)
    for start in (0.0, 10.0):
        feed_window(prov, start, total=20, violated=20)
    # 10 calls per ready replica, 20 violations: ceil(2.0 * 20 / 10) = 4 wanted
    decision = decide_one(prov, view, 20.0, free_gpus)
    assert (decision.add if decision is not None else 0) == expected


def test_bad_windows_must_be_in_a_row() -> None:
    prov = cato()
    view = model_view(loads=(3, 3))
    for i, violated in enumerate([30, 0, 30, 1, 30]):  # bad, good, bad, good (1/40), bad
        feed_window(prov, i * WINDOW, total=40, violated=violated)
        assert decide_one(prov, view, (i + 1) * WINDOW) is None


def test_threshold_is_a_proportion_and_strict() -> None:
    prov = cato(violation_threshold=0.25)
    view = model_view(loads=(3,))
    for start in (0.0, 10.0):
        feed_window(prov, start, total=40, violated=10)  # exactly 25%: not over
    assert decide_one(prov, view, 20.0) is None
    for start in (20.0, 30.0):
        feed_window(prov, start, total=40, violated=11)
    decision = decide_one(prov, view, 40.0)
    assert decision is not None and decision.add == 1


def test_no_scale_up_when_idle_replicas_cover_the_violations() -> None:
    prov = cato()
    view = model_view(loads=(4,), idle_since=(35.0, 36.0, 37.0))
    for start in (0.0, 10.0, 20.0, 30.0):
        feed_window(prov, start, total=10, violated=3)  # 30% violated, 3 <= 3 idle
    assert decide_one(prov, view, 40.0) is None
    feed_window(prov, 40.0, total=10, violated=4)  # 4 > 3 idle: one more replica
    decision = decide_one(prov, view, 50.0)
    assert decision is not None and decision.add == 1


def test_pending_replicas_count_as_capacity_on_the_way() -> None:
    prov = cato()
    for start in (0.0, 10.0):
        feed_window(prov, start, total=40, violated=30)
    first = decide_one(prov, model_view(loads=(3, 3)), 20.0)
    assert first is not None and first.add == 2
    starting = model_view(loads=(3, 3), pending=2)  # the two new replicas are cold-starting
    for start in (20.0, 30.0, 40.0, 50.0):  # the same violations: need 2, 2 on the way
        feed_window(prov, start, total=40, violated=30)
        assert decide_one(prov, starting, start + WINDOW) is None
    feed_window(prov, 60.0, total=20, violated=20)  # need ceil(20 / 10) = 2: covered
    assert decide_one(prov, starting, 70.0) is None
    feed_window(prov, 70.0, total=20, violated=20)
    more = decide_one(prov, model_view(loads=(3, 3, 3), pending=1), 80.0)
    assert more is not None and more.add == 2  # need ceil(20 / (20 / 3)) = 3, 1 pending


def test_streak_starts_again_after_a_scale_up() -> None:
    prov = cato()
    view = model_view(loads=(3, 3))
    for start in (0.0, 10.0):
        feed_window(prov, start, total=40, violated=30)
    assert decide_one(prov, view, 20.0) is not None
    grown = model_view(loads=(3, 3, 3, 3))
    feed_window(prov, 20.0, total=40, violated=30)
    assert decide_one(prov, grown, 30.0) is None
    feed_window(prov, 30.0, total=40, violated=30)
    again = decide_one(prov, grown, 40.0)
    assert again is not None and again.add == math.ceil(30 / 10)


def test_each_window_is_judged_once() -> None:
    prov = cato()
    view = model_view(loads=(3, 3))
    for start in (0.0, 10.0):
        feed_window(prov, start, total=40, violated=30)
    # Many decisions inside one window (the caller calls every second): one scale-up.
    decisions = [decide_one(prov, view, 20.0 + 0.5 * i) for i in range(19)]
    assert sum(1 for d in decisions if d is not None) == 1


def test_a_replica_turning_ready_does_not_rejudge_the_window() -> None:
    prov = cato(windows_in_row=1)
    feed_window(prov, 0.0, total=40, violated=30)
    # need ceil(30 / 20) = 2, both on the way
    assert decide_one(prov, model_view(loads=(3, 3), pending=2), 10.0) is None
    # Mid-window one of them becomes ready: the closed window's violations predate it.
    assert decide_one(prov, model_view(loads=(3, 3, 0), pending=1), 15.0) is None


def test_gpu_limited_scale_up_waits_for_gpus_without_a_new_streak() -> None:
    prov = cato(windows_in_row=3)
    view = model_view(loads=(3, 3))
    for start in (0.0, 10.0, 20.0):
        feed_window(prov, start, total=40, violated=30)
    assert decide_one(prov, view, 30.0, free_gpus=0) is None
    feed_window(prov, 30.0, total=40, violated=30)
    decision = decide_one(prov, view, 40.0, free_gpus=1)
    assert decision is not None and decision.add == 1 and "fit" in decision.reason


def test_idle_replicas_are_released_down_to_min() -> None:
    prov = cato(idle_timeout_s=120.0)
    view = model_view(loads=(1,), idle_since=(0.0, 10.0, 50.0, 100.0), min_replicas=2)
    assert decide_one(prov, view, 119.0) is None
    decision = decide_one(prov, view, 175.0)  # three idle >= 120 s; 5 active, min 2
    assert decision is not None and decision.add == 0
    assert decision.remove == ["m-i0", "m-i1", "m-i2"]
    decision = decide_one(prov, view, 500.0)  # all four idle, still only 3 may go
    assert decision is not None and len(decision.remove) == 3 and "m-r0" not in decision.remove
    at_min = model_view(loads=(), idle_since=(0.0, 0.0), min_replicas=2)
    assert decide_one(prov, at_min, 1000.0) is None


def test_pending_replicas_count_toward_the_floor_when_releasing() -> None:
    prov = cato(idle_timeout_s=60.0)
    view = model_view(loads=(), idle_since=(0.0, 0.0), pending=1, min_replicas=2)
    decision = decide_one(prov, view, 100.0)
    assert decision is not None and len(decision.remove) == 1


def test_below_min_replicas_is_topped_up_within_free_gpus() -> None:
    prov = cato()
    decision = decide_one(prov, model_view(loads=(1,), min_replicas=3), 0.0, free_gpus=8)
    assert decision is not None and decision.add == 2
    decision = decide_one(prov, model_view(loads=(1,), min_replicas=3), 1.0, free_gpus=1)
    assert decision is not None and decision.add == 1


def test_free_gpus_go_to_the_model_with_more_unabsorbed_violations() -> None:
    prov = cato()
    for start in (0.0, 10.0):
        feed_window(prov, start, total=40, violated=10, model="a")
        feed_window(prov, start, total=40, violated=30, model="b")
    views = [model_view("a", loads=(3, 3)), model_view("b", loads=(3, 3))]
    decisions = prov.decide(ClusterView(views, free_gpus=2), 20.0)
    assert [(d.model, d.add) for d in decisions] == [("b", 2)]


# ---------------------------------------------------------------- queue_length (Ray Serve)


def queue_length(**knobs: float) -> QueueLengthProvisioner:
    settings_ = {"target_ongoing_requests": 2.0, "upscale_delay_s": 0.0, "downscale_delay_s": 0.0}
    settings_.update(knobs)
    config = ProvisionerConfig.model_validate({"policy": "queue_length", **settings_})
    return QueueLengthProvisioner(config)


@pytest.mark.parametrize(
    ("loads", "min_replicas", "max_replicas", "expected_total"),
    [
        ((5, 4), 1, 8, 5),  # 9 ongoing / 2 -> 4.5 -> 5
        ((8, 8), 1, 8, 8),
        ((20, 20), 1, 6, 6),  # clamped to max
        ((2, 2), 1, 8, 2),  # on target
        ((1, 0, 0, 0), 1, 8, 1),  # 0.5 -> 1
        ((1, 0, 0, 0), 3, 8, 3),  # clamped to min
    ],
)
def test_queue_length_follows_ray_serve_formula(
    loads: tuple[int, ...], min_replicas: int, max_replicas: int, expected_total: int
) -> None:
    prov = queue_length()
    view = model_view(loads=loads, min_replicas=min_replicas, max_replicas=max_replicas)
    decision = decide_one(prov, view, 0.0)
    delta = expected_total - len(loads)
    if delta == 0:
        assert decision is None
    else:
        assert decision is not None
        assert decision.add == max(delta, 0)
        assert len(decision.remove) == max(-delta, 0)


def test_queue_length_waits_out_the_upscale_delay() -> None:
    prov = queue_length(upscale_delay_s=30.0)
    busy, calm = model_view(loads=(6, 6)), model_view(loads=(2, 2))
    assert [decide_one(prov, busy, t) for t in (0.0, 10.0, 20.0, 29.0)] == [None] * 4
    decision = decide_one(prov, busy, 30.0)
    assert decision is not None and decision.add == 4
    prov = queue_length(upscale_delay_s=30.0, look_back_s=1.0)
    for t in (0.0, 10.0, 20.0):
        assert decide_one(prov, busy, t) is None
    assert decide_one(prov, calm, 25.0) is None  # the desire lapsed: the delay starts over
    for t in (26.0, 40.0, 55.0):
        assert decide_one(prov, busy, t) is None
    assert decide_one(prov, busy, 56.0) is not None


def test_queue_length_waits_out_the_downscale_delay_and_removes_idle_first() -> None:
    prov = queue_length(downscale_delay_s=600.0)
    view = model_view(loads=(1,), idle_since=(500.0, 100.0, 300.0), pending=1)
    for t in (0.0, 300.0, 599.0):
        assert decide_one(prov, view, t) is None
    decision = decide_one(prov, view, 600.0)
    # 1 ongoing / 2 -> 1 replica; pending goes first, then the longest idle ones
    assert decision is not None and decision.remove == ["m-p0", "m-i1", "m-i2", "m-i0"]


def test_queue_length_averages_over_the_look_back_period() -> None:
    prov = queue_length(look_back_s=30.0)
    steady, spike = model_view(loads=(2, 2)), model_view(loads=(20, 20))
    for t in range(30):
        assert decide_one(prov, steady, float(t)) is None
    decision = decide_one(prov, spike, 30.0)
    average = (29 * 4 + 40) / 30  # samples after t=0: 29 of 4 ongoing, one of 40
    assert decision is not None and decision.add == math.ceil(average / 2) - 2
    prov = queue_length(look_back_s=30.0)
    quiet = model_view(loads=(0, 0), min_replicas=2)
    for t in range(30):
        assert decide_one(prov, quiet, float(t)) is None
    # The same spike after a quiet period averages to 40 / 30 ongoing: no scale-up.
    assert decide_one(prov, model_view(loads=(20, 20), min_replicas=2), 30.0) is None


def test_queue_length_scaling_factors_match_ray() -> None:
    up = queue_length(upscaling_factor=0.5)
    decision = decide_one(up, model_view(loads=(10, 10)), 0.0)  # desired 10 from 2
    assert decision is not None and decision.add == math.ceil(2 + 0.5 * 8) - 2
    down = queue_length(downscaling_factor=0.1)
    # desired 3.5 from 4: ceil(4 - 0.05) = 4 and ceil(3.5) = 4 is not below 4 -> stay
    assert decide_one(down, model_view(loads=(7, 0, 0, 0)), 0.0) is None
    # desired 2.5 from 4: ceil(4 - 0.15) = 4 would be stuck, so Ray steps down by one
    down = queue_length(downscaling_factor=0.1)
    decision = decide_one(down, model_view(loads=(5, 0, 0, 0)), 0.0)
    assert decision is not None and len(decision.remove) == 1


def test_queue_length_cold_start() -> None:
    prov = queue_length(upscale_delay_s=1000.0)
    starting = model_view(loads=(), pending=1, min_replicas=0)
    assert decide_one(prov, starting, 0.0) is None
    empty = model_view(loads=(), min_replicas=0, waiting=3)
    decision = decide_one(prov, empty, 1.0)
    assert decision is not None and decision.add == 1
    assert decide_one(prov, model_view(loads=(), min_replicas=0), 2.0) is None


# ---------------------------------------------------------------- fixed and the registry


def test_fixed_never_changes_a_full_model() -> None:
    prov = FixedProvisioner()
    view = model_view(loads=(50, 50), idle_since=(0.0,), min_replicas=3, max_replicas=8)
    for t in range(0, 300, 5):
        prov.observe_task("m", True, float(t))
        assert decide_one(prov, view, float(t)) is None


def test_fixed_replaces_missing_replicas() -> None:
    decision = decide_one(FixedProvisioner(), model_view(loads=(1,), min_replicas=3), 0.0)
    assert decision is not None and decision.add == 2


def test_registry_builds_each_policy_with_its_knobs() -> None:
    config = ProvisionerConfig(window_s=3.0, target_ongoing_requests=5.0)
    for name in PROVISIONERS:
        prov = make_provisioner(name, config)
        assert prov.name == name
    assert make_provisioner(config=ProvisionerConfig(policy="fixed")).name == "fixed"
    cato_prov = make_provisioner("cato", config)
    assert isinstance(cato_prov, CatoProvisioner) and cato_prov.config.window_s == 3.0
    with pytest.raises(ValueError, match="unknown provisioner 'magic'"):
        make_provisioner("magic")


# ---------------------------------------------------------------- invariants of every policy

replica_strategy = st.builds(
    ReplicaView,
    id=st.uuids().map(str),
    phase=st.sampled_from(["pending", "ready", "draining"]),
    in_flight=st.integers(0, 20),
    queued=st.integers(0, 20),
    idle_since=st.one_of(st.none(), st.floats(0, 500)),
)


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(sorted(PROVISIONERS)),
    replicas=st.lists(replica_strategy, max_size=8, unique_by=lambda r: r.id),
    bounds=st.tuples(st.integers(0, 4), st.integers(1, 10)).filter(lambda b: b[0] <= b[1]),
    gpus=st.integers(0, 2),
    free_gpus=st.integers(0, 6),
    history=st.lists(st.tuples(st.floats(0, 99), st.booleans()), max_size=60),
    now=st.floats(100, 1000),
)
def test_decisions_respect_bounds_and_gpus(
    policy: str,
    replicas: list[ReplicaView],
    bounds: tuple[int, int],
    gpus: int,
    free_gpus: int,
    history: list[tuple[float, bool]],
    now: float,
) -> None:
    config = ProvisionerConfig(upscale_delay_s=0.0, downscale_delay_s=0.0, idle_timeout_s=10.0)
    prov = make_provisioner(policy, config)
    for t, violated in sorted(history):
        prov.observe_task("m", violated, t)
    view = ModelView("m", replicas, gpus, bounds[0], bounds[1])
    active = len(view.active)
    for decision in prov.decide(ClusterView([view], free_gpus), now):
        assert decision.add >= 0 and (decision.add == 0 or not decision.remove)
        assert decision.add * gpus <= free_gpus
        if decision.add:
            assert active + decision.add <= max(bounds[1], bounds[0])
        if decision.remove:
            assert active - len(decision.remove) >= bounds[0]
        active_ids = {r.id for r in view.active}
        assert set(decision.remove) <= active_ids
        assert len(set(decision.remove)) == len(decision.remove)
