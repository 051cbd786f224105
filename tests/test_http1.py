"""The replica calls' HTTP/1.1 client (orchestrator/replicas/http1.py) against real
servers: aiohttp's for well-formed answers, raw sockets for the broken ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from orchestrator.replicas.http1 import HIGH_WATER, BadResponse, ConnectError, Disconnected, Pool

Raw = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Raw], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Raw) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()


def answering(data: bytes, *, close: bool = True) -> Raw:
    """A raw server's handler: read one request head, answer ``data``, then close the
    connection (or hold it open without a word)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()
        else:
            await asyncio.sleep(5)

    return handler


async def _aiohttp(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_keep_alive_reuses_the_connection_and_reads_a_chunked_stream() -> None:
    peers: list[object] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        assert await request.read() == b'{"a": 1}'
        assert request.headers["Authorization"] == "Bearer k"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"data: {i}\n\n".encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", stream)
    runner, url = await _aiohttp(app)
    pool = Pool(url, headers={"Authorization": "Bearer k"})
    try:
        for _ in range(2):
            resp = await pool.request("POST", "/v1/completions", b'{"a": 1}')
            assert (resp.status, resp.content_type) == (200, "text/event-stream")
            body = b""
            while chunk := await resp.readany():
                body += chunk
            assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            resp.release()
        assert len(peers) == 2 and peers[0] == peers[1]  # one connection, used twice
    finally:
        await pool.close()
        await runner.cleanup()


async def test_a_response_given_up_closes_its_connection() -> None:
    peers: list[object] = []
    gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"x" * 100)
                await asyncio.sleep(0.01)
        except (ConnectionError, asyncio.CancelledError):
            gone.set()
            raise

    app = web.Application(handler_args={"handler_cancellation": True})
    app.router.add_get("/", endless)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    pool = Pool(url)
    try:
        resp = await pool.request("GET", "/")
        assert await resp.readany()
        resp.release()  # not read to its end: closed, as an aborted vLLM call must be
        await asyncio.wait_for(gone.wait(), 5)
        resp = await pool.request("GET", "/")
        resp.close()
        assert len(peers) == 2 and peers[0] != peers[1]
    finally:
        await pool.close()
        await runner.cleanup()


async def test_refused_connection_is_a_connect_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = Pool(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectError):
        await pool.request("GET", "/health")


async def test_closed_mid_body_raises_disconnected(
    raw_server: Callable[[Raw], Awaitable[str]],
) -> None:
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    pool = Pool(await raw_server(answering(cut)))
    resp = await pool.request("GET", "/")
    assert await resp.readany() == b"hello"
    with pytest.raises(Disconnected):
        await resp.readany()
    resp.close()


async def test_garbage_is_a_bad_response(raw_server: Callable[[Raw], Awaitable[str]]) -> None:
    pool = Pool(await raw_server(answering(b"SSH-2.0-OpenSSH\r\n\r\n", close=False)))
    with pytest.raises(BadResponse):
        await pool.request("GET", "/")


async def test_read_timeout_bounds_each_wait_not_the_stream(
    raw_server: Callable[[Raw], Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):  # 0.3 s in all, never more than 0.05 s apart
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        await asyncio.sleep(5)  # then nothing

    pool = Pool(await raw_server(handler))
    resp = await pool.request("GET", "/", head_timeout_s=2)
    resp.watch(1.0)
    got = b""
    with pytest.raises(TimeoutError):
        while chunk := await resp.readany():
            got += chunk
    assert got == b"x" * 6
    resp.close()


async def test_a_large_body_pauses_reading_and_arrives_whole() -> None:
    size = HIGH_WATER * 4

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"y" * size)

    app = web.Application()
    app.router.add_get("/big", big)
    runner, url = await _aiohttp(app)
    pool = Pool(url)
    try:
        resp = await pool.request("GET", "/big")
        await asyncio.sleep(0.2)  # let it all arrive unread: reading pauses past HIGH_WATER
        assert resp._buffered < size  # it stopped reading before the whole body
        assert len(await resp.read(size + 1)) == size
        resp.release()
    finally:
        await pool.close()
        await runner.cleanup()


def test_only_http_urls() -> None:
    async def make() -> None:
        Pool("ftp://example.com")

    with pytest.raises(ValueError, match="http"):
        asyncio.run(make())


async def test_a_body_without_length_ends_at_close(
    raw_server: Callable[[Raw], Awaitable[str]],
) -> None:
    unframed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    pool = Pool(await raw_server(answering(unframed)))
    resp = await pool.request("GET", "/")
    assert await resp.read(100) == b"all of it"
    assert resp.eof
    resp.release()
