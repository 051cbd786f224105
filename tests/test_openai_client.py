"""The replica client against small real HTTP servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.api import Usage
from orchestrator.replicas.openai_client import (
    Finished,
    ReplicaClient,
    ReplicaError,
    ReplicaHTTPError,
    ReplicaProtocolError,
    ReplicaTimeout,
    ReplicaUnreachable,
    SSEDecoder,
    SSEEvent,
    StreamEvent,
    Token,
)
from orchestrator.replicas.progress import loads_json as _loads

Serve = Callable[[web.Application], Awaitable[str]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HANG_GUARD_S = 5.0


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A port that is bound but not listening, so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def app_with(path: str, handler: Handler, method: str = "POST") -> web.Application:
    app = web.Application()
    app.router.add_route(method, path, handler)
    return app


def counter_clock() -> Callable[[], float]:
    ticks = itertools.count(1)
    return lambda: float(next(ticks))


def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def completion_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "m",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return {"id": "cmpl-1", "object": "text_completion", "choices": [], "usage": usage}


def vllm_completion_stream(texts: list[str], *, prompt_tokens: int = 7) -> str:
    """What vLLM sends for a streamed completion with ``include_usage``."""
    body = "".join(sse(completion_chunk(t)) for t in texts[:-1])
    body += sse(completion_chunk(texts[-1], "stop"))
    body += sse(usage_chunk(prompt_tokens, len(texts)))
    return body + "data: [DONE]\n\n"


async def open_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


def fixed_stream(raw: bytes, *, piece: int = 0) -> Handler:
    """A handler that sends ``raw`` (in pieces of ``piece`` bytes when > 0), then ends."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await open_sse(request)
        step = piece or len(raw)
        for i in range(0, len(raw), step):
            await resp.write(raw[i : i + step])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    return handler


async def collect(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in stream]


def tokens_of(events: list[StreamEvent]) -> list[Token]:
    return [e for e in events if isinstance(e, Token)]


async def expect_error(stream: AsyncIterator[StreamEvent]) -> tuple[list[Token], ReplicaError]:
    """Consume a stream that must fail; return the tokens seen before the error."""
    seen: list[Token] = []
    with pytest.raises(ReplicaError) as info:
        async for event in stream:
            assert isinstance(event, Token)
            seen.append(event)
    return seen, info.value


# --------------------------------------------------------------------------- SSE decoder

SAMPLE_SSE = (
    ": keepalive comment\r\n"
    "\r\n"
    'data: {"a": "caf\u00e9 \u2192 \U0001f600"}\r\n\r\n'
    "event: delta\r"
    "data:no-space\r"
    "data:  two spaces\r\r"
    "retry: 100\n"
    "data: [DONE]\n\n"
).encode()
SAMPLE_EVENTS = [
    SSEEvent(data='{"a": "caf\u00e9 \u2192 \U0001f600"}'),
    SSEEvent(data="no-space\n two spaces", event="delta"),
    SSEEvent(data="[DONE]"),
]


def decode_in_pieces(raw: bytes, cuts: list[int]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    bounds = [0, *sorted(cuts), len(raw)]
    for lo, hi in itertools.pairwise(bounds):
        events.extend(decoder.feed(raw[lo:hi]))
    return events + decoder.close()


def test_sse_decoder_whole_stream() -> None:
    assert decode_in_pieces(SAMPLE_SSE, []) == SAMPLE_EVENTS


def test_sse_decoder_every_single_split_point() -> None:
    for cut in range(len(SAMPLE_SSE) + 1):
        assert decode_in_pieces(SAMPLE_SSE, [cut]) == SAMPLE_EVENTS, cut


@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE_SSE)), max_size=40))
def test_sse_decoder_any_fragmentation(cuts: list[int]) -> None:
    assert decode_in_pieces(SAMPLE_SSE, cuts) == SAMPLE_EVENTS


