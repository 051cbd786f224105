"""``cato bench fairness``: light users beside a heavy one, through ``cato serve``.

Four light users each keep one streaming completion going (with a short pause between
requests); a heavy user keeps ``heavy_streams`` going and retries what it is refused
after its ``Retry-After`` (or, with ``--heavy-ignores-retry-after``, at once: the worst
neighbour). A light user's goodput is the completion tokens per second of its
requests that met their TTFT target. Three
phases on a fresh service each: the light users alone (their solo figure), beside the
heavy user capped only by ``max_concurrency``, and beside it with a token budget
(``tokens_per_minute``) as well. Each phase counts what is sent after ``warmup_s``
(by then the heavy user has spent the minute's worth its budget starts with). The
goal: light users keep >= 90% of their solo goodput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from orchestrator.bench.live_serve import start_service, wait_ready
from orchestrator.bench.processes import free_port
from orchestrator.config import hash_token

LIGHT_USERS = 4


@dataclass(frozen=True)
class FairnessOptions:
    duration_s: float = 20.0
    warmup_s: float = 15.0
    speed: float = 4.0
    replicas: int = 1
    light_max_tokens: int = 32
    light_pause_s: float = 0.2
    heavy_streams: int = 32
    heavy_max_concurrency: int = 8
    heavy_max_tokens: int = 256
    heavy_tokens_per_minute: int = 20_000
    heavy_obeys_retry_after: bool = True
    ttft_target_ms: float = 500.0


@dataclass
class UserStats:
    requests: int = 0
    good: int = 0
    good_tokens: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    failed: int = 0

    def goodput(self, duration_s: float) -> float:
        return self.good_tokens / duration_s


@dataclass(frozen=True)
class Phase:
    name: str
    light: list[UserStats]
    heavy: UserStats | None
    duration_s: float

    def light_goodput(self) -> float:
        """Mean goodput of a light user, tokens/s."""
        return sum(u.goodput(self.duration_s) for u in self.light) / len(self.light)


def fairness_config(options: FairnessOptions, tokens: dict[str, str], budget: bool) -> str:
    n = options.replicas
    lines = [
        '[server]\nhost = "127.0.0.1"\n',
        '[[models]]\nname = "tiny"\nengine = "emulated"\nprofile = "tiny@cpu"\n'
        f"speed = {options.speed!r}\nmin_replicas = {n}\nmax_replicas = {n}\n",
        '[provisioner]\npolicy = "fixed"\n',
    ]
    for name, token in tokens.items():
        user = f'[[server.users]]\nname = "{name}"\ntoken_sha256 = "{hash_token(token)}"\n'
        if name == "heavy":
            user += f"max_concurrency = {options.heavy_max_concurrency}\n"
            if budget:
                user += f"tokens_per_minute = {options.heavy_tokens_per_minute}\n"
        lines.append(user)
    return "\n".join(lines)


async def _stream(
    session: aiohttp.ClientSession, url: str, token: str, max_tokens: int, prompt: str
) -> tuple[int, float | None, int]:
    """(HTTP status, TTFT in ms, completion tokens) of one streamed completion; for a
    refusal, its Retry-After in place of the TTFT."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {token}"}
    start = time.monotonic()
    ttft: float | None = None
    tokens = 0
    async with session.post(url + "/v1/completions", json=body, headers=headers) as resp:
        if resp.status != 200:
            await resp.read()
            retry = resp.headers.get("Retry-After", "")
            return resp.status, float(retry) if retry.isdigit() else None, 0
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            payload = json.loads(line[6:])
            choices = payload.get("choices") or []
            if ttft is None and choices and choices[0].get("text"):
                ttft = (time.monotonic() - start) * 1000
            if payload.get("usage"):
                tokens = int(payload["usage"]["completion_tokens"])
    return 200, ttft, tokens


async def _user(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    max_tokens: int,
    pause_s: float,
    window: tuple[float, float],
    stats: UserStats,
    target_ms: float,
    obey_retry_after: bool = True,
) -> None:
    """Requests back to back; only those sent within ``window`` are counted. After a
    refusal: wait its Retry-After, or (``obey_retry_after`` false) 10 ms."""
    start, until = window
    i = 0
    while time.monotonic() < until:
        i += 1
        counted = time.monotonic() >= start
        try:
            status, ttft, tokens = await _stream(
                session, url, token, max_tokens, f"def step_{i}(x):\n"
            )
        except (aiohttp.ClientError, ValueError):
            stats.failed += counted
            continue
        ok = status == 200
        if counted:
            _count(
                stats, status, ttft, tokens, ttft_ok=ok and ttft is not None and ttft <= target_ms
            )
        if ok:
            await asyncio.sleep(pause_s)
        else:
            retry_s = ttft if obey_retry_after and ttft is not None else 0.01
            await asyncio.sleep(min(retry_s, max(0.0, until - time.monotonic())))


def _count(stats: UserStats, status: int, ttft: float | None, tokens: int, ttft_ok: bool) -> None:
    stats.requests += 1
    if status != 200:
        stats.refused[status] = stats.refused.get(status, 0) + 1
    elif ttft_ok:
        stats.good += 1
        stats.good_tokens += tokens


