"""``cato bench calibrate``: measure a running engine and write an ``engine_model`` profile.

Three sweeps against any OpenAI-compatible server (real vLLM, or the emulator):

- TTFT against prompt length: one request at a time, prompts of increasing length;
  the slope is the prefill cost per token, the intercept the fixed cost of a request.
- Time per output token against concurrency: N streams decoding together; the slope is
  the cost of one more sequence in the batch, the intercept the step overhead. A lone
  stream with a long prompt gives the cost of attending to context.
- Maximum throughput: output tokens per second at the highest concurrency.

Prompt lengths are counted as CATO counts them (``graphs.approx_tokens``: characters /
4), the unit the emulator and the simulator use, so a profile reproduces the measured
times for the same text. Prompts are slices of standard-library source that each start
with a unique line, so vLLM's prefix cache cannot serve them.

``--validate N`` then replays a held-out load (Poisson arrivals, prompt and output
lengths drawn between the sweep points) on the engine and on an emulator running the
new profile, and prints the TTFT and E2E percentiles of both with the relative error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import math
import os
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from orchestrator.emulator.process import launch_emulator
from orchestrator.engine_model import EngineProfile, load_profile
from orchestrator.graphs import CHARS_PER_TOKEN, approx_tokens
from orchestrator.replicas.openai_client import Finished, ReplicaClient, Token

CORPUS_MODULES = ("argparse", "json.decoder", "textwrap", "string", "ast", "dataclasses")
DEFAULT_LENGTHS = (32, 128, 256, 512, 1024)
DEFAULT_CONCURRENCY = (1, 2, 4, 8)
PERCENTILES = (50, 95, 99)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Sample:
    """One measured request: lengths in CATO tokens (prompt) and engine tokens (output)."""

    prompt_tokens: int
    engine_prompt_tokens: int
    output_tokens: int
    ttft_s: float
    e2e_s: float

    @property
    def tpot_s(self) -> float | None:
        """Mean time between output tokens after the first."""
        if self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


class Prompts:
    """Code-like prompts of a chosen length, never sharing a prefix."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.corpus = "\n".join(_module_source(m) for m in CORPUS_MODULES)

    def make(self, tokens: int) -> str:
        head = f"# request {uuid.UUID(int=self.rng.getrandbits(128)).hex}\n"
        size = max(tokens * CHARS_PER_TOKEN - len(head), 1)
        start = self.rng.randrange(0, len(self.corpus) - size)
        return head + self.corpus[start : start + size]


def _module_source(name: str) -> str:
    import importlib

    return inspect.getsource(importlib.import_module(name))


async def measure(
    client: ReplicaClient, model: str, prompt: str, max_tokens: int, priority: int | None = None
) -> Sample:
    """Stream one completion of exactly ``max_tokens`` tokens and time it."""
    start = time.monotonic()
    first: float | None = None
    finished: Finished | None = None
    stream = client.stream_completion(
        model, prompt, max_tokens=max_tokens, priority=priority, extra={"ignore_eos": True}
    )
    async with contextlib.aclosing(stream) as events:
        async for ev in events:
            if isinstance(ev, Token) and first is None:
                first = ev.t
            elif isinstance(ev, Finished):
                finished = ev
    if finished is None or first is None:
        raise RuntimeError("the engine returned no tokens")
    usage = finished.usage
    return Sample(
        prompt_tokens=approx_tokens(prompt),
        engine_prompt_tokens=usage.prompt_tokens if usage else 0,
        output_tokens=usage.completion_tokens if usage else max_tokens,
        ttft_s=first - start,
        e2e_s=finished.t - start,
    )


# --------------------------------------------------------------------------- sweeps


@dataclass
class Sweeps:
    """What the three sweeps measured."""

    ttft: list[Sample]
    decode: dict[int, list[Sample]]
    long_context: list[Sample]
    throughput_tok_s: float
    wall_s: dict[int, float]