def test_sse_decoder_flushes_last_event_without_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n\ndata: [DONE]") == [SSEEvent(data="x")]
    assert decoder.close() == [SSEEvent(data="[DONE]")]


def test_sse_decoder_rejects_invalid_utf8() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        SSEDecoder().feed(b"data: \xff\xfe\n\n")


# --------------------------------------------------------------------------- streaming


async def test_completion_stream_in_awkward_fragments(serve: Serve) -> None:
    texts = ["def", " f(", "x):", "\r\n    r\u00e9turn \u2192", " x"]
    raw = vllm_completion_stream(texts).replace("\n", "\r\n").encode()
    requests: list[tuple[dict[str, Any], dict[str, str]]] = []
    send = fixed_stream(raw, piece=3)

    async def handler(request: web.Request) -> web.StreamResponse:
        requests.append((await request.json(), dict(request.headers)))
        return await send(request)

    url = await serve(app_with("/v1/completions", handler))
    async with ReplicaClient(url + "/v1/", api_key="k3y", clock=counter_clock()) as client:
        events = await collect(
            client.stream_completion(
                "m",
                "def f(",
                max_tokens=16,
                stop=["\n\n"],
                seed=3,
                priority=1,
                extra={"top_p": 0.9},
            )
        )

    tokens = tokens_of(events)
    assert [t.text for t in tokens] == texts
    assert [t.first for t in tokens] == [True] + [False] * (len(texts) - 1)
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.finish_reason == "stop"
    assert finished.usage == Usage(prompt_tokens=7, completion_tokens=len(texts))
    assert finished.text == "".join(texts)
    times = [t.t for t in tokens] + [finished.t]
    assert times == sorted(set(times)), "every event is stamped by the injected clock"

    body, headers = requests[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["prompt"], body["max_tokens"], body["stop"]) == ("def f(", 16, ["\n\n"])
    assert (body["seed"], body["priority"], body["top_p"]) == (3, 1, 0.9)
    assert headers["Authorization"] == "Bearer k3y"


async def test_chat_stream_skips_role_and_empty_deltas(serve: Serve) -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    raw = (
        sse(chunk({"role": "assistant", "content": ""}))
        + sse(chunk({"content": "Sums"}))
        + sse(chunk({"content": None}))
        + sse(chunk({"content": " two numbers."}, "length"))
        + sse({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}})
        + "data: [DONE]\n\n"
    ).encode()
    bodies: list[dict[str, Any]] = []
    send = fixed_stream(raw)

    async def handler(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        return await send(request)

    url = await serve(app_with("/v1/chat/completions", handler))
    async with ReplicaClient(url) as client:
        messages = [{"role": "user", "content": "Summarize"}]
        events = await collect(client.stream_chat("m", messages, max_tokens=8))

    assert [(t.text, t.first) for t in tokens_of(events)] == [
        ("Sums", True),
        (" two numbers.", False),
    ]
    assert events[-1] == Finished(
        finish_reason="length",
        usage=Usage(prompt_tokens=12, completion_tokens=3),
        t=events[-1].t,
        text="Sums two numbers.",
    )
    assert bodies[0]["messages"] == messages


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, {"error": {"message": "prompt too long", "type": "BadRequestError"}}, "too long"),
        (404, {"object": "error", "message": "model x does not exist", "code": 404}, "x does"),
        (503, "upstream unavailable", "HTTP 503"),
    ],
)
async def test_http_errors_carry_status_and_message(
    serve: Serve, status: int, body: Any, message: str
) -> None:
    async def handler(request: web.Request) -> web.Response:
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=status, text=text, content_type="application/json")

    url = await serve(app_with("/v1/completions", handler))
    async with ReplicaClient(url) as client:
        seen, err = await expect_error(client.stream_completion("m", "p", max_tokens=4))

    assert seen == []
    assert isinstance(err, ReplicaHTTPError)
    assert err.status == status
    assert message in err.message
    assert err.after_first_token is False
    assert err.body == (body if isinstance(body, str) else json.dumps(body))


