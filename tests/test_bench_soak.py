"""``cato bench soak``'s report: growth after the warm-up and over the second half, and a
run's JSON rendered again (the live run itself is a benchmark, not a test)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.bench.soak import Sample, SoakOptions, SoakResult, from_json, markdown, write


def test_growth_is_measured_after_the_warm_up_and_the_json_renders_the_same(
    tmp_path: Path,
) -> None:
    options = SoakOptions(minutes=2.0, sample_s=30.0, warmup_s=30.0)
    rss = [40.0, 50.0, 52.0, 54.0, 54.0]  # a warm-up jump, then +8% and flat
    samples = [Sample(30.0 * i, 100 * i, m, 20, 80.0, 22) for i, m in enumerate(rss)]
    result = SoakResult(options, samples, {"finished": 400})
    assert result.growth("service_rss_mb") == (54.0 - 50.0) / 50.0
    assert result.growth("service_rss_mb", since_s=60.0) == (54.0 - 52.0) / 52.0
    assert result.growth("replicas_rss_mb") == 0.0
    assert SoakResult(options, samples[:1]).growth("service_rss_mb") is None

    text = markdown(result)
    assert (
        "service RSS growth after the 30 s warm-up: +8.0% (second half of the run: +3.8%)" in text
    )
    files = write(result, tmp_path, plot=False)
    assert markdown(from_json(files[1])) == text
