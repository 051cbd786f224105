"""Round trip of one ``complete`` task through the executor to an emulator and back.

The emulator runs 1,000x faster than its profile, so the figure is mostly the cost of
the stack itself: graph building, routing, the HTTP stream, SSE parsing and one
``TaskEvent`` per token (plus the emulator's own per-token work in its process).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator.api import TaskEvent, TaskKind, TaskRequest
from orchestrator.emulator.process import RunningEmulator, launch_emulator
from orchestrator.executor import Orchestrator, ReplicaSpec

MODEL = "tiny"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(
        model=MODEL, speed=1_000.0, extra_args=["--mean-output-tokens", "100000"]
    ) as running:
        yield running


async def _one(orch: Orchestrator, max_tokens: int) -> list[TaskEvent]:
    request = TaskRequest(
        kind=TaskKind.COMPLETE,
        prompt="<fim_prefix>def mean(values):\n    <fim_suffix>\n<fim_middle>",
        model=MODEL,
        max_tokens=max_tokens,
    )
    async with contextlib.aclosing(orch.submit(request)) as events:
        return [event async for event in events]


@pytest.mark.parametrize("max_tokens", [16, 256])
def test_complete_round_trip(
    benchmark: BenchmarkFixture, emulator: RunningEmulator, max_tokens: int
) -> None:
    with asyncio.Runner() as runner:
        orch = Orchestrator([ReplicaSpec(id="r0", url=emulator.url, model=MODEL)])
        try:
            runner.run(_one(orch, max_tokens))  # warm the connection pool
            events = benchmark(lambda: runner.run(_one(orch, max_tokens)))
        finally:
            runner.run(orch.close())
    assert events[-1].type == "done"
    assert events[-1].usage is not None
    assert events[-1].usage.completion_tokens == max_tokens
