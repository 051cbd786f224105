"""Reports of ``cato bench capacity``: a markdown table, the raw JSON, and PNG plots.

Confidence intervals are Student t intervals of the mean over seeds (the seeds are
independent runs; their capacities are not assumed normal, only their mean). The
table gives each row's SLA capacity as mean ± the half-width of its 95% confidence
interval over seeds, its ratio to the best of the plain routers (``BASELINES``) with the
same provisioner, and the overload figures at ``OVERLOAD`` x C. The plots show SLA
attainment against load with a band of the same confidence interval, per case.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.bench.capacity import (
    BASELINES,
    CASES,
    OVERLOAD,
    TUNING_SEEDS,
    CapacityRun,
)
from orchestrator.bench.capacity_search import TARGET
from orchestrator.bench.report import PlotsUnavailable, _pyplot

# --------------------------------------------------------------------------- statistics

# Student t quantiles t(0.975, df) for df = 1..30; above that the Cornish-Fisher series.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The two-sided 95% Student t quantile for ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("a t quantile needs df >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds and the half-width of its 95% confidence interval (Student t)."""

    mean: float
    half_width: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        n = len(finite)
        mean = sum(finite) / n
        if n == 1:
            return cls(mean, math.nan, 1)
        sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
        return cls(mean, t975(n - 1) * sd / math.sqrt(n), n)


def capacity(run: CapacityRun, case: str, row: tuple[str, str]) -> Estimate:
    """A row's SLA capacity (tasks/s) over the run's seeds."""
    return Estimate.of([c.capacity_rps for c in run.cells_of(case, row)])


def _pm(est: Estimate, digits: int = 2) -> str:
    if est.n == 0:
        return "-"
    if math.isnan(est.half_width):
        return f"{est.mean:.{digits}f}"
    return f"{est.mean:.{digits}f} ± {est.half_width:.{digits}f}"


def _label(run: CapacityRun, row: tuple[str, str], autoscaling: bool) -> str:
    scheduler, provisioner = row
    name = f"{scheduler} / {provisioner}" if autoscaling else scheduler
    return f"**{name}**" if scheduler == run.default_scheduler else name


def best_baseline(run: CapacityRun, case: str, provisioner: str) -> tuple[str, float] | None:
    """The plain router with the highest mean capacity in ``case`` under ``provisioner``."""
    means = [
        (s, capacity(run, case, (s, p)).mean)
        for s, p in run.rows(case)
        if s in BASELINES and p == provisioner
    ]
    return max(means, key=lambda m: m[1]) if means else None


def markdown(run: CapacityRun) -> str:
    """One table per case; figures in tasks/s unless said otherwise."""
    held_out = not set(run.seeds) & set(TUNING_SEEDS)
    lines = [
        f"SLA capacity: the highest arrival rate at which >= {TARGET:.0%} of tasks meet "
        f"their SLA, by bisection to 1% of C; mean ± 95% CI (Student t) over seeds "
        f"{_seeds(run.seeds)}"
        + (
            " (held out: scheduling was tuned on seeds 0-4 only)."
            if held_out
            else " (WARNING: these include the tuning seeds 0-4)."
        ),
        f"Default scheduler: `{run.default_scheduler}` (bold). "
        f"{'Quick run (short workloads). ' if run.quick else ''}"
        f"Overload columns at {OVERLOAD:g} x C; worst = largest latency / SLA of a task that "
        "finished; unfinished = tasks that never finished, those shed on request aside (summed "
        "over seeds).",
        "",
    ]
    for case in run.cases:
        lines += _case_table(run, case)
    return "\n".join(lines)


