"""``cato emulate``: run a vLLM-compatible emulator of one engine on a local port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time

import prometheus_client

from orchestrator.emulator.lengths import LENGTHS_ENV, LengthTable
from orchestrator.emulator.server import EmulatorConfig, serve
from orchestrator.engine_model import POLICIES, load_profile


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="served model name (repeat for aliases; default: the profile name)",
    )
    parser.add_argument(
        "--profile",
        default="codellama-7b@a100",
        help="engine profile: a built-in name or a TOML file (default %(default)s)",
    )
    parser.add_argument("--max-num-seqs", type=int, help="override the profile's batch size")
    parser.add_argument("--max-num-batched-tokens", type=int, help="override the token budget")
    parser.add_argument("--max-model-len", type=int, help="override the context length")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="run the engine this many times faster than real time (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the output text")
    parser.add_argument(
        "--cold-start-s",
        type=float,
        help="wall seconds before /health answers 200 (default: the profile's / speed)",
    )
    parser.add_argument(
        "--mean-output-tokens", type=float, help="mean output length when the model stops itself"
    )
    parser.add_argument(
        "--scheduling-policy",
        choices=POLICIES,
        default="priority",
        help="as vLLM's: fcfs refuses priorities other than 0 (default %(default)s)",
    )
    parser.add_argument(
        "--output-lengths",
        metavar="FILE",
        default=os.environ.get(LENGTHS_ENV) or None,
        help="a JSON table of prompt digest -> tokens: a listed prompt generates exactly "
        "that many (capped by max_tokens), as with min_tokens = max_tokens "
        f"(default: ${LENGTHS_ENV})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VLLM_API_KEY") or None,
        help="as vLLM's: /v1 paths want this bearer token (default: $VLLM_API_KEY)",
    )
    parser.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="as vLLM's: reuse the KV blocks of prompts that share a prefix "
        "(default: off, unlike vLLM V1, so live runs match their simulated twins)",
    )
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="exit when stdin reaches end of file (a launcher holding a pipe dies with it)",
    )


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    profile = load_profile(args.profile).with_overrides(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        output_mean_tokens=args.mean_output_tokens,
    )
    cold = args.cold_start_s if args.cold_start_s is not None else profile.cold_start_s / args.speed
    lengths = LengthTable.load(args.output_lengths) if args.output_lengths else None
    return EmulatorConfig(
        profile=profile,
        models=tuple(args.models or [profile.name]),
        policy=args.scheduling_policy,
        speed=args.speed,
        seed=args.seed,
        cold_start_s=cold,
        lengths=lengths,
        api_key=args.api_key,
        prefix_caching=args.enable_prefix_caching,
    )


def from_process_start(config: EmulatorConfig, started_at: float, now: float) -> EmulatorConfig:
    """The cold start left once the process has spent ``now - started_at`` seconds (on
    ``time.monotonic``) starting: a profile's ``cold_start_s`` is the time from process
    start to a ready server, the emulator's own imports included."""
    spent = max(0.0, now - started_at)
    return dataclasses.replace(config, cold_start_s=max(0.0, config.cold_start_s - spent))


def run(args: argparse.Namespace, started_at: float | None = None) -> int:
    """Serve until SIGINT or SIGTERM; ``started_at`` (``time.monotonic``) is when the
    process started, from which the cold start counts (default: now)."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"cato emulate: {exc}", file=sys.stderr)
        return 2
    if started_at is not None:
        config = from_process_start(config, started_at, time.monotonic())
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        asyncio.run(_serve_until_signal(config, args.host, args.port, args.exit_with_stdin))
    except OSError as exc:
        print(f"cato emulate: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signal(
    config: EmulatorConfig, host: str, port: int, exit_with_stdin: bool
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if exit_with_stdin:
        threading.Thread(target=_wait_for_eof, args=(loop, stop), daemon=True).start()
    profile = config.profile

    def listening(url: str) -> None:
        print(
            f"cato emulator listening on {url} (model {', '.join(config.models)}, profile "
            f"{profile.name}, speed {config.speed:g}x, ready in {config.cold_start_s:g} s)",
            flush=True,
        )

    def ready(url: str) -> None:
        exact = (
            "" if config.lengths is None else f", exact lengths of {len(config.lengths)} prompts"
        )
        print(
            f"cato emulator ready on {url}: a vLLM-compatible EMULATOR, not a real engine "
            f"(profile {profile.name}, max_num_seqs {profile.max_num_seqs}, "
            f"{config.policy} scheduling{exact})",
            flush=True,
        )

    await serve(config, host, port, stop, on_listening=listening, on_ready=ready)


def _wait_for_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Block on stdin until its writer goes away, then stop the server."""
    fd = sys.stdin.fileno()
    while os.read(fd, 4096):  # the raw fd: a buffered read would block interpreter exit
        pass
    with contextlib.suppress(RuntimeError):  # the loop has already closed
        loop.call_soon_threadsafe(stop.set)
