"""Sweep reports: JSON with every figure, markdown tables, and PNG plots.

Plots need matplotlib, which the core package does not depend on: it is imported only
when plots are asked for, and its absence turns into a ``PlotsUnavailable`` message
instead of a failure of the whole run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.api import KindStats, TaskKind
from orchestrator.bench.scenarios import OVERLOAD, PAPER_RATES, Point, Sweep

SLA_METRIC = {"complete": "ttft", "generate": "ttft", "summarize": "e2e", "translate": "e2e"}


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def series_label(point: Point, sweep: Sweep) -> str:
    if len(sweep.scenario.provisioners) > 1:
        return f"{point.policy}+{point.provisioner}"
    return point.policy


def _labels(sweep: Sweep) -> list[str]:
    return list(dict.fromkeys(series_label(p, sweep) for p in sweep.points))


def _rates(sweep: Sweep) -> list[float]:
    return sorted({p.rate for p in sweep.points})


def _point(sweep: Sweep, label: str, rate: float) -> Point | None:
    for p in sweep.points:
        if p.rate == rate and series_label(p, sweep) == label:
            return p
    return None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.0f}"


# --------------------------------------------------------------------------- markdown


def markdown(sweep: Sweep) -> str:
    """The sweep as markdown: setup, goodput, per-kind latencies, utilization."""
    s = sweep.scenario
    scale = OVERLOAD * sweep.capacity_rps / PAPER_RATES[-1]
    models = ", ".join(f"{m.name} ({m.profile}, {m.replicas} replicas)" for m in s.models)
    lines = [
        f"### {s.title}",
        "",
        f"- mix: {', '.join(f'{k} {w:g}' for k, w in s.mix.items())}; models: {models}",
        f"- calls in flight per replica: {s.concurrency_limit or 'max_num_seqs'}",
        f"- arrivals: {'bursty (MMPP, 4x peaks)' if s.bursty else 'Poisson'}, "
        f"{sweep.duration_s:g} s per run, seed {sweep.seed}",
        f"- capacity C = {sweep.capacity_rps:.2f} tasks/s; rate = paper rate x "
        f"{scale:.3f} (paper 3.33 req/s = {OVERLOAD:g} C)",
        "",
        "**Goodput rate** (tasks that met their SLA / all tasks)",
        "",
        *_goodput_table(sweep),
        "",
    ]
    for rate in _focus_rates(sweep):
        lines += [f"**Per kind at {rate:g} tasks/s** (ms; SLA metric in bold)", ""]
        lines += _kind_table(sweep, rate)
        lines.append("")
    lines += [
        "**Utilization / mean batch occupancy / replica-seconds provisioned**",
        "",
        *_util_table(sweep),
        "",
    ]
    return "\n".join(lines)


def _goodput_table(sweep: Sweep) -> list[str]:
    labels = _labels(sweep)
    rows = ["| paper req/s | tasks/s | " + " | ".join(labels) + " |"]
    rows.append("|---|---|" + "---|" * len(labels))
    for rate in _rates(sweep):
        paper = next(p.paper_rate for p in sweep.points if p.rate == rate)
        cells = []
        for label in labels:
            p = _point(sweep, label, rate)
            cells.append(_pct(p.result.goodput_rate) if p else "-")
        rows.append(f"| {paper:g} | {rate:g} | " + " | ".join(cells) + " |")
    return rows


def _focus_rates(sweep: Sweep) -> list[float]:
    rates = _rates(sweep)
    if len(rates) <= 2:
        return rates
    return [rates[len(rates) // 2], rates[-1]]


def _kind_table(sweep: Sweep, rate: float) -> list[str]:
    rows = [
        "| policy | kind | goodput | TTFT p50 | p95 | p99 | E2E p50 | p95 | p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in _labels(sweep):
        p = _point(sweep, label, rate)
        if p is None:
            continue
        for kind, st in sorted(p.result.kinds.items()):
            rows.append(f"| {label} | {kind} | " + " | ".join(_kind_cells(kind, st)) + " |")
    return rows


def _kind_cells(kind: str, st: KindStats) -> list[str]:
    ttft = [_ms(st.ttft_p50_ms), _ms(st.ttft_p95_ms), _ms(st.ttft_p99_ms)]
    e2e = [_ms(st.e2e_p50_ms), _ms(st.e2e_p95_ms), _ms(st.e2e_p99_ms)]
    if SLA_METRIC.get(kind) == "ttft":
        ttft = [f"**{v}**" for v in ttft]
    else:
        e2e = [f"**{v}**" for v in e2e]
    return [_pct(st.goodput_rate), *ttft, *e2e]


def _util_table(sweep: Sweep) -> list[str]:
    labels = _labels(sweep)
    rows = ["| tasks/s | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for rate in _rates(sweep):
        cells = []
        for label in labels:
            p = _point(sweep, label, rate)
            if p is None:
                cells.append("-")
                continue
            util = p.result.utilization
            seconds = sum(p.result.replica_seconds.values())
            cells.append(
                f"{_pct(util.utilization)} / {_pct(util.mean_batch_occupancy)} / {seconds:,.0f}"
            )
        rows.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    return rows


# --------------------------------------------------------------------------- files


def write_json(sweep: Sweep, path: Path) -> Path:
    path.write_text(json.dumps(sweep.to_dict(), indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return str(value)


def write_report(sweep: Sweep, out: Path, plots: bool = True) -> tuple[list[Path], str | None]:
    """JSON, markdown and (if matplotlib is there) PNGs under ``out``.

    Returns the files written and, when plots were asked for but could not be drawn,
    the reason.
    """
    out.mkdir(parents=True, exist_ok=True)
    name = sweep.scenario.name
    written = [write_json(sweep, out / f"{name}.json")]
    md = out / f"{name}.md"
    md.write_text(markdown(sweep))
    written.append(md)
    problem = None
    if plots:
        try:
            written += plot_sweep(sweep, out)
        except PlotsUnavailable as exc:
            problem = str(exc)
    return written, problem


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(
            "plots skipped: matplotlib is not installed (pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(sweep: Sweep, out: Path) -> list[Path]:
    """Goodput and tail latency against load, and replicas over time when they change."""
    plt = _pyplot()
    name = sweep.scenario.name
    files = [_plot_goodput(plt, sweep, out / f"{name}-goodput.png")]
    files.append(_plot_tails(plt, sweep, out / f"{name}-p99.png"))
    if any(len(p.result.scale_events) > 0 for p in sweep.points):
        files.append(_plot_replicas(plt, sweep, out / f"{name}-replicas.png"))
    return files


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _provisioners(sweep: Sweep) -> list[str]:
    return list(dict.fromkeys(p.provisioner for p in sweep.points))


def _policies(sweep: Sweep) -> list[str]:
    return list(dict.fromkeys(p.policy for p in sweep.points))


def _find(sweep: Sweep, policy: str, provisioner: str, rate: float) -> Point | None:
    for p in sweep.points:
        if (p.policy, p.provisioner, p.rate) == (policy, provisioner, rate):
            return p
    return None


def _plot_goodput(plt: Any, sweep: Sweep, path: Path) -> Path:
    """Goodput rate against load: one panel per provisioner, one line per policy."""
    provs = _provisioners(sweep)
    fig, axes = plt.subplots(
        1, len(provs), figsize=(4.2 * len(provs) + 1.0, 3.4), squeeze=False, sharey=True
    )
    rates = _rates(sweep)
    for ax, prov in zip(axes[0], provs, strict=True):
        for policy in _policies(sweep):
            ys = [_goodput_or_nan(_find(sweep, policy, prov, r)) for r in rates]
            ax.plot(rates, ys, marker="o", label=policy)
        ax.set_xlabel("arrival rate (tasks/s)", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"provisioner {prov}" if len(provs) > 1 else sweep.scenario.title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("goodput rate")
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, path)


def _goodput_or_nan(point: Point | None) -> float:
    if point is None or point.result.goodput_rate is None:
        return float("nan")
    return point.result.goodput_rate


def _plot_tails(plt: Any, sweep: Sweep, path: Path) -> Path:
    kinds = sorted(sweep.scenario.mix)
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.2), squeeze=False)
    rates = _rates(sweep)
    prov = _provisioners(sweep)[0]
    for ax, kind in zip(axes[0], kinds, strict=True):
        metric = SLA_METRIC.get(kind, "e2e")
        for policy in _policies(sweep):
            ys = [_p99_s(_find(sweep, policy, prov, r), kind, metric) for r in rates]
            ax.plot(rates, ys, marker="o", label=policy)
        target = sweep.scenario.defaults().for_kind(TaskKind(kind)).sla.target_ms / 1000
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="SLA")
        ax.set_yscale("log")
        ax.set_title(f"{kind}: P99 {metric.upper()} (s), {prov}", fontsize=8)
        ax.set_xlabel("tasks/s", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    return _save(plt, fig, path)


def _p99_s(point: Point | None, kind: str, metric: str) -> float:
    if point is None or kind not in point.result.kinds:
        return float("nan")
    st = point.result.kinds[kind]
    value = st.ttft_p99_ms if metric == "ttft" else st.e2e_p99_ms
    return float("nan") if value is None else value / 1000


def _plot_replicas(plt: Any, sweep: Sweep, path: Path) -> Path:
    top = _rates(sweep)[-1]
    policy = "cato" if "cato" in _policies(sweep) else _policies(sweep)[0]
    chosen = [p for p in sweep.points if p.rate == top and p.policy == policy]
    models = sorted({m for p in chosen for m in p.result.replica_series})
    fig, axes = plt.subplots(len(models), 1, figsize=(6, 2.2 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        for p in chosen:
            series = p.result.replica_series.get(model, [])
            if not series:
                continue
            ts, counts = _steps(series, p.result.end)
            ax.step(ts, counts, where="post", label=f"provisioner {p.provisioner}")
        ax.set_title(
            f"{model}: replicas (ready + starting), {policy} routing, {top:g} tasks/s", fontsize=9
        )
        ax.set_xlabel("time (s)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    return _save(plt, fig, path)


def _steps(series: Sequence[tuple[float, int, int]], end: float) -> tuple[list[float], list[int]]:
    ts = [t for t, _, _ in series] + [end]
    counts = [ready + pending for _, ready, pending in series]
    return ts, [*counts, counts[-1]]
