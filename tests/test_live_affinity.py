"""Prefix-cache affinity live: the executor's calls carry their prompts' block hashes.

Two emulated replicas cache prefixes (``--enable-prefix-caching``); the orchestrator is
told so (``set_prefix_cache``, as the runtime does from ``[[models]] prefix_cache``).
Successive completions of one document then go to the replica that served its earlier
ones while it has slack, and elsewhere once it has none; the emulators' vLLM counters
show the hits. The config key's effect on launches and on the runtime is checked
without processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from orchestrator.api import SLA, SLAMetric, TaskEvent, TaskKind, TaskRequest
from orchestrator.bench.live_serve import serve_config
from orchestrator.bench.scenarios import scenario
from orchestrator.config import ConfigError, load_config, parse_config
from orchestrator.emulator.process import RunningEmulator, launch_emulator
from orchestrator.engine_model import block_hashes, load_profile
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.policy.state import Rates
from orchestrator.runtime import Runtime, launch_spec
from tests.test_executor import FULL_LENGTH, WAIT_S, idle, scrape

MODEL = "tiny"
PROFILE = load_profile("tiny@cpu")
LAX = SLA(metric=SLAMetric.TTFT, target_ms=120_000)
DOC_A = inspect.getsource(asyncio.locks)  # real modules, typed through
DOC_B = inspect.getsource(asyncio.queues)


def fim(cursor: int, document: str = DOC_B) -> str:
    """The completion prompt at ``cursor``: the document from its start (an anchored
    window), as the sessions workload renders it."""
    return f"<fim_prefix>{document[:cursor]}<fim_suffix>\n<fim_middle>"


def complete(prompt: str, max_tokens: int = 4, sla: SLA = LAX) -> TaskRequest:
    return TaskRequest(
        kind=TaskKind.COMPLETE, prompt=prompt, model=MODEL, max_tokens=max_tokens, sla=sla
    )


@pytest.fixture(scope="module")
def caching_pair() -> Iterator[list[RunningEmulator]]:
    emulators: list[RunningEmulator] = []
    try:
        for _ in range(2):
            emulators.append(
                launch_emulator(model=MODEL, extra_args=[*FULL_LENGTH, "--enable-prefix-caching"])
            )
        yield emulators
    finally:
        for emulator in emulators:
            emulator.stop()


@contextlib.asynccontextmanager
async def orchestrator(emulators: Sequence[RunningEmulator]) -> AsyncIterator[Orchestrator]:
    # One call at a time per replica: a long call in flight leaves no slack for the next.
    replicas = [
        ReplicaSpec(
            id=f"r{i}", url=e.url, model=MODEL, concurrency_limit=1,
            rates=Rates.from_profile(PROFILE),
        )
        for i, e in enumerate(emulators)
    ]  # fmt: skip
    orch = Orchestrator(replicas, scheduler="cato")
    orch.set_prefix_cache(MODEL, PROFILE.block_size, PROFILE.num_kv_blocks)
    try:
        yield orch
    finally:
        await orch.close()


def replica_of(events: Sequence[TaskEvent]) -> str | None:
    """The replica the task's model call ran on (its last ``running`` node event)."""
    found = [e.replica for e in events if e.type == "node" and e.state == "running"]
    return found[-1] if found else None


async def run(orch: Orchestrator, request: TaskRequest) -> list[TaskEvent]:
    async def drain() -> list[TaskEvent]:
        async with contextlib.aclosing(orch.submit(request)) as events:
            return [event async for event in events]

    events = await asyncio.wait_for(drain(), WAIT_S)
    assert events[-1].type == "done", events[-1]
    return events


async def until_running(stream: AsyncIterator[TaskEvent]) -> str:
    """Read a task's events until its model call has a replica; that replica."""
    async for event in stream:
        if event.type == "node" and event.state == "running" and event.replica:
            return event.replica
        assert event.type != "error", event
    raise AssertionError("the task ended before its model call started")


async def hits(emulators: Sequence[RunningEmulator]) -> list[float]:
    return [(await scrape(e.url))["vllm:prefix_cache_hits_total"] for e in emulators]


async def test_a_documents_completions_follow_its_prefix_while_that_replica_has_slack(
    caching_pair: list[RunningEmulator],
) -> None:
    await idle(caching_pair)
    before = await hits(caching_pair)
    a, b = 2_000, 2_600  # cursors in documents A and B
    async with orchestrator(caching_pair) as orch:
        # A's first completion takes r0 (both idle, the first wins); B's, asked while it
        # runs, takes the idle r1.
        first = orch.submit(complete(fim(a, DOC_A), max_tokens=200))
        assert await asyncio.wait_for(until_running(first), WAIT_S) == "r0"
        b1 = await run(orch, complete(fim(b)))
        assert replica_of(b1) == "r1"
        await asyncio.wait_for(first.aclose(), WAIT_S)
        await idle(caching_pair)
        # Both idle again: without affinity both documents would go to r0 (the tie).
        assert replica_of(await run(orch, complete(fim(a + 300, DOC_A)))) == "r0"
        assert replica_of(await run(orch, complete(fim(b + 300)))) == "r1"
        assert replica_of(await run(orch, complete(fim(b + 700)))) == "r1"

        # r1 busy with a long call of document B (affinity sends it there too): one slot,
        # so the next completion of B would wait for it, past its 2.5 s SLA. It goes to
        # r0, which meets the SLA without the prefix: affinity is a cost, not a rule.
        long = orch.submit(complete(fim(b + 800), max_tokens=3_000))
        assert await asyncio.wait_for(until_running(long), WAIT_S) == "r1"
        tight = SLA(metric=SLAMetric.TTFT, target_ms=2_500)
        assert replica_of(await run(orch, complete(fim(b + 900), sla=tight))) == "r0"
        await asyncio.wait_for(long.aclose(), WAIT_S)
    await idle(caching_pair)

    # The emulators counted the reuse: B's later prompts on r1 found B's earlier
    # blocks there (at least the blocks of its first prompt, twice over).
    gained = [after - was for after, was in zip(await hits(caching_pair), before, strict=True)]
    shared = len(block_hashes(fim(b), PROFILE.block_size)) - 1
    assert gained[1] >= 2 * shared * PROFILE.block_size
    assert gained[0] > 0  # A's second prompt on r0 reused its first


