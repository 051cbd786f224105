"""The team service end to end: real emulator replicas, the aiohttp app on a free port,
the official ``openai`` client, raw SSE on ``/v1/tasks``, auth, limits and metrics; and
``cato serve`` itself as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api import TaskEvent
from orchestrator.commands.serve import loop_factory, run_service
from orchestrator.config import User, hash_token, load_config
from orchestrator.emulator.process import (
    RunningEmulator,
    StartEmulator,
    health_status,
    launch_emulator,
)
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.http_responses import TextStream
from orchestrator.openai_api import OpenAIWriter
from orchestrator.runtime import task_defaults
from orchestrator.server import (
    SERVICE,
    Service,
    ServiceOptions,
    create_app,
    serve_app,
)
from orchestrator.task_run import TokenDelta

MODEL = "tiny"
PROMPT = "def fibonacci(n):"
ALICE, BOB = "alice-secret-token-1", "bob-secret-token-2"


@pytest.fixture(scope="module")
def emulators() -> Iterator[list[RunningEmulator]]:
    """Two replicas whose outputs always run to max_tokens (so lengths are exact)."""
    extra = ("--mean-output-tokens", "1000000")
    with (
        launch_emulator(model=MODEL, speed=5.0, max_num_seqs=64, extra_args=extra) as one,
        launch_emulator(model=MODEL, speed=5.0, max_num_seqs=64, extra_args=extra) as two,
    ):
        yield [one, two]


@dataclass
class Served:
    url: str
    orch: Orchestrator
    service: Service

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def client(self, token: str = "unused") -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.base_url, api_key=token, max_retries=0, timeout=60.0)


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(emulators: list[RunningEmulator]) -> AsyncIterator[Serve]:
    """Start the app over an orchestrator of the two emulators, with ``ServiceOptions``."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(**options: Any) -> Served:
        specs = [
            ReplicaSpec(id=f"{MODEL}-{i}", url=e.url, model=MODEL, engine="emulated")
            for i, e in enumerate(emulators)
        ]
        orch = Orchestrator(specs, defaults=task_defaults(load_config(None)))
        app = create_app(orch, ServiceOptions(**({"models": [MODEL]} | options)))
        runner = await serve_app(app, "127.0.0.1", 0)
        cleanups.extend([runner.cleanup, orch.close])
        port = runner.addresses[0][1]
        return Served(f"http://127.0.0.1:{port}", orch, app[SERVICE])

    yield start
    for cleanup in cleanups:
        await cleanup()


async def post(
    url: str, data: bytes | str, token: str | None = None
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=headers) as r:
        body = await r.read()
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = body.decode(errors="replace")
        return r.status, dict(r.headers), payload


async def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        return r.status, await r.text()


async def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- the OpenAI-compatible API -----------------------------------------------------------


async def test_openai_completions_streamed_and_whole_agree(serve: Serve) -> None:
    client = (await serve()).client()
    whole = await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16)
    (choice,) = whole.choices
    assert choice.text and choice.finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 16

    stream = await client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage = None
    async for chunk in stream:
        pieces += [c.text for c in chunk.choices]
        usage = chunk.usage or usage
    assert len([p for p in pieces if p]) > 1  # really streamed, token by token
    assert "".join(pieces) == choice.text  # deterministic replicas: same prompt, same text
    assert usage is not None and usage.completion_tokens == 16


