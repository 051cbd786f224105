"""Streaming client for one OpenAI-compatible replica (vLLM, or the emulator).

The executor needs three things a generic OpenAI SDK does not give it: the time of every
token on its own clock, errors that say whether a token had already been sent (a call
may move to another replica only before that), and an abort that reaches the engine.
vLLM aborts a sequence when its client disconnects, so closing a stream closes the TCP
connection instead of reading the response to the end.

Streams are async generators: close them with ``contextlib.aclosing`` (or cancel the
task) to abort at once. Breaking out of a bare ``async for`` also aborts, but only when
the event loop finalizes the abandoned generator, one loop turn later.

The ``priority`` field is vLLM's and only works where the server runs priority
scheduling: a stock vLLM (FCFS) answers 400 to any priority but 0. ``priority="auto"``
(the default) sends it until a replica refuses it that way, then sends the call again
without it and leaves it out for that replica from then on.

A stream is read one of two ways: ``stream_completion`` and ``stream_chat`` fold each
chunk into tokens (``replicas.progress``, over the SSE parser of ``replicas.sse``), for
callers that need the text; ``relay_completion`` hands the replica's bytes on as they came
and counts what the scheduler needs (``replicas.relay``). Errors are ``replicas.errors``';
the request body is built by ``replicas.request_body``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar
from urllib.parse import urlsplit

from orchestrator.config import PRIORITY_MODES, PriorityMode
from orchestrator.replicas.errors import (
    ReplicaError,
    ReplicaHTTPError,
    ReplicaProtocolError,
    ReplicaTimeout,
    ReplicaUnreachable,
    error_message,
)
from orchestrator.replicas.http1 import ConnectError, Pool, Response
from orchestrator.replicas.progress import (
    Clock,
    Finished,
    Progress,
    StreamEvent,
    TextOf,
    Token,
    chat_text,
    completion_text,
)
from orchestrator.replicas.relay import Relay, RelayOptions
from orchestrator.replicas.request_body import (
    priority_required,
    refuses_priority,
    request_body,
    root_url,
    without_priority,
)
from orchestrator.replicas.sse import SSEDecoder, SSEEvent

log = logging.getLogger(__name__)

_T = TypeVar("_T", covariant=True)


class _Fold(Protocol[_T]):
    """What ``ReplicaClient._reads`` folds a response into (``Progress`` or ``Relay``)."""

    url: str
    done: bool

    @property
    def after_first_token(self) -> bool: ...

    def protocol_error(self, message: str) -> ReplicaProtocolError: ...

    def take(self, chunk: bytes) -> tuple[_T | None, ReplicaError | None]: ...


Message = Mapping[str, Any]

ERROR_BODY_LIMIT: Final = 64 * 1024
TEXT_LIMIT: Final = 16 * 1024 * 1024  # the most of a small GET's body read (/metrics)
DRAIN_S: Final = 1.0  # the longest wait for a stream's end after its [DONE]


class ReplicaClient:
    """A pooled HTTP client for one replica; create and use it inside the running loop.

    ``read_timeout_s`` bounds the gap between two reads (waiting for the response head
    included), not the whole call, so a long generation never times out while it
    streams. ``keepalive_s`` stays below uvicorn's 5 s keep-alive so that a pooled
    connection is not reused just as vLLM closes it.

    ``priority`` says what happens to a call's ``priority``: ``"on"`` sends it always,
    ``"off"`` never, ``"auto"`` until this replica refuses it (see the module doc);
    ``sends_priority`` tells which it is now.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float | None = 60.0,
        api_key: str | None = None,
        limit: int = 512,
        keepalive_s: float = 4.0,
        clock: Clock = time.monotonic,
        priority: PriorityMode = "auto",
    ) -> None:
        if priority not in PRIORITY_MODES:
            raise ValueError(
                f"priority must be one of {', '.join(PRIORITY_MODES)}, not {priority!r}"
            )
        self.base_url = root_url(base_url)
        self.clock = clock
        self.priority_mode: PriorityMode = priority
        self.sends_priority = priority != "off"
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._path = urlsplit(self.base_url).path  # a base URL may sit under a path
        self._pool: Pool | None = None

    # ---- lifecycle

    def _get_pool(self) -> Pool:
        if self._pool is None or self._pool.closed:
            self._pool = Pool(
                self.base_url,
                headers=self._headers,
                connect_timeout_s=self._connect_timeout_s,
                keepalive_s=self._keepalive_s,
                max_idle=self._limit,
            )
        return self._pool

    def _target(self, url: str) -> str:
        """The request target of ``url`` (one of this replica's)."""
        return self._path + url[len(self.base_url) :]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- streaming calls

    def stream_completion(
        self,
        model: str,
        prompt: str,
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        seed: int | None = None,
        priority: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream ``POST /v1/completions``: ``Token`` events, then one ``Finished``."""
        body = request_body(
            model,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            seed=seed,
            priority=priority,
            extra=extra,
        )
        body["prompt"] = prompt
        return self._stream("/v1/completions", body, completion_text)

    def stream_completion_batches(
        self,
        model: str,
        prompt: str,
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        seed: int | None = None,
        priority: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """``stream_completion`` one read at a time: the tokens that arrived together
        as one list, then ``[Finished]``; a busy service saves a hand-off per token."""
        body = request_body(
            model,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            seed=seed,
            priority=priority,
            extra=extra,
        )
        body["prompt"] = prompt
        return self._stream_batches("/v1/completions", body, completion_text)

    def stream_chat(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        seed: int | None = None,
        priority: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream ``POST /v1/chat/completions``; the same events as ``stream_completion``."""
        body = request_body(
            model,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            seed=seed,
            priority=priority,
            extra=extra,
        )
        body["messages"] = [dict(m) for m in messages]
        return self._stream("/v1/chat/completions", body, chat_text)

    async def _stream(
        self, path: str, body: Mapping[str, Any], text_of: TextOf
    ) -> AsyncGenerator[StreamEvent, None]:
        async with aclosing(self._stream_batches(path, body, text_of)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def _stream_batches(
        self, path: str, body: Mapping[str, Any], text_of: TextOf
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """The tokens of each read as one list (never empty), then ``[Finished]``."""
        progress = Progress(url=self.base_url + path, clock=self.clock, text_of=text_of)
        async with aclosing(self._reads(body, progress)) as reads:
            async for tokens in reads:
                yield tokens
        yield [progress.finished()]

    def relay_completion(
        self,
        model: str,
        prompt: str,
        *,
        max_tokens: int,
        options: RelayOptions | None = None,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        seed: int | None = None,
        priority: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[Relay, AsyncGenerator[tuple[bytes, int], None]]:
        """``POST /v1/completions`` handed on as bytes: per read, the whole events it
        completed (vLLM's framing, ``[DONE]`` left out) and how many token chunks they
        hold. The ``Relay`` tells the rest: usage, whether it ended, the chunk count.
        Errors are the ones ``stream_completion`` raises; nothing is yielded after one."""
        body = request_body(
            model,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            seed=seed,
            priority=priority,
            extra=extra,
        )
        body["prompt"] = prompt
        relay = Relay(self.base_url + "/v1/completions", options)
        return relay, self._reads(body, relay)

    async def _reads(self, body: Mapping[str, Any], fold: _Fold[_T]) -> AsyncGenerator[_T, None]:
        """Send ``body`` to ``fold.url`` and fold each read of the response in; yield what
        a read gives, until ``fold.done``. A stream that ends without ``[DONE]``, a broken
        connection or a read timeout raise, with ``after_first_token`` from ``fold``."""
        url = fold.url
        resp = await self._open(url, body)
        resp.watch(self._read_timeout_s)
        released = False
        try:
            while True:
                try:
                    chunk = await resp.readany()
                except TimeoutError as exc:
                    raise ReplicaTimeout(
                        "no data from replica within the read timeout",
                        after_first_token=fold.after_first_token,
                        url=url,
                    ) from exc
                except OSError as exc:
                    raise fold.protocol_error(
                        f"stream broken: {type(exc).__name__}: {exc}"
                    ) from exc
                item, error = fold.take(chunk)
                if item is not None:
                    yield item
                if error is not None:
                    raise error
                if fold.done:
                    break
                if not chunk:
                    raise fold.protocol_error("stream ended without [DONE]")
            if not resp.eof:
                await _drain(resp)
            resp.release()
            released = True
        finally:
            if not released:
                resp.close()

    async def _open(self, url: str, body: Mapping[str, Any]) -> Response:
        """Send the request and wait for the response head; raise on non-2xx.

        A refused ``priority`` is dealt with here, before any token: see the module doc.
        """
        if "priority" not in body:
            return await self._post(url, body)
        if not self.sends_priority:
            return await self._post(url, without_priority(body))
        try:
            return await self._post(url, body)
        except ReplicaHTTPError as exc:
            if not refuses_priority(exc):
                raise
            if self.priority_mode == "on":
                raise priority_required(exc) from exc
            resp = await self._post(url, without_priority(body))
            self._stop_priority(exc)
            return resp

    def _stop_priority(self, exc: ReplicaHTTPError) -> None:
        """Send no more priorities here: the call went through once it had none."""
        if self.sends_priority:
            self.sends_priority = False
            log.warning(
                "replica %s does not take 'priority' (%s); sending calls without it. Start "
                "vLLM with --scheduling-policy priority for SLA-aware ordering inside the "
                'engine, or set priority = "off" for this model in cato.toml.',
                self.base_url,
                exc.message,
            )

    async def _post(self, url: str, body: Mapping[str, Any]) -> Response:
        data = json.dumps(body).encode()
        try:
            resp = await self._get_pool().request(
                "POST",
                self._target(url),
                data,
                accept="text/event-stream",
                head_timeout_s=self._read_timeout_s,
            )
        except (TimeoutError, OSError) as exc:
            raise _before_response_error(exc, url) from exc
        if 200 <= resp.status < 300:
            return resp
        try:
            raise await _http_error(resp, url)
        finally:
            resp.close()

    # ---- small requests

    async def health(self, timeout_s: float = 2.0) -> bool:
        """True when ``GET /health`` answers 200 within ``timeout_s`` seconds."""
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._get_pool().request("GET", self._path + "/health")
                status = resp.status
                try:
                    await resp.read(ERROR_BODY_LIMIT)
                finally:
                    resp.release()
                return status == 200
        except (TimeoutError, OSError):
            return False

    async def models(self) -> list[str]:
        """The model ids of ``GET /v1/models``."""
        text = await self._get_text("/v1/models")
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReplicaProtocolError(f"invalid JSON: {exc}", url=self.base_url) from exc
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ReplicaProtocolError("/v1/models has no 'data' list", url=self.base_url)
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    async def metrics_text(self) -> str:
        """The Prometheus exposition text of ``GET /metrics``."""
        return await self._get_text("/metrics")

    async def _get_text(self, path: str) -> str:
        url = self.base_url + path
        try:
            resp = await self._get_pool().request(
                "GET", self._path + path, head_timeout_s=self._read_timeout_s
            )
        except (TimeoutError, OSError) as exc:
            raise _before_response_error(exc, url) from exc
        try:
            if not 200 <= resp.status < 300:
                raise await _http_error(resp, url)
            resp.watch(self._read_timeout_s)
            return (await resp.read(TEXT_LIMIT)).decode("utf-8", errors="replace")
        except TimeoutError as exc:
            raise ReplicaTimeout(f"read timeout on {url}", url=url) from exc
        except OSError as exc:
            raise ReplicaProtocolError(f"response broken: {exc}", url=url) from exc
        finally:
            resp.release()


async def _drain(resp: Response) -> None:
    """Read what follows ``[DONE]`` (the chunked body's end) so that the connection goes
    back to the pool: one left unread is closed, and the next call pays a new connection.
    A replica that sends more, or nothing, is given ``DRAIN_S`` and then cut off."""
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(DRAIN_S):
            while await resp.readany():
                pass


def _before_response_error(exc: BaseException, url: str) -> ReplicaError:
    """Classify a failure that happened before any response head arrived."""
    if isinstance(exc, ConnectError):
        return ReplicaUnreachable(f"cannot reach {url}: {exc}", url=url)
    if isinstance(exc, TimeoutError):
        return ReplicaTimeout(f"no response head from {url} within the read timeout", url=url)
    return ReplicaUnreachable(f"cannot reach {url}: {type(exc).__name__}: {exc}", url=url)


async def _read_limited(resp: Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of an error's body; none when reading it fails (the error
    then has the status line alone)."""
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(DRAIN_S * 5):
            return await resp.read(limit)
    return b""


async def _http_error(resp: Response, url: str) -> ReplicaHTTPError:
    """Build the error for a non-2xx response, with the OpenAI error message if any."""
    body = (await _read_limited(resp, ERROR_BODY_LIMIT)).decode("utf-8", errors="replace")
    try:
        message = error_message(json.loads(body))
    except json.JSONDecodeError:
        message = None
    if message is None:
        message = f"HTTP {resp.status} {resp.reason or ''}".strip()
    return ReplicaHTTPError(resp.status, body, message, url=url)


__all__ = [
    "Finished",
    "ReplicaClient",
    "ReplicaError",
    "ReplicaHTTPError",
    "ReplicaProtocolError",
    "ReplicaTimeout",
    "ReplicaUnreachable",
    "SSEDecoder",
    "SSEEvent",
    "StreamEvent",
    "Token",
]
