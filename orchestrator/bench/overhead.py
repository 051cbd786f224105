"""``cato bench overhead``: what a router costs per streamed request, beside its peers.

Measured as someone choosing a router would: two zero-delay vLLM-like backends
(``overhead_backend``: no engine, so the router's cost is not hidden under the
replica's), every router started at once in front of them, each pinned to one core
(with ``taskset`` when there, else by setting every thread's affinity) while the
backends and this load client run on the other cores. A cell is one router, one case
(tokens per request, concurrency) and one round: a warm-up, then a batch of requests
with the router's process-tree CPU (utime + stime from ``/proc``) read just before and
after; the router's idle CPU rate, measured beforehand, is taken off for the batch's
wall time. Rounds interleave the routers (each round in a rotated order) so that noise
on a shared machine falls on all of them, and a router's figures are compared with each
peer's *in the same round* (the ratio's median over rounds is reported, not a ratio of
medians). ``direct`` (the client on the backends) is the floor for TTFT, and
``aiohttp-floor`` (``overhead_floor``: a proxy that only copies the stream, on aiohttp
like cato) the floor for CPU on cato's stack.

With ``py-spy`` installed, cato is profiled over one extra batch (128 tokens,
concurrency 16 by default) and its functions with the most own time are listed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.bench import frontends, processes
from orchestrator.bench.overhead_backend import MODEL

FLOOR = "aiohttp-floor"  # the least a router on aiohttp costs (``overhead_floor``)
ROUTERS = ("cato", FLOOR, "vllm-router-pow2", "sglang-router")
TOKEN_MARK = b'"text":" tok"'


@dataclass(frozen=True)
class Case:
    tokens: int
    concurrency: int

    @property
    def label(self) -> str:
        return f"{self.tokens} tok, conc {self.concurrency}"


@dataclass(frozen=True)
class OverheadOptions:
    routers: tuple[str, ...] = ROUTERS
    tokens: tuple[int, ...] = (16, 128)
    concurrency: tuple[int, ...] = (1, 16)
    rounds: int = 5
    requests: int = 400  # per batch at the highest concurrency
    requests_serial: int = 150  # per batch at concurrency 1
    warmup: int = 20
    idle_s: float = 2.0
    profile: bool = True
    profile_s: float = 5.0
    start_timeout_s: float = 60.0

    def cases(self) -> list[Case]:
        return [Case(t, c) for c in sorted(self.concurrency, reverse=True) for t in self.tokens]

    def batch(self, case: Case) -> int:
        return self.requests_serial if case.concurrency == 1 else self.requests


@dataclass
class Cell:
    """One router, one case, one round."""

    router: str
    tokens: int
    concurrency: int
    round: int
    requests: int
    errors: int
    error_kinds: dict[str, int]
    wall_s: float
    cpu_s: float | None  # the router tree's CPU over the batch, idle taken off
    ttft_p50_ms: float
    ttft_p99_ms: float

    @property
    def cpu_ms_per_request(self) -> float | None:
        return None if self.cpu_s is None else self.cpu_s / self.requests * 1000.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Profile:
    """py-spy's view of cato over one case: ``note`` says how (or why there is none)."""

    case: str
    note: str
    functions: list[tuple[str, float]] = field(default_factory=list)  # own time shares
    packages: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class OverheadRun:
    options: OverheadOptions
    cores: str
    pinned: bool
    versions: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    idle_cpu_pct: dict[str, float] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)

    def routers(self) -> list[str]:
        return [r for r in self.options.routers if r not in self.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": asdict(self.options),
            "cores": self.cores,
            "pinned": self.pinned,
            "versions": self.versions,
            "skipped": self.skipped,
            "idle_cpu_pct": self.idle_cpu_pct,
            "cells": [asdict(c) for c in self.cells],
            "profiles": [asdict(p) for p in self.profiles],
        }


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """The router's core and the others' (backends, client); None where there is one."""

    router: set[int] | None
    rest: set[int] | None

    @classmethod
    def choose(cls) -> Placement:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls(None, None)
        return cls({cores[0]}, set(cores[1:]))

    def prefix(self) -> list[str]:
        """``taskset`` in front of a router's command, so every thread starts pinned."""
        if self.router is None or shutil.which("taskset") is None:
            return []
        return ["taskset", "-c", ",".join(str(c) for c in sorted(self.router))]

    def pin_tree(self, root: int) -> None:
        """Pin every thread of ``root``'s process tree (where ``taskset`` is missing)."""
        if self.router is None:
            return
        for pid in {root} | processes.descendants(root):
            for tid in _threads(pid):
                with contextlib.suppress(OSError):  # a thread that just ended
                    os.sched_setaffinity(tid, self.router)


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


