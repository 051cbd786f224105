"""CPU cost of the emulator: per streamed token, per request, and per engine step.

The emulator must never be the bottleneck of a live run. The server runs as a real
process at ``--speed 1000`` (the engine model's step times shrink to microseconds, so
the server's own CPU is the limit), and its CPU time is read from ``/proc/PID/stat``
around each round. Target: at least 5,000 streamed tokens per server CPU second.
Figures land in ``extra_info`` (tokens_per_cpu_s, cpu_us_per_token, cpu_us_per_request).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator.emulator.process import RunningEmulator, launch_emulator
from orchestrator.engine_model import EngineModel, load_profile

STREAMS = 100
TOKENS = 200
SHORT_REQUESTS = 500


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(profile="tiny@cpu", speed=1000.0, max_num_seqs=256) as emu:
        yield emu


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stream_one(session: aiohttp.ClientSession, url: str, i: int) -> int:
    body = {"model": "m", "prompt": f"def f{i}():\n", "max_tokens": TOKENS, "stream": True}
    body["ignore_eos"] = True
    chunks = 0
    async with session.post(url + "/v1/completions", data=json.dumps(body)) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {"):
                chunks += 1
    return chunks


async def short_one(session: aiohttp.ClientSession, url: str, i: int) -> None:
    body = {"model": "m", "prompt": f"x{i}", "max_tokens": 1}
    async with session.post(url + "/v1/completions", data=json.dumps(body)) as resp:
        await resp.read()


async def stream_round(url: str) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        counts = await asyncio.gather(*(stream_one(session, url, i) for i in range(STREAMS)))
    return sum(counts)


async def short_round(url: str) -> None:
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(short_one(session, url, i) for i in range(SHORT_REQUESTS)))


def test_bench_streamed_tokens(benchmark: BenchmarkFixture, emulator: RunningEmulator) -> None:
    used: list[float] = []
    tokens: list[int] = []

    def one_round() -> None:
        before = cpu_seconds(emulator.pid)
        tokens.append(asyncio.run(stream_round(emulator.url)))
        used.append(cpu_seconds(emulator.pid) - before)

    benchmark.pedantic(one_round, rounds=3, iterations=1, warmup_rounds=1)  # type: ignore[no-untyped-call]
    assert tokens[-1] == STREAMS * TOKENS
    total_tokens, total_cpu = sum(tokens[1:]), sum(used[1:])  # the warm-up round excluded
    benchmark.extra_info["tokens_per_cpu_s"] = round(total_tokens / total_cpu)
    benchmark.extra_info["cpu_us_per_token"] = round(total_cpu / total_tokens * 1e6, 1)
    print(f"\nemulator: {total_tokens / total_cpu:,.0f} streamed tokens per server CPU second")


def test_bench_short_requests(benchmark: BenchmarkFixture, emulator: RunningEmulator) -> None:
    used: list[float] = []

    def one_round() -> None:
        before = cpu_seconds(emulator.pid)
        asyncio.run(short_round(emulator.url))
        used.append(cpu_seconds(emulator.pid) - before)

    benchmark.pedantic(one_round, rounds=3, iterations=1, warmup_rounds=1)  # type: ignore[no-untyped-call]
    per_request = sum(used[1:]) / (SHORT_REQUESTS * (len(used) - 1))
    benchmark.extra_info["cpu_us_per_request"] = round(per_request * 1e6)
    print(f"\nemulator: {per_request * 1e6:,.0f} us of server CPU per one-token request")


def test_bench_engine_step_full_batch(benchmark: BenchmarkFixture) -> None:
    """One engine-model step with 256 sequences decoding (what the simulator pays)."""
    # A KV cache big enough that nobody is preempted while the benchmark runs.
    profile = load_profile("codellama-7b@a100").with_overrides(num_kv_blocks=300_000)
    engine = EngineModel(profile, "priority")
    for i in range(profile.max_num_seqs):
        engine.add(f"s{i}", 200, profile.max_model_len - 200, priority=i % 3)
    now = 0.0
    while engine.num_waiting:  # admit and prefill everyone
        result = engine.step(now)
        assert result is not None
        now += result.duration_s
    clock = [now]

    def step() -> None:
        result = engine.step(clock[0])
        assert result is not None
        clock[0] += result.duration_s

    benchmark.pedantic(step, rounds=5_000, iterations=1)  # type: ignore[no-untyped-call]
    assert engine.num_running == profile.max_num_seqs
    assert engine.num_preemptions == 0