async def test_http_error_body_sent_in_fragments(serve: Serve) -> None:
    raw = json.dumps({"error": {"message": "x" * 5000 + " end", "type": "BadRequest"}}).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=400, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for i in range(0, len(raw), 700):
            await resp.write(raw[i : i + 700])
            await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp

    url = await serve(app_with("/v1/completions", handler))
    async with ReplicaClient(url) as client:
        _, err = await expect_error(client.stream_completion("m", "p", max_tokens=4))

    assert isinstance(err, ReplicaHTTPError)
    assert (err.status, err.message) == (400, "x" * 5000 + " end")


async def test_error_event_mid_stream(serve: Serve) -> None:
    error = {"error": {"message": "engine dead", "type": "InternalServerError", "code": 500}}
    raw = (sse(completion_chunk("a")) + sse(error)).encode()
    url = await serve(app_with("/v1/completions", fixed_stream(raw)))
    async with ReplicaClient(url) as client:
        seen, err = await expect_error(client.stream_completion("m", "p", max_tokens=4))

    assert [t.text for t in seen] == ["a"]
    assert isinstance(err, ReplicaHTTPError)
    assert (err.status, err.message, err.after_first_token) == (500, "engine dead", True)


async def test_connection_dropped_mid_stream(serve: Serve) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await open_sse(request)
        await resp.write(sse(completion_chunk("half")).encode())
        await asyncio.sleep(0.01)
        assert request.transport is not None
        request.transport.close()
        return resp

    url = await serve(app_with("/v1/completions", handler))
    async with ReplicaClient(url) as client:
        seen, err = await expect_error(client.stream_completion("m", "p", max_tokens=4))

    assert [t.text for t in seen] == ["half"]
    assert isinstance(err, ReplicaProtocolError)
    assert err.after_first_token is True


async def test_clean_end_without_done_is_a_protocol_error(serve: Serve) -> None:
    raw = (sse(completion_chunk("a")) + sse(completion_chunk("b", "stop"))).encode()
    url = await serve(app_with("/v1/completions", fixed_stream(raw)))
    async with ReplicaClient(url) as client:
        seen, err = await expect_error(client.stream_completion("m", "p", max_tokens=4))

    assert [t.text for t in seen] == ["a", "b"]
    assert isinstance(err, ReplicaProtocolError)
    assert "[DONE]" in err.message
    assert err.after_first_token is True


@pytest.mark.parametrize(
    "raw", [b"data: {not json\n\n", b'data: {"choices": 3}\n\n', b"data: 1\n\n"]
)
async def test_malformed_chunks_before_any_token(serve: Serve, raw: bytes) -> None:
    url = await serve(app_with("/v1/completions", fixed_stream(raw)))
    async with ReplicaClient(url) as client:
        seen, err = await expect_error(client.stream_completion("m", "p", max_tokens=4))

    assert seen == []
    assert isinstance(err, ReplicaProtocolError)
    assert err.after_first_token is False


async def test_nothing_listening_is_unreachable(refused_url: str) -> None:
    async with ReplicaClient(refused_url) as client:
        seen, err = await expect_error(client.stream_completion("m", "p", max_tokens=4))
        assert await client.health() is False
        with pytest.raises(ReplicaUnreachable):
            await client.models()

    assert seen == []
    assert isinstance(err, ReplicaUnreachable)
    assert err.after_first_token is False


async def test_stall_before_response_head_times_out(serve: Serve) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    url = await serve(app_with("/v1/completions", handler))
    async with ReplicaClient(url, read_timeout_s=0.2) as client:
        seen, err = await expect_error(client.stream_completion("m", "p", max_tokens=4))

    assert seen == []
    assert isinstance(err, ReplicaTimeout)
    assert err.after_first_token is False