async def raw_sse(url: str, body: dict[str, Any]) -> list[bytes]:
    """The ``data:`` payloads of one streamed request, as sent."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        raw = await resp.read()
    assert raw.endswith(b"\n\n") and raw.count(b"data: [DONE]\n\n") == 1
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]


async def test_a_streamed_completion_forwards_the_replicas_chunks(
    emulators: list[RunningEmulator],
) -> None:
    """The replica's own chunks (its id, its finish reason), under the client's model
    name; its usage chunk only when asked for; one [DONE]."""
    alias = "tiny-alias"  # the replicas serve it as "tiny"
    spec = ReplicaSpec(id="r0", url=emulators[0].url, model=alias, served_name=MODEL)
    orch = Orchestrator([spec], defaults=task_defaults(load_config(None)))
    runner = await serve_app(create_app(orch, ServiceOptions(models=[alias])), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/completions"
    body = {"model": alias, "prompt": PROMPT, "max_tokens": 6, "stream": True}
    payloads_of = []
    try:
        for with_usage in (False, True):
            options = {"stream_options": {"include_usage": True}} if with_usage else {}
            payloads_of.append(await raw_sse(url, body | options))
    finally:
        await runner.cleanup()
        await orch.close()
    for with_usage, payloads in zip((False, True), payloads_of, strict=True):
        assert payloads[-1] == b"[DONE]"
        chunks = [json.loads(p) for p in payloads[:-1]]
        assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
        assert {c["model"] for c in chunks} == {alias}
        texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
        assert len(texts) == 6 and all(texts)
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
        usage = [c["usage"] for c in chunks if c.get("usage")]
        assert usage == ([{"prompt_tokens": 5, "total_tokens": 11, "completion_tokens": 6}]
                         if with_usage else [])  # fmt: skip
    records = list(orch.recorder.records())
    assert [r.outcome for r in records] == ["ok", "ok"] and all(r.first_token for r in records)


async def test_a_replica_killed_mid_forward_ends_the_stream_with_an_error(
    start_emulator: StartEmulator,
) -> None:
    doomed = start_emulator(model=MODEL, speed=1.0, extra_args=("--mean-output-tokens", "1000000"))
    spec = ReplicaSpec(id="r0", url=doomed.url, model=MODEL, engine="emulated")
    orch = Orchestrator([spec], defaults=task_defaults(load_config(None)))
    runner = await serve_app(create_app(orch, ServiceOptions(models=[MODEL])), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/completions"
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 3000, "stream": True}
    try:
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
            first = await resp.content.readuntil(b"\n\n")
            doomed.proc.kill()
            rest = await asyncio.wait_for(resp.content.read(), 60)
    finally:
        await runner.cleanup()
        await orch.close()
    assert json.loads(first.removeprefix(b"data: "))["choices"][0]["text"]
    events = [e.removeprefix(b"data: ") for e in rest.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 500 and "failed" in error["message"]
    assert [r.outcome for r in orch.recorder.records()] == ["error"]


async def test_a_client_leaving_a_forwarded_stream_aborts_it_at_the_replica(
    start_emulator: StartEmulator,
) -> None:
    emulator = start_emulator(
        model=MODEL, speed=1.0, extra_args=("--mean-output-tokens", "1000000")
    )
    spec = ReplicaSpec(id="r0", url=emulator.url, model=MODEL, engine="emulated")
    orch = Orchestrator([spec], defaults=task_defaults(load_config(None)))
    runner = await serve_app(create_app(orch, ServiceOptions(models=[MODEL])), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/completions"
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 3000, "stream": True}
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(url, json=body)
            assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: {")
            resp.close()  # hang up mid-stream
        await wait_for(lambda: orch.status().in_flight == 0, "the call released")
        aborted = 0.0
        deadline = time.monotonic() + 30
        while aborted < 1 and time.monotonic() < deadline:
            async with aiohttp.ClientSession() as http, http.get(emulator.url + "/metrics") as m:
                text = await m.text()
            aborted = sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "cato_emulator_aborted_total"
            )
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
        await orch.close()
    assert aborted == 1
    assert [r.outcome for r in orch.recorder.records()] == ["cancelled"]


async def test_openai_chat_with_and_without_the_cato_extension(serve: Serve) -> None:
    served = await serve()
    client = served.client()
    ask: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "a function that adds two numbers"}
    ]
    chat = await client.chat.completions.create(model=MODEL, messages=ask, max_tokens=12)
    content = chat.choices[0].message.content
    assert content and chat.choices[0].message.role == "assistant"

    stream = await client.chat.completions.create(
        model=MODEL,
        messages=ask,
        max_tokens=12,
        stream=True,
    )
    deltas = [c.choices[0].delta async for c in stream if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == content

    code: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "def add(a, b):\n    return a + b\n"}
    ]
    summary = await client.chat.completions.create(
        model=MODEL,
        messages=code,
        max_tokens=10,
        extra_body={"cato": {"task": "summarize", "sla_ms": 5000}},
    )
    assert summary.choices[0].message.content
    streamed = await client.completions.create(
        model=MODEL,
        prompt="def add(a, b):\n    return a + b\n",
        max_tokens=10,
        stream=True,
        extra_body={"cato": {"task": "summarize", "sla_ms": 5000}},
    )
    assert "".join([c.choices[0].text async for c in streamed if c.choices])

    records = [(r.kind, r.metric, r.target_ms, r.outcome) for r in served.orch.recorder.records()]
    assert records == [
        ("generate", "ttft", 1000.0, "ok"),  # chat without ``cato``: generate, default SLA
        ("generate", "ttft", 1000.0, "ok"),
        ("summarize", "e2e", 5000.0, "ok"),  # the extension's kind and SLA
        ("summarize", "e2e", 5000.0, "ok"),
    ]


async def test_tasks_endpoint_streams_task_events_as_sse(serve: Serve) -> None:
    served = await serve()
    body = json.dumps({"kind": "complete", "prompt": PROMPT, "max_tokens": 12})
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(served.url + "/v1/tasks", data=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = [line async for line in resp.content]
    data = [line[len(b"data: ") :].strip() for line in lines if line.startswith(b"data: ")]
    assert data[-1] == b"[DONE]"
    events = [TaskEvent.model_validate_json(d) for d in data[:-1]]
    assert events[0].type == "started" and events[-1].type == "done"
    assert [e.type for e in events].count("done") == 1
    tokens = [e.text or "" for e in events if e.type == "token"]
    done = events[-1]
    assert len(tokens) > 1 and "".join(tokens) == done.result
    assert done.usage is not None and done.usage.completion_tokens == 12
    assert done.ttft_ms is not None and done.e2e_ms is not None and done.sla_met is not None
    placed = {e.replica for e in events if e.type == "node" and e.replica}
    assert placed and placed <= {f"{MODEL}-0", f"{MODEL}-1"}

    status, _, err = await post(served.url + "/v1/tasks", json.dumps({"kind": "summarize"}))
    assert status == 400 and "needs 'code'" in err["error"]["message"]


# -- auth and per-user limits ---------------------------------------------------------------


def users(limit: int = 8) -> list[User]:
    return [
        User(name="alice", token_sha256=hash_token(ALICE), max_concurrency=limit),
        User(name="bob", token_sha256=hash_token(BOB), max_concurrency=limit),
    ]


async def test_bearer_tokens_are_required_checked_and_never_logged(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    served = await serve(users=users())
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 4})
    url = served.url + "/v1/completions"

    status, headers, err = await post(url, body)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert err["error"]["message"] == "missing bearer token"
    with pytest.raises(openai.AuthenticationError):
        await served.client("not-" + ALICE).completions.create(model=MODEL, prompt=PROMPT)
    for path in ("/v1/models", "/v1/status"):
        assert (await get(served.url + path))[0] == 401
        assert (await get(served.url + path, "wrong"))[0] == 401
        assert (await get(served.url + path, BOB))[0] == 200
    assert (await get(served.url + "/health"))[0] == 200  # probes need no token

    ok = await served.client(ALICE).completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    assert ok.choices[0].text
    status, _, _ = await post(served.url + "/v1/tasks", body.replace('"model"', '"x"'), BOB)
    assert status == 400  # authenticated, then validated
    assert len(list(served.orch.recorder.records())) == 1
    assert "task " in caplog.text and "user alice" in caplog.text  # the service did log
    for token in (ALICE, BOB, "not-" + ALICE):
        assert token not in caplog.text


async def test_per_user_concurrency_limit_answers_429_with_retry_after(serve: Serve) -> None:
    served = await serve(users=users(limit=1))
    alice = served.client(ALICE)
    long_one = await alice.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=3900, stream=True
    )
    chunks = long_one.__aiter__()
    assert (await chunks.__anext__()).choices[0].text  # in flight: ~4 s of tokens to go
    with pytest.raises(openai.RateLimitError) as refused:
        await alice.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    assert refused.value.response.headers["Retry-After"] == "1"
    assert "limit 1" in refused.value.message
    bob = await served.client(BOB).completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    assert bob.choices[0].text  # the limit is per user

    await long_one.close()  # hanging up cancels the task and frees the slot
    await wait_for(lambda: served.service.users.active.get("alice") == 0, "alice's slot back")
    assert [r.outcome for r in served.orch.recorder.records()] == ["ok", "cancelled"]
    again = await alice.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    assert again.choices[0].text
    assert served.orch.status().in_flight == 0


# -- SLA floors and late calls shed on request ------------------------------------------------


async def task_events(url: str, body: dict[str, Any], token: str | None = None) -> list[TaskEvent]:
    """The ``TaskEvent`` s of one ``POST /v1/tasks``."""
    status, _, text = await post(url + "/v1/tasks", json.dumps(body), token)
    assert status == 200, text
    lines = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert lines[-1] == "[DONE]"
    return [TaskEvent.model_validate_json(line) for line in lines[:-1]]


def tight(on_late: str | None = None) -> dict[str, Any]:
    """A completion whose 1 ms SLA no replica can meet: late on arrival at a replica."""
    body: dict[str, Any] = {"kind": "complete", "prompt": PROMPT, "max_tokens": 4}
    body["sla"] = {"metric": "ttft", "target_ms": 1}
    return body | ({"on_late": on_late} if on_late else {})


def priorities(events: list[TaskEvent]) -> set[int | None]:
    return {e.priority for e in events if e.type == "node" and e.replica}


async def test_a_late_call_that_asked_to_be_shed_ends_at_once_with_sla_unreachable(
    serve: Serve,
) -> None:
    served = await serve()
    shed = await task_events(served.url, tight("shed"))
    assert [e.type for e in shed][-1] == "error" and not any(e.type == "token" for e in shed)
    assert shed[-1].code == "sla_unreachable" and "deadline" in (shed[-1].error or "")
    # Without opting in it is served, late. Its bounded wait (deadline + its 1 ms budget)
    # is over before it reaches a replica, so it is not held back (priority 2, not 3).
    late = await task_events(served.url, tight())
    assert late[-1].type == "done" and late[-1].sla_met is False
    assert priorities(late) == {2}

    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4}
    body["cato"] = {"sla_ms": 1, "on_late": "shed"}
    for stream in (False, True):
        status, headers, err = await post(
            served.url + "/v1/completions", json.dumps(body | {"stream": stream})
        )
        assert status == 503 and headers["Retry-After"] == "1"
        assert err["error"]["type"] == "ServiceUnavailableError"
        assert "asked to end rather than answer late" in err["error"]["message"]
    assert served.orch.status().in_flight == 0 and served.orch.status().queued == 0
    outcomes = [r.outcome for r in served.orch.recorder.records()]
    assert outcomes == ["error", "ok", "error", "error"]


async def test_sla_floors_per_kind_and_per_user_set_the_effective_sla(serve: Serve) -> None:
    alice = User(name="alice", token_sha256=hash_token(ALICE), sla_floor_ms={"complete": 0.002})
    bob = User(name="bob", token_sha256=hash_token(BOB))
    served = await serve(users=[alice, bob], sla_floors_ms={"complete": 500.0})
    # Bob's 1 ms is raised to the kind's floor: on time, so neither late nor shed.
    floored = await task_events(served.url, tight("shed"), BOB)
    assert floored[-1].type == "done" and priorities(floored) == {2}
    # Alice may go down to 0.002 ms: still unreachable, so her request is shed.
    shed = await task_events(served.url, tight("shed"), ALICE)
    assert shed[-1].type == "error" and shed[-1].code == "sla_unreachable"
    # A looser SLA than the floor is the client's to choose.
    loose = tight("shed") | {"sla": {"metric": "ttft", "target_ms": 60_000}}
    relaxed = await task_events(served.url, loose, BOB)
    assert relaxed[-1].type == "done" and priorities(relaxed) == {2}
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4}
    body["cato"] = {"sla_ms": 0.001, "on_late": "shed"}
    status, _, whole = await post(served.url + "/v1/completions", json.dumps(body), BOB)
    assert status == 200 and whole["choices"][0]["text"]


# -- limits and errors ---------------------------------------------------------------------


async def test_limits_and_bad_requests_get_clear_4xx(serve: Serve) -> None:
    served = await serve(max_body_bytes=4096, max_prompt_chars=1000, max_tokens_limit=100)
    url = served.url + "/v1/completions"

    def body(**fields: Any) -> str:
        return json.dumps({"model": MODEL, "prompt": PROMPT} | fields)

    cases: list[tuple[str, int, str]] = [
        (body(prompt="x" * 5000), 413, "over the limit of 4096 bytes"),
        (body(prompt="x" * 2000), 400, "exceeds the limit of 1000"),
        (body(max_tokens=101), 400, "max_tokens 101 exceeds the limit of 100"),
        ('{"model": "tiny", "prompt": ', 400, "invalid JSON"),
        ("[1, 2]", 400, "must be an object"),
        (body(model="gpt-4"), 404, "`gpt-4` does not exist"),
        (body(n=2), 400, "only n=1"),
        (body(cato={"task": "poem"}), 400, "cato.task"),
        (body(cato={"task": "translate"}), 400, "target_language"),
    ]
    for data, status, message in cases:
        got, _, err = await post(url, data)
        assert (got, message in err["error"]["message"]) == (status, True), (data[:60], err)
    with pytest.raises(openai.NotFoundError):
        await served.client().chat.completions.create(
            model="nope",
            messages=[{"role": "user", "content": "hi"}],
        )
    assert served.orch.recorder.overall().requests == 0  # nothing reached a replica


async def test_health_models_and_prometheus_metrics(serve: Serve) -> None:
    served = await serve()
    assert await get(served.url + "/health") == (200, "ok")
    models = await served.client().models.list()
    assert [m.id for m in models.data] == [MODEL]

    await served.client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    status, text = await get(served.url + "/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("cato_requests_total", kind="complete", outcome="ok") == 1
    assert value("cato_ttft_seconds_count", kind="complete") == 1
    assert value("cato_e2e_seconds_count", kind="complete") == 1
    met = value("cato_sla_total", kind="complete", result="met")
    assert met + value("cato_sla_total", kind="complete", result="missed") == 1
    assert value("cato_replicas", model=MODEL, state="ready") == 2
    assert value("cato_replicas", model=MODEL, state="failed") == 0

    for rid in (f"{MODEL}-0", f"{MODEL}-1"):
        served.orch.set_lifecycle(rid, "pending")
    assert (await get(served.url + "/health"))[0] == 503  # nothing ready to serve
    served.orch.set_lifecycle(f"{MODEL}-0", "ready")
    assert (await get(served.url + "/health"))[0] == 200


# -- ``cato serve`` as a process -----------------------------------------------------------

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
STARTED = re.compile(r"replica \S+: started pid (\d+)")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_log(log: Path, pattern: re.Pattern[str], proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = pattern.search(log.read_text(errors="replace"))
        if found:
            return found.group(1)
        assert proc.poll() is None, log.read_text(errors="replace")
        time.sleep(0.05)
    raise AssertionError(f"{pattern.pattern!r} never logged:\n{log.read_text()}")


@contextlib.contextmanager
def cato_serve(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``cato serve ARGS`` in its own process group, killed (replicas too) if still up."""
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "orchestrator.cli", "serve", *args]
    argv += ["--workdir", str(tmp_path / "replicas")]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in map(int, STARTED.findall(log.read_text(errors="replace"))):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def test_cato_serve_default_streams_then_stops_its_replicas_on_sigterm(tmp_path: Path) -> None:
    with cato_serve(tmp_path, "--port", "0") as (proc, log):
        url = wait_for_log(log, LISTENING, proc)
        deadline = time.monotonic() + 60
        while health_status(url) != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, stream=True)
        text = "".join(c.choices[0].text for c in stream if c.choices)
        assert text

        replicas = [int(p) for p in STARTED.findall(log.read_text())]
        assert len(replicas) == 2 and all(group_alive(p) for p in replicas)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        output = log.read_text()
        assert not [p for p in replicas if group_alive(p)], output
        assert "EMULATED replicas" in output and f"OpenAI base URL {url}/v1" in output
        assert "no replica is left running" in output


