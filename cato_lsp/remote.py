"""The language server's client of a team's ``cato serve`` (``mode: remote``).

Its own module so that the embedded mode never imports aiohttp's client (about 0.4 s of
the server's start).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator

import aiohttp

from cato_lsp.backend import BackendError
from orchestrator.api import Status, TaskEvent, TaskKind, TaskRequest


class RemoteOrchestrator:
    """A client of ``cato serve``: ``POST /v1/tasks`` streams ``TaskEvent`` as SSE."""

    def __init__(
        self, url: str, token: str | None = None, *, connect_timeout_s: float = 3.0
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=120)
        self._http_client: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _http(self) -> aiohttp.ClientSession:
        if self._http_client is None or self._http_client.closed:
            self._http_client = aiohttp.ClientSession(
                timeout=self._timeout, headers=self._headers()
            )
        return self._http_client

    async def submit(self, request: TaskRequest) -> AsyncGenerator[TaskEvent, None]:
        try:
            resp = await self._http().post(
                f"{self.url}/v1/tasks",
                data=request.model_dump_json(exclude_none=True),
                headers={"Content-Type": "application/json"},
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"cannot reach {self.url}: {exc}") from exc
        try:
            await _check(resp, self.url)
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
            resp.close()  # before the end of the stream: the service cancels the task

    async def warm(self) -> None:
        """Nothing to start (the service runs its replicas), but a wrong URL or token is
        reported now rather than at the first keystroke."""
        await self.status()

    async def status(self) -> Status:
        try:
            async with self._http().get(f"{self.url}/v1/status") as resp:
                await _check(resp, self.url)
                return Status.model_validate_json(await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"cannot reach {self.url}: {exc}") from exc

    def fim_family(self, model: str | None) -> str | None:
        return None

    def default_max_tokens(self, kind: TaskKind) -> int | None:
        return None  # the service's config is its own

    def prompt_fit(self, model: str | None, sla_ms: float | None) -> int | None:
        return None  # the service does not publish its replicas' rates: fixed budgets

    def describe(self) -> str:
        return f"remote ({self.url})"

    async def close(self) -> None:
        if self._http_client is not None:
            await self._http_client.close()
            self._http_client = None


async def _check(resp: aiohttp.ClientResponse, url: str) -> None:
    if resp.status in (401, 403):
        raise BackendError(f"{url} refused the token ({resp.status})", "unauthorized")
    if resp.status != 200:
        raise BackendError(f"{url} answered {resp.status}: {await _error_text(resp)}", "http")


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    body = await resp.text()
    with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
        return str(json.loads(body)["error"]["message"])
    return body[:200]
