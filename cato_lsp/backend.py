"""The language server's one view of the orchestrator, and its two transports.

``EmbeddedOrchestrator`` runs the orchestrator in the server's own event loop (with its
replicas from a ``cato.toml`` or the built-in default); ``RemoteOrchestrator`` talks to
a team's ``cato serve`` over HTTP and SSE. Both cancel upstream work when the event
iterator is closed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

import aiohttp

from orchestrator.api import Status, TaskEvent, TaskRequest


class BackendError(Exception):
    """The orchestrator could not be used; ``code`` says why (for the editor's message)."""

    def __init__(self, message: str, code: str = "unreachable") -> None:
        super().__init__(message)
        self.code = code


class Orchestrator(Protocol):
    """What the language server needs: submit a task as a stream, ask for status."""

    def submit(self, request: TaskRequest) -> AsyncGenerator[TaskEvent, None]: ...

    async def status(self) -> Status: ...

    async def close(self) -> None: ...


class EmbeddedOrchestrator:
    """The orchestrator in-process; ``start`` brings up its replicas (may take a while)."""

    def __init__(self, starter: Callable[[], Awaitable[object]]) -> None:
        self._starter = starter
        self._runtime: object | None = None

    @classmethod
    def from_config(cls, config_path: str | None) -> EmbeddedOrchestrator:
        async def start() -> object:
            from orchestrator.runtime import Runtime

            runtime = Runtime.from_config_path(config_path)
            await runtime.start()
            return runtime

        return cls(start)

    async def _rt(self) -> object:
        if self._runtime is None:
            self._runtime = await self._starter()
        return self._runtime

    async def submit(self, request: TaskRequest) -> AsyncGenerator[TaskEvent, None]:
        from orchestrator.runtime import Runtime

        rt = await self._rt()
        assert isinstance(rt, Runtime)
        async with contextlib.aclosing(rt.orchestrator.submit(request)) as events:
            async for event in events:
                yield event

    async def status(self) -> Status:
        from orchestrator.runtime import Runtime

        rt = await self._rt()
        assert isinstance(rt, Runtime)
        return rt.orchestrator.status()

    async def close(self) -> None:
        from orchestrator.runtime import Runtime

        if isinstance(self._runtime, Runtime):
            await self._runtime.stop()
        self._runtime = None


class RemoteOrchestrator:
    """A client of ``cato serve``: ``POST /v1/tasks`` streams ``TaskEvent`` as SSE."""

    def __init__(
        self, url: str, token: str | None = None, *, connect_timeout_s: float = 3.0
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=120)
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers())
        return self._session

    async def submit(self, request: TaskRequest) -> AsyncGenerator[TaskEvent, None]:
        try:
            resp = await self._http().post(
                f"{self.url}/v1/tasks",
                data=request.model_dump_json(),
                headers={"Content-Type": "application/json"},
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"cannot reach {self.url}: {exc}") from exc
        try:
            if resp.status == 401:
                raise BackendError(f"{self.url} refused the token (401)", "unauthorized")
            if resp.status != 200:
                raise BackendError(
                    f"{self.url} answered {resp.status}: {await _error_text(resp)}", "http"
                )
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    return
                yield TaskEvent.model_validate_json(data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"lost the connection to {self.url}: {exc}") from exc
        finally:
            resp.close()

    async def status(self) -> Status:
        try:
            async with self._http().get(f"{self.url}/v1/status") as resp:
                if resp.status == 401:
                    raise BackendError(f"{self.url} refused the token (401)", "unauthorized")
                if resp.status != 200:
                    raise BackendError(f"{self.url} answered {resp.status}", "http")
                return Status.model_validate_json(await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"cannot reach {self.url}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    body = await resp.text()
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(body)["error"]["message"])
    return body[:200]
