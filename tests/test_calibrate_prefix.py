"""``cato bench calibrate-prefix`` against emulators: the plumbing of the check (prompts,
counters, the two runs) on engines whose answer is known."""

from __future__ import annotations

import itertools

from orchestrator.calibrate_prefix import check, counter, session_prompts
from orchestrator.emulator.process import launch_emulator


def test_a_sessions_prompts_each_extend_the_one_before() -> None:
    prompts = session_prompts(sessions=3, steps=4, seed=1, max_chars=5000)
    assert len(prompts) == 12
    by_session = [prompts[i::3] for i in range(3)]
    for steps in by_session:
        assert all(b.startswith(a) for a, b in itertools.pairwise(steps))
        assert len(steps[-1]) > len(steps[0])
    heads = {steps[0].splitlines()[0] for steps in by_session}
    assert len(heads) == 3  # a unique first line: no session shares another's blocks


def test_counter_sums_labels_and_takes_total_suffix() -> None:
    text = (
        "# HELP vllm:prefix_cache_hits_total hits\n"
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 30.0\n'
        'vllm:prefix_cache_hits_total{engine="1",model_name="m"} 12.0\n'
        "vllm:prefix_cache_queries 100\n"
    )
    assert counter(text, "vllm:prefix_cache_hits") == 42.0
    assert counter(text, "vllm:prefix_cache_queries") == 100.0
    assert counter(text, "vllm:num_requests_running") is None


async def test_an_emulator_checked_against_an_emulator_agrees() -> None:
    engine = launch_emulator(model="m", profile="tiny@cpu", speed=20.0,
                             extra_args=["--enable-prefix-caching"])  # fmt: skip
    try:
        result = await check(engine.url, None, "tiny@cpu", sessions=2, steps=4, seed=3)
    finally:
        engine.stop()
    assert result.prompts == 8
    assert result.engine.queries > 0 and result.engine.hits > 0  # later steps reuse blocks
    assert result.engine.share == result.emulated.share
    assert "+0.0 points" in result.table("tiny@cpu")