async def test_stall_after_first_token_times_out(serve: Serve) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await open_sse(request)
        await resp.write(sse(completion_chunk("x")).encode())
        await asyncio.Event().wait()
        return resp

    url = await serve(app_with("/v1/completions", handler))
    async with ReplicaClient(url, read_timeout_s=0.2) as client:
        seen, err = await expect_error(client.stream_completion("m", "p", max_tokens=4))

    assert [t.text for t in seen] == ["x"]
    assert isinstance(err, ReplicaTimeout)
    assert err.after_first_token is True


# --------------------------------------------------------------------------- aborts


class EndlessStream:
    """Streams tokens (or only keep-alive comments) until the client goes away."""

    def __init__(self, *, tokens: bool = True) -> None:
        self.tokens = tokens
        self.started = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.finished_normally = False

    async def handler(self, request: web.Request) -> web.StreamResponse:
        resp = await open_sse(request)
        self.started.set()
        line = sse(completion_chunk("tok")) if self.tokens else ": keepalive\n\n"
        try:
            for _ in range(2000):
                await resp.write(line.encode())
                await asyncio.sleep(0.005)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        self.finished_normally = True
        return resp

    async def wait_disconnect(self) -> None:
        await asyncio.wait_for(self.disconnected.wait(), HANG_GUARD_S)
        assert not self.finished_normally


async def test_closing_the_stream_disconnects_at_once(serve: Serve) -> None:
    server = EndlessStream()
    url = await serve(app_with("/v1/completions", server.handler))
    async with ReplicaClient(url) as client:
        async with aclosing(client.stream_completion("m", "p", max_tokens=9999)) as stream:
            async for event in stream:
                assert isinstance(event, Token) and event.first
                break
        await server.wait_disconnect()


async def test_breaking_out_of_a_bare_loop_disconnects(serve: Serve) -> None:
    server = EndlessStream()
    url = await serve(app_with("/v1/completions", server.handler))
    async with ReplicaClient(url) as client:
        seen = 0
        async for _event in client.stream_completion("m", "p", max_tokens=9999):
            seen += 1
            if seen == 3:
                break
        await server.wait_disconnect()


async def test_cancelling_the_consumer_disconnects(serve: Serve) -> None:
    server = EndlessStream(tokens=False)
    url = await serve(app_with("/v1/completions", server.handler))
    async with ReplicaClient(url) as client:
        task = asyncio.create_task(collect(client.stream_completion("m", "p", max_tokens=9)))
        await asyncio.wait_for(server.started.wait(), HANG_GUARD_S)
        await asyncio.sleep(0.02)
        assert not task.done(), "keep-alive comments yield no events"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.wait_disconnect()


async def test_client_works_again_after_an_abort(serve: Serve) -> None:
    server = EndlessStream()
    app = app_with("/v1/completions", server.handler)
    app.router.add_post("/v1/chat/completions", fixed_stream(b"data: [DONE]\n\n"))
    url = await serve(app)
    async with ReplicaClient(url, limit=1) as client:
        async with aclosing(client.stream_completion("m", "p", max_tokens=9)) as stream:
            await anext(stream)
        events = await collect(client.stream_chat("m", [], max_tokens=1))

    assert events == [Finished(finish_reason=None, usage=None, t=events[0].t, text="")]


# --------------------------------------------------------------------------- small calls


async def test_health_models_and_metrics(serve: Serve) -> None:
    healthy = True

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if healthy else 503)

    async def models(request: web.Request) -> web.Response:
        data = [{"id": "qwen-coder", "object": "model"}, {"id": "llama", "object": "model"}]
        return web.json_response({"object": "list", "data": data})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_running 2.0\n")

    app = app_with("/health", health, "GET")
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    url = await serve(app)
    async with ReplicaClient(url) as client:
        assert await client.health() is True
        healthy = False
        assert await client.health() is False
        assert await client.models() == ["qwen-coder", "llama"]
        assert "vllm:num_requests_running 2.0" in await client.metrics_text()