def _case_table(run: CapacityRun, case: str) -> list[str]:
    spec = CASES[case]
    reference = Estimate.of(
        [c.reference_rps for c in run.cells if c.case == case and c.row == run.rows(case)[0]]
    )
    lines = [
        f"### {case}: C = {reference.mean:.2f} tasks/s, {run.durations[case]:g} s of "
        "arrivals per run",
        "",
    ]
    head = [
        "policy",
        "SLA capacity",
        "x C",
        "vs best baseline",
        f"goodput @{OVERLOAD:g}C",
        f"worst @{OVERLOAD:g}C",
        f"unfinished @{OVERLOAD:g}C",
    ]
    if spec.autoscaling:
        head.append(f"replica-s per met task @{OVERLOAD:g}C")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in run.rows(case):
        cells = run.cells_of(case, row)
        found = capacity(run, case, row)
        loads = Estimate.of([c.capacity for c in cells])
        best = best_baseline(run, case, row[1])
        ratio = "-"
        if best is not None and best[1] > 0:
            ratio = f"{found.mean / best[1]:.2f}x {best[0]}"
        over = [c.at(OVERLOAD) for c in cells]
        probes = [p for p in over if p is not None]
        censored = sorted({c.censored for c in cells if c.censored})
        note = f" ({'/'.join(censored)} the range)" if censored else ""
        out = [
            _label(run, row, spec.autoscaling),
            _pm(found) + note,
            _pm(loads),
            ratio,
            _pm(Estimate.of([p.goodput_rps for p in probes])),
            _pm(Estimate.of([p.worst_ratio for p in probes]), 1),
            str(sum(p.unfinished for p in probes)),
        ]
        if spec.autoscaling:
            out.append(_pm(Estimate.of([p.replica_s_per_met for p in probes]), 1))
        lines.append("| " + " | ".join(out) + " |")
    searched = [c for c in run.cells if c.case == case]
    noisy = sum(1 for c in searched if c.inversions)
    lines += [
        "",
        f"{noisy} of {len(searched)} searches saw attainment rise with load somewhere.",
        "",
    ]
    return lines


def _seeds(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 1:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def write(run: CapacityRun, out: Path, plots: bool = True) -> tuple[list[Path], str | None]:
    """``capacity.json``, ``capacity.md`` and a PNG per case under ``out``; returns the
    files and, when plots were asked for but could not be drawn, why."""
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "capacity.json"
    raw.write_text(json.dumps(run.to_dict(), indent=1, default=_jsonable) + "\n")
    md = out / "capacity.md"
    md.write_text(markdown(run) + "\n")
    files = [raw, md]
    if plots:
        try:
            files += [plot_case(run, case, out / f"capacity-{case}.png") for case in run.cases]
        except PlotsUnavailable as exc:
            return files, str(exc)
    return files, None


def _jsonable(value: Any) -> Any:
    return str(value)


def plot_case(run: CapacityRun, case: str, path: Path) -> Path:
    """SLA attainment against load (x C) per row: mean over seeds and its 95% band; the
    target as a dashed line. Each seed's curve runs through all its probes (the grid,
    and the bisection's, dense near the crossing), linear between them, over the grid's
    span, which every seed probed. A colour per scheduler (the default drawn thicker), a
    line style per provisioner, markers on the grid."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    lo, hi = min(run.grid), max(run.grid)
    grid = sorted({*run.grid, *(round(lo + (hi - lo) * i / 80, 6) for i in range(81))})
    rows = run.rows(case)
    provisioners = list(dict.fromkeys(p for _, p in rows))
    styles = ("-", "--", ":", "-.")
    lowest = 1.0
    for row in rows:
        cells = run.cells_of(case, row)
        means, lows, highs = [], [], []
        curves = [[(p.load, p.attainment) for p in c.probes] for c in cells]
        for load in grid:
            est = Estimate.of([_interpolate(curve, load) for curve in curves])
            hw = 0.0 if math.isnan(est.half_width) else est.half_width
            means.append(est.mean)
            lows.append(max(est.mean - hw, 0.0))
            highs.append(min(est.mean + hw, 1.0))
        lowest = min(lowest, *lows)
        scheduler, provisioner = row
        colour = f"C{run.schedulers.index(scheduler) % 10}" if scheduler in run.schedulers else None
        ax.plot(
            grid,
            means,
            marker="o",
            markersize=3,
            markevery=[grid.index(x) for x in run.grid],
            color=colour,
            linestyle=styles[provisioners.index(provisioner) % len(styles)],
            linewidth=2.2 if scheduler == run.default_scheduler else 1.2,
            label=" / ".join(row) if CASES[case].autoscaling else scheduler,
        )
        ax.fill_between(grid, lows, highs, color=colour, alpha=0.12)
    ax.axhline(TARGET, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("arrival rate (x C)")
    ax.set_ylabel("SLA attainment")
    ax.set_ylim(max(0.0, math.floor(min(lowest, TARGET) * 10 - 0.5) / 10), 1.01)
    ax.set_title(f"{case}: attainment vs load, 95% CI over seeds {_seeds(run.seeds)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _interpolate(curve: Sequence[tuple[float, float]], x: float) -> float:
    """``curve`` (points sorted by x) at ``x``, linear between points, flat beyond."""
    if x <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[-1][1]
