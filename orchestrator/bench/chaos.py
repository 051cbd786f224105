"""``cato bench chaos``: streaming load through ``cato serve`` while replicas are killed.

An operator's question: when replica processes die (OOM, a driver fault, a bad node),
does the service keep answering, fail clearly, and heal? This starts ``cato serve`` over
emulated replicas, keeps ``clients`` streaming completions going, and SIGKILLs one
replica process at random every ``kill_every_s`` for ``kill_for_s``, then keeps the
load on for ``recover_s`` more. Every request ends as exactly one of:

- ``finished``: a well-formed SSE stream of completion chunks ending in ``[DONE]``;
- ``error``: a clear failure, an HTTP error with a JSON ``error`` body, or an
  ``error`` object in the stream followed by ``[DONE]``;
- ``hung``: no byte for ``hang_s`` (the client gives up);
- ``garbled``: anything else (a broken frame, bad JSON, a stream cut without ``[DONE]``).

``/v1/status`` is polled every second for the replicas' states; ``recovery_s`` is the
time from the last kill until every replica is READY again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from orchestrator.bench.live_serve import Service, start_service, wait_ready
from orchestrator.bench.processes import children, free_port

Outcome = Literal["finished", "error", "hung", "garbled"]
OUTCOMES: tuple[Outcome, ...] = ("finished", "error", "hung", "garbled")


@dataclass(frozen=True)
class ChaosOptions:
    replicas: int = 3
    clients: int = 8
    duration_s: float = 360.0
    kill_every_s: float = 10.0
    kill_for_s: float = 300.0
    # tiny@cpu's 3 s cold start at 15x: replicas are back 0.2 s after a restart.
    speed: float = 15.0
    max_tokens: int = 32
    hang_s: float = 30.0
    seed: int = 0


@dataclass
class Request:
    start_s: float
    end_s: float
    outcome: Outcome
    detail: str = ""


@dataclass
class ChaosResult:
    options: ChaosOptions
    requests: list[Request] = field(default_factory=list)
    # (seconds since the start, replicas READY, replicas in any state)
    capacity: list[tuple[float, int, int]] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)
    recovery_s: float | None = None

    def counts(self, start_s: float = 0.0, end_s: float = float("inf")) -> Counter[str]:
        return Counter(r.outcome for r in self.requests if start_s <= r.start_s < end_s)

    @property
    def chaos_finished_share(self) -> float:
        """Of the requests that started while replicas were being killed, the share that
        finished normally."""
        during = self.counts(0.0, self.options.kill_for_s)
        total = sum(during.values())
        return during["finished"] / total if total else 0.0


def chaos_config(options: ChaosOptions) -> str:
    """One emulated model at a fixed size: the provisioner only replaces lost replicas."""
    n = options.replicas
    return (
        '[server]\nhost = "127.0.0.1"\n\n'
        '[[models]]\nname = "tiny"\nengine = "emulated"\nprofile = "tiny@cpu"\n'
        f"speed = {options.speed!r}\nmin_replicas = {n}\nmax_replicas = {n}\n\n"
        '[provisioner]\npolicy = "fixed"\ninterval_s = 0.5\n'
    )


async def _one(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], hang_s: float
) -> tuple[Outcome, str]:
    """Send one streaming completion and classify how it ended."""
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                text = await asyncio.wait_for(resp.text(), hang_s)
                try:
                    message = json.loads(text)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    return "garbled", f"HTTP {resp.status} without a JSON error: {text[:200]!r}"
                return "error", f"HTTP {resp.status}: {message}"
            return await _read_stream(resp, hang_s)
    except TimeoutError:
        return "hung", f"no byte for {hang_s:g} s"
    except aiohttp.ClientError as exc:
        return "garbled", f"connection: {exc!r}"


async def _read_stream(resp: aiohttp.ClientResponse, hang_s: float) -> tuple[Outcome, str]:
    buffer = b""
    error: str | None = None
    while True:
        chunk = await asyncio.wait_for(resp.content.readany(), hang_s)
        if not chunk:
            return "garbled", "stream ended without [DONE]"
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            if not frame.startswith(b"data: "):
                return "garbled", f"bad frame {frame[:80]!r}"
            data = frame[6:]
            if data == b"[DONE]":
                return ("error", error) if error else ("finished", "")
            try:
                payload = json.loads(data)
            except ValueError:
                return "garbled", f"bad JSON {data[:80]!r}"
            if "error" in payload:
                error = str(payload["error"].get("message", payload["error"]))
            elif not isinstance(payload.get("choices"), list):
                return "garbled", f"a chunk without choices: {data[:80]!r}"


async def request_once(
    session: aiohttp.ClientSession, base_url: str, prompt: str, max_tokens: int, hang_s: float
) -> tuple[Outcome, str]:
    """One streaming completion through the service, classified as it ended."""
    body = {
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "cato": {"task": "complete"},
    }
    return await _one(session, base_url + "/v1/completions", body, hang_s)


async def _client(
    session: aiohttp.ClientSession,
    service: Service,
    options: ChaosOptions,
    t0: float,
    n: int,
    out: list[Request],
) -> None:
    i = 0
    while (now := time.monotonic() - t0) < options.duration_s:
        prompt = f"def handler_{n}_{i}(request):\n"
        outcome, detail = await request_once(
            session, service.url, prompt, options.max_tokens, options.hang_s
        )
        out.append(Request(now, time.monotonic() - t0, outcome, detail))
        i += 1
        if outcome != "finished":
            await asyncio.sleep(0.05)  # a client backs off a little after a failure


async def _killer(service: Service, options: ChaosOptions, t0: float, kills: list[float]) -> None:
    rng = random.Random(options.seed)
    next_kill = options.kill_every_s
    while next_kill <= options.kill_for_s:
        await asyncio.sleep(max(0.0, t0 + next_kill - time.monotonic()))
        victims = sorted(children(service.proc.pid))
        if victims:
            try:
                os.kill(rng.choice(victims), signal.SIGKILL)
                kills.append(time.monotonic() - t0)
            except ProcessLookupError:
                pass
        next_kill += options.kill_every_s


async def _sampler(
    session: aiohttp.ClientSession,
    service: Service,
    options: ChaosOptions,
    t0: float,
    out: list[tuple[float, int, int]],
) -> None:
    while (now := time.monotonic() - t0) < options.duration_s:
        try:
            async with session.get(
                service.url + "/v1/status", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                status = await resp.json()
            states = [r["state"] for r in status.get("replicas", [])]
            out.append((now, states.count("ready"), len(states)))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            out.append((now, 0, 0))
        await asyncio.sleep(1.0)


def recovery_s(capacity: list[tuple[float, int, int]], last_kill: float, want: int) -> float | None:
    """Seconds from the last kill until every replica was READY (None: never again)."""
    for t, ready, _ in capacity:
        if t >= last_kill and ready >= want:
            return t - last_kill
    return None


def run_chaos(options: ChaosOptions, folder: Path | None = None) -> ChaosResult:
    """One chaos run against a fresh ``cato serve``; the service is stopped afterwards."""
    workdir = Path(folder or tempfile.mkdtemp(prefix="cato-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    service = start_service(chaos_config(options), workdir, free_port())
    result = ChaosResult(options)
    try:
        asyncio.run(_drive(service, options, result))
    finally:
        service.stop()
    last_kill = result.kills[-1] if result.kills else 0.0
    result.recovery_s = recovery_s(result.capacity, last_kill, options.replicas)
    return result


async def _drive(service: Service, options: ChaosOptions, result: ChaosResult) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    connector = aiohttp.TCPConnector(limit=options.clients + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await wait_ready(service, session, 120.0)
        t0 = time.monotonic()
        clients = [
            _client(session, service, options, t0, n, result.requests)
            for n in range(options.clients)
        ]
        await asyncio.gather(
            _killer(service, options, t0, result.kills),
            _sampler(session, service, options, t0, result.capacity),
            *clients,
        )


def markdown(result: ChaosResult) -> str:
    o = result.options
    during = result.counts(0.0, o.kill_for_s)
    after = result.counts(o.kill_for_s)
    lines = [
        f"{o.replicas} emulated replicas (tiny@cpu at {o.speed:g}x), {o.clients} streaming "
        f"clients for {o.duration_s:g} s, a replica SIGKILLed every {o.kill_every_s:g} s for "
        f"{o.kill_for_s:g} s ({len(result.kills)} kills), seed {o.seed}.",
        "",
        "| requests | total | " + " | ".join(OUTCOMES) + " |",
        "|---|---|" + "---|" * len(OUTCOMES),
    ]
    for label, counts in (("during the kills", during), ("after", after), ("all", during + after)):
        cells = " | ".join(str(counts[k]) for k in OUTCOMES)
        lines.append(f"| {label} | {sum(counts.values())} | {cells} |")
    ready = [r for _, r, _ in result.capacity]
    rec = "never" if result.recovery_s is None else f"{result.recovery_s:.1f} s"
    lines += [
        "",
        f"- finished during the kills: {result.chaos_finished_share:.1%}",
        f"- READY replicas while killing: min {min(ready, default=0)}, "
        f"mean {sum(ready) / max(len(ready), 1):.2f} of {o.replicas}",
        f"- full capacity back after the last kill: {rec}",
    ]
    errors = Counter(r.detail.split(":")[0] for r in result.requests if r.outcome == "error")
    if errors:
        lines.append("- errors: " + ", ".join(f"{k} x{v}" for k, v in errors.most_common(5)))
    return "\n".join(lines)


def write(result: ChaosResult, out: Path, plot: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "chaos.md", out / "chaos.json"]
    files[0].write_text(markdown(result) + "\n")
    files[1].write_text(json.dumps(asdict(result), indent=1) + "\n")
    if plot:
        files.append(_plot(result, out / "chaos.png"))
    return files


def _plot(result: ChaosResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.step(
        [t for t, _, _ in result.capacity],
        [r for _, r, _ in result.capacity],
        where="post",
        label="READY replicas",
    )
    for k in result.kills:
        ax.axvline(k, color="red", alpha=0.25, lw=0.8)
    ax.set_xlabel("seconds (red: a replica killed)")
    ax.set_ylabel("replicas")
    ax.set_ylim(0, result.options.replicas + 0.5)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    d = ChaosOptions()
    add = parser.add_argument
    add(
        "--replicas", type=int, default=d.replicas, help=f"emulated replicas (default {d.replicas})"
    )
    add("--clients", type=int, default=d.clients, help=f"streaming clients (default {d.clients})")
    add("--duration", type=float, default=d.duration_s, help="seconds of load (default 360)")
    add("--kill-every", type=float, default=d.kill_every_s, help="seconds between kills (10)")
    add("--kill-for", type=float, default=d.kill_for_s, help="seconds of killing (default 300)")
    add(
        "--speed", type=float, default=d.speed, help="emulator speed (default 15: 0.2 s cold start)"
    )
    add("--max-tokens", type=int, default=d.max_tokens, help="tokens per request (default 32)")
    add("--hang", type=float, default=d.hang_s, help="seconds without a byte = hung (default 30)")
    add("--seed", type=int, default=d.seed, help="seed of the victims' choice (default 0)")
    add("--out", type=Path, default=Path("bench-results/chaos"))
    add("--no-plots", action="store_true", help="skip the PNG plot")


def run(args: argparse.Namespace) -> int:
    options = ChaosOptions(
        replicas=args.replicas,
        clients=args.clients,
        duration_s=args.duration,
        kill_every_s=args.kill_every,
        kill_for_s=args.kill_for,
        speed=args.speed,
        max_tokens=args.max_tokens,
        hang_s=args.hang,
        seed=args.seed,
    )
    if min(options.replicas, options.clients) < 1 or options.kill_every_s <= 0:
        print("--replicas and --clients must be >= 1 and --kill-every > 0", file=sys.stderr)
        return 2
    result = run_chaos(options, args.out / "service")
    print(markdown(result))
    files = write(result, args.out, plot=not args.no_plots)
    print(f"wrote {', '.join(str(f) for f in files)}", file=sys.stderr)
    return 0