async def _phase(
    name: str, options: FairnessOptions, tokens: dict[str, str], budget: bool, heavy: bool
) -> Phase:
    with tempfile.TemporaryDirectory(prefix="cato-fairness-") as tmp:
        service = start_service(fairness_config(options, tokens, budget), Path(tmp), free_port())
        try:
            auth = {"Authorization": f"Bearer {tokens['light-1']}"}
            limits = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(
                headers=auth, connector=limits, timeout=timeout
            ) as session:
                await wait_ready(service, session, 120.0)
                start = time.monotonic() + options.warmup_s
                window = (start, start + options.duration_s)
                light = [UserStats() for _ in range(LIGHT_USERS)]
                jobs = [
                    _user(
                        session,
                        service.url,
                        tokens[f"light-{i + 1}"],
                        options.light_max_tokens,
                        options.light_pause_s,
                        window,
                        light[i],
                        options.ttft_target_ms,
                    )
                    for i in range(LIGHT_USERS)
                ]
                heavy_stats = UserStats() if heavy else None
                if heavy_stats is not None:
                    jobs += [
                        _user(
                            session,
                            service.url,
                            tokens["heavy"],
                            options.heavy_max_tokens,
                            0.0,
                            window,
                            heavy_stats,
                            options.ttft_target_ms,
                            options.heavy_obeys_retry_after,
                        )
                        for _ in range(options.heavy_streams)
                    ]
                await asyncio.gather(*jobs)
        finally:
            service.stop()
    return Phase(name, light, heavy_stats, options.duration_s)


async def run_fairness(options: FairnessOptions) -> list[Phase]:
    names = ["heavy", *[f"light-{i + 1}" for i in range(LIGHT_USERS)]]
    tokens = {name: secrets.token_urlsafe(24) for name in names}
    return [
        await _phase("light users alone", options, tokens, budget=False, heavy=False),
        await _phase("beside heavy, concurrency cap", options, tokens, budget=False, heavy=True),
        await _phase("beside heavy, cap + token budget", options, tokens, budget=True, heavy=True),
    ]


def markdown(options: FairnessOptions, phases: list[Phase]) -> str:
    solo = phases[0].light_goodput()
    lines = [
        f"Fairness: {LIGHT_USERS} light users (1 stream each, max_tokens "
        f"{options.light_max_tokens}, {options.light_pause_s:g} s pause) beside a heavy user "
        f"({options.heavy_streams} streams, max_tokens {options.heavy_max_tokens}, "
        f"max_concurrency {options.heavy_max_concurrency}, retries a refusal "
        f"{'after its Retry-After' if options.heavy_obeys_retry_after else 'after 10 ms'}); "
        f"{options.replicas} emulated replica(s) at {options.speed:g}x, "
        f"{options.duration_s:g} s a phase after {options.warmup_s:g} s of warm-up. "
        "Goodput: completion tokens/s of requests with "
        f"TTFT <= {options.ttft_target_ms:g} ms.",
        "",
        "| phase | light goodput (tok/s per user) | vs solo | light refused | "
        "heavy goodput (tok/s) | heavy 429 | heavy 503 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in phases:
        light = phase.light_goodput()
        refused = sum(sum(u.refused.values()) for u in phase.light)
        heavy = phase.heavy
        h_good = f"{heavy.goodput(phase.duration_s):.1f}" if heavy else "-"
        h429 = str(heavy.refused.get(429, 0)) if heavy else "-"
        h503 = str(heavy.refused.get(503, 0)) if heavy else "-"
        ratio = f"{light / solo:.0%}" if solo else "-"
        lines.append(
            f"| {phase.name} | {light:.1f} | {ratio} | {refused} | {h_good} | {h429} | {h503} |"
        )
    if phases[-1].heavy is not None:
        lines.append("")
        lines.append(f"Heavy user's token budget: {options.heavy_tokens_per_minute} tokens/min.")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    d = FairnessOptions()
    parser.add_argument("--duration", type=float, default=d.duration_s, help="seconds a phase")
    parser.add_argument(
        "--warmup", type=float, default=d.warmup_s, help="seconds before a phase counts"
    )
    parser.add_argument(
        "--heavy-concurrency",
        type=int,
        default=d.heavy_max_concurrency,
        help="the heavy user's max_concurrency",
    )
    parser.add_argument("--speed", type=float, default=d.speed, help="emulator speed-up")
    parser.add_argument("--replicas", type=int, default=d.replicas, help="emulated replicas")
    parser.add_argument(
        "--heavy-streams", type=int, default=d.heavy_streams, help="the heavy user's streams"
    )
    parser.add_argument(
        "--heavy-ignores-retry-after",
        action="store_true",
        help="the heavy user retries a refusal after 10 ms, not its Retry-After",
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=d.heavy_tokens_per_minute,
        help="the heavy user's tokens_per_minute in the last phase",
    )


def run(args: argparse.Namespace) -> int:
    counts = (args.replicas, args.heavy_streams, args.heavy_concurrency, args.budget)
    if args.duration <= 0 or args.warmup < 0 or min(counts) < 1:
        print(
            "--duration must be > 0, --warmup >= 0; --replicas, --heavy-streams, "
            "--heavy-concurrency and --budget >= 1",
            file=sys.stderr,
        )
        return 2
    options = FairnessOptions(
        duration_s=args.duration,
        warmup_s=args.warmup,
        heavy_max_concurrency=args.heavy_concurrency,
        speed=args.speed,
        replicas=args.replicas,
        heavy_streams=args.heavy_streams,
        heavy_tokens_per_minute=args.budget,
        heavy_obeys_retry_after=not args.heavy_ignores_retry_after,
    )
    print(markdown(options, asyncio.run(run_fairness(options))))
    return 0
