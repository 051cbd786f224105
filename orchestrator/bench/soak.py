"""``cato bench soak --minutes N``: steady load through ``cato serve``, resources over time.

A service that runs for weeks must not grow: this keeps ``clients`` streaming
completions going through a fresh ``cato serve`` over emulated replicas and, every
``sample_s``, reads the resident memory (``VmRSS``) and open file descriptors of the
service process and of its replica processes from ``/proc``. Growth is measured from
the first sample after ``warmup_s`` (allocators and caches fill up first) to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from orchestrator.bench.chaos import ChaosOptions, chaos_config, request_once
from orchestrator.bench.live_serve import Service, start_service, wait_ready
from orchestrator.bench.processes import children, free_port


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 30.0
    clients: int = 4
    replicas: int = 2
    speed: float = 4.0
    max_tokens: int = 64
    sample_s: float = 30.0
    warmup_s: float = 60.0


@dataclass(frozen=True)
class Sample:
    t_s: float
    requests: int
    service_rss_mb: float
    service_fds: int
    replicas_rss_mb: float
    replicas_fds: int


@dataclass
class SoakResult:
    options: SoakOptions
    samples: list[Sample] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)

    def growth(self, attr: str, since_s: float | None = None) -> float | None:
        """Relative change of ``attr`` from the first sample at ``since_s`` (default: the
        end of the warm-up) to the last."""
        start = self.options.warmup_s if since_s is None else since_s
        after = [s for s in self.samples if s.t_s >= start]
        if len(after) < 2:
            return None
        first, last = getattr(after[0], attr), getattr(after[-1], attr)
        return (last - first) / first if first else None


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample(service: Service, t_s: float, requests: int) -> Sample:
    pid = service.proc.pid
    replicas = sorted(children(pid))
    return Sample(
        t_s=round(t_s, 1),
        requests=requests,
        service_rss_mb=round(rss_mb(pid), 1),
        service_fds=open_fds(pid),
        replicas_rss_mb=round(sum(rss_mb(p) for p in replicas), 1),
        replicas_fds=sum(open_fds(p) for p in replicas),
    )


def run_soak(options: SoakOptions, folder: Path | None = None) -> SoakResult:
    workdir = Path(folder or tempfile.mkdtemp(prefix="cato-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = chaos_config(ChaosOptions(replicas=options.replicas, speed=options.speed))
    service = start_service(config, workdir, free_port())
    result = SoakResult(options)
    try:
        asyncio.run(_drive(service, options, result))
    finally:
        service.stop()
    return result


async def _drive(service: Service, options: SoakOptions, result: SoakResult) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await wait_ready(service, session, 120.0)
        t0 = time.monotonic()
        end = t0 + options.minutes * 60

        async def client(n: int) -> None:
            i = 0
            while time.monotonic() < end:
                outcome, _ = await request_once(
                    session, service.url, f"def soak_{n}_{i}(x):\n", options.max_tokens, 30.0
                )
                result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1
                i += 1

        async def sampler() -> None:
            while (now := time.monotonic()) < end:
                total = sum(result.outcomes.values())
                result.samples.append(sample(service, now - t0, total))
                await asyncio.sleep(min(options.sample_s, max(end - now, 0.0)))
            result.samples.append(
                sample(service, time.monotonic() - t0, sum(result.outcomes.values()))
            )

        await asyncio.gather(sampler(), *(client(n) for n in range(options.clients)))


def markdown(result: SoakResult) -> str:
    o = result.options
    lines = [
        f"{o.minutes:g} minutes, {o.clients} streaming clients, {o.replicas} emulated "
        f"replicas (tiny@cpu at {o.speed:g}x), {o.max_tokens} tokens a request; "
        f"outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(result.outcomes.items())),
        "",
        "| minute | requests | service RSS (MiB) | service fds | replicas RSS (MiB) "
        "| replicas fds |",
        "|---|---|---|---|---|---|",
    ]
    for s in result.samples:
        lines.append(
            f"| {s.t_s / 60:.1f} | {s.requests} | {s.service_rss_mb:.1f} | {s.service_fds} | "
            f"{s.replicas_rss_mb:.1f} | {s.replicas_fds} |"
        )
    lines.append("")
    half = o.minutes * 30
    for attr, label in (
        ("service_rss_mb", "service RSS"),
        ("replicas_rss_mb", "replicas RSS"),
        ("service_fds", "service fds"),
    ):
        g, late = result.growth(attr), result.growth(attr, since_s=half)
        text = "n/a (run longer than the warm-up)" if g is None else f"{g:+.1%}"
        if late is not None:
            text += f" (second half of the run: {late:+.1%})"
        lines.append(f"- {label} growth after the {o.warmup_s:g} s warm-up: {text}")
    return "\n".join(lines)


def from_json(path: Path) -> SoakResult:
    """A run written by ``write``, to render again."""
    data = json.loads(path.read_text())
    return SoakResult(
        SoakOptions(**data["options"]),
        [Sample(**s) for s in data["samples"]],
        dict(data["outcomes"]),
    )


def write(result: SoakResult, out: Path, plot: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "soak.md", out / "soak.json"]
    files[0].write_text(markdown(result) + "\n")
    files[1].write_text(json.dumps(asdict(result), indent=1) + "\n")
    if plot and result.samples:
        files.append(_plot(result, out / "soak.png"))
    return files


def _plot(result: SoakResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t_s / 60 for s in result.samples]
    fig, (mem, fds) = plt.subplots(1, 2, figsize=(9, 3))
    mem.plot(minutes, [s.service_rss_mb for s in result.samples], label="service")
    mem.plot(minutes, [s.replicas_rss_mb for s in result.samples], label="replicas")
    mem.set_xlabel("minutes")
    mem.set_ylabel("RSS (MiB)")
    mem.set_ylim(bottom=0)
    mem.legend()
    fds.plot(minutes, [s.service_fds for s in result.samples], label="service")
    fds.plot(minutes, [s.replicas_fds for s in result.samples], label="replicas")
    fds.set_xlabel("minutes")
    fds.set_ylabel("open file descriptors")
    fds.set_ylim(bottom=0)
    fds.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    d = SoakOptions()
    add = parser.add_argument
    add("--minutes", type=float, default=d.minutes, help="minutes of load (default 30)")
    add("--clients", type=int, default=d.clients, help=f"streaming clients ({d.clients})")
    add("--replicas", type=int, default=d.replicas, help=f"emulated replicas ({d.replicas})")
    add("--speed", type=float, default=d.speed, help=f"emulator speed ({d.speed:g})")
    add("--sample", type=float, default=d.sample_s, help="seconds between samples (30)")
    add("--warmup", type=float, default=d.warmup_s, help="seconds before the baseline (60)")
    add("--out", type=Path, default=Path("bench-results/soak"))
    add("--no-plots", action="store_true", help="skip the PNG plot")
    add("--from-json", type=Path, help="render a run's soak.json again instead of running")


def run(args: argparse.Namespace) -> int:
    if args.minutes <= 0 or args.clients < 1 or args.replicas < 1 or args.sample <= 0:
        print("--minutes and --sample must be > 0, --clients and --replicas >= 1", file=sys.stderr)
        return 2
    if args.from_json is not None:
        print(markdown(from_json(args.from_json)))
        return 0
    options = SoakOptions(
        minutes=args.minutes,
        clients=args.clients,
        replicas=args.replicas,
        speed=args.speed,
        sample_s=args.sample,
        warmup_s=args.warmup,
    )
    result = run_soak(options, args.out / "service")
    print(markdown(result))
    files = write(result, args.out, plot=not args.no_plots)
    print(f"wrote {', '.join(str(f) for f in files)}", file=sys.stderr)
    return 0
