"""``cato bench chaos`` in short: replicas of a real ``cato serve`` are SIGKILLed every
5 s under streaming load; nothing may hang or come back garbled, and the service must
heal to full capacity while the load goes on."""

from __future__ import annotations

from pathlib import Path

from orchestrator.bench.chaos import ChaosOptions, markdown, run_chaos, write


def test_a_killing_spree_ends_with_full_capacity_and_no_hung_or_garbled_stream(
    tmp_path: Path,
) -> None:
    options = ChaosOptions(duration_s=75.0, kill_every_s=5.0, kill_for_s=45.0, seed=1)
    result = run_chaos(options, tmp_path / "service")
    counts = result.counts()
    report = markdown(result)

    assert len(result.kills) == 9, report
    assert counts["hung"] == 0 and counts["garbled"] == 0, report
    assert counts["finished"] > 0 and result.chaos_finished_share >= 0.5, report
    # Healed while the load went on: every replica READY again within the last 30 s.
    assert result.recovery_s is not None and result.recovery_s <= 30.0, report
    assert result.capacity[-1][1] == options.replicas, report
    # Every error is a clear one: an HTTP status or an error object, with a message.
    assert all(r.detail for r in result.requests if r.outcome == "error"), report
    files = write(result, tmp_path / "report", plot=False)
    assert "| all |" in files[0].read_text()