def test_cato_serve_sheds_late_calls_of_a_kind_that_defaults_to_it(tmp_path: Path) -> None:
    """cato.toml to HTTP: completions default to ``on_late = "shed"`` and may ask for SLAs
    down to 0.001 ms; one no replica can meet ends at once with a 503."""
    config = tmp_path / "cato.toml"
    config.write_text(
        '[[models]]\nname = "tiny"\nengine = "emulated"\nprofile = "tiny@cpu"\n'
        'min_replicas = 1\n\n[tasks.complete]\nsla_floor_ms = 0.001\non_late = "shed"\n'
    )
    with cato_serve(tmp_path, "--port", "0", "--config", str(config)) as (proc, log):
        url = wait_for_log(log, LISTENING, proc)
        deadline = time.monotonic() + 60
        while health_status(url) != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        tight = {"cato": {"sla_ms": 1}}
        with pytest.raises(openai.APIStatusError) as shed:
            client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body=tight)
        assert shed.value.status_code == 503
        assert shed.value.response.headers["Retry-After"] == "1"
        assert "rather than answer late" in shed.value.message
        waits = {"cato": {"sla_ms": 1, "on_late": "wait"}}
        late = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body=waits)
        assert late.choices[0].text
        on_time = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
        assert on_time.choices[0].text
        assert "sla_unreachable" in log.read_text()


