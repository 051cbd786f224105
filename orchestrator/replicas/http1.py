"""A lean HTTP/1.1 client for the replica calls: keep-alive connections to one replica,
the response parsed by llhttp (``httptools``), the body handed over as it arrives.

Why not aiohttp's client: a streamed call through it costs a session request, a timer
re-armed per read, a ``StreamReader`` and a ``ClientResponse`` with the headers as a
multidict, several times what the call itself does (``cato bench overhead``). A replica
call needs much less: one request on a pooled connection, the status and content type,
the body's bytes read by read with one timer per stream for the read timeout, and a
connection that goes back to the pool only when its response was read to the end (one
that is given up is closed, which is how vLLM hears that a call was aborted).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

IDLE: Final = 0
BUSY: Final = 1
HIGH_WATER: Final = 256 * 1024  # stop reading from the socket past this much unread body


class ConnectError(OSError):
    """The connection could not be made (refused, unreachable, or it timed out)."""


class Disconnected(ConnectionError):
    """The replica closed the connection before the response was whole."""


class BadResponse(OSError):
    """What came back was not HTTP/1.1."""


class Response(asyncio.Protocol):
    """One connection, and the response being read on it (the protocol is the response:
    one object per call instead of three). After ``release`` or ``close`` the object
    belongs to the pool again: read nothing more from it."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = ""
        self.content_type = ""
        self.head: asyncio.Future[None] | None = None
        self.eof = False  # the whole response is in
        self.keep_alive = False
        self._framed = False  # a length or chunks say where the body ends (else: at close)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False
        self._waiting_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout_s: float | None = None

    # ---- protocol callbacks (the event loop's and the parser's)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"malformed HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        if self.status and not self._framed and exc is None and not self.eof:
            self.eof = True  # a body without a length ends where the connection does
            self._wake()
        if not self.eof:
            self._fail(Disconnected("the replica closed the connection"))

    def on_status(self, status: bytes) -> None:
        self.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
        elif lower in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.eof = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # ---- the caller's side

    async def read_head(self, timeout_s: float | None) -> None:
        """Wait for the status line and headers."""
        if self.status:
            return
        if self._error is not None:
            raise self._error
        self.head = self.loop.create_future()
        if timeout_s is None:
            await self.head
            return
        async with asyncio.timeout(timeout_s):
            await self.head

    def watch(self, timeout_s: float | None) -> None:
        """Bound each wait of ``readany`` to ``timeout_s`` with one timer for the stream."""
        self._timeout_s = timeout_s
        if timeout_s:
            self._timer = self.loop.call_later(timeout_s, self._check)

    async def readany(self) -> bytes:
        """What of the body has arrived, waiting for some; b"" once it is all read."""
        if not self._chunks:
            if self.eof:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self.loop.create_future()
            self._waiting_since = self.loop.time()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._waiting_since = None
            if not self._chunks:
                if self._error is not None:
                    raise self._error
                return b""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def read(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (all of it when shorter)."""
        parts: list[bytes] = []
        size = 0
        while size < limit:
            chunk = await self.readany()
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)[:limit]

    def release(self) -> None:
        """Done with the response: the connection goes back to the pool when the response
        was read to its end and may be kept, and is closed otherwise."""
        self._stop_timer()
        if self.eof and self.keep_alive and not self._chunks and self.transport is not None:
            self.pool.put_back(self)  # reset when it is taken again: status stays readable
        else:
            self.close()

    def close(self) -> None:
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.pool.forget(self)
        if not self.eof:
            self._fail(Disconnected("the response was closed before its end"))

    # ---- internals

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: whoever waits on it sees it raised
        self._wake()

    def _check(self) -> None:
        timeout = self._timeout_s
        if timeout is None:
            return
        now = self.loop.time()
        since = self._waiting_since
        if since is not None and now - since >= timeout:
            self._timer = None
            self._fail(TimeoutError("no data within the read timeout"))
            return
        self._timer = self.loop.call_at((now if since is None else since) + timeout, self._check)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timeout_s = None


class Pool:
    """Keep-alive connections to one ``http://host:port``; create it inside the loop.

    An idle connection older than ``keepalive_s`` is closed rather than reused, so that a
    call does not go out on a connection the server is closing (uvicorn closes after 5 s).
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        keepalive_s: float = 4.0,
        max_idle: int = 512,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an http:// or https:// URL is needed, not {base_url!r}")
        self.host = parts.hostname
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.port = parts.port or (443 if self.tls else 80)
        self.loop = asyncio.get_running_loop()
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.max_idle = max_idle
        host = self.host if parts.port is None else f"{self.host}:{self.port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head_tail = f"Host: {host}\r\n{extra}".encode("latin-1")
        self._idle: list[Response] = []
        self._open: set[Response] = set()
        self.closed = False

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        accept: str = "*/*",
        head_timeout_s: float | None = None,
    ) -> Response:
        """Send one request; return once the response head is in (any status)."""
        conn = await self._connection()
        head = (
            f"{method} {path} HTTP/1.1\r\nAccept: {accept}\r\n"
            + (f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n" if body else "")
        ).encode("latin-1")
        transport = conn.transport
        assert transport is not None
        transport.write(b"".join((head, self._head_tail, b"\r\n", body)))
        try:
            await conn.read_head(head_timeout_s)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _connection(self) -> Response:
        if self.closed:
            raise ConnectError("the client is closed")
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and now - conn.idle_since < self.keepalive_s:
                conn._reset()
                return conn
            conn.close()
        conn = Response(self)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self.loop.create_connection(lambda: conn, self.host, self.port, ssl=self.tls)
        except TimeoutError as exc:
            raise ConnectError(f"connect timeout after {self.connect_timeout_s:g} s") from exc
        except OSError as exc:
            raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
        self._open.add(conn)
        return conn

    def put_back(self, conn: Response) -> None:
        if self.closed or len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def forget(self, conn: Response) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def close(self) -> None:
        self.closed = True
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


__all__ = ["BadResponse", "ConnectError", "Disconnected", "Pool", "Response"]
