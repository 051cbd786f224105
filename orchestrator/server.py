"""The team service's HTTP layer: a thin aiohttp front over the ``Orchestrator``.

Routes: ``POST /v1/tasks`` (SSE of ``TaskEvent``), OpenAI-compatible ``POST
/v1/completions`` and ``/v1/chat/completions`` (task kind and SLA in an optional ``cato``
object, so the ``openai`` client's ``extra_body`` works), ``GET /v1/models``,
``/health``, ``/v1/status`` and ``/metrics``. Bearer tokens are compared by their sha256;
they are never logged.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.api import SLA, SLAMetric, Status, TaskEvent, TaskKind, TaskRequest
from orchestrator.config import User, hash_token
from orchestrator.executor import Orchestrator
from orchestrator.prometheus import ServiceMetrics

log = logging.getLogger(__name__)

TTFT_KINDS = {TaskKind.COMPLETE, TaskKind.GENERATE}


@dataclass(frozen=True)
class ServiceOptions:
    users: Sequence[User] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    max_prompt_chars: int = 400_000
    max_tokens_limit: int = 8192
    models: Sequence[str] = ()
    retry_after_s: int = 1


def _error(status: int, message: str, kind: str, **headers: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status, headers=headers or None)


@dataclass
class _Users:
    options: ServiceOptions
    active: dict[str, int] = field(default_factory=dict)

    def authenticate(self, request: web.Request) -> User | web.Response | None:
        """The caller's user; None when auth is off; a 401 response when it fails."""
        if not self.options.users:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(401, "missing bearer token", "AuthenticationError")
        digest = hash_token(token.strip())
        found: User | None = None
        for user in self.options.users:  # constant time: every user is compared
            if hmac.compare_digest(digest, user.token_sha256):
                found = user
        return found or _error(401, "invalid bearer token", "AuthenticationError")


class CatoExtension(BaseModel):
    """The ``cato`` object OpenAI clients may add (``extra_body={"cato": {...}}``)."""

    model_config = ConfigDict(extra="forbid")
    task: TaskKind = TaskKind.COMPLETE
    sla_ms: float | None = Field(default=None, gt=0)


