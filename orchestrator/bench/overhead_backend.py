"""Zero-delay vLLM-like backends for ``cato bench overhead``: no model, no engine loop,
so that what a router costs is not hidden under what the replica costs.

Each listening port answers as one vLLM server would: ``GET /health``, ``GET
/v1/models``, and ``POST /v1/completions``: streamed (``"stream": true``) as vLLM streams
it (HTTP/1.1 chunked, one ``data:`` chunk per token in vLLM's compact JSON, a usage chunk
when ``stream_options.include_usage`` asks, ``data: [DONE]``), or whole. Each token is
its own write followed by a turn of the event loop, as an engine hands out one token
per step; there is no sleep. ``max_tokens`` says how many tokens; the text of each is
fixed, so that every router moves the same bytes.

Raw asyncio streams, not a web framework: the backends share a core with the load
client and should cost as little as possible. Run with
``python -m orchestrator.bench.overhead_backend PORT [PORT...]``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Sequence

MODEL = "overhead"
TOKEN = " tok"
_MODELS = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
).encode()


def _head(status: str, kind: str, length: int | None) -> bytes:
    size = (
        f"content-length: {length}\r\n" if length is not None else "transfer-encoding: chunked\r\n"
    )
    return f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\n{size}\r\n".encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def frames(n: int, *, usage: bool, model: str = MODEL, prompt_tokens: int = 4) -> list[bytes]:
    """The SSE events of one streamed completion of ``n`` tokens, as vLLM frames them."""
    envelope = (
        f'{{"id":"cmpl-{uuid.uuid4().hex}","object":"text_completion",'
        f'"created":{int(time.time())},"model":{json.dumps(model)},'
    )
    token = f'data: {envelope}"choices":[{{"index":0,"text":{json.dumps(TOKEN)},'
    out = [(token + '"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n').encode()] * (
        n - 1
    )
    out.append(
        (token + '"logprobs":null,"finish_reason":"length","stop_reason":null}]}\n\n').encode()
    )
    if usage:
        out.append(
            (
                f'data: {envelope}"choices":[],"usage":{{"prompt_tokens":{prompt_tokens},'
                f'"total_tokens":{prompt_tokens + n},"completion_tokens":{n}}}}}\n\n'
            ).encode()
        )
    out.append(b"data: [DONE]\n\n")
    return out


def whole(n: int, model: str = MODEL) -> bytes:
    return json.dumps(
        {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "text": TOKEN * n, "logprobs": None, "finish_reason": "length"}
            ],
            "usage": {"prompt_tokens": 4, "total_tokens": 4 + n, "completion_tokens": n},
        }
    ).encode()


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Answer one request; False when the connection is over."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    lines = head.decode("latin-1").split("\r\n")
    method, path = lines[0].split(" ")[:2]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    if method == "GET" and path == "/health":
        writer.write(_head("200 OK", "text/plain", 0))
    elif method == "GET" and path == "/v1/models":
        writer.write(_head("200 OK", "application/json", len(_MODELS)) + _MODELS)
    elif method == "POST" and path == "/v1/completions":
        await _completion(json.loads(body), writer)
    else:
        writer.write(_head("404 Not Found", "text/plain", 0))
    await writer.drain()
    return True


async def _completion(req: dict[str, object], writer: asyncio.StreamWriter) -> None:
    n = req.get("max_tokens")
    n = n if isinstance(n, int) and n > 0 else 16
    model = req.get("model") if isinstance(req.get("model"), str) else MODEL
    if not req.get("stream"):
        data = whole(n, str(model))
        writer.write(_head("200 OK", "application/json", len(data)) + data)
        return
    options = req.get("stream_options")
    usage = isinstance(options, dict) and bool(options.get("include_usage"))
    writer.write(_head("200 OK", "text/event-stream", None))
    for frame in frames(n, usage=usage, model=str(model)):
        writer.write(_chunk(frame))
        await writer.drain()
        await asyncio.sleep(0)  # one token per turn of the loop, as an engine step
    writer.write(b"0\r\n\r\n")


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await _serve_one(reader, writer):
            pass
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(ports: Sequence[int], host: str = "127.0.0.1") -> None:
    servers = [await asyncio.start_server(_connection, host, port, backlog=1024) for port in ports]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    ports = [int(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not ports:
        print(
            "usage: python -m orchestrator.bench.overhead_backend PORT [PORT...]", file=sys.stderr
        )
        return 2
    asyncio.run(serve(ports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