async def run_sweeps(
    client: ReplicaClient,
    model: str,
    prompts: Prompts,
    lengths: Sequence[int],
    concurrency: Sequence[int],
    output_tokens: int,
    repeats: int,
) -> Sweeps:
    await measure(client, model, prompts.make(16), 4)  # warm-up, not recorded
    ttft = []
    for _ in range(repeats):
        for n in lengths:
            ttft.append(await measure(client, model, prompts.make(n), 1))
    decode: dict[int, list[Sample]] = {}
    wall: dict[int, float] = {}
    for c in concurrency:
        decode[c], wall[c] = [], 0.0
        for _ in range(repeats):
            start = time.monotonic()
            decode[c] += await asyncio.gather(
                *(measure(client, model, prompts.make(16), output_tokens) for _ in range(c))
            )
            wall[c] += time.monotonic() - start
    long_context = []
    for _ in range(repeats):
        for n in sorted({max(lengths) // 2, max(lengths)}):
            long_context.append(await measure(client, model, prompts.make(n), output_tokens))
    top = max(concurrency)
    produced = sum(s.output_tokens for s in decode[top])
    return Sweeps(ttft, decode, long_context, produced / wall[top], wall)


# --------------------------------------------------------------------------- fitting


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    if len(xs) < 2 or len(set(xs)) < 2:
        raise ValueError("a line needs at least two distinct x values")
    slope, intercept = statistics.linear_regression(xs, ys)
    return intercept, slope


@dataclass(frozen=True)
class Fit:
    """Per-step costs derived from the sweeps (seconds)."""

    step_overhead_s: float
    prefill_s_per_token: float
    decode_s_per_seq: float
    kv_read_s_per_token: float
    request_overhead_s: float

    def lines(self) -> list[str]:
        return [
            f"step overhead {self.step_overhead_s * 1e3:.2f} ms",
            f"prefill {self.prefill_s_per_token * 1e6:.1f} us/token",
            f"decode {self.decode_s_per_seq * 1e3:.2f} ms/sequence",
            f"context {self.kv_read_s_per_token * 1e9:.1f} ns/token",
            f"request overhead beyond one step {self.request_overhead_s * 1e3:.1f} ms",
        ]


def fit(sweeps: Sweeps, short_prompt: int = 16) -> Fit:
    """Step costs that reproduce the sweeps under ``engine_model``'s step-time formula."""
    conc = sorted(sweeps.decode)
    tpot = [_median_tpot(sweeps.decode[c]) for c in conc]
    overhead, per_seq = fit_line(conc, tpot) if len(conc) > 1 else (tpot[0], 0.0)
    out_mid = statistics.median(s.output_tokens for s in sweeps.decode[conc[0]]) / 2
    short_ctx = short_prompt + out_mid
    kv = max(_context_slope(sweeps, short_ctx, out_mid), 0.0)
    decode = max(per_seq - kv * short_ctx, 0.0)
    overhead = max(overhead, 0.0)
    a, b = fit_line([float(s.prompt_tokens) for s in sweeps.ttft], [s.ttft_s for s in sweeps.ttft])
    prefill = max(b - kv, 0.0)
    return Fit(overhead, prefill, decode, kv, max(a - overhead, 0.0))


def _context_slope(sweeps: Sweeps, short_ctx: float, out_mid: float) -> float:
    """Extra time per output token per context token, from lone streams."""
    points = [(short_ctx, s.tpot_s) for s in sweeps.decode.get(1, [])]
    points += [(s.prompt_tokens + out_mid, s.tpot_s) for s in sweeps.long_context]
    usable = [(x, y) for x, y in points if y is not None]
    if len({x for x, _ in usable}) < 2:
        return 0.0
    return fit_line([x for x, _ in usable], [y for _, y in usable])[1]


def _median_tpot(samples: Sequence[Sample]) -> float:
    values = [t for t in (s.tpot_s for s in samples) if t is not None]
    if not values:
        raise ValueError("no sample produced two tokens")
    return statistics.median(values)


# --------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class EngineLimits:
    """What the engine reports (or the caller says) about its batch and KV cache."""

    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    num_kv_blocks: int
    max_model_len: int


async def engine_limits(
    client: ReplicaClient, model: str, max_num_seqs: int, max_num_batched_tokens: int
) -> EngineLimits:
    """KV blocks from ``vllm:cache_config_info``, context from ``/v1/models``."""
    metrics = await client.metrics_text()
    block = _label(metrics, "vllm:cache_config_info", "block_size")
    blocks = _label(metrics, "vllm:cache_config_info", "num_gpu_blocks")
    max_len = await _max_model_len(client, model)
    block_size = int(block) if block and block.isdigit() else 16
    num_blocks = int(blocks) if blocks and blocks.isdigit() else 1024
    return EngineLimits(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        block_size=block_size,
        num_kv_blocks=max(num_blocks, -(-max_len // block_size)),
        max_model_len=max_len,
    )


def _label(metrics: str, name: str, label: str) -> str | None:
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            found = re.search(rf'\b{label}="([^"]*)"', line)
            if found:
                return found.group(1)
    return None


async def _max_model_len(client: ReplicaClient, model: str) -> int:
    """vLLM lists each model's context length in ``/v1/models``; 4096 when it does not."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(client.base_url + "/v1/models") as resp,
    ):
        payload = json.loads(await resp.text())
    for entry in payload.get("data", []) if isinstance(payload, dict) else []:
        if entry.get("id") == model and isinstance(entry.get("max_model_len"), int):
            return int(entry["max_model_len"])
    return 4096


def build_profile(
    name: str,
    fitted: Fit,
    limits: EngineLimits,
    *,
    cold_start_s: float,
    output_mean_tokens: float,
    output_sigma: float,
    source: str,
) -> EngineProfile:
    return EngineProfile(
        name=name,
        step_overhead_s=_round(fitted.step_overhead_s),
        prefill_s_per_token=_round(fitted.prefill_s_per_token),
        decode_s_per_seq=_round(fitted.decode_s_per_seq),
        kv_read_s_per_token=_round(fitted.kv_read_s_per_token),
        max_num_seqs=limits.max_num_seqs,
        max_num_batched_tokens=limits.max_num_batched_tokens,
        block_size=limits.block_size,
        num_kv_blocks=limits.num_kv_blocks,
        max_model_len=limits.max_model_len,
        cold_start_s=round(cold_start_s, 1),
        output_mean_tokens=output_mean_tokens,
        output_sigma=output_sigma,
        source=source,
    )


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def profile_toml(profile: EngineProfile, comments: Sequence[str]) -> str:
    """The profile as a TOML file ``engine_model.load_profile`` reads."""
    lines = [f"# {c}".rstrip() for c in comments]
    lines.append(f"name = {json.dumps(profile.name)}")
    lines.append(f"source = {json.dumps(profile.source)}")
    for key in (
        "step_overhead_s",
        "prefill_s_per_token",
        "decode_s_per_seq",
        "kv_read_s_per_token",
        "max_num_seqs",
        "max_num_batched_tokens",
        "block_size",
        "num_kv_blocks",
        "max_model_len",
        "cold_start_s",
        "output_mean_tokens",
        "output_sigma",
    ):
        value = getattr(profile, key)
        lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def sweep_comments(sweeps: Sweeps, fitted: Fit, model: str) -> list[str]:
    """The measurements behind a profile, for the header of its file."""
    lines = [f"Measured by `cato bench calibrate` against a running engine serving {model}."]
    by_len: dict[int, list[float]] = {}
    for s in sweeps.ttft:
        by_len.setdefault(s.prompt_tokens, []).append(s.ttft_s)
    lines.append("TTFT of a lone request by prompt length (CATO tokens: chars / 4):")
    for n in sorted(by_len):
        lines.append(f"  {n:>5} tokens: {statistics.median(by_len[n]) * 1e3:8.1f} ms")
    lines.append("Time per output token by concurrent streams (short prompts):")
    for c in sorted(sweeps.decode):
        tpot = _median_tpot(sweeps.decode[c])
        lines.append(f"  {c:>3} streams: {tpot * 1e3:7.1f} ms/token")
    lines.append(f"Throughput at {max(sweeps.decode)} streams: {sweeps.throughput_tok_s:.1f} tok/s")
    ratio = _engine_token_ratio(sweeps.ttft)
    if ratio:
        lines.append(f"The engine's tokenizer counts {ratio:.2f} tokens per CATO token here.")
    lines.append("Fit: " + "; ".join(fitted.lines()) + ".")
    return lines


def _engine_token_ratio(samples: Sequence[Sample]) -> float | None:
    pairs = [(s.engine_prompt_tokens, s.prompt_tokens) for s in samples if s.engine_prompt_tokens]
    if not pairs:
        return None
    return sum(e for e, _ in pairs) / sum(c for _, c in pairs)


# --------------------------------------------------------------------------- held-out load


@dataclass(frozen=True)
class LoadRequest:
    at_s: float
    prompt: str
    max_tokens: int


def heldout_load(
    n: int, rate: float, seed: int, prompt_range: tuple[int, int], output_range: tuple[int, int]
) -> list[LoadRequest]:
    """Poisson arrivals with uniform prompt and output lengths (a seed apart from the sweeps)."""
    rng = random.Random(seed)
    prompts = Prompts(seed + 1)
    t = 0.0
    load = []
    for _ in range(n):
        t += rng.expovariate(rate)
        load.append(
            LoadRequest(t, prompts.make(rng.randint(*prompt_range)), rng.randint(*output_range))
        )
    return load


async def replay(client: ReplicaClient, model: str, load: Sequence[LoadRequest]) -> list[Sample]:
    """Send each request at its arrival time (open loop) and measure it."""
    start = time.monotonic()

    async def one(req: LoadRequest) -> Sample:
        await asyncio.sleep(max(0.0, start + req.at_s - time.monotonic()))
        return await measure(client, model, req.prompt, req.max_tokens)

    return list(await asyncio.gather(*(one(r) for r in load)))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def comparison_table(real: Sequence[Sample], emulated: Sequence[Sample]) -> str:
    """Markdown: TTFT and E2E percentiles of both runs and the emulator's relative error."""
    rows = [
        "| metric | real engine (ms) | emulator (ms) | error |",
        "| --- | ---: | ---: | ---: |",
    ]
    for metric in ("ttft", "e2e"):
        for p in PERCENTILES:
            r = percentile([getattr(s, f"{metric}_s") for s in real], p) * 1e3
            e = percentile([getattr(s, f"{metric}_s") for s in emulated], p) * 1e3
            rows.append(f"| {metric.upper()} P{p} | {r:.0f} | {e:.0f} | {(e - r) / r:+.0%} |")
    return "\n".join(rows)


def _engine_key() -> str | None:
    """The engine's bearer token, as vLLM's own clients find it: ``$VLLM_API_KEY``."""
    return os.environ.get("VLLM_API_KEY") or None


async def validate(
    url: str, model: str, profile_path: Path, load: Sequence[LoadRequest]
) -> tuple[list[Sample], list[Sample]]:
    """The held-out load on the engine, then on an emulator running the profile."""
    async with ReplicaClient(url, read_timeout_s=600.0, api_key=_engine_key()) as client:
        real = await replay(client, model, load)
    profile = load_profile(str(profile_path))
    with launch_emulator(
        model=model, profile=str(profile_path), max_num_seqs=profile.max_num_seqs
    ) as emulator:
        async with ReplicaClient(emulator.url, read_timeout_s=600.0) as client:
            emulated = await replay(client, model, load)
    return real, emulated


# --------------------------------------------------------------------------- command line


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        required=True,
        help="the engine's base URL (http://host:port); its key, if any, from $VLLM_API_KEY",
    )
    parser.add_argument("--name", required=True, help="profile name, e.g. smollm2@cpu-vllm")
    parser.add_argument("--model", help="served model name (default: the first one listed)")
    parser.add_argument("--out", type=Path, help="profile file (default: NAME with @ -> -.toml)")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="the engine's batch limit")
    parser.add_argument(
        "--max-num-batched-tokens", type=int, default=2048, help="the engine's token budget"
    )
    parser.add_argument(
        "--cold-start-s", type=float, default=0.0, help="measured start-up time to record"
    )
    parser.add_argument("--output-mean-tokens", type=float, default=64.0)
    parser.add_argument("--output-sigma", type=float, default=0.8)
    parser.add_argument(
        "--prompt-lengths", type=_ints, default=list(DEFAULT_LENGTHS), help="comma list"
    )
    parser.add_argument(
        "--concurrency", type=_ints, default=list(DEFAULT_CONCURRENCY), help="comma list"
    )
    parser.add_argument("--output-tokens", type=int, default=48, help="tokens per decode stream")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the TTFT sweep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--validate", type=int, default=0, metavar="N", help="held-out requests to compare"
    )
    parser.add_argument("--validate-rate", type=float, default=0.5, help="held-out req/s")
    parser.add_argument("--report", type=Path, help="write the comparison table here")


def run(args: argparse.Namespace) -> int:
    try:
        return _calibrate(args)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"cato bench calibrate: {exc}", file=sys.stderr)
        return 1