async def test_models_error_and_garbage(serve: Serve) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "warming up"}}, status=503)

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>")

    broken_url = await serve(app_with("/v1/models", broken, "GET"))
    garbage_url = await serve(app_with("/v1/models", garbage, "GET"))
    async with ReplicaClient(broken_url) as a, ReplicaClient(garbage_url) as b:
        with pytest.raises(ReplicaHTTPError, match="warming up"):
            await a.models()
        with pytest.raises(ReplicaProtocolError):
            await b.models()


# --------------------------------------------------------------------------- by read


async def test_batches_hold_the_tokens_of_one_read_then_finished(serve: Serve) -> None:
    raw = vllm_completion_stream(["a", "b", "c"]).encode()
    url = await serve(app_with("/v1/completions", fixed_stream(raw)))
    async with ReplicaClient(url) as client:
        batches = [b async for b in client.stream_completion_batches("m", "p", max_tokens=3)]

    assert [[t.text for t in b if isinstance(t, Token)] for b in batches] == [["a", "b", "c"], []]
    assert [t.first for t in batches[0] if isinstance(t, Token)] == [True, False, False]
    finished = batches[-1]
    assert len(finished) == 1 and isinstance(finished[0], Finished)
    assert finished[0].text == "abc"
    assert finished[0].usage == Usage(prompt_tokens=7, completion_tokens=3)


async def test_batches_hand_on_tokens_before_an_error_in_the_same_read(serve: Serve) -> None:
    error = {"error": {"message": "engine died", "code": 500}}
    raw = (sse(completion_chunk("a")) + sse(completion_chunk("b")) + sse(error)).encode()
    url = await serve(app_with("/v1/completions", fixed_stream(raw)))
    seen: list[str] = []
    async with ReplicaClient(url) as client:
        with pytest.raises(ReplicaHTTPError) as info:
            async for batch in client.stream_completion_batches("m", "p", max_tokens=3):
                seen += [t.text for t in batch if isinstance(t, Token)]

    assert seen == ["a", "b"]
    assert info.value.after_first_token is True
    assert info.value.message == "engine died"


async def test_steady_stream_longer_than_the_read_timeout_is_fine(serve: Serve) -> None:
    """The read timeout bounds each wait for data, not the whole body."""
    texts = [f"t{i}" for i in range(8)]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await open_sse(request)
        for text in texts:
            await resp.write(sse(completion_chunk(text)).encode())
            await asyncio.sleep(0.1)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    url = await serve(app_with("/v1/completions", handler))
    async with ReplicaClient(url, read_timeout_s=0.4) as client:
        events = await collect(client.stream_completion("m", "p", max_tokens=8))

    assert [t.text for t in tokens_of(events)] == texts
    assert isinstance(events[-1], Finished)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ),
    st.sampled_from(["", " ", "\n", " \t"]),
)
def test_json_fast_path_agrees_with_json_loads(value: Any, pad: str) -> None:
    text = pad + json.dumps(value) + pad
    assert _loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", " ", "1 2", "{", '{"a": 1} x', "[1,]", "nul"])
def test_json_fast_path_raises_what_json_loads_raises(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as ours:
        _loads(text)
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    assert str(ours.value) == str(theirs.value)


def test_a_call_sends_at_most_four_stop_strings() -> None:
    """vLLM answers 400 to more; the first ones (the caller's most important) are kept."""
    from orchestrator.replicas.request_body import MAX_STOPS, request_body

    stops = ["\n", "<|endoftext|>", "a", "b", "c", "d"]
    body = request_body(
        "m", max_tokens=4, stop=stops, temperature=0.0, seed=None, priority=None, extra=None
    )
    assert MAX_STOPS == 4 and body["stop"] == stops[:4]
