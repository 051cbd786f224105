"""The language server's one view of the orchestrator, and its two transports.

``EmbeddedOrchestrator`` runs the orchestrator in the server's own event loop (with its
replicas from a ``cato.toml`` or the built-in default); ``RemoteOrchestrator`` (in
``cato_lsp.remote``, imported in remote mode only) talks to a team's ``cato serve`` over
HTTP and SSE. Both cancel upstream work when the event iterator is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Protocol

from orchestrator.api import Status, TaskEvent, TaskKind, TaskRequest

if TYPE_CHECKING:
    from orchestrator.runtime import Runtime

log = logging.getLogger(__name__)

PREFILL_SHARE = 0.35
"""The share of a completion's SLA its prompt's prefill may take (see `prompt_fit`). On
the default engine, 0.5 gave a median keystroke to suggestion of about 330 ms on a 60 KB
file and 0.35 about 270 ms, both within the SLA (docs/EDITOR_EXPERIENCE.md)."""


class BackendError(Exception):
    """The orchestrator could not be used; ``code`` says why (for the editor's message).

    Codes: ``unreachable``, ``unauthorized``, ``config``, ``unavailable``, ``http``.
    """

    def __init__(self, message: str, code: str = "unreachable") -> None:
        super().__init__(message)
        self.code = code


class Orchestrator(Protocol):
    """What the language server needs: submit a task as a stream, ask for status."""

    def submit(self, request: TaskRequest) -> AsyncGenerator[TaskEvent, None]: ...

    async def status(self) -> Status: ...

    async def warm(self) -> None:
        """Get ready for the first task now (embedded: start the replicas), so that the
        first suggestion does not pay for the start."""
        ...

    def fim_family(self, model: str | None) -> str | None: ...

    def default_max_tokens(self, kind: TaskKind) -> int | None:
        """The output budget a task of `kind` gets when it names none (None: unknown)."""
        ...

    def prompt_fit(self, model: str | None, sla_ms: float | None) -> int | None:
        """How many prompt tokens a completion sent now can have prefilled within its SLA
        (`sla_ms`, else the configured one), or None when that is not known."""
        ...

    def describe(self) -> str: ...

    async def close(self) -> None: ...


class EmbeddedOrchestrator:
    """The orchestrator in-process; its replicas start once, shared, at `warm` (the
    server calls it at initialize) or on first use, whichever comes first. It is ready
    once every model has one replica ready (`Runtime.first_ready`); the others join as they
    become ready.

    A request cancelled while the replicas start does not cancel the start; a start
    that fails is undone (its replicas stopped) so that the next request tries again.
    """

    def __init__(self, config_path: str | None, *, wait_ready_s: float = 600.0) -> None:
        self.config_path = config_path
        self.wait_ready_s = wait_ready_s
        self._runtime: Runtime | None = None
        self._starting: asyncio.Task[Runtime] | None = None
        self._started = False
        self._closed = False

    def _build(self) -> Runtime:
        if self._runtime is None:
            from orchestrator.runtime import Runtime

            try:
                self._runtime = Runtime.from_config_path(self.config_path)
            except ValueError as exc:  # ConfigError: every problem with its key
                raise BackendError(str(exc), "config") from exc
        return self._runtime

    async def _start(self, runtime: Runtime) -> Runtime:
        try:
            await runtime.start(wait_ready_s=None)
            await runtime.first_ready(self.wait_ready_s)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await runtime.stop()
            self._runtime = None
            if isinstance(exc, TimeoutError | OSError):
                raise BackendError(f"replicas did not start: {exc}", "unavailable") from exc
            raise
        self._started = True
        return runtime

    async def runtime(self) -> Runtime:
        """The started runtime; waits for the (shared) start if it is under way."""
        if self._closed:
            raise BackendError("the embedded orchestrator is closed", "unavailable")
        if self._started and self._runtime is not None:
            return self._runtime
        if self._starting is None or _failed(self._starting):
            self._starting = asyncio.create_task(self._start(self._build()), name="cato runtime")
        return await asyncio.shield(self._starting)

    async def warm(self) -> None:
        await self.runtime()

    async def submit(self, request: TaskRequest) -> AsyncGenerator[TaskEvent, None]:
        runtime = await self.runtime()
        async with contextlib.aclosing(runtime.orchestrator.submit(request)) as events:
            async for event in events:
                yield event

    async def status(self) -> Status:
        """The runtime's status; until it is started, whether the replicas are starting."""
        if not self._started or self._runtime is None:
            starting = self._starting is not None and not self._starting.done()
            message = "starting replicas" if starting else "not started"
            return Status(ok=False, message=message)
        return self._runtime.status()

    def fim_family(self, model: str | None) -> str | None:
        """The ``fim_family`` the config gives the completion model, if any."""
        config = self._build().config
        name = model or config.task(TaskKind.COMPLETE).model or config.models[0].name
        try:
            return config.model(name).fim_family
        except KeyError:
            return None

    def default_max_tokens(self, kind: TaskKind) -> int | None:
        return self._build().config.task(kind).max_tokens

    def prompt_fit(self, model: str | None, sla_ms: float | None) -> int | None:
        """From the replicas' estimated wait and learned prefill rate; the prefill gets
        `PREFILL_SHARE` of the SLA, the rest is for the first token, the network and the
        estimate's error."""
        runtime = self._runtime
        if runtime is None:
            return None
        config = runtime.config
        task = config.task(TaskKind.COMPLETE)
        name = model or task.model or config.models[0].name
        target_ms = sla_ms if sla_ms is not None else task.sla_ms
        within_s = target_ms / 1000.0 * PREFILL_SHARE
        if self._started:
            return runtime.orchestrator.prompt_tokens_within(name, within_s)
        # Still starting (the request will wait for it): the model's prior rates, so that
        # the first suggestion is not asked with a prompt too long for its SLA.
        from orchestrator.runtime import prior_rates

        try:
            rates = prior_rates(config.model(name))
        except KeyError:
            return None
        return max(0, int((within_s - rates.overhead_s) / max(rates.prefill_s_per_token, 1e-9)))

    def describe(self) -> str:
        return f"embedded ({self.config_path or 'built-in default'})"

    async def close(self) -> None:
        self._closed = True
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
        runtime, self._runtime = self._runtime, None
        if runtime is not None and self._started:
            await runtime.stop()
        self._started = False


def _failed(task: asyncio.Task[Runtime]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def make_backend(
    mode: str, *, config: str | None = None, url: str | None = None, token: str | None = None
) -> Orchestrator:
    """The backend for the settings' mode."""
    if mode == "remote":
        if not url:
            raise BackendError("mode 'remote' needs a url", "config")
        from cato_lsp.remote import RemoteOrchestrator  # aiohttp's client: remote mode only

        return RemoteOrchestrator(url, token)
    return EmbeddedOrchestrator(config)