async def test_a_cached_prompt_teaches_the_prefill_rate_by_what_the_engine_computed(
    caching_pair: list[RunningEmulator],
) -> None:
    await idle(caching_pair)
    async with orchestrator(caching_pair[:1]) as orch:
        rates = orch._replicas["r0"].state.rates
        await run(orch, complete(fim(3_000, DOC_A)))
        for cursor in range(3_100, 3_600, 100):  # alone on the replica, mostly cached
            await run(orch, complete(fim(cursor, DOC_A)))
        # Each prompt's whole length (about 900 tokens) over a TTFT that paid for about
        # 30 of them would have taught a rate near 0.05x the engine's, and five such
        # calls would have more than halved it. Measured per computed token, it stays
        # near the profile's (HTTP and scheduling time only add to it).
        assert rates.prefill_s_per_token >= 0.7 * PROFILE.prefill_s_per_token
    await idle(caching_pair)


async def test_calls_carry_the_block_hashes_the_emulator_uses() -> None:
    orch = Orchestrator([ReplicaSpec(id="r0", url="http://127.0.0.1:9", model=MODEL)])
    prompt = fim(1_000)
    assert orch.prompt_hashes(MODEL, prompt) == ()  # caching unknown: nothing to hash
    orch.set_prefix_cache(MODEL, 16, 64)
    assert orch.prompt_hashes(MODEL, prompt) == block_hashes(prompt, 16)
    index = orch._replicas["r0"].state.prefixes
    assert index is not None and index.capacity == 64
    orch.set_prefix_cache(MODEL, None)
    assert orch.prompt_hashes(MODEL, prompt) == ()
    assert orch._replicas["r0"].state.prefixes is None
    plain = Orchestrator([], scheduler="round_robin")  # routes by no prefix: hashes none
    plain.set_prefix_cache(MODEL, 16, 64)
    assert plain.prompt_hashes(MODEL, prompt) == ()
    with pytest.raises(ValueError, match="must be >= 1"):
        orch.set_prefix_cache(MODEL, 0, 64)
    await orch.close()


# --------------------------------------------------------------------------- config


def write(tmp_path: Path, models: str, scheduler: str = "cato") -> Path:
    path = tmp_path / "cato.toml"
    path.write_text(
        "[gpus]\ndevices = [0]\n\n" + models + f'\n[scheduler]\npolicy = "{scheduler}"\n'
    )
    return path


EMULATED = '[[models]]\nname = "tiny"\nengine = "emulated"\nprofile = "tiny@cpu"\n'
VLLM = '[[models]]\nname = "big"\nengine = "vllm"\nmodel = "org/big"\n'


def test_prefix_cache_is_on_by_default_as_in_vllm(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EMULATED + VLLM))
    emulated, vllm = (launch_spec(m) for m in config.models)
    assert "--enable-prefix-caching" in emulated.extra_args  # the emulator's default is off
    assert not any("prefix-caching" in a for a in vllm.extra_args)  # vLLM's is on
    runtime = Runtime(config, workdir=tmp_path)
    assert runtime.orchestrator.prompt_hashes("tiny", fim(500)) == block_hashes(fim(500), 16)
    # no profile for the vLLM model: vLLM's block size and a 7B model's KV cache
    assert runtime.orchestrator._prefix_caches["big"] == (16, 7200)


def test_prefix_cache_false_turns_caching_and_affinity_off(tmp_path: Path) -> None:
    off = "prefix_cache = false\n"
    config = load_config(write(tmp_path, EMULATED + off + VLLM + off))
    emulated, vllm = (launch_spec(m) for m in config.models)
    assert "--no-enable-prefix-caching" in emulated.extra_args
    assert vllm.extra_args.count("--no-enable-prefix-caching") == 1
    runtime = Runtime(config, workdir=tmp_path)
    assert runtime.orchestrator.prompt_hashes("tiny", fim(500)) == ()
    assert runtime.orchestrator.prompt_hashes("big", fim(500)) == ()


def test_prefix_cache_contradicted_by_vllm_args_is_a_config_error(tmp_path: Path) -> None:
    bad = VLLM + 'prefix_cache = false\nvllm_args = ["--enable-prefix-caching"]\n'
    with pytest.raises(ConfigError, match="prefix_cache"):
        load_config(write(tmp_path, bad))


def test_live_benchmarks_cache_prefixes_as_their_simulated_twins() -> None:
    def models(name: str) -> list[bool]:
        toml = serve_config(scenario(name), "cato", "fixed", 1.0, 0)
        return [m.prefix_cache for m in parse_config(toml, "t.toml").models]

    assert models("rq2") == [False]
    assert models("sessions") == [True]
