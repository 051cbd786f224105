"""``cato bench peers``: jobs, CPU accounting, a real run through ``direct`` and ``cato``."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from orchestrator.api import SLAMetric, TaskKind, TaskRequest
from orchestrator.bench import frontends, peers, processes
from orchestrator.bench.scenarios import scenario
from orchestrator.emulator.process import StartEmulator
from orchestrator.graphs import build_graph
from orchestrator.policy.scheduler import KIND_PRIORITY

_MODEL = "codellama-7b"


def _jobs() -> list[peers.Job]:
    defaults = scenario("rq2").defaults()
    complete = TaskRequest(kind=TaskKind.COMPLETE, prompt="def add(a, b):\n    return")
    summarize = TaskRequest(
        kind=TaskKind.SUMMARIZE, code="def add(a, b):\n    return a + b\n", language="python"
    )
    return [peers.make_job(r, _MODEL, defaults) for r in (complete, summarize)]


def test_peer_body_is_the_call_cato_would_make() -> None:
    defaults = scenario("rq2").defaults()
    request = TaskRequest(kind=TaskKind.SUMMARIZE, code="def f():\n    pass\n", language="python")
    job = peers.make_job(request, _MODEL, defaults)
    node = build_graph(request, defaults).llm_nodes()[0]
    assert job.peer_body["prompt"] == node.prompt
    assert job.peer_body["max_tokens"] == node.max_tokens
    assert job.peer_body["priority"] == KIND_PRIORITY["summarize"]
    assert job.cato_body["prompt"] == request.code
    assert job.cato_body["cato"] == {"task": "summarize", "language": "python"}
    assert job.sla_metric is SLAMetric.E2E and job.sla_ms == 6000
    plain = peers.make_job(request, _MODEL, defaults, kind_priority=False)
    assert plain.peer_body["priority"] == 0 and plain.cato_body == job.cato_body


def test_a_task_of_several_calls_reaches_a_peer_as_those_calls() -> None:
    request = TaskRequest(kind=TaskKind.TRANSLATE, code="x = 1\n" * 3000, target_language="go")
    defaults = scenario("rq2").defaults()
    job = peers.make_job(request, _MODEL, defaults)
    nodes = build_graph(request, defaults).llm_nodes()
    assert len(nodes) > 1
    assert [b["prompt"] for b in job.peer_bodies] == [n.prompt for n in nodes]
    assert job.cato_body["prompt"] == request.code  # CATO gets the task once
    assert job.cato_body["cato"]["target_language"] == "go"


def test_cato_is_told_whether_the_replicas_cache_prefixes(tmp_path: Path) -> None:
    from orchestrator.config import parse_config

    for name, caching in (("rq2", False), ("sessions", True)):
        chosen = scenario(name)
        setup = frontends.CatoSetup(
            chosen.defaults(), "codellama-7b@a100", 0.5, chosen.prefix_caching
        )
        text = frontends.cato_config(_MODEL, POOL, "cato", setup, tmp_path)
        assert parse_config(text, "peers.toml").models[0].prefix_cache is caching
    plain = parse_config(frontends.cato_config(_MODEL, POOL), "peers.toml")
    assert plain.models[0].prefix_cache is False


def test_cpu_of_a_process_tree_counts_its_children() -> None:
    busy = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'sum(range(4 * 10**7))'])"
    proc = subprocess.Popen([sys.executable, "-c", busy + "; input()"], stdin=subprocess.PIPE)
    try:
        # the grandchild has exited and been reaped by the child: its time is in cutime
        for _ in range(600):
            if processes.proc_tree_cpu_s(proc.pid) > 0.2:
                break
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.1)"], check=True)
        assert processes.proc_tree_cpu_s(proc.pid) > 0.2
        assert processes.proc_tree_cpu_s(os.getpid()) > 0.0
    finally:
        proc.communicate(b"\n", timeout=30)


def test_direct_and_cato_serve_the_same_load(start_emulator: StartEmulator, tmp_path: Path) -> None:
    urls = [
        start_emulator(model=_MODEL, profile="codellama-7b@a100", speed=4.0).url for _ in range(2)
    ]
    jobs = _jobs()
    arrivals = [(0.1 * i, jobs[i % 2]) for i in range(8)]
    options = peers.PeersOptions(start_timeout_s=120.0, drain_s=60.0)
    setup = frontends.CatoSetup(scenario("rq2").defaults(), "codellama-7b@a100", speed=4.0)
    results = [
        peers.run_system(name, urls, _MODEL, tmp_path, arrivals, jobs, options, setup)
        for name in ("direct", "cato")
    ]
    direct, cato = results
    for r in results:
        assert r.skipped is None
        assert r.requests == 8
        assert r.overall.errors == 0 and r.overall.cancelled == 0
        assert set(r.kinds) == {"complete", "summarize"}
    assert direct.router_cpu_s == 0.0
    assert cato.router_cpu_s > 0.0  # the service process did the routing
    run = peers.PeersRun(1.0, 1.0, 0, 2, results)
    table = peers.markdown(run)
    assert "| cato | complete |" in table and "| direct | 100.0% | 0.00 |" in table


@pytest.mark.skipif(shutil.which("vllm-router") is not None, reason="vllm-router is installed")
def test_a_missing_peer_is_skipped_with_a_message(tmp_path: Path) -> None:
    options = peers.PeersOptions()
    result = peers.run_system(
        "vllm-router-rr", ["http://127.0.0.1:9"], _MODEL, tmp_path, [], [], options
    )
    assert result.skipped is not None and "not installed" in result.skipped


POOL = [f"http://127.0.0.1:{port}" for port in range(9001, 9007)]


def test_cato_is_told_the_slas_and_the_profile_in_wall_time(tmp_path: Path) -> None:
    """At speed 0.25 every SLA is 4 times longer and the prior 4 times slower."""
    from orchestrator.config import parse_config
    from orchestrator.engine_model import load_profile, sped_up
    from orchestrator.policy.state import Rates
    from orchestrator.runtime import prior_rates

    setup = frontends.CatoSetup(scenario("rq2").defaults(), "codellama-7b@a100", speed=0.25)
    text = frontends.cato_config(_MODEL, POOL, "cato_triage", setup, tmp_path)
    config = parse_config(text, "peers.toml")
    assert config.scheduler.policy == "cato_triage"
    assert config.models[0].urls == POOL and config.models[0].min_replicas == len(POOL)
    assert (config.tasks.complete.sla_metric, config.tasks.complete.sla_ms) == ("ttft", 2000)
    assert (config.tasks.summarize.sla_metric, config.tasks.summarize.sla_ms) == ("e2e", 24000)
    slow = sped_up(load_profile("codellama-7b@a100"), 0.25)
    assert prior_rates(config.models[0]) == Rates.from_profile(slow)
    plain = parse_config(frontends.cato_config(_MODEL, POOL), "peers.toml")
    assert plain.tasks.complete.sla_ms == 500 and prior_rates(plain.models[0]) == Rates()


def test_a_live_ablation_sets_catos_scheduler_and_bad_settings_are_refused(
    tmp_path: Path,
) -> None:
    from orchestrator.config import parse_config

    lines = frontends.scheduler_lines(["admission='none'", " late_bound = 3 "])
    setup = frontends.CatoSetup(scenario("rq2").defaults(), "codellama-7b@a100", scheduler=lines)
    config = parse_config(frontends.cato_config(_MODEL, POOL, "cato", setup, tmp_path), "p.toml")
    assert (config.scheduler.admission, config.scheduler.late_bound) == ("none", 3)
    for bad, says in [
        ("admission=none", "needs quotes"),
        ("admission='nope'", "admission: Input should be"),
        ("late_bound", "not KEY=VALUE"),
        ("bogus=1", "bogus: Extra inputs"),
    ]:
        with pytest.raises(ValueError, match=says):
            frontends.scheduler_lines([bad])


def test_a_caching_run_reports_the_hit_rate_and_waits_for_every_call(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """``direct`` over two caching emulators: completions that extend one file find its
    earlier blocks on the emulator that served them; a translation of several chunks
    ends with its last call."""
    caching = ["--enable-prefix-caching"]
    urls = [
        start_emulator(model=_MODEL, profile="codellama-7b@a100", speed=4.0, extra_args=caching).url
        for _ in range(2)
    ]
    defaults = scenario("sessions").defaults()
    source = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(200))
    # even arrivals go to the first emulator, odd ones to the second: two growing files
    completions = [
        TaskRequest(kind=TaskKind.COMPLETE, prompt=f"# file {i % 2}\n" + source[: 1500 + 40 * i])
        for i in range(8)
    ]
    translate = TaskRequest(kind=TaskKind.TRANSLATE, code=source[:3000], target_language="go")
    jobs = [peers.make_job(r, _MODEL, defaults) for r in [*completions, translate]]
    assert len(jobs[-1].peer_bodies) > 1
    arrivals = [(0.2 * i, job) for i, job in enumerate(jobs)]
    options = peers.PeersOptions(start_timeout_s=120.0, drain_s=60.0)
    setup = frontends.CatoSetup(defaults, "codellama-7b@a100", 4.0, prefix_cache=True)
    result = peers.run_system("direct", urls, _MODEL, tmp_path, arrivals, [], options, setup)
    assert result.requests == 9 and result.overall.errors == 0
    assert result.kinds["translate"].e2e_p50_ms is not None
    # every completion after the first of its file finds that file's earlier blocks (57% of
    # the prompt tokens here, the translation's two chunks finding none)
    assert result.prefix_hit_rate is not None and result.prefix_hit_rate > 0.4


STREAMS = {
    "/empty": [b'{"choices":[{"text":"","finish_reason":"stop"}]}', b"[DONE]"],
    "/text": [b'{"choices":[{"text":""}]}', b'{"choices":[{"text":"x"}]}', b"[DONE]"],
    "/error": [b'{"error":{"message":"boom"}}', b"[DONE]"],
    "/cut": [b'{"choices":[{"text":"x"}]}'],  # the server went away before [DONE]
}


async def test_an_answer_counts_once_done_even_without_text(
    serve: Callable[[web.Application], Awaitable[str]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in STREAMS[request.path]:
            await resp.write(b"data: " + chunk + b"\n\n")
        return resp

    app = web.Application()
    for path in STREAMS:
        app.router.add_post(path, handler)
    url = await serve(app)
    async with aiohttp.ClientSession() as session:
        found = {p: await peers._stream(session, url + p, {}) for p in STREAMS}
    assert found["/empty"].ok and found["/empty"].first is not None  # a translation left empty
    assert found["/text"].ok and found["/text"].first is not None
    assert not found["/error"].ok
    assert not found["/cut"].ok


def test_runs_of_an_ablation_merge_into_one_table_that_says_so() -> None:
    def kind(goodput: float, p95: float | None = None) -> dict[str, float | None]:
        return {"goodput_rate": goodput, "ttft_p95_ms": p95, "ttft_p99_ms": None}

    def run(name: str, goodput: float, skipped: str | None = None) -> dict[str, object]:
        system = {
            "name": name,
            "skipped": skipped,
            "prefix_hit_rate": 0.5,
            "overall": {"goodput_rate": goodput},
            "kinds": {"complete": kind(0.9, 612.4), "summarize": kind(0.4)},
        }
        direct = {**system, "name": "direct"}
        return {"systems": [direct, system]}

    table = peers.merged_table([("base", run("cato", 0.77)), ("none", run("cato", 0.8))])
    lines = table.splitlines()
    assert lines[0] == "Merged from 2 runs of `cato bench peers` (one per label)."
    assert lines[4] == "| base | cato | 77.0% | 90.0% | 612 | - | 40.0% | 50.0% |"
    assert lines[5].startswith("| none | cato | 80.0% |") and len(lines) == 6  # no direct
    assert len(peers.merged_table([("x", run("cato", 0.5, skipped="absent"))]).splitlines()) == 4


def test_a_completion_that_asks_to_be_shed_says_so_to_cato_only() -> None:
    defaults = scenario("rq2").defaults()
    request = TaskRequest(kind=TaskKind.COMPLETE, prompt="def f():\n    ", on_late="shed")
    job = peers.make_job(request, _MODEL, defaults)
    assert job.shed and job.cato_body["cato"]["on_late"] == "shed"
    assert "on_late" not in job.peer_body and "cato" not in job.peer_body
    assert not peers.make_job(request.model_copy(update={"on_late": None}), _MODEL, defaults).shed


async def test_the_client_hangs_up_at_the_sla_point_of_a_shed_job(
    serve: Callable[[web.Application], Awaitable[str]],
) -> None:
    """Whatever the front end, a job that asked to be shed is given up at its SLA point
    (the engine behind it then aborts), and one that reached it in time is kept."""
    hung_up: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        delay = float(request.query["first"])
        try:
            await asyncio.sleep(delay)
            await resp.write(b'data: {"choices":[{"text":"x"}]}\n\n')
            await asyncio.sleep(0.3)  # decoding past the SLA: a TTFT job keeps it
            await resp.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            hung_up.append(request.query["first"])
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    url = await serve(app) + "/v1/completions"
    async with aiohttp.ClientSession() as session:
        slow = await peers._stream(session, url + "?first=1.0", {}, expire_s=0.2, ttft=True)
        quick = await peers._stream(session, url + "?first=0.0", {}, expire_s=0.2, ttft=True)
        whole = await peers._stream(session, url + "?first=0.0", {}, expire_s=0.2, ttft=False)
    assert not slow.ok and slow.first is None  # given up before its first text came
    assert quick.ok and quick.first is not None  # its first token came in time
    assert not whole.ok  # an e2e job must end by then
    for _ in range(60):  # the server sees the closed connection when it next writes
        if "1.0" in hung_up:
            break
        await asyncio.sleep(0.05)
    assert "1.0" in hung_up