def _calibrate(args: argparse.Namespace) -> int:
    out: Path = args.out or Path(args.name.replace("@", "-") + ".toml")
    model, limits, sweeps = asyncio.run(_measure(args))
    fitted = fit(sweeps)
    comments = sweep_comments(sweeps, fitted, model)
    profile = build_profile(
        args.name,
        fitted,
        limits,
        cold_start_s=args.cold_start_s,
        output_mean_tokens=args.output_mean_tokens,
        output_sigma=args.output_sigma,
        source=f"Calibrated against {model}: " + "; ".join(fitted.lines()),
    )
    out.write_text(profile_toml(profile, comments), encoding="utf-8")
    print("\n".join(comments))
    print(f"wrote {out}")
    if args.validate:
        lengths = sorted(args.prompt_lengths)
        load = heldout_load(
            args.validate,
            args.validate_rate,
            args.seed + 1000,
            (lengths[0], lengths[-1]),
            (8, args.output_tokens * 2),
        )
        real, emulated = asyncio.run(validate(args.url, model, out, load))
        table = comparison_table(real, emulated)
        print(table)
        if args.report:
            args.report.write_text(table + "\n", encoding="utf-8")
    return 0


async def _measure(args: argparse.Namespace) -> tuple[str, EngineLimits, Sweeps]:
    async with ReplicaClient(args.url, read_timeout_s=600.0, api_key=_engine_key()) as client:
        model = args.model or (await client.models())[0]
        limits = await engine_limits(client, model, args.max_num_seqs, args.max_num_batched_tokens)
        sweeps = await run_sweeps(
            client,
            model,
            Prompts(args.seed),
            args.prompt_lengths,
            args.concurrency,
            args.output_tokens,
            args.repeats,
        )
    return model, limits, sweeps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cato bench calibrate", description=__doc__)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
