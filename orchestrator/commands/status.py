"""``cato status``: the service's ``/v1/status`` as tables."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aiohttp
from rich.console import Console
from rich.table import Table

from orchestrator.api import Status


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("CATO_URL", "http://127.0.0.1:8000"))
    parser.add_argument(
        "--token", default=os.environ.get("CATO_TOKEN"), help="bearer token (or CATO_TOKEN)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON")


async def fetch(url: str, token: str | None) -> Status:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout, headers=headers) as http,
        http.get(url.rstrip("/") + "/v1/status") as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}: {(await resp.text())[:200]}")
        return Status.model_validate_json(await resp.read())


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def render(status: Status, console: Console) -> None:
    reps = Table(title=f"replicas (scheduler {status.scheduler or '-'})")
    for col in (
        "id",
        "model",
        "engine",
        "state",
        "gpus",
        "in flight",
        "queued",
        "limit",
        "cold start",
        "restarts",
    ):
        reps.add_column(col)
    for r in status.replicas:
        cold = "-" if r.cold_start_s is None else f"{r.cold_start_s:.1f} s"
        gpus = ",".join(map(str, r.gpus)) or "-"
        reps.add_row(
            r.id, r.model, r.engine, r.state, gpus, str(r.in_flight), str(r.queued),
            str(r.concurrency_limit), cold, str(r.restarts),
        )  # fmt: skip
    console.print(reps)
    kinds = Table(title=f"tasks over the last {status.window_s:.0f} s")
    for col in (
        "kind",
        "requests",
        "SLA met",
        "goodput rate",
        "TTFT p50/p95/p99 ms",
        "E2E p50/p95/p99 ms",
        "cancelled",
        "errors",
    ):
        kinds.add_column(col)
    for kind, k in sorted(status.kinds.items()):
        rate = "-" if k.goodput_rate is None else f"{k.goodput_rate:.1%}"
        kinds.add_row(
            kind, str(k.requests), str(k.sla_met), rate,
            f"{_ms(k.ttft_p50_ms)} / {_ms(k.ttft_p95_ms)} / {_ms(k.ttft_p99_ms)}",
            f"{_ms(k.e2e_p50_ms)} / {_ms(k.e2e_p95_ms)} / {_ms(k.e2e_p99_ms)}",
            str(k.cancelled), str(k.errors),
        )  # fmt: skip
    console.print(kinds)
    gpus = f"GPUs free {status.gpus_free}/{status.gpus_total}"
    console.print(f"queued {status.queued}, in flight {status.in_flight}, {gpus}")


def run(args: argparse.Namespace) -> int:
    try:
        status = asyncio.run(fetch(args.url, args.token))
    except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
        print(f"cato status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        render(status, Console())
    return 0
