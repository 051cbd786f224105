"""The team service's HTTP layer: a thin aiohttp front over the ``Orchestrator``.

Routes: ``POST /v1/tasks`` (SSE of ``TaskEvent``), OpenAI-compatible ``POST
/v1/completions`` and ``/v1/chat/completions`` (task kind and SLA in an optional ``cato``
object, so the ``openai`` client's ``extra_body`` works), ``GET /v1/models``,
``/health``, ``/v1/status``, ``/metrics`` and ``/openapi.json`` (the OpenAPI document,
generated from the request models: ``orchestrator.openapi``).

Requests are checked before any work starts (auth, per-user concurrency and token
budget, the service's queue bound, body size, prompt length, ``max_tokens`` against the
model's context, model, graph inputs), so a bad request gets a 4xx with a clear message
instead of a stream that ends in an error, and no input gets a 5xx. Bearer tokens are
compared by their sha256 and never logged. Slow and idle clients are cut off by the
limits of ``HttpLimits`` (``orchestrator.http_guard``).

Without a ``cato`` object, ``/v1/completions`` runs a ``complete`` task on the prompt as
given, and ``/v1/chat/completions`` a ``generate`` task on the last user message (earlier
messages become its context).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from orchestrator import dashboard
from orchestrator.api import (
    SLA,
    SLAMetric,
    Status,
    TaskEvent,
    TaskKind,
    TaskRequest,
)
from orchestrator.config import User
from orchestrator.executor import Orchestrator, RunItem, TextSink
from orchestrator.graphs import TaskGraph, build_graph
from orchestrator.history import DEFAULT_INTERVAL_S, History, UserUsage
from orchestrator.http_guard import GuardedSite, HttpLimits
from orchestrator.http_responses import (
    TextStream,
    last_event,
    not_found,
    open_sse,
    read_body,
    task_error,
    task_event_json,
    tokens_used,
    validation_message,
)
from orchestrator.openai_api import (
    ChatCompletionBody,
    CompletionBody,
    OpenAIBody,
    OpenAIWriter,
    openai_input,
    sse,
)
from orchestrator.openapi import openapi_document
from orchestrator.prometheus import ServiceMetrics
from orchestrator.service_limits import QueueBound, Rejected, Users, bad_request, error
from orchestrator.task_run import ByteSink

log = logging.getLogger(__name__)

TTFT_KINDS = {TaskKind.COMPLETE, TaskKind.GENERATE}


@dataclass(frozen=True)
class ServiceOptions:
    """Limits and users; ``models`` empty means the models of the current replicas.

    ``sla_floors_ms``: per task kind, the tightest SLA target a request may ask for (a
    user's own ``sla_floor_ms`` replaces it for that user); a tighter one is raised to
    the floor, so that no client buys priority with a tiny target.
    ``context_lengths``: per model, its context (max_model_len) in tokens, against
    which a request's prompt + ``max_tokens`` is checked. ``max_queued``: the most
    calls waiting for a replica, service-wide (None: no bound). ``metrics_auth``: with
    users, whether ``/metrics`` needs a token.
    """

    users: Sequence[User] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    max_prompt_chars: int = 400_000
    max_tokens_limit: int = 8192
    models: Sequence[str] = ()
    retry_after_s: int = 1
    sla_floors_ms: Mapping[str, float] = field(default_factory=dict)
    context_lengths: Mapping[str, int] = field(default_factory=dict)
    max_queued: int | None = None
    metrics_auth: bool = True
    http: HttpLimits = field(default_factory=HttpLimits)

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


Handler = Callable[[web.Request, User | None], Awaitable[web.StreamResponse]]


class Service:
    """Route handlers; one instance per app."""

    def __init__(
        self,
        orch: Orchestrator,
        options: ServiceOptions,
        metrics: ServiceMetrics | None = None,
        status: Callable[[], Status] | None = None,
        clock: Callable[[], float] = time.monotonic,
        history_interval_s: float = DEFAULT_INTERVAL_S,
        scale_events: Sequence[tuple[float, str, int, int, str]] = (),
    ) -> None:
        self.orch = orch
        self.get_status = status or orch.status
        self.options = options
        self.metrics = metrics or ServiceMetrics()
        self.history = History(
            self.get_status,
            orch.recorder,
            targets={k.value: d.sla for k, d in orch.defaults.kinds.items()},
            usage=UserUsage(self.metrics.registry),
            scale_events=scale_events,
            interval_s=history_interval_s,
            clock=orch.clock,
        )
        self.users = Users(options.users, options.retry_after_s, clock)
        self._openapi: str | None = None
        self.queue = QueueBound(options.max_queued, orch.queued, options.retry_after_s, clock)

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
        except Rejected as rejected:
            return rejected.response

    def _authorize(self, request: web.Request) -> web.Response | None:
        try:
            self.users.authenticate(request)
        except Rejected as rejected:
            return rejected.response
        return None

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await read_body(request, self.options.max_body_bytes, self.options.http)
        try:
            data = json.loads(raw)
        except RecursionError:
            raise bad_request("invalid JSON body: nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise bad_request(f"invalid JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise bad_request("the JSON body must be an object")
        return data

    def _check(self, req: TaskRequest) -> TaskGraph:
        """Limits, model, context and graph inputs of a request, before anything runs."""
        size = len(req.prompt or "") + len(req.code or "") + len(req.context or "")
        if size > self.options.max_prompt_chars:
            raise bad_request(
                f"input of {size} characters exceeds the limit of {self.options.max_prompt_chars}"
            )
        if req.max_tokens is not None and req.max_tokens > self.options.max_tokens_limit:
            raise bad_request(
                f"max_tokens {req.max_tokens} exceeds the limit of {self.options.max_tokens_limit}"
            )
        try:
            graph = build_graph(req, self.orch.defaults)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        served = self.served_models()
        if served and graph.model not in served:
            raise not_found(graph.model, served)
        self._check_context(graph)
        self.queue.check()
        return graph

    def _check_context(self, graph: TaskGraph) -> None:
        """Each model call's prompt + output must fit the model's context, as a replica
        would check it (prompt tokens estimated as the scheduler does)."""
        limit = self.options.context_lengths.get(graph.model)
        if limit is None:
            return
        for node in graph.llm_nodes():
            if node.prompt_tokens + node.max_tokens <= limit:
                continue
            room = limit - node.prompt_tokens
            where = f"model `{graph.model}` has a context length of {limit} tokens"
            if room < 1:
                raise bad_request(
                    f"the input is about {node.prompt_tokens} tokens, but {where}; "
                    "shorten the input"
                )
            raise bad_request(
                f"max_tokens {node.max_tokens} plus about {node.prompt_tokens} prompt tokens "
                f"exceeds the context: {where}; ask for at most {room} tokens"
            )

    def _reserve(self, graph: TaskGraph, user: User | None) -> int:
        """Take what the task's model calls may use from the user's token budget."""
        tokens = sum(n.prompt_tokens + n.max_tokens for n in graph.llm_nodes())
        return self.users.reserve(user, tokens)

    async def _run(
        self,
        req: TaskRequest,
        user: User | None,
        reserved: int,
        sink: TextSink | None = None,
        relay: ByteSink | None = None,
        *,
        graph: TaskGraph | None = None,
        progress: bool = True,
    ) -> AsyncGenerator[list[RunItem], None]:
        """Submit with metrics, a log line and the user's token bill; closing it cancels
        the task. Events come in batches (what was ready together), tokens as
        ``TokenDelta`` (or to ``sink`` or ``relay``: see ``Orchestrator.submit_batches``)."""
        last: TaskEvent | None = None
        submitted = self.orch.submit_batches(req, sink, relay, graph=graph, progress=progress)
        try:
            async with contextlib.aclosing(submitted) as batches:
                async for batch in batches:
                    last = last_event(batch, last)
                    yield batch
        finally:
            self.metrics.observe_end(req.kind.value, last)
            self.history.usage.observe(req.user, last)
            self.users.settle(user, reserved, tokens_used(last))
            _log_task(req, last)

    # -- /v1/tasks ----------------------------------------------------------------

    async def tasks(self, request: web.Request) -> web.StreamResponse:
        return await self._admit(request, self._tasks)

    async def _tasks(self, request: web.Request, user: User | None) -> web.StreamResponse:
        try:
            req = TaskRequest.model_validate(await self._body(request))
        except ValidationError as exc:
            raise bad_request(validation_message(exc)) from None
        if user is not None:
            req = req.model_copy(update={"user": user.name})
        req = self.options.with_floor(req, user)
        graph = self._check(req)
        reserved = self._reserve(graph, user)
        try:
            resp = await open_sse(request)
        except BaseException:
            self.users.settle(user, reserved, 0)  # the client left before the task began
            raise
        async with contextlib.aclosing(self._run(req, user, reserved, graph=graph)) as batches:
            async for batch in batches:
                await resp.write(b"".join(sse(task_event_json(item)) for item in batch))
        await resp.write_eof(b"data: [DONE]\n\n")
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
        model: type[OpenAIBody] = ChatCompletionBody if chat else CompletionBody
        try:
            body = model.model_validate(await self._body(request))
        except ValidationError as exc:
            raise bad_request(validation_message(exc)) from None
        if body.n != 1:
            raise bad_request(f"only n=1 is supported, got n={body.n}")
        served = self.served_models()
        if body.model and served and body.model not in served:
            raise not_found(body.model, served)
        req = self.options.with_floor(self._task_from_openai(body, chat=chat, user=user), user)
        graph = self._check(req)
        reserved = self._reserve(graph, user)
        writer = OpenAIWriter(chat=chat, model=body.model or graph.model)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return await self._openai_stream(
                request, req, graph, (user, reserved), writer, include_usage
            )
        return await self._openai_whole(req, graph, (user, reserved), writer)

    async def _openai_stream(
        self,
        request: web.Request,
        req: TaskRequest,
        graph: TaskGraph,
        bill: tuple[User | None, int],
        writer: OpenAIWriter,
        include_usage: bool,
    ) -> web.StreamResponse:
        """SSE chunks; the response starts with the first token, so a task that fails
        before any output still gets a plain HTTP error. The task's model call writes
        the chunks itself (``TextStream``); this waits for the end.

        A completion's chunks are the replica's own (its ``id``, its ``finish_reason``,
        its usage chunk), forwarded as bytes; a chat's are framed here from the text,
        since the replica is asked for a completion of the chat's prompt."""
        out = TextStream(request, writer, keep_usage=include_usage)
        relay = None if writer.chat else out
        last: TaskEvent | None = None
        run = self._run(req, *bill, out.write, relay, graph=graph, progress=False)
        async with contextlib.aclosing(run) as batches:
            async for batch in batches:
                last = last_event(batch, last)
        resp = out.resp
        if resp is None:
            if (last is None or last.type != "done") and not out.tail:
                return task_error(last)
            resp = await open_sse(request)
        # What is left goes out in one write with the end of the body (and with the
        # head, when the whole stream came in one read).
        parts = [out.tail]
        if last is not None and last.type == "error":
            err = {"error": {"message": last.error, "type": "InternalServerError", "code": 500}}
            parts.append(sse(json.dumps(err)))
        elif not out.forwarded:  # forwarded chunks had the finish reason and usage
            parts.append(writer.final(last))
            if include_usage and last is not None and last.usage is not None:
                parts.append(writer.usage(last))
        parts.append(b"data: [DONE]\n\n")
        await resp.write_eof(b"".join(parts))
        return resp

    async def _openai_whole(
        self,
        req: TaskRequest,
        graph: TaskGraph,
        bill: tuple[User | None, int],
        writer: OpenAIWriter,
    ) -> web.Response:
        last: TaskEvent | None = None
        run = self._run(req, *bill, graph=graph, progress=False)
        async with contextlib.aclosing(run) as batches:
            async for batch in batches:
                last = last_event(batch, last)
        if last is None or last.type != "done":
            return task_error(last)
        return web.json_response(writer.whole(last))

    def _task_from_openai(self, body: OpenAIBody, *, chat: bool, user: User | None) -> TaskRequest:
        ext = body.cato
        kind = ext.task or (TaskKind.GENERATE if chat else TaskKind.COMPLETE)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is not None and max_tokens > self.options.max_tokens_limit:
            raise bad_request(
                f"max_tokens {max_tokens} exceeds the limit of {self.options.max_tokens_limit}"
            )
        text, context = openai_input(body, chat=chat, kind=kind)
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
            raise bad_request(validation_message(exc)) from None

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

    async def status_history(self, request: web.Request) -> web.Response:
        """``History.to_json``; ``?since=T`` (Unix seconds) for the samples after ``T``."""
        if (denied := self._authorize(request)) is not None:
            return denied
        since = None
        if "since" in request.query:
            try:
                since = float(request.query["since"])
            except ValueError:
                return error(400, "since must be a number (Unix seconds)", "BadRequestError")
        return web.json_response(self.history.to_json(since))

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            self._openapi = json.dumps(openapi_document())
        return web.json_response(text=self._openapi)

    async def prometheus(self, request: web.Request) -> web.Response:
        if self.options.metrics_auth and (denied := self._authorize(request)) is not None:
            return denied
        body = self.metrics.render(self.get_status())
        return web.Response(body=body, content_type="text/plain", charset="utf-8")


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


@web.middleware
async def _no_5xx_for_input(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Input too deep for Python's recursion is the client's error (400); anything else
    unexpected is logged and answered as JSON (500), not as aiohttp's text page."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except RecursionError:
        return error(400, "the request is nested too deeply", "BadRequestError")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal error (see the service's log)", "InternalServerError")


def create_app(
    orch: Orchestrator,
    options: ServiceOptions,
    *,
    metrics: ServiceMetrics | None = None,
    status: Callable[[], Status] | None = None,
    history_interval_s: float = DEFAULT_INTERVAL_S,
    scale_events: Sequence[tuple[float, str, int, int, str]] = (),
) -> web.Application:
    """The service's app. Its loop samples the ``History`` every ``history_interval_s``
    while it runs; ``scale_events`` is the runtime's list of applied scale decisions."""
    service = Service(
        orch, options, metrics, status,
        history_interval_s=history_interval_s, scale_events=scale_events,
    )  # fmt: skip
    app = web.Application(client_max_size=options.max_body_bytes, middlewares=[_no_5xx_for_input])
    app[SERVICE] = service
    app.router.add_post("/v1/tasks", service.tasks)
    app.router.add_post("/v1/completions", service.completions)
    app.router.add_post("/v1/chat/completions", service.chat_completions)
    app.router.add_get("/v1/models", service.models)
    app.router.add_get("/v1/status", service.status)
    app.router.add_get("/v1/status/history", service.status_history)
    app.router.add_get("/health", service.health)
    app.router.add_get("/metrics", service.prometheus)
    app.router.add_get("/openapi.json", service.openapi)
    dashboard.add_routes(app)
    app.cleanup_ctx.append(_sample_history)
    return app


async def _sample_history(app: web.Application) -> AsyncGenerator[None, None]:
    async with app[SERVICE].history.running():
        yield


async def serve_app(
    app: web.Application, host: str, port: int, *, shutdown_timeout_s: float = 5.0
) -> web.AppRunner:
    """Start the app (port 0 picks a free one; see ``bound_port``) with the
    connection limits of its ``ServiceOptions.http``.

    With ``handler_cancellation`` a client that goes away cancels its task; on cleanup,
    streams still open after ``shutdown_timeout_s`` are cut. A body that stopped
    arriving is read for at most the body timeout (or 10 s) after its 408.
    """
    limits = app[SERVICE].options.http
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=limits.keepalive_timeout_s,
        lingering_time=min(10.0, limits.body_timeout_s),
    )
    await runner.setup()
    site = GuardedSite(runner, host, port, limits)
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


__all__ = [
    "SERVICE",
    "HttpLimits",
    "Service",
    "ServiceOptions",
    "bound_port",
    "create_app",
    "serve_app",
]
