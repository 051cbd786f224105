"""vLLM's automatic prefix caching in the engine model and the emulator."""

from __future__ import annotations

import dataclasses
import random

import aiohttp
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.emulator.process import launch_emulator
from orchestrator.engine_model import EngineModel, block_hashes
from orchestrator.sim.engine import FusedEngine
from tests.test_engine_model import SMALL

PROFILE = SMALL  # the engine-model tests' small engine
BLOCK_CHARS = 16 * 4


def text(seed: int, chars: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefgh \n") for _ in range(chars))


def serve(
    engine: EngineModel, seq_id: str, prompt: str, output: int, now: float
) -> tuple[int, float]:
    """Run one request alone to its end: (prompt tokens computed, time of its end)."""
    tokens = -(-len(prompt) // 4)
    engine.add(seq_id, tokens, output, now=now, block_hashes=block_hashes(prompt, 16))
    computed = 0
    while seq_id in engine:
        result = engine.step(now)
        assert result is not None
        computed += result.prefill_tokens
        now = engine.busy_until
    return computed, now


def test_block_hashes_chain_over_the_whole_prefix() -> None:
    base = text(1, 10 * BLOCK_CHARS + 5)
    hashes = block_hashes(base, 16)
    assert len(hashes) == 10  # full blocks only
    assert block_hashes(base, 16) == hashes  # stable
    # an edit in block 3 changes block 3 and every block after it
    edited = base[: 3 * BLOCK_CHARS + 7] + "Z" + base[3 * BLOCK_CHARS + 8 :]
    other = block_hashes(edited, 16)
    assert other[:3] == hashes[:3]
    assert all(a != b for a, b in zip(other[3:], hashes[3:], strict=True))
    # the same block content after another prefix is another block
    assert block_hashes(base[BLOCK_CHARS:], 16)[0] != hashes[1]


def test_a_shared_prefix_is_prefilled_once() -> None:
    shared = text(2, 20 * BLOCK_CHARS)
    first, second = shared + text(3, 200), shared + text(4, 300)
    off, on = EngineModel(PROFILE), EngineModel(PROFILE, prefix_caching=True)
    for engine in (off, on):
        a, now = serve(engine, "a", first, 4, 0.0)
        b, _ = serve(engine, "b", second, 4, now)
        assert a == -(-len(first) // 4)
        if engine is off:
            assert b == -(-len(second) // 4)
            assert engine.prefix_cache_queries == engine.prefix_cache_hits == 0
        else:
            assert b == -(-len(second) // 4) - 20 * 16  # only what follows the 20 blocks
            assert engine.prefix_cache_hits == 20 * 16
            assert (
                engine.prefix_cache_queries
                == -(-len(first) // 4) + 4 + -(-len(second) // 4) + 4 - 8
            )
    assert on.free_blocks == off.free_blocks == PROFILE.num_kv_blocks  # cached blocks are free


def test_the_whole_prompt_cached_still_computes_its_last_token() -> None:
    prompt = text(5, 12 * BLOCK_CHARS)  # exactly 12 blocks
    engine = EngineModel(PROFILE, prefix_caching=True)
    _, now = serve(engine, "a", prompt, 3, 0.0)
    again, _ = serve(engine, "b", prompt, 3, now)
    assert again == 16  # the last block is recomputed, as vLLM does


def test_free_cached_blocks_are_evicted_least_recently_freed_first() -> None:
    tight = dataclasses.replace(PROFILE, num_kv_blocks=130, max_model_len=2048)
    engine = EngineModel(tight, prefix_caching=True)
    prompts = {name: text(10 + i, 60 * BLOCK_CHARS) for i, name in enumerate("abc")}
    now = 0.0
    for name in "ab":  # 2 x 60 blocks cached (plus their output blocks, freed)
        _, now = serve(engine, name, prompts[name], 2, now)
    assert engine.cached_prefix_tokens(block_hashes(prompts["a"], 16)) == 60 * 16
    _, now = serve(engine, "c", prompts["c"], 2, now)  # needs blocks: "a" goes first
    assert engine.cached_prefix_tokens(block_hashes(prompts["b"], 16)) == 60 * 16
    assert engine.cached_prefix_tokens(block_hashes(prompts["c"], 16)) == 60 * 16
    # "a" lost its tail first (freed in reverse), the blocks "c" needed
    assert engine.cached_prefix_tokens(block_hashes(prompts["a"], 16)) < 60 * 16


def test_blocks_a_running_sequence_holds_are_never_evicted() -> None:
    tight = dataclasses.replace(PROFILE, num_kv_blocks=130)
    engine = EngineModel(tight, prefix_caching=True)
    shared = text(20, 60 * BLOCK_CHARS)
    hashes = block_hashes(shared, 16)
    engine.add("long", 60 * 16, 500, now=0.0, block_hashes=hashes)  # keeps decoding
    now = 0.0
    for _ in range(3):
        result = engine.step(now)
        assert result is not None
        now = engine.busy_until
    for i in range(3):  # others fill the rest of the cache, over and over
        _, now = serve(engine, f"x{i}", text(30 + i, 50 * BLOCK_CHARS), 2, now)
    assert engine.cached_prefix_tokens(hashes) == 60 * 16
    computed, _ = serve(engine, "again", shared + text(40, 100), 2, now)
    assert computed == 25  # 100 characters after the 60 shared blocks


def test_caching_off_ignores_hashes_and_schedules_as_before() -> None:
    def steps(engine: EngineModel) -> list[tuple[float, int, int]]:
        now, out = 0.0, []
        for i in range(6):
            prompt = text(50, 30 * BLOCK_CHARS) + text(60 + i, 90)
            engine.add(
                f"s{i}", -(-len(prompt) // 4), 20, now=0.0, block_hashes=block_hashes(prompt, 16)
            )
        while len(engine):
            result = engine.step(now)
            assert result is not None
            out.append((result.duration_s, result.prefill_tokens, result.decode_seqs))
            now = engine.busy_until
        return out

    plain = EngineModel(PROFILE)
    assert steps(EngineModel(PROFILE, prefix_caching=False)) == steps(plain)
    cached = steps(EngineModel(PROFILE, prefix_caching=True))
    assert sum(p for _, p, _ in cached) < sum(p for _, p, _ in steps(EngineModel(PROFILE)))


def test_random_load_with_sharing_and_preemption_keeps_the_block_count() -> None:
    """Under preemption, aborts and shared prefixes, every block comes back and the
    fused engine (whole decode runs at once) agrees with the plain one step by step."""
    tight = dataclasses.replace(PROFILE, num_kv_blocks=90, max_model_len=1400)
    rng = random.Random(7)
    roots = [text(70 + i, 40 * BLOCK_CHARS) for i in range(3)]
    jobs = []
    for i in range(40):
        prompt = rng.choice(roots)[: rng.randrange(BLOCK_CHARS, 40 * BLOCK_CHARS)] + text(i, 50)
        jobs.append((0.01 * i, f"s{i}", prompt, rng.randrange(1, 60), rng.random() < 0.1))
    plain = EngineModel(tight, "priority", prefix_caching=True, every_token=False)
    fused = FusedEngine(tight, "priority", prefix_caching=True, every_token=False)
    for engine in (plain, fused):
        now, pending, done = 0.0, list(jobs), 0
        while pending or not engine.idle:
            while pending and pending[0][0] <= now:
                t, sid, prompt, output, abort = pending.pop(0)
                engine.add(
                    sid, -(-len(prompt) // 4), output, now=t, block_hashes=block_hashes(prompt, 16)
                )
                if abort and len(engine) > 1:
                    engine.abort(sid)
            run = fused.decode_run(now, 50) if engine is fused and not pending else None
            result = fused.apply_run(run, run.steps) if run is not None else engine.step(now)
            if result is None:
                now = pending[0][0]
                continue
            done += sum(1 for o in result.outputs if o.finished)
            now = engine.busy_until
        assert engine.free_blocks == tight.num_kv_blocks
        assert engine.num_preemptions > 0
    assert plain.prefix_cache_hits == fused.prefix_cache_hits > 0
    assert plain.num_preemptions == fused.num_preemptions


async def test_the_emulator_reports_vllms_prefix_cache_counters() -> None:
    prompt = text(90, 40 * BLOCK_CHARS)
    for flag, hits in (("--enable-prefix-caching", 39 * 16), ("--no-enable-prefix-caching", 0)):
        with launch_emulator(profile="tiny@cpu", speed=20.0, extra_args=[flag]) as emu:
            client = AsyncOpenAI(base_url=emu.base_url, api_key="x", max_retries=0)
            async with client:
                for _ in range(2):
                    await client.completions.create(model="m", prompt=prompt, max_tokens=4)
            async with aiohttp.ClientSession() as session, session.get(emu.url + "/metrics") as r:
                body = await r.text()
        found = {
            s.name: s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        # as vLLM: no lookups without the cache; the second request finds all but its
        # last block (its last token is computed)
        assert found["vllm:prefix_cache_queries_total"] == (2 * 40 * 16 if hits else 0)
        assert found["vllm:prefix_cache_hits_total"] == hits


def test_the_simulator_shares_the_engines_prefix_cache() -> None:
    """Completions that extend one file's prefix: with caching on, the replicas' engines
    count hits, and first tokens come sooner; off, nothing is cached."""
    from orchestrator.api import TaskKind, TaskRequest
    from orchestrator.engine_model import load_profile
    from orchestrator.sim import ModelSpec, SimConfig, SimTask, simulate

    source = text(99, 1200 * 4)
    tasks = []
    for i in range(60):
        prompt = "<fim_prefix>" + source[: 2400 + 20 * i] + "<fim_suffix><fim_middle>"
        request = TaskRequest(id=f"c{i}", kind=TaskKind.COMPLETE, prompt=prompt)
        tasks.append(SimTask(f"c{i}", request, output_tokens=8))
    arrivals = [(0.25 * i, task) for i, task in enumerate(tasks)]
    runs = {}
    for caching in (False, True):
        spec = ModelSpec(
            "tiny", load_profile("codellama-7b@a100"), replicas=1, prefix_caching=caching
        )
        runs[caching] = simulate(SimConfig(models=(spec,), scheduler="round_robin"), arrivals)
    off, on = runs[False], runs[True]
    assert "prefix_cache_hits" not in off.counters
    assert on.counters["prefix_cache_hits"] > 0.8 * on.counters["prefix_cache_queries"]
    assert on.kinds["complete"].ttft_p50_ms < off.kinds["complete"].ttft_p50_ms