class _OpenAIBody(BaseModel):
    """The subset of the OpenAI request body the service honours; the rest is ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | list[str] | None = None
    messages: list[dict[str, Any]] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    n: int = 1
    user: str | None = None
    stream_options: dict[str, Any] | None = None
    cato: CatoExtension = Field(default_factory=CatoExtension)


class Service:
    """Route handlers; one instance per app."""

    def __init__(
        self,
        orch: Orchestrator,
        options: ServiceOptions,
        metrics: ServiceMetrics | None = None,
        status: Callable[[], Status] | None = None,
    ) -> None:
        self.orch = orch
        self.get_status = status or orch.status
        self.options = options
        self.metrics = metrics or ServiceMetrics()
        self.users = _Users(options)

    # -- helpers ----------------------------------------------------------------

    async def _guard(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        who = self.users.authenticate(request)
        if isinstance(who, web.Response):
            return None, who
        if who is None:
            return None, None
        if self.users.active.get(who.name, 0) >= who.max_concurrency:
            return None, _error(
                429,
                f"user {who.name!r} already has {who.max_concurrency} requests running",
                "RateLimitError",
                **{"Retry-After": str(self.options.retry_after_s)},
            )
        return who.name, None

    async def _json(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(
                text=json.dumps(
                    {
                        "error": {
                            "message": f"invalid JSON body: {exc}",
                            "type": "BadRequestError",
                            "param": None,
                            "code": 400,
                        }
                    }
                ),
                content_type="application/json",
            ) from exc

    def _check_limits(self, req: TaskRequest) -> web.Response | None:
        size = len(req.prompt or "") + len(req.code or "") + len(req.context or "")
        if size > self.options.max_prompt_chars:
            return _error(
                400,
                f"input of {size} characters exceeds the limit of {self.options.max_prompt_chars}",
                "BadRequestError",
            )
        if req.max_tokens is not None and req.max_tokens > self.options.max_tokens_limit:
            return _error(
                400,
                f"max_tokens {req.max_tokens} exceeds the limit of {self.options.max_tokens_limit}",
                "BadRequestError",
            )
        return None

    async def _run(self, user: str | None, req: TaskRequest) -> AsyncGenerator[TaskEvent, None]:
        """Submit with per-user accounting and metrics; closing it cancels the task."""
        if user is not None:
            self.users.active[user] = self.users.active.get(user, 0) + 1
        last: TaskEvent | None = None
        try:
            async with contextlib.aclosing(self.orch.submit(req)) as events:
                async for event in events:
                    last = event
                    yield event
        finally:
            self.metrics.observe_end(req.kind.value, last)
            if user is not None:
                self.users.active[user] -= 1

    # -- /v1/tasks ----------------------------------------------------------------

    async def tasks(self, request: web.Request) -> web.StreamResponse:
        user, denied = await self._guard(request)
        if denied is not None:
            return denied
        try:
            req = TaskRequest.model_validate(await self._json(request))
        except ValidationError as exc:
            return _error(400, _validation_message(exc), "BadRequestError")
        if user is not None and req.user is None:
            req = req.model_copy(update={"user": user})
        if (limited := self._check_limits(req)) is not None:
            return limited
        resp = _sse_response()
        await resp.prepare(request)
        async with contextlib.aclosing(self._run(user, req)) as events:
            async for event in events:
                await resp.write(
                    b"data: " + event.model_dump_json(exclude_none=True).encode() + b"\n\n"
                )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # -- OpenAI-compatible ----------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=True)

    async def _openai(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        user, denied = await self._guard(request)
        if denied is not None:
            return denied
        try:
            body = _OpenAIBody.model_validate(await self._json(request))
        except ValidationError as exc:
            return _error(400, _validation_message(exc), "BadRequestError")
        if body.n != 1:
            return _error(400, "only n=1 is supported", "BadRequestError")
        if body.model and self.options.models and body.model not in self.options.models:
            return _error(404, f"The model `{body.model}` does not exist.", "NotFoundError")
        try:
            req = self._task_from_openai(body, chat=chat, user=user)
        except (ValueError, ValidationError) as exc:
            return _error(400, str(exc), "BadRequestError")
        if (limited := self._check_limits(req)) is not None:
            return limited
        writer = _OpenAIWriter(chat=chat, model=body.model or req.model or "cato")
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        if not body.stream:
            return await self._openai_whole(user, req, writer)
        resp = _sse_response()
        await resp.prepare(request)
        last: TaskEvent | None = None
        async with contextlib.aclosing(self._run(user, req)) as events:
            async for event in events:
                last = event
                if event.type == "token" and event.text:
                    await resp.write(writer.chunk(event.text))
        if last is not None and last.type == "error":
            err = {"error": {"message": last.error, "type": "InternalServerError", "code": 500}}
            await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
        else:
            await resp.write(writer.final(last))
            if include_usage and last is not None and last.usage is not None:
                await resp.write(writer.usage(last))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _openai_whole(
        self, user: str | None, req: TaskRequest, writer: _OpenAIWriter
    ) -> web.Response:
        last: TaskEvent | None = None
        async with contextlib.aclosing(self._run(user, req)) as events:
            async for event in events:
                last = event
        if last is None or last.type != "done":
            message = last.error if last is not None and last.error else "task did not finish"
            return _error(
                502 if last is not None and last.code == "replica_error" else 500,
                message,
                "InternalServerError",
            )
        return web.json_response(writer.whole(last))

    def _task_from_openai(self, body: _OpenAIBody, *, chat: bool, user: str | None) -> TaskRequest:
        kind = body.cato.task
        if chat:
            if not body.messages:
                raise ValueError("'messages' is required")
            prompt = _render_messages(body.messages)
        else:
            if body.prompt is None:
                raise ValueError("'prompt' is required")
            if isinstance(body.prompt, list):
                if len(body.prompt) != 1:
                    raise ValueError("exactly one prompt per request is supported")
                prompt = body.prompt[0]
            else:
                prompt = body.prompt
        sla = None
        if body.cato.sla_ms is not None:
            metric = SLAMetric.TTFT if kind in TTFT_KINDS else SLAMetric.E2E
            sla = SLA(metric=metric, target_ms=body.cato.sla_ms)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        model = body.model if body.model in self.options.models else None
        return TaskRequest(
            kind=kind,
            prompt=prompt,
            model=model,
            sla=sla,
            max_tokens=body.max_completion_tokens or body.max_tokens,
            stop=stop,
            temperature=body.temperature,
            user=user or body.user,
        )

    # -- info ---------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        _, denied = await self._guard(request)
        if denied is not None:
            return denied
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "cato"}
            for name in self.options.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        status = self.get_status()
        return web.Response(
            status=200 if status.ok else 503, text="ok" if status.ok else "no ready replica"
        )

    async def status(self, request: web.Request) -> web.Response:
        _, denied = await self._guard(request)
        if denied is not None:
            return denied
        return web.json_response(text=self.get_status().model_dump_json())

    async def prometheus(self, request: web.Request) -> web.Response:
        body = self.metrics.render(self.get_status())
        return web.Response(body=body, content_type="text/plain", charset="utf-8")


class _OpenAIWriter:
    """Frames task output as OpenAI completion / chat completion responses."""

    def __init__(self, *, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self._role_sent = False

    def _frame(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        payload = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    def _choice(self, text: str, finish: str | None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"content": text}
            if not self._role_sent:
                delta["role"] = "assistant"
                self._role_sent = True
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def chunk(self, text: str) -> bytes:
        return self._frame([self._choice(text, None)])

    def final(self, last: TaskEvent | None) -> bytes:
        return self._frame([self._choice("", "stop" if last is not None else "abort")])

    def usage(self, last: TaskEvent) -> bytes:
        return self._frame([], _usage(last))

    def whole(self, last: TaskEvent) -> dict[str, Any]:
        text = last.result or ""
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": _usage(last),
        }


def _usage(last: TaskEvent) -> dict[str, int]:
    u = last.usage
    p, c = (u.prompt_tokens, u.completion_tokens) if u is not None else (0, 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _render_messages(messages: list[dict[str, Any]]) -> str:
    """A plain transcript prompt; replicas are driven through /v1/completions."""
    lines = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        if not isinstance(content, str):
            raise ValueError("each message needs string 'content'")
        lines.append(f"{m.get('role', 'user')}: {content}")
    lines.append("assistant:")
    return "\n".join(lines)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _sse_response() -> web.StreamResponse:
    return web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )


def create_app(
    orch: Orchestrator,
    options: ServiceOptions,
    *,
    metrics: ServiceMetrics | None = None,
    status: Callable[[], Status] | None = None,
) -> web.Application:
    service = Service(orch, options, metrics, status)
    app = web.Application(client_max_size=options.max_body_bytes)
    app["service"] = service
    app.router.add_post("/v1/tasks", service.tasks)
    app.router.add_post("/v1/completions", service.completions)
    app.router.add_post("/v1/chat/completions", service.chat_completions)
    app.router.add_get("/v1/models", service.models)
    app.router.add_get("/v1/status", service.status)
    app.router.add_get("/health", service.health)
    app.router.add_get("/metrics", service.prometheus)
    return app


async def serve_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start the app; with ``handler_cancellation`` a client that goes away cancels its task."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


__all__ = ["ServiceOptions", "create_app", "serve_app"]
