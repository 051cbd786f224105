"""Connection-level limits aiohttp does not have: the time to receive a request's
headers, and a cap on open connections.

aiohttp closes an idle keep-alive connection (``keepalive_timeout``) but lets a client
send its headers one byte at a time for as long as it likes; ``_GuardedHandler``
closes a connection whose request head is not complete ``header_timeout_s`` after its
first byte (or after the connection opened). Past ``max_connections`` a new connection
gets a 503 and is closed at once. The body's time limit is the handler's
(``read_body``), since only it knows when it wants the body.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler


@dataclass(frozen=True)
class HttpLimits:
    """Seconds a connection may idle between requests, send a request's headers and
    send its body; and how many connections may be open at once."""

    keepalive_timeout_s: float = 75.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 512


def _busy_response(limit: int) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": f"too many open connections (limit {limit}); retry later",
                "type": "ServiceUnavailableError",
                "param": None,
                "code": 503,
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with a deadline on each request head."""

    def __init__(self, manager: web.Server, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if manager is not None and len(manager.connections) >= self._limits.max_connections:
            self._refused = True
            writable: Any = transport
            writable.write(_busy_response(self._limits.max_connections))
            transport.close()
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        before = self._request_count
        if self._head_timer is None and not self._request_in_progress and not self._messages:
            self._arm()  # the first byte of a new request
        super().data_received(data)
        if self._request_count != before:
            self._disarm()  # the head is in; the body has its own limit

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self._loop.call_later(self._limits.header_timeout_s, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._request_in_progress or self._messages:
            return
        if self.transport is not None:
            self.force_close()


class GuardedSite(web.TCPSite):
    """A ``TCPSite`` whose connections are ``_GuardedHandler``s."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limits: HttpLimits) -> None:
        super().__init__(runner, host, port)
        self._limits = limits

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        kwargs: dict[str, Any] = dict(getattr(server, "_kwargs", {}))
        loop = asyncio.get_running_loop()

        def protocol() -> _GuardedHandler:
            return _GuardedHandler(server, self._limits, loop=loop, **kwargs)

        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
