"""``cato bench calibrate-prefix``: a real engine's prefix cache against the emulator's.

Editing sessions as the ``sessions`` workload has them: each session types through a
standard-library module, and each completion's prompt is the file up to the cursor, so
a prompt shares all of its predecessor's text and adds a few lines. The sessions take
turns, one request at a time, on the engine and then on an emulator running the
engine's profile with its prefix cache on. Each side's share of prompt tokens served
from the cache comes from vLLM's own counters (``vllm:prefix_cache_queries`` and
``vllm:prefix_cache_hits``, which the emulator exports too), read before and after.

The two count in their own tokens (the engine its tokenizer's, the emulator characters
/ 4), so shares are compared, not counts. A unique first line per session and run keeps
an earlier run's blocks from counting.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.emulator.process import launch_emulator
from orchestrator.engine_model import load_profile
from orchestrator.replicas.openai_client import ReplicaClient

MODULES = ("argparse", "textwrap", "difflib", "configparser", "string", "ast")
QUERIES = "vllm:prefix_cache_queries"
HITS = "vllm:prefix_cache_hits"


@dataclass(frozen=True)
class Counts:
    """Prompt tokens looked up in the cache and found there."""

    queries: float
    hits: float

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.queries - other.queries, self.hits - other.hits)

    @property
    def share(self) -> float:
        return self.hits / self.queries if self.queries > 0 else 0.0


def counter(metrics: str, name: str) -> float | None:
    """The sum over labels of a Prometheus counter (``name`` or ``name_total``)."""
    total, found = 0.0, False
    for line in metrics.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        base = key.split("{", 1)[0]
        if base in (name, name + "_total"):
            total += float(value)
            found = True
    return total if found else None


async def read_counts(client: ReplicaClient) -> Counts:
    text = await client.metrics_text()
    queries, hits = counter(text, QUERIES), counter(text, HITS)
    if queries is None or hits is None:
        raise SystemExit(
            f"{client.base_url}/metrics has no {QUERIES} / {HITS}: is the prefix cache on?"
        )
    return Counts(queries, hits)


def session_prompts(
    sessions: int, steps: int, seed: int, max_chars: int, start_chars: int = 800
) -> list[str]:
    """The prompts in the order they are sent: the sessions' steps taking turns."""
    rng = random.Random(seed)
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
    per_session: list[list[str]] = []
    for i in range(sessions):
        module = MODULES[i % len(MODULES)]
        text = f"# session {run}-{i}\n" + inspect.getsource(importlib.import_module(module))
        cursor = min(start_chars, len(text))
        prompts = []
        for _ in range(steps):
            prompts.append(text[:cursor])
            cursor = min(cursor + rng.randint(40, 300), max_chars, len(text))
        per_session.append(prompts)
    return [p for step in zip(*per_session, strict=True) for p in step]


async def served_share(client: ReplicaClient, model: str, prompts: Sequence[str]) -> Counts:
    """Send ``prompts`` one at a time (one output token each); the cache's counts."""
    before = await read_counts(client)
    for prompt in prompts:
        async for _ in client.stream_completion(model, prompt, max_tokens=1):
            pass
    return await read_counts(client) - before


@dataclass(frozen=True)
class PrefixCheck:
    engine: Counts
    emulated: Counts
    prompts: int

    def table(self, profile: str) -> str:
        rows = [
            "| | prompt tokens looked up | found in the cache | share |",
            "|---|---|---|---|",
            f"| engine | {self.engine.queries:.0f} | {self.engine.hits:.0f} "
            f"| {self.engine.share:.1%} |",
            f"| emulator ({profile}) | {self.emulated.queries:.0f} | {self.emulated.hits:.0f} "
            f"| {self.emulated.share:.1%} |",
        ]
        diff = (self.emulated.share - self.engine.share) * 100
        rows.append("")
        rows.append(
            f"{self.prompts} prompts; the emulator's share minus the engine's: {diff:+.1f} points."
        )
        return "\n".join(rows)


async def check(
    url: str, model: str | None, profile: str, sessions: int, steps: int, seed: int
) -> PrefixCheck:
    prof = load_profile(profile)
    max_chars = int(prof.max_model_len * 2.5)  # well inside the context in either count
    prompts = session_prompts(sessions, steps, seed, max_chars)
    from orchestrator.calibrate import _engine_key

    async with ReplicaClient(url, read_timeout_s=600.0, api_key=_engine_key()) as client:
        served = model or (await client.models())[0]
        engine = await served_share(client, served, prompts)
    emulator = launch_emulator(
        model=served,
        profile=profile,
        speed=20.0,
        extra_args=["--enable-prefix-caching"],
    )
    try:
        async with ReplicaClient(emulator.url, read_timeout_s=600.0) as client:
            emulated = await served_share(client, served, prompts)
    finally:
        emulator.stop()
    return PrefixCheck(engine, emulated, len(prompts))


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", required=True, help="the engine (an OpenAI-compatible vLLM server)")
    add("--profile", required=True, help="the engine's profile, e.g. smollm2@cpu-vllm")
    add("--model", help="served model name (default: the first one listed)")
    add("--sessions", type=int, default=4, help="files typed through, taking turns")
    add("--steps", type=int, default=8, help="completions per session")
    add("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.sessions < 1 or args.steps < 1:
        raise SystemExit("--sessions and --steps need >= 1")
    result = asyncio.run(
        check(args.url, args.model, args.profile, args.sessions, args.steps, args.seed)
    )
    print(result.table(args.profile))
    return 0


__all__ = ["Counts", "PrefixCheck", "check", "configure", "counter", "run", "session_prompts"]