def test_the_service_runs_on_uvloop_when_installed_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CATO_UVLOOP", "0")
    assert loop_factory() is None
    monkeypatch.delenv("CATO_UVLOOP")
    try:
        import uvloop
    except ImportError:
        assert loop_factory() is None
    else:
        assert loop_factory() is uvloop.new_event_loop

    async def loop_name() -> None:
        names.append(type(asyncio.get_running_loop()).__module__)

    names: list[str] = []
    run_service(loop_name())
    assert names == (["uvloop"] if loop_factory() else ["asyncio.unix_events"])


def test_cato_serve_on_a_taken_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with cato_serve(tmp_path, "--port", str(port)) as (proc, log):
            assert proc.wait(timeout=60) == 1
            output = log.read_text()
    assert f"port {port} on 127.0.0.1 is already in use" in output
    assert "--port" in output and not STARTED.search(output)  # no replica was started


# -- the per-token path ---------------------------------------------------------------------


@given(st.text(), st.text(min_size=1, max_size=20), st.booleans())
def test_openai_chunks_are_the_frames_byte_for_byte(text: str, model: str, chat: bool) -> None:
    """``chunk`` fills a template; it must give exactly what a full ``json.dumps`` of the
    frame gives, for any text and model name (the chat's first chunk names the role)."""
    fast = OpenAIWriter(chat=chat, model=model)
    slow = OpenAIWriter(chat=chat, model=model)
    slow.id, slow.created = fast.id, fast.created
    for piece in ("first", text, text + '\u2192\n"', text):
        assert fast.chunk(piece) == slow._frame([slow._choice(piece, None)])


@given(st.text(), st.text(min_size=1), st.floats(min_value=0, max_value=1e7))
def test_token_events_are_written_without_their_model(text: str, task: str, t_ms: float) -> None:
    delta = TokenDelta(task, "llm", text, t_ms)
    assert json.loads(delta.json()) == json.loads(delta.event().model_dump_json(exclude_none=True))


async def test_a_write_to_a_client_that_left_ends_the_request() -> None:
    """The task's model call writes the text; when the client is gone, it cancels the
    handler (as aiohttp does on a lost connection) instead of generating on."""

    class GoneResponse:
        async def write(self, data: bytes) -> None:
            raise ConnectionResetError("Cannot write to closing transport")

    started = asyncio.Event()
    out: list[TextStream] = []

    async def handler() -> None:
        stream = TextStream(None, OpenAIWriter(chat=False, model=MODEL))  # type: ignore[arg-type]
        stream.resp = GoneResponse()  # type: ignore[assignment]
        out.append(stream)
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(handler())
    await started.wait()
    await out[0].write(["x"])
    with pytest.raises(asyncio.CancelledError):
        await task
    assert out[0].gone
    await out[0].write(["y"])  # nothing more is written
