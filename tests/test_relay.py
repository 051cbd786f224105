"""The relay path: a replica's stream handed on as bytes, with the scheduler's counts.

Against a real aiohttp server for the client, and the ``Relay`` fold on its own for
the byte-level properties (any split of the stream into reads gives the same bytes).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.api import Usage
from orchestrator.emulator.protocol import ChunkWriter
from orchestrator.replicas import openai_client
from orchestrator.replicas.errors import ReplicaHTTPError, ReplicaProtocolError
from orchestrator.replicas.openai_client import Finished, ReplicaClient
from orchestrator.replicas.progress import Progress, completion_text
from orchestrator.replicas.relay import Relay, RelayOptions
from tests.test_openai_client import (
    Handler,
    Serve,
    app_with,
    completion_chunk,
    fixed_stream,
    sse,
    vllm_completion_stream,
)


def vllm_bytes(texts: list[str], *, model: str = "m", prompt_tokens: int = 7) -> bytes:
    """A stream framed as vLLM frames it (compact JSON; the emulator's writer)."""
    chunks = ChunkWriter("cmpl-1", 1, model, chat=False)
    body = "".join(chunks.token(t) for t in texts[:-1])
    body += chunks.last(texts[-1], "length", None)
    body += chunks.usage(prompt_tokens, len(texts))
    return (body + "data: [DONE]\n\n").encode()


@dataclass
class Relayed:
    relay: Relay
    forwarded: bytes
    counts: list[int]


def relay_all(raw: bytes, cuts: list[int], options: RelayOptions | None = None) -> Relayed:
    """Feed ``raw`` cut at ``cuts`` (then the end) through a ``Relay``; keep what it gives."""
    relay = Relay("http://replica", options)
    out: list[bytes] = []
    counts: list[int] = []
    bounds = [0, *sorted(set(cuts)), len(raw)]
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        item, error = relay.take(raw[a:b])
        assert error is None
        if item is not None:
            out.append(item[0])
            counts.append(item[1])
        if relay.done:
            break
    return Relayed(relay, b"".join(out), counts)


def parsed_text(forwarded: bytes) -> str:
    """The text the parsing path finds in forwarded bytes."""
    progress = Progress(url="x", clock=lambda: 0.0, text_of=completion_text)
    events, error = progress.tokens(
        progress.decoder, forwarded + b"data: [DONE]\n\n", completion_text
    )
    assert error is None
    return "".join(getattr(e, "text", "") for e in events)


TEXTS = st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=12)


@given(TEXTS, st.lists(st.integers(min_value=0, max_value=4000), max_size=8), st.booleans())
def test_any_split_forwards_vllm_bytes_unchanged_but_for_done_and_usage(
    texts: list[str], cuts: list[int], keep_usage: bool
) -> None:
    raw = vllm_bytes(texts)
    out = relay_all(raw, [c for c in cuts if c < len(raw)], RelayOptions(keep_usage=keep_usage))
    relay = out.relay
    tokens, _, tail = raw.rpartition(b"data: {")  # the usage chunk, then [DONE]
    usage_event = b"data: {" + tail.removesuffix(b"data: [DONE]\n\n")
    expected = tokens + (usage_event if keep_usage else b"")
    assert out.forwarded == expected
    assert relay.done
    assert relay.chunks == len(texts) == sum(out.counts)
    assert relay.usage == Usage(prompt_tokens=7, completion_tokens=len(texts))
    assert parsed_text(out.forwarded) == "".join(texts)


