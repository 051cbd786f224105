"""The team service against hostile and careless clients: input that used to raise
(deep JSON, bad bytes), malformed tokens, lax types, ``max_tokens`` past the model's
context, and slow or idle sockets, over a real emulator replica.

Slow-client tests run with limits of about a second and check that the server closes
the socket (EOF on our side), not how fast it does so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from orchestrator.config import User, hash_token, load_config
from orchestrator.emulator.process import RunningEmulator, launch_emulator
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.runtime import task_defaults
from orchestrator.server import (
    SERVICE,
    HttpLimits,
    Service,
    ServiceOptions,
    create_app,
    serve_app,
)

MODEL = "tiny"
TOKEN = "hardening-test-token-0123456789"
FAST = HttpLimits(
    keepalive_timeout_s=1.0, header_timeout_s=1.0, body_timeout_s=1.0, max_connections=64
)
# Far past every limit above: a socket still open then was never going to be closed.
CLOSED_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    extra = ("--mean-output-tokens", "1000000")  # outputs run to max_tokens
    with launch_emulator(model=MODEL, speed=5.0, max_num_seqs=64, extra_args=extra) as one:
        yield one


@dataclass
class Served:
    url: str
    port: int
    orch: Orchestrator
    service: Service


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(emulator: RunningEmulator) -> AsyncIterator[Serve]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(concurrency_limit: int = 16, **options: Any) -> Served:
        spec = ReplicaSpec(
            id=f"{MODEL}-0",
            url=emulator.url,
            model=MODEL,
            engine="emulated",
            concurrency_limit=concurrency_limit,
        )
        orch = Orchestrator([spec], defaults=task_defaults(load_config(None)))
        app = create_app(orch, ServiceOptions(**({"models": [MODEL]} | options)))
        runner = await serve_app(app, "127.0.0.1", 0)
        cleanups.extend([runner.cleanup, orch.close])
        port = runner.addresses[0][1]
        return Served(f"http://127.0.0.1:{port}", port, orch, app[SERVICE])

    yield start
    for cleanup in cleanups:
        await cleanup()


async def post(url: str, data: bytes | str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=headers) as r:
        raw = await r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw.decode(errors="replace")


@contextlib.asynccontextmanager
async def raw_socket(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes the connection (fails if it never does)."""
    data = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(CLOSED_WITHIN_S):
            while chunk := await reader.read(65536):
                data += chunk
    return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def completion(**fields: Any) -> str:
    return json.dumps({"model": MODEL, "prompt": "def f():", "max_tokens": 4} | fields)


# -- input that used to be a 500 ---------------------------------------------------------


async def test_deep_json_and_undecodable_bodies_are_400s_with_a_json_error(
    serve: Serve,
) -> None:
    served = await serve()
    bodies: list[bytes] = [
        b"[" * 100_000,
        b'{"a":' * 100_000,
        b'{"model": "tiny", "prompt": "\xff\xfe"}',
        b"\x80\x81\x82",
        b'{"model": "tiny", "prompt": "x"',
        b"",
    ]
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/tasks"):
        for data in bodies:
            status, err = await post(served.url + path, data)
            assert status == 400, (path, data[:20], err)
            assert "invalid JSON body" in err["error"]["message"]
    assert served.orch.recorder.overall().requests == 0


