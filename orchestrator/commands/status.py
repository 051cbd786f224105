"""``cato status``: the service's ``/v1/status`` as tables."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aiohttp
from rich import box
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
    return "-" if v is None else f"{v:.0f}"


def _percentiles(p50: float | None, p95: float | None, p99: float | None) -> str:
    return f"{_ms(p50)}/{_ms(p95)}/{_ms(p99)}"


_STATE_STYLE = {"ready": "green", "pending": "yellow", "draining": "cyan", "failed": "bold red"}


def _table(title: str) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)


def replicas_table(status: Status) -> Table:
    """One row per replica: where it runs, its state, its load and its history."""
    scheduler, provisioner = status.scheduler or "-", status.provisioner or "-"
    table = _table(f"replicas (scheduler {scheduler}, provisioner {provisioner})")
    for col in ("replica", "state", "engine", "GPUs"):
        table.add_column(col, no_wrap=True)
    for col in ("running", "queued", "cold", "restarts"):
        table.add_column(col, no_wrap=True, justify="right")
    for r in status.replicas:
        cold = "-" if r.cold_start_s is None else f"{r.cold_start_s:.1f} s"
        style = _STATE_STYLE.get(r.state)
        state = f"[{style}]{r.state}[/]" if style else r.state
        table.add_row(
            r.id, state, r.engine, ",".join(map(str, r.gpus)) or "-",
            f"{r.in_flight}/{r.concurrency_limit}", str(r.queued), cold, str(r.restarts),
        )  # fmt: skip
    return table


def kinds_table(status: Status) -> Table:
    """SLA attainment (tasks that met it, and their share) and latency percentiles per
    task kind over the service's window."""
    table = _table(f"tasks over the last {status.window_s:.0f} s (latencies in ms)")
    table.add_column("kind", no_wrap=True)
    for col in ("tasks", "met", "rate", "TTFT p50/95/99", "E2E p50/95/99", "cancel/err"):
        table.add_column(col, no_wrap=True, justify="right")
    for kind, k in sorted(status.kinds.items()):
        rate = "-" if k.goodput_rate is None else f"{k.goodput_rate:.0%}"
        table.add_row(
            kind, str(k.requests), str(k.sla_met), rate,
            _percentiles(k.ttft_p50_ms, k.ttft_p95_ms, k.ttft_p99_ms),
            _percentiles(k.e2e_p50_ms, k.e2e_p95_ms, k.e2e_p99_ms),
            f"{k.cancelled}/{k.errors}",
        )  # fmt: skip
    return table


def render(status: Status, console: Console) -> None:
    console.print(replicas_table(status))
    console.print(kinds_table(status))
    health = "ok" if status.ok else "[bold red]no ready replica[/]"
    console.print(
        f"{health}; queued {status.queued}, in flight {status.in_flight}, "
        f"GPUs free {status.gpus_free}/{status.gpus_total}"
    )


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
