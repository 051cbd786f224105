"""Learned replica rates: what a finished call may teach the scheduler."""

from __future__ import annotations

import pytest

from orchestrator.policy.state import Call, Rates, ReplicaState


def _call(cid: str) -> Call:
    return Call(
        id=cid, model="m", deadline=10.0, prompt_tokens=100, expected_output_tokens=10, arrival=0.0
    )


def test_an_uncontended_call_moves_the_prefill_rate() -> None:
    rates = Rates(overhead_s=0.01, prefill_s_per_token=1e-4, tpot_s=0.02, alpha=0.5)
    rates.observe(100, 0.11, 10, 0.18)  # (0.11 - 0.01) / 100 = 1e-3 per token
    assert rates.prefill_s_per_token == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert rates.tpot_s == pytest.approx(0.02)  # 0.18 / 9 tokens = 0.02


def test_a_contended_call_teaches_decode_but_not_prefill() -> None:
    rates = Rates(overhead_s=0.01, prefill_s_per_token=1e-4, tpot_s=0.02, alpha=0.5)
    rates.observe(100, 5.0, 10, 0.36, contended=True)  # waited inside the engine
    assert rates.prefill_s_per_token == 1e-4
    assert rates.tpot_s == pytest.approx(0.02 + 0.5 * (0.04 - 0.02))


def test_start_records_the_calls_already_running() -> None:
    rep = ReplicaState(id="r", model="m", concurrency_limit=4)
    first, second = _call("a"), _call("b")
    rep.start(first, 0.0)
    rep.start(second, 0.1)
    assert (first.peers_at_start, second.peers_at_start) == (0, 1)