@given(TEXTS, st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
def test_other_framing_is_normalized_to_single_line_data_events(
    texts: list[str], cuts: list[int]
) -> None:
    """CRLF line ends, comments and json.dumps spacing: the same events come out."""
    plain = vllm_completion_stream(texts).encode()
    raw = b": keep-alive\r\n\r\n" + plain.replace(b"\n", b"\r\n")
    out = relay_all(raw, [c for c in cuts if c < len(raw)])
    relay = out.relay
    assert relay.done and relay.chunks == len(texts)
    assert relay.usage == Usage(prompt_tokens=7, completion_tokens=len(texts))
    assert parsed_text(out.forwarded) == "".join(texts)
    assert b"\r" not in out.forwarded and b'"usage": {' not in out.forwarded


def test_text_that_looks_like_the_markers_is_forwarded_as_text() -> None:
    texts = ['"error"', "data: [DONE]", '"usage":{', "\n\ndata: x"]
    out = relay_all(vllm_bytes(texts), [])
    assert out.relay.chunks == 4 and parsed_text(out.forwarded) == "".join(texts)


def test_the_model_name_is_the_clients() -> None:
    options = RelayOptions.for_client(keep_usage=True, served="/models/qwen", client="qwen")
    forwarded = relay_all(vllm_bytes(["a", "b"], model="/models/qwen"), [5], options).forwarded
    events = [json.loads(e[6:]) for e in forwarded.split(b"\n\n") if e]
    assert [e["model"] for e in events] == ["qwen"] * 3
    assert RelayOptions.for_client(keep_usage=False, served="m", client="m").rename is None


def test_an_error_object_ends_the_stream_after_the_events_before_it() -> None:
    error = {"error": {"message": "engine died", "code": 503}}
    raw = (sse(completion_chunk("a")) + sse(completion_chunk("b")) + sse(error)).encode()
    relay = Relay("http://replica")
    item, exc = relay.take(raw)
    assert item is not None and item[1] == 2 and b"engine died" not in item[0]
    assert isinstance(exc, ReplicaHTTPError) and exc.status == 503 and exc.after_first_token
    assert exc.message == "engine died"

    first = Relay("http://replica")
    with pytest.raises(ReplicaHTTPError) as info:
        first.take(sse({"object": "error", "message": "bad", "code": 400}).encode())
    assert info.value.status == 400 and not info.value.after_first_token


def test_a_broken_usage_chunk_is_a_protocol_error() -> None:
    relay = Relay("http://replica")
    with pytest.raises(ReplicaProtocolError, match="invalid JSON"):
        relay.take(b'data: {"choices":[],"usage":{"prompt_tokens":1\n\n')


# --------------------------------------------------------------------------- client


async def relay_call(url: str, **options: Any) -> tuple[Relay, list[tuple[bytes, int]]]:
    async with ReplicaClient(url) as client:
        relay, reads = client.relay_completion("m", "p", max_tokens=3, **options)
        return relay, [item async for item in reads]


async def test_the_client_relays_a_stream_read_by_read(serve: Serve) -> None:
    raw = vllm_bytes(["a", "b", "c"])
    url = await serve(app_with("/v1/completions", fixed_stream(raw, piece=40)))
    relay, items = await relay_call(url)
    assert b"".join(d for d, _ in items) == raw[: raw.rindex(b"data: {")]
    assert sum(n for _, n in items) == 3 and all(d.endswith(b"\n\n") for d, _ in items)
    assert relay.usage == Usage(prompt_tokens=7, completion_tokens=3)


async def test_the_client_raises_what_the_parsing_path_raises(serve: Serve) -> None:
    cut = vllm_bytes(["a", "b"]).split(b"data: {", 3)
    no_done = (b"data: {" + cut[1]).replace(b"data: [DONE]\n\n", b"")
    url = await serve(app_with("/v1/completions", fixed_stream(no_done)))
    with pytest.raises(ReplicaProtocolError, match="without \\[DONE\\]") as info:
        await relay_call(url)
    assert info.value.after_first_token

    async def refused(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "too long", "code": 400}}, status=400)

    url = await serve(app_with("/v1/completions", refused))
    with pytest.raises(ReplicaHTTPError, match="too long"):
        await relay_call(url)


def counting_stream(raw: bytes, peers: list[int], *, hold_s: float = 0.0) -> Handler:
    """Sends ``raw`` (then holds the body open ``hold_s``); notes each caller's port."""

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(raw)
        await asyncio.sleep(hold_s)
        await resp.write_eof()
        return resp

    return handler


async def test_calls_in_a_row_reuse_one_connection(serve: Serve) -> None:
    """The stream's end after [DONE] is read, so its connection goes back to the pool."""
    ports: list[int] = []
    handler = counting_stream(vllm_bytes(["a", "b"]), ports, hold_s=0.05)  # the end comes later
    url = await serve(app_with("/v1/completions", handler))
    async with ReplicaClient(url) as client:
        for _ in range(3):
            relay, reads = client.relay_completion("m", "p", max_tokens=2)
            assert sum([n async for _, n in reads]) == 2 and relay.done
        events = [e async for e in client.stream_completion("m", "p", max_tokens=2)]
        assert isinstance(events[-1], Finished)
    assert len(ports) == 4 and len(set(ports)) == 1


async def test_a_body_left_open_after_done_ends_the_call_after_the_drain_bound(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai_client, "DRAIN_S", 0.2)
    ports: list[int] = []
    handler = counting_stream(vllm_bytes(["a"]), ports, hold_s=30.0)
    url = await serve(app_with("/v1/completions", handler))
    async with ReplicaClient(url) as client:
        relay, reads = client.relay_completion("m", "p", max_tokens=1)
        items = await asyncio.wait_for(collect_reads(reads), 5.0)
    assert sum(n for _, n in items) == 1 and relay.done


async def collect_reads(reads: AsyncIterator[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    return [item async for item in reads]