async def test_malformed_or_undecodable_authorization_headers_are_401s(serve: Serve) -> None:
    served = await serve(users=[User(name="alice", token_sha256=hash_token(TOKEN))])
    body = completion().encode()
    headers: list[bytes] = [
        b"Bearer \xff\xfe\xfd",
        b"Bearer " + TOKEN.encode() + b"\xc3",
        b"Bearer tok\ten",  # (control bytes are the HTTP parser's 400)
        b"Bearer",
        b"Basic " + TOKEN.encode(),
        b"\xff",
    ]
    for header in headers:
        async with raw_socket(served.port) as (reader, writer):
            writer.write(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nAuthorization: " + header + b"\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            response = await read_to_eof(reader)
        assert status_of(response) == 401, (header, response[:200])
        assert b'"AuthenticationError"' in response
    status, _ = await post(served.url + "/v1/completions", completion(), TOKEN)
    assert status == 200


# -- strict types and the model's context ----------------------------------------------


async def test_lax_types_on_openai_fields_are_400s(serve: Serve) -> None:
    served = await serve()
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/completions", {"stream": "yes"}, "stream"),
        ("/v1/completions", {"stream": 1}, "stream"),
        ("/v1/completions", {"max_tokens": True}, "max_tokens"),
        ("/v1/completions", {"max_tokens": "8"}, "max_tokens"),
        ("/v1/completions", {"max_tokens": 8.5}, "max_tokens"),
        ("/v1/completions", {"n": "1"}, "n"),
        ("/v1/completions", {"temperature": "0.5"}, "temperature"),
        ("/v1/completions", {"prompt": 42}, "prompt"),
        ("/v1/completions", {"cato": {"sla_ms": True}}, "cato.sla_ms"),
        ("/v1/chat/completions", chat | {"stream": "true"}, "stream"),
        ("/v1/chat/completions", chat | {"max_completion_tokens": False}, "max_completion"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": 5}]}, "messages"),
    ]
    for path, fields, where in cases:
        data = json.dumps(fields) if "messages" in fields else completion(**fields)
        status, err = await post(served.url + path, data)
        assert status == 400, (fields, err)
        assert where in err["error"]["message"], (fields, err)
    assert served.orch.recorder.overall().requests == 0
    status, _ = await post(served.url + "/v1/completions", completion(temperature=1))
    assert status == 200  # a JSON integer is still a number


async def test_max_tokens_past_the_models_context_is_a_400_naming_the_limit(
    serve: Serve,
) -> None:
    served = await serve(max_tokens_limit=8192, context_lengths={MODEL: 4096})
    for path, data in [
        ("/v1/completions", completion(max_tokens=4096)),
        ("/v1/completions", completion(max_tokens=4095, prompt="x" * 400)),
        (
            "/v1/chat/completions",
            json.dumps(
                {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": "a"}]}
            ),
        ),
    ]:
        status, err = await post(served.url + path, data)
        message = err["error"]["message"]
        assert status == 400 and "context length of 4096 tokens" in message, err
        assert "at most" in message and f"{MODEL}-0" not in message
    status, err = await post(served.url + "/v1/completions", completion(prompt="x" * 20_000))
    assert status == 400 and "shorten the input" in err["error"]["message"]
    assert served.orch.recorder.overall().requests == 0
    status, _ = await post(served.url + "/v1/completions", completion(max_tokens=4000))
    assert status == 200


async def test_a_replicas_refusal_does_not_name_the_replica(serve: Serve) -> None:
    served = await serve(max_tokens_limit=8192)  # no context known: the replica checks
    status, err = await post(served.url + "/v1/completions", completion(max_tokens=4096))
    message = err["error"]["message"]
    assert status == 400 and "maximum context length is 4096" in message, err
    assert f"{MODEL}-0" not in message and "replica" not in message


# -- slow and idle clients -----------------------------------------------------------------

REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_an_idle_keep_alive_connection_is_closed(serve: Serve) -> None:
    served = await serve(http=FAST)
    async with raw_socket(served.port) as (reader, writer):
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        assert status_of(head) == 200 and b"close" not in head.lower()
        await reader.readexactly(2)  # "ok"
        assert await read_to_eof(reader) == b""


async def test_a_connection_that_sends_nothing_is_closed(serve: Serve) -> None:
    served = await serve(http=FAST)
    async with raw_socket(served.port) as (reader, _):
        assert await read_to_eof(reader) == b""


async def test_headers_sent_a_byte_at_a_time_are_cut_off(serve: Serve) -> None:
    served = await serve(http=HttpLimits(keepalive_timeout_s=60.0, header_timeout_s=1.0))
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    async with raw_socket(served.port) as (reader, writer):
        closed = asyncio.create_task(read_to_eof(reader))
        sent = 0
        with contextlib.suppress(ConnectionError):
            for byte in request:  # 0.1 s a byte: 20 s for the whole head
                if closed.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.1)
        assert await closed == b""  # closed without an answer
    assert sent < len(request)  # ... before the head was complete


async def test_a_body_shorter_than_its_content_length_gets_408_and_a_close(
    serve: Serve,
) -> None:
    served = await serve(http=FAST)
    async with raw_socket(served.port) as (reader, writer):
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + completion().encode()
        )
        response = await read_to_eof(reader)
    assert status_of(response) == 408, response[:200]
    assert b"did not arrive within 1 s" in response
    assert served.orch.recorder.overall().requests == 0