# --------------------------------------------------------------------------- processes


def start_backends(count: int, folder: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    """``count`` zero-delay backends (one process, one port each); their URLs."""
    ports = [processes.free_port() for _ in range(count)]
    log = (folder / "backends.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.bench.overhead_backend", *map(str, ports)],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"the backends did not start: {(folder / 'backends.log').read_text()}")
    return proc, [f"http://127.0.0.1:{p}" for p in ports]


def start_router(
    name: str, urls: Sequence[str], folder: Path, placement: Placement, timeout_s: float
) -> frontends.Frontend:
    """``name`` in front of ``urls``, pinned; raises ``frontends.Unavailable`` where it
    cannot run here (not installed, or it did not come up)."""
    port = processes.free_port()
    if name == FLOOR:
        command = [sys.executable, "-m", "orchestrator.bench.overhead_floor", str(port), *urls]
    else:
        command = frontends._argv(name, urls, MODEL, port, folder, None)
    front = frontends._spawn(
        name, placement.prefix() + command, folder, cato=frontends.is_cato(name)
    )
    url = f"http://127.0.0.1:{port}/v1/completions"
    probe: dict[str, Any] = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    frontends._wait_http(front, url, timeout_s, probe)
    if front.pid is not None and not placement.prefix():
        placement.pin_tree(front.pid)
    front.targets = [url]
    return front


def version_of(name: str) -> str:
    """The installed version of a router's package ('' when unknown), asked of the
    Python its command runs on (a peer may live in an environment of its own)."""
    if frontends.is_cato(name) or name == FLOOR:
        dist, python = ("cato-assistant" if name != FLOOR else "aiohttp"), sys.executable
    else:
        dist = name.removesuffix("-pow2").removesuffix("-rr")
        try:
            first = Path(frontends._exe(dist)).read_bytes()[:200].split(b"\n")[0]
        except (OSError, frontends.Unavailable):
            return ""
        python = first[2:].decode().strip() if first.startswith(b"#!") else sys.executable
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    if frontends.is_cato(name) and os.environ.get("CATO_UVLOOP", "1") != "0":
        # Its event loop is uvloop's when uvloop is installed: say so beside the version.
        code += "; import importlib.util as u; print('on uvloop' if u.find_spec('uvloop') else '')"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return " ".join(out.stdout.decode().split())


# --------------------------------------------------------------------------- load


@dataclass
class _Batch:
    ttfts: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # by what went wrong


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, tokens: int, batch: _Batch
) -> None:
    start = time.perf_counter()
    first: float | None = None
    received = 0
    data = b""
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            if r.status != 200:
                batch.errors[f"HTTP {r.status}"] += 1
                await r.read()
                return
            async for chunk in r.content.iter_any():
                if first is None:
                    first = time.perf_counter()
                received += chunk.count(TOKEN_MARK)
                data = data[-16:] + chunk
    except (aiohttp.ClientError, OSError) as exc:
        batch.errors[type(exc).__name__] += 1
        return
    if first is None or received != tokens or b"[DONE]" not in data:
        batch.errors["incomplete stream"] += 1
        return
    batch.ttfts.append((first - start) * 1000.0)


