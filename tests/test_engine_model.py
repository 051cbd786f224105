"""The vLLM engine timing model, driven on a virtual clock."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.engine_model import (
    EngineModel,
    EngineProfile,
    Policy,
    StepResult,
    builtin_profiles,
    load_profile,
)

SMALL = EngineProfile(
    name="small",
    step_overhead_s=0.010,
    prefill_s_per_token=0.0001,
    decode_s_per_seq=0.001,
    kv_read_s_per_token=0.000001,
    max_num_seqs=8,
    max_num_batched_tokens=256,
    block_size=16,
    num_kv_blocks=512,
    max_model_len=2048,
)


@dataclass
class Trace:
    """What happened to each sequence, on the virtual clock."""

    first_token_at: dict[str, float] = field(default_factory=dict)
    finished_at: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    max_running: int = 0
    max_kv_usage: float = 0.0
    now: float = 0.0


Arrival = tuple[float, str, int, int, int]  # time, id, prompt tokens, output tokens, priority


def run(engine: EngineModel, arrivals: list[Arrival], trace: Trace | None = None) -> Trace:
    """Feed arrivals at their times and step the engine until everything is done."""
    trace = trace or Trace()
    pending = sorted(arrivals)
    while pending or not engine.idle:
        while pending and pending[0][0] <= trace.now:
            t, seq_id, prompt, output, priority = pending.pop(0)
            engine.add(seq_id, prompt, output, priority=priority, now=t)
        result = engine.step(trace.now)
        if result is None:
            trace.now = pending[0][0]  # idle until the next arrival
            continue
        trace.max_running = max(trace.max_running, result.scheduled_seqs)
        trace.max_kv_usage = max(trace.max_kv_usage, engine.kv_usage)
        trace.now += result.duration_s
        trace.steps.append(result)
        for out in result.outputs:
            trace.tokens.setdefault(out.seq_id, []).append(out.output_tokens)
            if out.first_token:
                trace.first_token_at[out.seq_id] = trace.now
            if out.finished:
                trace.finished_at[out.seq_id] = trace.now
    return trace


def throughput(profile: EngineProfile, concurrency: int) -> float:
    """Generated tokens per virtual second with ``concurrency`` long decodes at once."""
    engine = EngineModel(profile)
    arrivals = [(0.0, f"s{i}", 16, 200, 0) for i in range(concurrency)]
    trace = run(engine, arrivals)
    return sum(len(t) for t in trace.tokens.values()) / trace.now


# -- profiles ---------------------------------------------------------------------------


def test_builtin_profiles_load_by_name_and_cite_their_sources() -> None:
    for name in ("codellama-7b@a100", "starcoder2-7b@a100", "tiny@cpu"):
        profile = load_profile(name)
        assert profile.name == name
        assert profile.source
        assert profile.kv_capacity_tokens >= profile.max_model_len
    assert set(builtin_profiles()) >= {"codellama-7b@a100", "starcoder2-7b@a100", "tiny@cpu"}


def test_a100_profiles_decode_one_stream_at_about_12_ms_per_token() -> None:
    for name in ("codellama-7b@a100", "starcoder2-7b@a100"):
        tpot = load_profile(name).step_time_s(prefill_tokens=0, decode_seqs=1, context_tokens=1000)
        assert 0.010 < tpot < 0.016


def test_gqa_model_caches_more_tokens_than_mha_model() -> None:
    mha = load_profile("codellama-7b@a100").kv_capacity_tokens
    gqa = load_profile("starcoder2-7b@a100").kv_capacity_tokens
    assert gqa > 4 * mha


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"tiny@cpu") as info:
        load_profile("gpt-99@abacus")
    assert "codellama-7b@a100" in str(info.value)


def test_profile_loads_from_a_toml_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    fields = dataclasses.asdict(dataclasses.replace(SMALL, name="mine@here"))
    lines = [
        f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in fields.items()
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    assert load_profile(str(path)) == dataclasses.replace(SMALL, name="mine@here")


def test_profile_toml_with_an_unknown_key_names_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nmax_num_seqz = 3\n', encoding="utf-8")
    with pytest.raises(ValueError, match="max_num_seqz"):
        load_profile(str(path))


def test_profile_that_cannot_hold_one_full_sequence_is_rejected() -> None:
    with pytest.raises(ValueError, match="KV cache"):
        dataclasses.replace(SMALL, num_kv_blocks=4)


def test_with_overrides_ignores_none_and_revalidates() -> None:
    assert SMALL.with_overrides(max_num_seqs=3).max_num_seqs == 3
    assert SMALL.with_overrides(max_num_seqs=None).max_num_seqs == SMALL.max_num_seqs
    with pytest.raises(ValueError):
        SMALL.with_overrides(max_num_seqs=0)


# -- one sequence -----------------------------------------------------------------------


def test_single_sequence_yields_every_token_once_and_first_token_after_prefill() -> None:
    engine = EngineModel(SMALL)
    trace = run(engine, [(0.0, "a", 100, 5, 0)])
    assert trace.tokens["a"] == [1, 2, 3, 4, 5]
    first = trace.steps[0]
    assert first.prefill_tokens == 100 and first.decode_seqs == 0
    assert trace.first_token_at["a"] == pytest.approx(SMALL.step_time_s(100, 0, 100))
    assert all(s.decode_seqs == 1 and s.prefill_tokens == 0 for s in trace.steps[1:])
    assert engine.idle and engine.kv_usage == 0.0
    assert engine.step(trace.now) is None


def test_long_prompt_is_prefilled_in_chunks_while_others_keep_decoding() -> None:
    engine = EngineModel(SMALL)
    engine.add("short", 10, 50, now=0.0)
    now = 0.0
    for _ in range(3):  # "short" is decoding now
        result = engine.step(now)
        assert result is not None
        now += result.duration_s
    engine.add("long", 1000, 2, now=now)
    chunk_steps = 0
    while True:
        result = engine.step(now)
        assert result is not None
        now += result.duration_s
        ids = [o.seq_id for o in result.outputs]
        assert "short" in ids  # decodes are never starved by the long prefill
        assert result.prefill_tokens <= SMALL.max_num_batched_tokens - 1
        chunk_steps += 1
        if "long" in ids:
            break
    assert chunk_steps == -(-1000 // (SMALL.max_num_batched_tokens - 1))


def test_step_before_the_previous_step_ends_is_an_error() -> None:
    engine = EngineModel(SMALL)
    engine.add("a", 10, 5)
    result = engine.step(0.0)
    assert result is not None
    with pytest.raises(ValueError):
        engine.step(result.duration_s / 2)


def test_add_rejects_bad_sequences() -> None:
    engine = EngineModel(SMALL)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add("a", 2000, 100)
    with pytest.raises(ValueError):
        engine.add("b", 0, 10)
    engine.add("c", 10, 10)
    with pytest.raises(ValueError, match="already"):
        engine.add("c", 10, 10)
    with pytest.raises(ValueError, match="policy"):
        EngineModel(SMALL, policy="lifo")  # type: ignore[arg-type]


# -- load -------------------------------------------------------------------------------


def test_ttft_grows_with_queued_prefill_work() -> None:
    def ttft_behind(queued: int) -> float:
        arrivals = [(0.0, f"q{i}", 800, 4, 0) for i in range(queued)]
        arrivals.append((0.001, "probe", 800, 4, 0))
        trace = run(EngineModel(SMALL), arrivals)
        return trace.first_token_at["probe"] - 0.001

    ttfts = [ttft_behind(n) for n in (0, 2, 6)]
    assert ttfts[0] < ttfts[1] < ttfts[2]
    # Each queued prompt adds at least its own prefill compute.
    assert ttfts[2] - ttfts[0] >= 6 * 800 * SMALL.prefill_s_per_token


def test_throughput_rises_with_batch_size_then_saturates_at_max_num_seqs() -> None:
    n = SMALL.max_num_seqs
    low, full, over = throughput(SMALL, n // 4), throughput(SMALL, n), throughput(SMALL, 3 * n)
    assert full > 2 * low
    assert over == pytest.approx(full, rel=0.05)


def test_running_batch_never_exceeds_max_num_seqs() -> None:
    trace = run(EngineModel(SMALL), [(0.0, f"s{i}", 20, 30, 0) for i in range(40)])
    assert trace.max_running <= SMALL.max_num_seqs
    assert len(trace.finished_at) == 40


def finish_order(policy: Policy) -> list[str]:
    one_seat = dataclasses.replace(SMALL, max_num_seqs=1)
    arrivals = [
        (0.0, "first", 10, 20, 5),
        (0.001, "low", 10, 5, 5),
        (0.002, "high", 10, 5, 0),
    ]
    trace = run(EngineModel(one_seat, policy=policy), arrivals)
    return sorted(trace.finished_at, key=trace.finished_at.__getitem__)


def test_priority_policy_lets_a_later_urgent_request_overtake() -> None:
    assert finish_order("priority") == ["first", "high", "low"]


def test_fcfs_policy_ignores_priority() -> None:
    assert finish_order("fcfs") == ["first", "low", "high"]


# -- KV cache ---------------------------------------------------------------------------

TIGHT = dataclasses.replace(
    SMALL, block_size=4, num_kv_blocks=12, max_model_len=40, max_num_batched_tokens=64
)


def test_kv_exhaustion_preempts_and_the_victim_still_finishes() -> None:
    engine = EngineModel(TIGHT)
    arrivals = [(0.0, "early", 8, 24, 0), (0.0, "late", 8, 24, 0)]
    trace = run(engine, arrivals)
    preempted = [sid for step in trace.steps for sid in step.preempted]
    assert preempted and set(preempted) == {"late"}  # the latest arrival is the victim
    assert engine.num_preemptions == len(preempted)
    for sid in ("early", "late"):
        assert trace.tokens[sid] == list(range(1, 25))  # nothing lost or repeated
    assert trace.max_kv_usage <= 1.0
    assert engine.free_blocks == TIGHT.num_kv_blocks
    # The victim recomputed its prompt and the tokens it had made.
    recompute = [s.prefill_tokens for s in trace.steps if s.prefill_tokens > 8]
    assert recompute


def test_priority_policy_preempts_the_least_urgent_sequence() -> None:
    engine = EngineModel(TIGHT, policy="priority")
    trace = run(engine, [(0.0, "urgent", 8, 24, 0), (0.0, "lax", 8, 24, 9)])
    preempted = {sid for step in trace.steps for sid in step.preempted}
    assert preempted == {"lax"}
    assert trace.finished_at["urgent"] < trace.finished_at["lax"]


def test_abort_of_a_running_sequence_frees_its_blocks() -> None:
    engine = EngineModel(SMALL)
    engine.add("a", 300, 100, now=0.0)
    now = 0.0
    for _ in range(4):
        result = engine.step(now)
        assert result is not None
        now += result.duration_s
    assert engine.num_running == 1 and engine.kv_usage > 0
    assert engine.abort("a") is True
    assert engine.num_running == 0 and engine.kv_usage == 0.0
    assert engine.free_blocks == SMALL.num_kv_blocks
    assert engine.step(now) is None
    assert engine.abort("a") is False


def test_abort_of_a_waiting_sequence_keeps_it_from_ever_running() -> None:
    engine = EngineModel(dataclasses.replace(SMALL, max_num_seqs=1))
    engine.add("runs", 10, 5)
    engine.add("gone", 10, 5)
    assert engine.num_waiting == 2
    assert engine.abort("gone")
    assert engine.num_waiting == 1
    trace = run(engine, [])
    assert set(trace.tokens) == {"runs"}


def test_many_aborts_while_waiting_do_not_leak() -> None:
    engine = EngineModel(dataclasses.replace(SMALL, max_num_seqs=1))
    for i in range(500):
        engine.add(f"w{i}", 10, 5)
        if i % 10:
            assert engine.abort(f"w{i}")
    assert engine.num_waiting == 50
    trace = run(engine, [])
    assert len(trace.finished_at) == 50


def test_same_inputs_give_the_same_schedule() -> None:
    arrivals = [(i * 0.003, f"s{i}", 50 + 37 * i % 400, 5 + i % 17, i % 3) for i in range(60)]
    a = run(EngineModel(SMALL, "priority"), arrivals)
    b = run(EngineModel(SMALL, "priority"), arrivals)
    assert [s.duration_s for s in a.steps] == [s.duration_s for s in b.steps]
    assert a.tokens == b.tokens and a.finished_at == b.finished_at


@settings(max_examples=40, deadline=None, database=None)
@given(
    jobs=st.lists(
        st.tuples(
            st.integers(0, 50),  # arrival, ms
            st.integers(1, 30),  # prompt tokens
            st.integers(1, 10),  # output tokens
            st.integers(0, 3),  # priority
            st.one_of(st.none(), st.integers(0, 100)),  # abort this many ms after arrival
        ),
        min_size=1,
        max_size=25,
    ),
    policy=st.sampled_from(["fcfs", "priority"]),
)
def test_invariants_hold_under_random_load(
    jobs: list[tuple[int, int, int, int, int | None]], policy: Policy
) -> None:
    engine = EngineModel(TIGHT, policy)
    events: list[tuple[float, int, str]] = []  # time, 0 = arrive / 1 = abort, id
    for i, (arrive_ms, _, _, _, abort_ms) in enumerate(jobs):
        events.append((arrive_ms / 1000, 0, f"s{i}"))
        if abort_ms is not None:
            events.append(((arrive_ms + abort_ms) / 1000, 1, f"s{i}"))
    events.sort()
    tokens: dict[str, list[int]] = {}
    aborted: set[str] = set()
    now = 0.0
    while events or not engine.idle:
        while events and events[0][0] <= now:
            t, kind, sid = events.pop(0)
            _, prompt, output, priority, _ = jobs[int(sid[1:])]
            if kind == 0:
                engine.add(sid, prompt, output, priority, t)
            elif engine.abort(sid):
                aborted.add(sid)
        result = engine.step(now)
        if result is None:
            if not events:
                break
            now = events[0][0]
            continue
        now += result.duration_s
        assert engine.num_running <= TIGHT.max_num_seqs
        assert 0.0 <= engine.kv_usage <= 1.0
        for item in result.outputs:
            tokens.setdefault(item.seq_id, []).append(item.output_tokens)
            assert item.first_token == (item.output_tokens == 1)
    assert engine.free_blocks == TIGHT.num_kv_blocks
    assert engine.num_waiting == 0 and engine.num_running == 0
    for i, (_, _, output, _, _) in enumerate(jobs):
        made = tokens.get(f"s{i}", [])
        assert made == list(range(1, len(made) + 1))  # in order, none repeated
        if f"s{i}" not in aborted:
            assert len(made) == output


def test_an_engine_that_streams_nothing_reports_the_same_steps_by_id() -> None:
    """``every_token=False``: the same steps, with plain decode tokens named in
    ``sampled`` (in output order) instead of ``outputs``, and counted on demand."""
    arrivals = [(0.002 * i, f"s{i}", 40 + 97 * (i % 5), 3 + 7 * (i % 4), i % 3) for i in range(30)]
    tight = dataclasses.replace(SMALL, num_kv_blocks=60, max_model_len=900)  # and preemptions
    loud, quiet = EngineModel(tight, "priority"), EngineModel(tight, "priority", every_token=False)
    pending = sorted(arrivals)
    now = 0.0
    while pending or not loud.idle:
        while pending and pending[0][0] <= now:
            t, seq_id, prompt, output, priority = pending.pop(0)
            loud.add(seq_id, prompt, output, priority=priority, now=t)
            quiet.add(seq_id, prompt, output, priority=priority, now=t)
        full, brief = loud.step(now), quiet.step(now)
        if full is None or brief is None:
            assert full is brief is None
            now = pending[0][0]
            continue
        assert full.sampled is None and brief.sampled == [o.seq_id for o in full.outputs]
        assert brief.outputs == [o for o in full.outputs if o.first_token or o.finished]
        for out in full.outputs:
            if not out.finished:
                assert quiet.output_tokens(out.seq_id) == out.output_tokens
        assert dataclasses.replace(brief, outputs=full.outputs, sampled=None) == full
        now += full.duration_s
    assert loud.num_preemptions == quiet.num_preemptions > 0
