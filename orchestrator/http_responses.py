"""How a task's output and failures become HTTP responses: the SSE stream a final model
call writes as its output arrives (its last read held back and written with the body's
end, the head with the first bytes: one write where there were three for a short
completion), the plain HTTP error of a task that failed before any output, and the
request body read under the service's limits.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from orchestrator.api import SLA_UNREACHABLE, TaskEvent
from orchestrator.executor import RunItem, TokenDelta
from orchestrator.http_guard import HttpLimits
from orchestrator.openai_api import OpenAIWriter
from orchestrator.service_limits import Rejected, error

# HTTP status of a task that failed before its first token, by ``TaskEvent.code``.
_ERROR_STATUS = {
    "bad_request": 400,
    "unknown_model": 404,
    "no_replica": 503,
    "replica_error": 502,
    SLA_UNREACHABLE: 503,
}

# "replica tiny-0 rejected the request: ..." names an internal replica; clients see
# the model server's reason alone.
_REPLICA_PREFIX = re.compile(r"^replica \S+ (rejected the request|failed): ")


async def read_body(request: web.Request, max_bytes: int, limits: HttpLimits) -> bytes:
    """The request's body: 413 over ``max_bytes``, 408 (and the connection closed)
    when it does not arrive within ``limits.body_timeout_s``."""
    try:
        if request.content.is_eof():  # all of it came with the head: nothing to wait for
            return await request.read()
        async with asyncio.timeout(limits.body_timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Rejected(
            error(413, f"request body over the limit of {max_bytes} bytes", "RequestTooLargeError")
        ) from None
    except TimeoutError:
        resp = error(
            408,
            f"the request body did not arrive within {limits.body_timeout_s:g} s",
            "RequestTimeoutError",
        )
        resp.force_close()
        raise Rejected(resp) from None


def not_found(model: str, served: Sequence[str]) -> Rejected:
    return Rejected(
        error(
            404,
            f"The model `{model}` does not exist (served: {', '.join(served)}).",
            "NotFoundError",
        )
    )


def tokens_used(last: TaskEvent | None) -> int:
    if last is None or last.usage is None:
        return 0
    return last.usage.prompt_tokens + last.usage.completion_tokens


def last_event(batch: list[RunItem], last: TaskEvent | None) -> TaskEvent | None:
    """The last ``TaskEvent`` of ``batch`` (tokens only say a task is still running, as
    any event before ``done`` does), else ``last``."""
    for item in reversed(batch):
        if isinstance(item, TaskEvent):
            return item
    return last


def task_event_json(item: RunItem) -> str:
    if isinstance(item, TokenDelta):
        return item.json()  # per token: no pydantic model on the way out
    return item.model_dump_json(exclude_none=True)


def task_error(last: TaskEvent | None) -> web.Response:
    """The HTTP answer for a task that ended without output."""
    if last is None:
        return error(499, "the task was cancelled", "CancelledError")
    message = last.error or "the task did not finish"
    status = _ERROR_STATUS.get(last.code or "", 500)
    if status in (400, 502):
        message = _REPLICA_PREFIX.sub("the model server rejected the request: ", message)
    kinds = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}
    headers = {"Retry-After": "1"} if status == 503 else {}
    return error(status, message, kinds.get(status, "InternalServerError"), **headers)


class TextStream:
    """The SSE response of one streamed OpenAI request, written by the task's final
    model call as its output arrives (one write per read from the replica), so a token
    is not handed from task to task on its way out: text deltas framed here
    (``write``), or the replica's chunks as they are (``forward``, a ``ByteSink``). The
    response starts with the first output."""

    def __init__(
        self, request: web.Request, writer: OpenAIWriter, *, keep_usage: bool = False
    ) -> None:
        self.request = request
        self.writer = writer
        self.model = writer.model
        self.keep_usage = keep_usage
        self.resp: web.StreamResponse | None = None
        self.gone = False
        self.forwarded = False  # the replica's chunks went out, not chunks framed here
        self.tail = b""  # the stream's last read, written with the body's end
        self._handler = asyncio.current_task()

    async def write(self, texts: list[str]) -> None:
        await self._send(b"".join([self.writer.chunk(text) for text in texts if text]))

    async def forward(self, data: bytes, *, last: bool = False) -> None:
        self.forwarded = True
        if last:
            self.tail += data
            return
        await self._send(data)

    async def _send(self, data: bytes) -> None:
        if self.gone or not data:
            return
        try:
            if self.resp is None:
                self.resp = await open_sse(self.request)
            await self.resp.write(data)
        except ConnectionError:
            # The client left: end the request (and so the task) as a failed write in
            # the handler would, instead of generating text no one reads.
            self.gone = True
            if self._handler is not None:
                self._handler.cancel()


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class EventStream(web.StreamResponse):
    """An SSE response whose head goes out with its first bytes, in one write (aiohttp
    sends a ``StreamResponse``'s head at ``prepare`` by itself, a write of its own)."""

    _send_headers_immediately = False


async def open_sse(request: web.Request) -> web.StreamResponse:
    resp = EventStream(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    return resp