async def drive(
    targets: Sequence[str], case: Case, requests: int, *, keep: bool = True
) -> tuple[_Batch, float]:
    """``requests`` streamed completions, ``case.concurrency`` at a time, spread over
    ``targets`` in turn; returns what they did and the wall time."""
    body = json.dumps(
        {"model": MODEL, "prompt": "x", "max_tokens": case.tokens, "stream": True}
    ).encode()
    batch = _Batch()
    urls = itertools.cycle(targets)
    todo = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in todo:
                await _one(session, next(urls), body, case.tokens, batch)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(case.concurrency)))
        wall = time.perf_counter() - t0
    return batch, wall


def measure(
    front: frontends.Frontend, case: Case, requests: int, warmup: int, idle_rate: float, rnd: int
) -> Cell:
    """One cell: a warm-up, then the measured batch between two CPU readings."""
    asyncio.run(drive(front.targets, case, warmup))
    pid = front.pid
    before = processes.proc_tree_cpu_s(pid) if pid is not None else 0.0
    batch, wall = asyncio.run(drive(front.targets, case, requests))
    after = processes.proc_tree_cpu_s(pid) if pid is not None else 0.0
    cpu = None if pid is None else max(after - before - idle_rate * wall, 0.0)
    ttfts = sorted(batch.ttfts) or [float("nan")]
    return Cell(
        router=front.name,
        tokens=case.tokens,
        concurrency=case.concurrency,
        round=rnd,
        requests=requests,
        errors=sum(batch.errors.values()),
        error_kinds=dict(batch.errors),
        wall_s=wall,
        cpu_s=cpu,
        ttft_p50_ms=statistics.median(ttfts),
        ttft_p99_ms=ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))],
    )


def idle_rate(front: frontends.Frontend, seconds: float) -> float:
    """CPU seconds per second the router spends with nothing to route."""
    if front.pid is None or seconds <= 0:
        return 0.0
    before = processes.proc_tree_cpu_s(front.pid)
    time.sleep(seconds)
    return max(processes.proc_tree_cpu_s(front.pid) - before, 0.0) / seconds


# --------------------------------------------------------------------------- profile


def profile_cato(
    front: frontends.Frontend, case: Case, requests: int, seconds: float, folder: Path
) -> Profile:
    """py-spy's own-time shares of cato's functions and packages over batches of
    ``case``, or why there are none."""
    spy = shutil.which("py-spy")
    if spy is None:
        return Profile(case.label, "py-spy is not installed: no profile")
    if front.pid is None:
        return Profile(case.label, "no cato process to profile")
    out = folder / f"cato-profile-{case.tokens}-{case.concurrency}.txt"
    argv = [spy, "record", "--pid", str(front.pid), "--duration", f"{seconds:g}"]
    argv += ["--format", "raw", "--output", str(out), "--nonblocking", "--rate", "200"]
    spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + seconds + 10
    while spy_proc.poll() is None and time.monotonic() < deadline:
        asyncio.run(drive(front.targets, case, requests))
    _, err = spy_proc.communicate(timeout=30)
    if spy_proc.returncode != 0 or not out.exists():
        return Profile(case.label, f"py-spy failed: {err.decode(errors='replace')[-300:]}")
    collapsed = out.read_text()
    return Profile(
        case.label,
        f"py-spy, {seconds:g} s",
        own_time(collapsed, top=10),
        own_time(collapsed, top=6, key=_package),
    )


def _package(frame: str) -> str:
    """The package of a py-spy frame, ``name (path/file.py:line)``; the running loop's
    own code (uvloop's C loop shows as ``Runner.run``) counts as the event loop."""
    if frame.startswith(("Runner.run ", "BaseEventLoop.", "EpollSelector.", "Handle._run ")):
        return "event loop"
    path = frame.rpartition("(")[2]
    top = path.split("/")[0].split(".")[0].split(":")[0]
    return top or "other"


