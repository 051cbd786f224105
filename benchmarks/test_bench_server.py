"""One streamed ``/v1/completions`` through the team service, the path ``cato serve`` runs
per request: the HTTP handler, the executor, the replica client (SSE and JSON per token)
and the SSE chunk per token back to the client.

The emulator runs 1,000x faster than its profile, so the figure is mostly the cost of
the stack itself; the client (an ``aiohttp`` session reading every line) shares this
process, the emulator does not. ``max_tokens`` 256 against 16 shows the per-token cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator.emulator.process import RunningEmulator, launch_emulator
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.server import ServiceOptions, bound_port, create_app, serve_app

MODEL = "tiny"
PROMPT = "<fim_prefix>def mean(values):\n    <fim_suffix>\n<fim_middle>"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(
        model=MODEL, speed=1_000.0, extra_args=["--mean-output-tokens", "100000"]
    ) as running:
        yield running


async def _one(session: aiohttp.ClientSession, url: str, max_tokens: int) -> int:
    """Stream one completion; the number of text chunks received."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "stream": True}
    chunks = 0
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.startswith(b'data: {"id"') and b'"finish_reason": null' in line:
                chunks += 1
    return chunks


@pytest.mark.parametrize("max_tokens", [16, 256])
def test_streamed_completion_round_trip(
    benchmark: BenchmarkFixture, emulator: RunningEmulator, max_tokens: int
) -> None:
    with asyncio.Runner() as runner:
        orch = Orchestrator([ReplicaSpec(id="r0", url=emulator.url, model=MODEL)])
        app = create_app(orch, ServiceOptions(models=[MODEL]))
        site = runner.run(serve_app(app, "127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound_port(site)}/v1/completions"
        session = runner.run(_session())
        try:
            runner.run(_one(session, url, max_tokens))  # warm both connection pools
            chunks = benchmark(lambda: runner.run(_one(session, url, max_tokens)))
        finally:
            runner.run(session.close())
            runner.run(site.cleanup())
            runner.run(orch.close())
    assert chunks == max_tokens


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()
