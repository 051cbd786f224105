"""Prefix-cache figures of a capacity run: hit rates, and capacity against the baselines.

For each case whose engines cache prefixes (its probes carry ``prefix_hit_rate``):
each row's capacity as a multiple of round robin's and of the cache-aware baseline's
(the mean over seeds of the per-seed ratio: every row of a seed sees the same tasks),
and the share of prompt tokens the engines found cached, at ``OVERLOAD`` x C (probed for
every cell) and at the cell's own capacity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orchestrator.bench.capacity import OVERLOAD, CapacityRun, Cell
from orchestrator.bench.capacity_report import Estimate

BASELINES = ("round_robin", "cache_aware")


def _pm(est: Estimate, digits: int = 2, percent: bool = False) -> str:
    if est.n == 0:
        return "-"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    digits = 0 if percent else digits
    if math.isnan(est.half_width):
        return f"{est.mean * scale:.{digits}f}{unit}"
    return f"{est.mean * scale:.{digits}f} ± {est.half_width * scale:.{digits}f}{unit}"


def _hit_at(cell: Cell, load: float) -> float:
    probe = cell.at(load)
    if probe is None or probe.prefix_hit_rate is None:
        return math.nan
    return probe.prefix_hit_rate


def _ratio(cells: Sequence[Cell], others: Sequence[Cell]) -> Estimate:
    base = {c.seed: c.capacity_rps for c in others}
    return Estimate.of(
        [c.capacity_rps / base[c.seed] for c in cells if base.get(c.seed, 0.0) > 0.0]
    )


def cases_with_caching(run: CapacityRun) -> list[str]:
    return [
        case
        for case in run.cases
        if any(p.prefix_hit_rate is not None for c in run.cells if c.case == case for p in c.probes)
    ]


def markdown(run: CapacityRun) -> str:
    """A table per case with prefix caching; empty when no case has it."""
    lines: list[str] = []
    for case in cases_with_caching(run):
        rows = run.rows(case)
        lines += [
            f"### {case}: prefix cache",
            "",
            "Capacity as a multiple of each baseline's (mean of per-seed ratios ± 95% CI); "
            f"prompt tokens found in the engines' prefix caches at {OVERLOAD:g} x C and "
            "at each cell's capacity.",
            "",
            "| scheduler | provisioner | x round_robin | x cache_aware "
            f"| cached at {OVERLOAD:g} x C | cached at capacity |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            cells = run.cells_of(case, row)
            ratios = []
            for name in BASELINES:
                base = run.cells_of(case, (name, row[1]))
                ratios.append(_pm(_ratio(cells, base)) if base else "-")
            at_overload = Estimate.of([_hit_at(c, OVERLOAD) for c in cells])
            at_capacity = Estimate.of([_hit_at(c, c.capacity) for c in cells])
            lines.append(
                f"| {row[0]} | {row[1]} | {ratios[0]} | {ratios[1]} "
                f"| {_pm(at_overload, percent=True)} | {_pm(at_capacity, percent=True)} |"
            )
        lines.append("")
    return "\n".join(lines)