def own_time(
    collapsed: str, top: int = 15, key: Callable[[str], str] = lambda frame: frame
) -> list[tuple[str, float]]:
    """The functions (or what ``key`` makes of them) with the most own (leaf) time in
    py-spy's collapsed stacks, as shares of all samples."""
    leaves: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaves[key(stack.split(";")[-1].strip())] += n
    return [(name, n / total) for name, n in leaves.most_common(top)] if total else []


# --------------------------------------------------------------------------- the run


def run_overhead(
    options: OverheadOptions, folder: Path | None = None, say: Any = print
) -> OverheadRun:
    workdir = Path(folder or tempfile.mkdtemp(prefix="cato-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)
    placement = Placement.choose()
    cores = sorted(os.sched_getaffinity(0))
    run = OverheadRun(
        options,
        cores=f"{len(cores)} usable cores"
        + (f", router on {sorted(placement.router)}" if placement.router else ""),
        pinned=placement.router is not None,
    )
    previous = os.sched_getaffinity(0)
    if placement.rest is not None:
        os.sched_setaffinity(0, placement.rest)  # the client; the backends inherit it
    backends, urls = start_backends(2, workdir)
    fronts: list[frontends.Frontend] = [
        frontends.Frontend("direct", [u + "/v1/completions" for u in urls])
    ]
    try:
        for name in options.routers:
            try:
                fronts.append(start_router(name, urls, workdir, placement, options.start_timeout_s))
                run.versions[name] = version_of(name)
            except frontends.Unavailable as exc:
                run.skipped[name] = str(exc).splitlines()[0][:200]
                say(f"{name}: skipped: {run.skipped[name]}")
        rates = {f.name: idle_rate(f, options.idle_s) for f in fronts if f.pid is not None}
        run.idle_cpu_pct = {k: v * 100.0 for k, v in rates.items()}
        for rnd in range(options.rounds):
            order = fronts[rnd % len(fronts) :] + fronts[: rnd % len(fronts)]
            for case in options.cases():
                for front in order:
                    cell = measure(
                        front,
                        case,
                        options.batch(case),
                        options.warmup,
                        rates.get(front.name, 0.0),
                        rnd,
                    )
                    run.cells.append(cell)
                    say(_line(cell))
        cato = next((f for f in fronts if f.name == "cato"), None)
        if options.profile and cato is not None:
            for tokens in sorted({min(options.tokens), max(options.tokens)}):
                case = Case(tokens, max(options.concurrency))
                found = profile_cato(cato, case, options.batch(case), options.profile_s, workdir)
                run.profiles.append(found)
                say(f"profile over {found.case}: {found.note}")
    finally:
        for front in fronts:
            front.stop()
        backends.terminate()
        backends.wait(10)
        os.sched_setaffinity(0, previous)
    (workdir / "overhead.json").write_text(json.dumps(run.to_dict(), indent=1))
    return run


def _line(cell: Cell) -> str:
    cpu = "-" if cell.cpu_ms_per_request is None else f"{cell.cpu_ms_per_request:.2f} ms/req"
    return (
        f"round {cell.round} {cell.router:<18} {cell.tokens:>4} tok conc {cell.concurrency:>3}: "
        f"{cpu}, {cell.requests_per_s:.0f} req/s, TTFT p50 {cell.ttft_p50_ms:.2f} ms"
        + (f", errors: {cell.error_kinds}" if cell.errors else "")
    )


# --------------------------------------------------------------------------- report


def _cells(run: OverheadRun, router: str, case: Case) -> dict[int, Cell]:
    return {
        c.round: c
        for c in run.cells
        if c.router == router and c.tokens == case.tokens and c.concurrency == case.concurrency
    }


def _median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and v == v]
    return statistics.median(kept) if kept else None


def cpu_ms(run: OverheadRun, router: str, case: Case) -> float | None:
    return _median([c.cpu_ms_per_request for c in _cells(run, router, case).values()])


def ratio(run: OverheadRun, router: str, peer: str, case: Case) -> float | None:
    """The median over rounds of router's CPU per request over peer's, same round."""
    mine, theirs = _cells(run, router, case), _cells(run, peer, case)
    values = []
    for rnd, cell in mine.items():
        other = theirs.get(rnd)
        a, b = cell.cpu_ms_per_request, other.cpu_ms_per_request if other else None
        if a is not None and b:
            values.append(a / b)
    return _median(values)


def added_ttft(run: OverheadRun, router: str, case: Case) -> float | None:
    """Median over rounds of the router's TTFT p50 minus direct's, same round."""
    mine, floor = _cells(run, router, case), _cells(run, "direct", case)
    return _median([c.ttft_p50_ms - floor[r].ttft_p50_ms for r, c in mine.items() if r in floor])


def rate(run: OverheadRun, router: str, case: Case) -> float | None:
    return _median([c.requests_per_s for c in _cells(run, router, case).values()])


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown(run: OverheadRun) -> str:
    """The result as a table: CPU per request (and the ratio to the first peer, same
    round), added TTFT p50 at concurrency 1, requests/s at the top concurrency."""
    opts = run.options
    routers = run.routers()
    peer = next((r for r in routers if not frontends.is_cato(r) and r != FLOOR), None)
    high = max(opts.concurrency)
    cpu_cases = [Case(t, high) for t in opts.tokens]
    low = min(opts.concurrency)
    head = ["router"] + [f"CPU ms/req, {c.tokens} tok, conc {c.concurrency}" for c in cpu_cases]
    head += [f"added TTFT p50, {t} tok, conc {low}" for t in opts.tokens]
    head += [f"req/s, {t} tok, conc {high}" for t in opts.tokens]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for router in routers:
        label = router + (f" {run.versions[router]}" if run.versions.get(router) else "")
        row = [label]
        for case in cpu_cases:
            cell = _fmt(cpu_ms(run, router, case), ".2f")
            if peer is not None:
                cell += f" ({_fmt(ratio(run, router, peer, case), '.2f', 'x')})"
            row.append(cell)
        row += [_fmt(added_ttft(run, router, Case(t, low)), "+.2f", " ms") for t in opts.tokens]
        row += [_fmt(rate(run, router, Case(t, high)), ".0f") for t in opts.tokens]
        lines.append("| " + " | ".join(row) + " |")
    floor = [
        _fmt(
            _median([c.ttft_p50_ms for c in _cells(run, "direct", Case(t, low)).values()]),
            ".2f",
            " ms",
        )
        for t in opts.tokens
    ]
    notes = [
        "",
        f"{opts.rounds} interleaved rounds; batches of {opts.requests} requests at concurrency "
        f"{high}, {opts.requests_serial} at {low}, after {opts.warmup} warm-up requests; "
        + (f"ratios to {peer} in the same round (median over rounds); " if peer else "")
        + f"direct TTFT p50 (the floor) {', '.join(floor)}; {run.cores}"
        + ("" if run.pinned else " (not pinned: fewer than 2 cores)")
        + ".",
        "Idle CPU (taken off each batch): "
        + ", ".join(f"{k} {v:.2f}% of a core" for k, v in run.idle_cpu_pct.items())
        + ".",
    ]
    if FLOOR in routers and "cato" in routers:
        over = [_fmt(ratio(run, "cato", FLOOR, c), ".2f", "x") for c in cpu_cases]
        notes.append(
            f"cato's CPU per request over {FLOOR}'s (same round): "
            + ", ".join(f"{o} at {c.tokens} tokens" for o, c in zip(over, cpu_cases, strict=True))
            + f"; {FLOOR} copies the stream with aiohttp and nothing else."
        )
    fit = _fits(run, routers, cpu_cases)
    if fit:
        notes.append("Straight-line fit of CPU per request: " + "; ".join(fit) + ".")
    for name, why in run.skipped.items():
        notes.append(f"{name} not measured: {why}")
    for router in ["direct", *routers]:
        kinds: Counter[str] = Counter()
        for c in run.cells:
            if c.router == router:
                kinds.update(c.error_kinds)
        if kinds:
            what = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
            notes.append(f"{router}: requests that failed (not in the figures' TTFTs): {what}.")
    for prof in run.profiles:
        notes += ["", f"Profile of cato over {prof.case} ({prof.note}), own time:"]
        if prof.packages:
            notes.append(
                "by package: " + ", ".join(f"{n} {s * 100:.0f}%" for n, s in prof.packages)
            )
        notes += [f"- {share * 100:.1f}% {name}" for name, share in prof.functions]
    return "\n".join(lines + notes) + "\n"


def _fits(run: OverheadRun, routers: Sequence[str], cases: Sequence[Case]) -> list[str]:
    """Per router, CPU per request as a + b * tokens from the two token counts."""
    if len(cases) < 2:
        return []
    lo, hi = min(cases, key=lambda c: c.tokens), max(cases, key=lambda c: c.tokens)
    out = []
    for router in routers:
        a, b = cpu_ms(run, router, lo), cpu_ms(run, router, hi)
        if a is None or b is None or hi.tokens == lo.tokens:
            continue
        per_token = (b - a) / (hi.tokens - lo.tokens)
        out.append(f"{router} {a - per_token * lo.tokens:.2f} ms + {per_token * 1000:.1f} us/token")
    return out


# --------------------------------------------------------------------------- command


def configure(parser: argparse.ArgumentParser) -> None:
    d = OverheadOptions()
    add = parser.add_argument
    add("--routers", default=",".join(d.routers), help="comma-separated (default: all)")
    add("--rounds", type=int, default=d.rounds, help=f"interleaved rounds (default {d.rounds})")
    add("--requests", type=int, default=d.requests, help="batch at the top concurrency")
    add("--requests-serial", type=int, default=d.requests_serial, help="batch at concurrency 1")
    add("--warmup", type=int, default=d.warmup, help="warm-up requests per cell")
    add("--tokens", default="16,128", help="tokens per request, comma-separated")
    add("--concurrency", default="1,16", help="concurrency levels, comma-separated")
    add("--idle", type=float, default=d.idle_s, help="seconds of idle CPU measured per router")
    add("--no-profile", action="store_true", help="skip the py-spy profile of cato")
    add("--out", type=Path, default=None, help="folder for logs and overhead.json")
    add("--markdown", type=Path, default=None, help="also write the table to this file")


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--{what} takes comma-separated integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"--{what} needs at least one integer >= 1")
    return values


def run(args: argparse.Namespace) -> int:
    routers = tuple(r.strip() for r in args.routers.split(",") if r.strip())
    unknown = [r for r in routers if r not in (*ROUTERS, "vllm-router-rr", "cato-triage")]
    if unknown:
        raise SystemExit(f"unknown router(s): {', '.join(unknown)} (known: {', '.join(ROUTERS)})")
    if min(args.rounds, args.requests, args.requests_serial) < 1 or args.warmup < 0:
        raise SystemExit("--rounds, --requests and --requests-serial need >= 1, --warmup >= 0")
    options = OverheadOptions(
        routers=routers,
        tokens=_ints(args.tokens, "tokens"),
        concurrency=_ints(args.concurrency, "concurrency"),
        rounds=args.rounds,
        requests=args.requests,
        requests_serial=args.requests_serial,
        warmup=args.warmup,
        idle_s=args.idle,
        profile=not args.no_profile,
    )
    result = run_overhead(options, args.out, say=lambda line: print(line, file=sys.stderr))
    table = markdown(result)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table)
    return 0


__all__ = ["Case", "OverheadOptions", "OverheadRun", "configure", "markdown", "run", "run_overhead"]
