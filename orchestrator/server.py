"""The team service's HTTP layer: a thin aiohttp front over the ``Orchestrator``.

Routes: ``POST /v1/tasks`` (SSE of ``TaskEvent``), OpenAI-compatible ``POST
/v1/completions`` and ``/v1/chat/completions`` (task kind and SLA in an optional ``cato``
object, so the ``openai`` client's ``extra_body`` works), ``GET /v1/models``,
``/health``, ``/v1/status`` and ``/metrics``.

Requests are checked before any work starts (auth, per-user concurrency, body size,
prompt length, ``max_tokens``, model, graph inputs), so a bad request gets a 4xx with a
clear message instead of a stream that ends in an error. Bearer tokens are compared by
their sha256 and never logged.

Without a ``cato`` object, ``/v1/completions`` runs a ``complete`` task on the prompt as
given, and ``/v1/chat/completions`` a ``generate`` task on the last user message (earlier
messages become its context).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.api import (
    SLA,
    SLA_UNREACHABLE,
    OnLate,
    SLAMetric,
    Status,
    TaskEvent,
    TaskKind,
    TaskRequest,
)
from orchestrator.config import User, hash_token
from orchestrator.executor import Orchestrator, RunItem, TextSink, TokenDelta
from orchestrator.graphs import TaskGraph, build_graph
from orchestrator.prometheus import ServiceMetrics

log = logging.getLogger(__name__)

TTFT_KINDS = {TaskKind.COMPLETE, TaskKind.GENERATE}

# HTTP status of a task that failed before its first token, by ``TaskEvent.code``.
_ERROR_STATUS = {
    "bad_request": 400,
    "unknown_model": 404,
    "no_replica": 503,
    "replica_error": 502,
    SLA_UNREACHABLE: 503,
}


@dataclass(frozen=True)
class ServiceOptions:
    """Limits and users; ``models`` empty means the models of the current replicas.

    ``sla_floors_ms``: per task kind, the tightest SLA target a request may ask for (a
    user's own ``sla_floor_ms`` replaces it for that user); a tighter one is raised to
    the floor, so that no client buys priority with a tiny target.
    """

    users: Sequence[User] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    max_prompt_chars: int = 400_000
    max_tokens_limit: int = 8192
    models: Sequence[str] = ()
    retry_after_s: int = 1
    sla_floors_ms: Mapping[str, float] = field(default_factory=dict)

    def sla_floor_ms(self, kind: TaskKind, user: User | None) -> float | None:
        if user is not None and kind.value in user.sla_floor_ms:
            return user.sla_floor_ms[kind.value]
        return self.sla_floors_ms.get(kind.value)

    def with_floor(self, req: TaskRequest, user: User | None) -> TaskRequest:
        """``req`` with its SLA raised to the floor where it asks for a tighter one."""
        floor = self.sla_floor_ms(req.kind, user)
        if req.sla is None or floor is None or req.sla.target_ms >= floor:
            return req
        return req.model_copy(update={"sla": SLA(metric=req.sla.metric, target_ms=floor)})


class _Rejected(Exception):
    """A request refused before any work started; ``response`` says why."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _error(status: int, message: str, kind: str, **headers: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status, headers=headers or None)


def _bad_request(message: str) -> _Rejected:
    return _Rejected(_error(400, message, "BadRequestError"))


@dataclass
class _Users:
    """Bearer-token users and how many requests each has running."""

    options: ServiceOptions
    active: dict[str, int] = field(default_factory=dict)

    def authenticate(self, request: web.Request) -> User | None:
        """The caller; None when auth is off. Raises ``_Rejected`` (401) when it fails."""
        if not self.options.users:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Rejected(_unauthorized("missing bearer token"))
        digest = hash_token(token.strip())
        found: User | None = None
        for user in self.options.users:  # constant time: every user is compared
            if hmac.compare_digest(digest, user.token_sha256):
                found = user
        if found is None:
            raise _Rejected(_unauthorized("invalid bearer token"))
        return found

    @contextlib.contextmanager
    def admitted(self, user: User | None) -> Iterator[None]:
        """Count one running request of ``user``; ``_Rejected`` (429) over the limit."""
        if user is None:
            yield
            return
        running = self.active.get(user.name, 0)
        if running >= user.max_concurrency:
            raise _Rejected(
                _error(
                    429,
                    f"user {user.name!r} already has {running} requests running "
                    f"(limit {user.max_concurrency})",
                    "RateLimitError",
                    **{"Retry-After": str(self.options.retry_after_s)},
                )
            )
        self.active[user.name] = running + 1
        try:
            yield
        finally:
            self.active[user.name] -= 1


def _unauthorized(message: str) -> web.Response:
    resp = _error(401, message, "AuthenticationError")
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


class CatoExtension(BaseModel):
    """The ``cato`` object OpenAI clients may add (``extra_body={"cato": {...}}``)."""

    model_config = ConfigDict(extra="forbid")
    task: TaskKind | None = None
    sla_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    language: str | None = Field(default=None, max_length=64)
    target_language: str | None = Field(default=None, max_length=64)
    on_late: OnLate | None = None


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
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    n: int = 1
    user: str | None = None
    stream_options: dict[str, Any] | None = None
    cato: CatoExtension = Field(default_factory=CatoExtension)


Handler = Callable[[web.Request, User | None], Awaitable[web.StreamResponse]]


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

    # -- admission ----------------------------------------------------------------

    def served_models(self) -> list[str]:
        if self.options.models:
            return list(self.options.models)
        return sorted({r.model for r in self.get_status().replicas})

    async def _admit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate, hold a per-user slot while ``handler`` runs, turn refusals to 4xx."""
        try:
            user = self.users.authenticate(request)
            with self.users.admitted(user):
                return await handler(request, user)
        except _Rejected as rejected:
            return rejected.response

    def _authorize(self, request: web.Request) -> web.Response | None:
        try:
            self.users.authenticate(request)
        except _Rejected as rejected:
            return rejected.response
        return None

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Rejected(
                _error(
                    413,
                    f"request body over the limit of {self.options.max_body_bytes} bytes",
                    "RequestTooLargeError",
                )
            ) from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _bad_request(f"invalid JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise _bad_request("the JSON body must be an object")
        return data

    def _check(self, req: TaskRequest) -> TaskGraph:
        """Limits, model and graph inputs of a request, before anything runs."""
        size = len(req.prompt or "") + len(req.code or "") + len(req.context or "")
        if size > self.options.max_prompt_chars:
            raise _bad_request(
                f"input of {size} characters exceeds the limit of {self.options.max_prompt_chars}"
            )
        if req.max_tokens is not None and req.max_tokens > self.options.max_tokens_limit:
            raise _bad_request(
                f"max_tokens {req.max_tokens} exceeds the limit of {self.options.max_tokens_limit}"
            )
        try:
            graph = build_graph(req, self.orch.defaults)
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        served = self.served_models()
        if served and graph.model not in served:
            raise _Rejected(
                _error(
                    404,
                    f"The model `{graph.model}` does not exist (served: {', '.join(served)}).",
                    "NotFoundError",
                )
            )
        return graph

    async def _run(
        self, req: TaskRequest, sink: TextSink | None = None
    ) -> AsyncGenerator[list[RunItem], None]:
        """Submit with metrics and a log line; closing it cancels the task. Events come
        in batches (what was ready together), tokens as ``TokenDelta`` (or to ``sink``:
        see ``Orchestrator.submit_batches``)."""
        last: TaskEvent | None = None
        try:
            async with contextlib.aclosing(self.orch.submit_batches(req, sink)) as batches:
                async for batch in batches:
                    last = _last_event(batch, last)
                    yield batch
        finally:
            self.metrics.observe_end(req.kind.value, last)
            _log_task(req, last)

    # -- /v1/tasks ----------------------------------------------------------------

    async def tasks(self, request: web.Request) -> web.StreamResponse:
        return await self._admit(request, self._tasks)

    async def _tasks(self, request: web.Request, user: User | None) -> web.StreamResponse:
        try:
            req = TaskRequest.model_validate(await self._body(request))
        except ValidationError as exc:
            raise _bad_request(_validation_message(exc)) from None
        if user is not None:
            req = req.model_copy(update={"user": user.name})
        req = self.options.with_floor(req, user)
        self._check(req)
        resp = await _open_sse(request)
        async with contextlib.aclosing(self._run(req)) as batches:
            async for batch in batches:
                await resp.write(b"".join(_sse(_task_event_json(item)) for item in batch))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # -- OpenAI-compatible ----------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._admit(request, self._completions)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._admit(request, self._chat_completions)

    async def _completions(self, request: web.Request, user: User | None) -> web.StreamResponse:
        return await self._openai(request, user, chat=False)

    async def _chat_completions(
        self, request: web.Request, user: User | None
    ) -> web.StreamResponse:
        return await self._openai(request, user, chat=True)

    async def _openai(
        self, request: web.Request, user: User | None, *, chat: bool
    ) -> web.StreamResponse:
        try:
            body = _OpenAIBody.model_validate(await self._body(request))
        except ValidationError as exc:
            raise _bad_request(_validation_message(exc)) from None
        if body.n != 1:
            raise _bad_request(f"only n=1 is supported, got n={body.n}")
        served = self.served_models()
        if body.model and served and body.model not in served:
            raise _Rejected(
                _error(
                    404,
                    f"The model `{body.model}` does not exist (served: {', '.join(served)}).",
                    "NotFoundError",
                )
            )
        req = self.options.with_floor(self._task_from_openai(body, chat=chat, user=user), user)
        graph = self._check(req)
        writer = _OpenAIWriter(chat=chat, model=body.model or graph.model)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return await self._openai_stream(request, req, writer, include_usage)
        return await self._openai_whole(req, writer)

    async def _openai_stream(
        self, request: web.Request, req: TaskRequest, writer: _OpenAIWriter, include_usage: bool
    ) -> web.StreamResponse:
        """SSE chunks; the response starts with the first token, so a task that fails
        before any output still gets a plain HTTP error. The task's model call writes
        the text chunks itself (``_TextStream``); this waits for the end."""
        out = _TextStream(request, writer)
        last: TaskEvent | None = None
        async with contextlib.aclosing(self._run(req, out.write)) as batches:
            async for batch in batches:
                last = _last_event(batch, last)
        resp = out.resp
        if resp is None:
            if last is None or last.type != "done":
                return _task_error(last)
            resp = await _open_sse(request)
        if last is not None and last.type == "error":
            err = {"error": {"message": last.error, "type": "InternalServerError", "code": 500}}
            await resp.write(_sse(json.dumps(err)))
        else:
            await resp.write(writer.final(last))
            if include_usage and last is not None and last.usage is not None:
                await resp.write(writer.usage(last))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _openai_whole(self, req: TaskRequest, writer: _OpenAIWriter) -> web.Response:
        last: TaskEvent | None = None
        async with contextlib.aclosing(self._run(req)) as batches:
            async for batch in batches:
                last = _last_event(batch, last)
        if last is None or last.type != "done":
            return _task_error(last)
        return web.json_response(writer.whole(last))

    def _task_from_openai(self, body: _OpenAIBody, *, chat: bool, user: User | None) -> TaskRequest:
        ext = body.cato
        kind = ext.task or (TaskKind.GENERATE if chat else TaskKind.COMPLETE)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is not None and max_tokens > self.options.max_tokens_limit:
            raise _bad_request(
                f"max_tokens {max_tokens} exceeds the limit of {self.options.max_tokens_limit}"
            )
        text, context = _openai_input(body, chat=chat, kind=kind)
        sla = None
        if ext.sla_ms is not None:
            metric = SLAMetric.TTFT if kind in TTFT_KINDS else SLAMetric.E2E
            sla = SLA(metric=metric, target_ms=ext.sla_ms)
        fields: dict[str, Any] = {
            "kind": kind,
            "model": body.model,
            "sla": sla,
            "max_tokens": max_tokens,
            "stop": [body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            "temperature": body.temperature or 0.0,
            "user": user.name if user is not None else body.user,
            "context": context,
            "target_language": ext.target_language,
            "on_late": ext.on_late,
        }
        fields["prompt" if kind is TaskKind.COMPLETE else "code"] = text
        if ext.language:
            fields["language"] = ext.language
        try:
            return TaskRequest.model_validate(fields)
        except ValidationError as exc:
            raise _bad_request(_validation_message(exc)) from None

    # -- info ---------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        if (denied := self._authorize(request)) is not None:
            return denied
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "cato"}
            for name in self.served_models()
        ]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        if self.get_status().ok:
            return web.Response(text="ok")
        return web.Response(status=503, text="no ready replica yet")

    async def status(self, request: web.Request) -> web.Response:
        if (denied := self._authorize(request)) is not None:
            return denied
        return web.json_response(text=self.get_status().model_dump_json())

    async def prometheus(self, request: web.Request) -> web.Response:
        body = self.metrics.render(self.get_status())
        return web.Response(body=body, content_type="text/plain", charset="utf-8")


def _openai_input(body: _OpenAIBody, *, chat: bool, kind: TaskKind) -> tuple[str, str | None]:
    """The text a task works on, and the context, from an OpenAI body."""
    if not chat:
        if body.prompt is None:
            raise _bad_request("'prompt' is required")
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise _bad_request("exactly one prompt per request is supported")
            return body.prompt[0], None
        return body.prompt, None
    if not body.messages:
        raise _bad_request("'messages' is required")
    turns = [(str(m.get("role", "user")), _message_text(m)) for m in body.messages]
    if kind is TaskKind.COMPLETE:
        return _transcript(turns) + "\nassistant:", None
    last = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
    if last is None:
        raise _bad_request("'messages' needs a message with role 'user'")
    earlier = turns[:last]
    return turns[last][1], (_transcript(earlier) if earlier else None)


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise _bad_request("each message needs string 'content'")
    return content


def _transcript(turns: list[tuple[str, str]]) -> str:
    return "\n".join(f"{role}: {text}" for role, text in turns)


def _last_event(batch: list[RunItem], last: TaskEvent | None) -> TaskEvent | None:
    """The last ``TaskEvent`` of ``batch`` (tokens only say a task is still running, as
    any event before ``done`` does), else ``last``."""
    for item in reversed(batch):
        if isinstance(item, TaskEvent):
            return item
    return last


def _task_event_json(item: RunItem) -> str:
    event = item.event() if isinstance(item, TokenDelta) else item
    return event.model_dump_json(exclude_none=True)


def _task_error(last: TaskEvent | None) -> web.Response:
    """The HTTP answer for a task that ended without output."""
    if last is None:
        return _error(499, "the task was cancelled", "CancelledError")
    message = last.error or "the task did not finish"
    status = _ERROR_STATUS.get(last.code or "", 500)
    kinds = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}
    headers = {"Retry-After": "1"} if status == 503 else {}
    return _error(status, message, kinds.get(status, "InternalServerError"), **headers)


def _log_task(req: TaskRequest, last: TaskEvent | None) -> None:
    """Failures as warnings; the rest only at debug level (``--log-level debug``)."""
    who = req.user or "-"
    if last is None or last.type not in ("done", "error"):
        log.debug("task %s (%s, user %s): cancelled", req.id, req.kind.value, who)
    elif last.type == "error":
        log.warning(
            "task %s (%s, user %s): %s: %s", req.id, req.kind.value, who, last.code, last.error
        )
    else:
        ttft = "-" if last.ttft_ms is None else f"{last.ttft_ms:.0f}"
        log.debug(
            "task %s (%s, user %s): done, ttft %s ms, e2e %.0f ms, SLA %s",
            req.id,
            req.kind.value,
            who,
            ttft,
            last.e2e_ms or 0.0,
            "met" if last.sla_met else "missed",
        )


SERVICE = web.AppKey("service", Service)  # the app's handlers and their state


class _TextStream:
    """The SSE response of one streamed OpenAI request, written by the task's final
    model call as its text arrives (one write per read from the replica), so a token
    is not handed from task to task on its way out. The response starts with the
    first text."""

    def __init__(self, request: web.Request, writer: _OpenAIWriter) -> None:
        self.request = request
        self.writer = writer
        self.resp: web.StreamResponse | None = None
        self.gone = False
        self._handler = asyncio.current_task()

    async def write(self, texts: list[str]) -> None:
        if self.gone:
            return
        data = b"".join([self.writer.chunk(text) for text in texts if text])
        if not data:
            return
        try:
            if self.resp is None:
                self.resp = await _open_sse(self.request)
            await self.resp.write(data)
        except ConnectionError:
            # The client left: end the request (and so the task) as a failed write in
            # the handler would, instead of generating text no one reads.
            self.gone = True
            if self._handler is not None:
                self._handler.cancel()


class _OpenAIWriter:
    """Frames task output as OpenAI completion / chat completion responses."""

    def __init__(self, *, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self._role_sent = False
        self._template: tuple[bytes, bytes] | None = None

    def _chunk_template(self) -> tuple[bytes, bytes] | None:
        """The bytes of a text chunk around its JSON-encoded text: ``chunk`` runs per
        token, and a ``json.dumps`` of the whole frame was most of its cost."""
        marker = "\x00cato-text\x00"
        frame = self._frame([self._choice(marker, None)]).decode()
        encoded = json.dumps(marker)
        if frame.count(encoded) != 1:
            return None
        head, tail = frame.split(encoded)
        return head.encode(), tail.encode()

    def _frame(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        payload = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }
        return _sse(json.dumps(payload))

    def _choice(self, text: str, finish: str | None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"content": text}
            if not self._role_sent:
                delta["role"] = "assistant"
                self._role_sent = True
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def chunk(self, text: str) -> bytes:
        """What ``_frame([_choice(text, None)])`` gives, byte for byte."""
        if self.chat and not self._role_sent:
            return self._frame([self._choice(text, None)])  # the first one names the role
        template = self._template or self._chunk_template()
        if template is None:
            return self._frame([self._choice(text, None)])
        self._template = template
        head, tail = template
        return head + encode_basestring_ascii(text).encode() + tail

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


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _sse(data: str) -> bytes:
    return b"data: " + data.encode() + b"\n\n"


async def _open_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    return resp


def create_app(
    orch: Orchestrator,
    options: ServiceOptions,
    *,
    metrics: ServiceMetrics | None = None,
    status: Callable[[], Status] | None = None,
) -> web.Application:
    service = Service(orch, options, metrics, status)
    app = web.Application(client_max_size=options.max_body_bytes)
    app[SERVICE] = service
    app.router.add_post("/v1/tasks", service.tasks)
    app.router.add_post("/v1/completions", service.completions)
    app.router.add_post("/v1/chat/completions", service.chat_completions)
    app.router.add_get("/v1/models", service.models)
    app.router.add_get("/v1/status", service.status)
    app.router.add_get("/health", service.health)
    app.router.add_get("/metrics", service.prometheus)
    return app


async def serve_app(
    app: web.Application, host: str, port: int, *, shutdown_timeout_s: float = 5.0
) -> web.AppRunner:
    """Start the app (port 0 picks a free one; see ``bound_port``).

    With ``handler_cancellation`` a client that goes away cancels its task; on cleanup,
    streams still open after ``shutdown_timeout_s`` are cut.
    """
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the runner's first site listens on."""
    address = runner.addresses[0]
    port: int = address[1]
    return port


__all__ = ["SERVICE", "Service", "ServiceOptions", "bound_port", "create_app", "serve_app"]
