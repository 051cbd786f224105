"""Does a router tell the engine when its client hangs up before the first token?

An editor gives up on a completion it no longer needs (the language server cancels it,
or CATO sheds it at its SLA point); the engine should then stop prefilling it. Each
router here stands in front of one emulator (``cato emulate``, prefill slowed 20x so
that a prompt takes seconds); ``n`` streaming completions with 3,000-token prompts are
sent at once, and each client hangs up 0.3 s later, before any first token. The
emulator counts the requests whose stream closed (``cato_emulator_aborted``) and those
it still holds. Prints the Markdown table quoted in docs/BENCHMARKS.md::

    python3 -m benchmarks.peer_hangups [--n 16] [--routers direct,vllm-router-cache,sglang-router]

A router missing here (``scripts/install-peers`` installs them) is reported, not run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.bench.frontends import Unavailable, start_frontend
from orchestrator.emulator.process import launch_emulator

PROFILE = "codellama-7b@a100"
SPEED = 0.05  # 20x slower than the profile: a 3,000-token prefill takes ~6 s
PROMPT = "def f(x):\n    return x\n" * 240  # ~3,000 tokens at 4 characters a token
HANG_UP_S = 0.3
ROUTERS = ("direct", "vllm-router-cache", "sglang-router")


async def gauge(session: aiohttp.ClientSession, base: str, name: str) -> float:
    """The sum over labels of the sample ``name`` in ``base``'s metrics."""
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def held(session: aiohttp.ClientSession, base: str) -> int:
    running = await gauge(session, base, "vllm:num_requests_running")
    waiting = await gauge(session, base, "vllm:num_requests_waiting")
    return int(running + waiting)


async def hang_up(session: aiohttp.ClientSession, url: str, i: int) -> None:
    body = {"model": "m", "prompt": f"# {i}\n{PROMPT}", "max_tokens": 64, "stream": True}
    resp = await session.post(url, json=body)
    await asyncio.sleep(HANG_UP_S)
    resp.close()  # closes the connection: the client is gone


async def measure(url: str, engine: str, n: int) -> tuple[int, int, float]:
    """Aborted in the engine 1 s after the hang-ups, still held then, seconds until the
    engine held none of them."""
    async with aiohttp.ClientSession() as session:
        before = await gauge(session, engine, "cato_emulator_aborted_total")
        t0 = time.monotonic()
        await asyncio.gather(*(hang_up(session, url, i) for i in range(n)))
        await asyncio.sleep(1.0)
        aborted = int(await gauge(session, engine, "cato_emulator_aborted_total") - before)
        still = await held(session, engine)
        for _ in range(1200):  # polls the engine's gauges; 5 minutes at most
            if not await held(session, engine):
                break
            await asyncio.sleep(0.25)
        return aborted, still, time.monotonic() - t0


def run(router: str, n: int, folder: Path) -> str:
    emulator = launch_emulator(
        profile=PROFILE, speed=SPEED, extra_args=["--max-num-seqs", str(max(n, 8))]
    )
    try:
        front = start_frontend(router, [emulator.url], "m", folder, timeout_s=60)
    except Unavailable as exc:
        emulator.stop()
        return f"| {router} | not run: {exc} | | |"
    try:
        aborted, still, idle_s = asyncio.run(measure(front.targets[0], emulator.url, n))
    finally:
        front.stop()
        emulator.stop()
    return f"| {router} | {aborted} of {n} | {still} | {idle_s:.1f} s |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=16, help="completions hung up at once")
    parser.add_argument("--routers", default=",".join(ROUTERS))
    args = parser.parse_args(argv)
    print(
        f"{args.n} streaming completions of ~3,000 prompt tokens, each client gone "
        f"{HANG_UP_S} s after sending, before its first token (engine at {SPEED}x)\n"
    )
    print(
        "| router | aborted in the engine 1 s later | still in the engine then "
        "| engine free of them after |"
    )
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for router in args.routers.split(","):
            print(run(router, args.n, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