async def test_connections_past_the_cap_get_503_and_a_close(serve: Serve) -> None:
    served = await serve(http=HttpLimits(max_connections=3))
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(raw_socket(served.port)) for _ in range(3)]
        await asyncio.sleep(0.2)  # the server has seen all three
        async with raw_socket(served.port) as (reader, _):
            response = await read_to_eof(reader)
        assert status_of(response) == 503 and b"too many open connections" in response
        reader, writer = held[0]
        writer.write(REQUEST)  # the held ones still work
        assert status_of(await reader.readuntil(b"\r\n\r\n")) == 200
    deadline = time.monotonic() + CLOSED_WITHIN_S
    while True:  # with the three gone, new connections are served again
        async with aiohttp.ClientSession() as http, http.get(served.url + "/health") as r:
            if r.status == 200:
                break
        assert time.monotonic() < deadline, "connections never freed"
        await asyncio.sleep(0.1)


# -- /metrics behind the token, or not -------------------------------------------------


@pytest.mark.parametrize("metrics_auth", [True, False])
async def test_metrics_needs_a_token_as_configured(serve: Serve, metrics_auth: bool) -> None:
    alice = User(name="alice", token_sha256=hash_token(TOKEN))
    served = await serve(users=[alice], metrics_auth=metrics_auth)

    async def get(path: str, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as http,
            http.get(served.url + path, headers=headers) as r,
        ):
            return r.status

    assert await get("/metrics", TOKEN) == 200
    assert await get("/metrics", None) == (401 if metrics_auth else 200)
    assert await get("/metrics", "not-a-token-of-anyone-here") == (401 if metrics_auth else 200)
    assert await get("/v1/status", None) == 401  # always behind the token
    assert await get("/health", None) == 200  # never


# -- sustained overload: token budgets and the queue bound -----------------------------


async def test_a_spent_token_budget_is_a_429_with_retry_after_for_that_user_only(
    serve: Serve,
) -> None:
    alice = User(name="alice", token_sha256=hash_token(TOKEN), tokens_per_minute=60)
    bob_token = TOKEN[::-1]
    bob = User(name="bob", token_sha256=hash_token(bob_token))
    served = await serve(users=[alice, bob])
    url = served.url + "/v1/completions"
    big = completion(prompt="x" * 400, max_tokens=8)  # about 100 prompt tokens
    assert (await post(url, big, TOKEN))[0] == 200  # admitted with budget left; now in debt
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=big, headers={"Authorization": f"Bearer {TOKEN}"}) as r,
    ):
        err = await r.json()
        assert r.status == 429, err
        assert "budget of 60 tokens per minute" in err["error"]["message"]
        # about 40 tokens of debt at 1 token a second
        assert int(r.headers["Retry-After"]) >= 30
    assert (await post(url, big, bob_token))[0] == 200  # bob has no budget to spend
    assert served.orch.recorder.overall().requests == 2


async def test_a_request_bigger_than_the_budget_left_waits_for_it(serve: Serve) -> None:
    alice = User(name="alice", token_sha256=hash_token(TOKEN), tokens_per_minute=300)
    served = await serve(users=[alice])
    url = served.url + "/v1/completions"
    assert (await post(url, completion(prompt="x" * 400, max_tokens=8), TOKEN))[0] == 200
    # about 108 of 300 used: a request that may use about 208 does not fit yet ...
    status, err = await post(url, completion(prompt="x" * 800, max_tokens=8), TOKEN)
    assert status == 429 and "this request may use" in err["error"]["message"], err
    # ... while a small one does (the bucket is not empty)
    assert (await post(url, completion(prompt="x", max_tokens=8), TOKEN))[0] == 200


async def test_past_the_queue_bound_requests_get_503_with_retry_after(serve: Serve) -> None:
    served = await serve(max_queued=1, concurrency_limit=1, max_tokens_limit=8192)
    url = served.url + "/v1/completions"
    slow = completion(max_tokens=3000)  # holds the replica's only slot for a while
    running = asyncio.create_task(post(url, slow))
    await wait_for(lambda: served.orch.status().in_flight == 1)
    queued = asyncio.create_task(post(url, slow))
    await wait_for(lambda: served.orch.status().queued == 1)
    async with aiohttp.ClientSession() as http, http.post(url, data=completion()) as r:
        err = await r.json()
        assert r.status == 503 and "queue is full" in err["error"]["message"], err
        assert int(r.headers["Retry-After"]) >= 1
    for task in (running, queued):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await wait_for(lambda: served.orch.status().queued + served.orch.status().in_flight == 0)
    await asyncio.sleep(served.service.queue.refresh_s)  # a queue reading's lifetime
    assert (await post(url, completion()))[0] == 200  # room again


async def wait_for(check: Callable[[], bool], timeout_s: float = CLOSED_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
