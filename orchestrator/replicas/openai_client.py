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
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import aiohttp

from orchestrator.api import Usage
from orchestrator.config import PRIORITY_MODES, PriorityMode

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Message = Mapping[str, Any]

ERROR_BODY_LIMIT: Final = 64 * 1024
DONE: Final = "[DONE]"
# The C scanner that ``json.loads`` runs (set in ``JSONDecoder.__init__``; not in typeshed).
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- errors


class ReplicaError(Exception):
    """Any failure talking to a replica.

    ``after_first_token`` is true when the caller had already been given a token from
    this call, so retrying elsewhere would repeat text the user has seen.
    """

    def __init__(self, message: str, *, after_first_token: bool = False, url: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.after_first_token = after_first_token
        self.url = url


class ReplicaUnreachable(ReplicaError):
    """No response at all: refused, reset, DNS failure or connect timeout."""


class ReplicaHTTPError(ReplicaError):
    """The replica answered with a non-2xx status, or sent an error object mid-stream."""

    def __init__(
        self,
        status: int,
        body: str,
        message: str,
        *,
        after_first_token: bool = False,
        url: str = "",
    ) -> None:
        super().__init__(message, after_first_token=after_first_token, url=url)
        self.status = status
        self.body = body


class ReplicaProtocolError(ReplicaError):
    """The response was not the stream promised: bad SSE or JSON, or no ``[DONE]``."""


class ReplicaTimeout(ReplicaError):
    """No byte arrived within the read timeout."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Token:
    """One non-empty text delta; ``first`` marks the call's first token (its TTFT)."""

    text: str
    t: float
    first: bool = False


@dataclass(frozen=True, slots=True)
class Finished:
    """The call ended normally; ``text`` is every delta joined.

    ``usage`` is what the replica reported (``None`` when it sent no usage chunk).
    """

    finish_reason: str | None
    usage: Usage | None
    t: float
    text: str = ""


StreamEvent = Token | Finished


# --------------------------------------------------------------------------- SSE


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event (its ``data:`` lines joined by newlines)."""

    data: str
    event: str | None = None


@dataclass
class SSEDecoder:
    """Incremental SSE parser: feed it bytes in arbitrary pieces, get whole events.

    Follows the WHATWG rules: CRLF, LF or CR end a line (a CR at the end of a piece
    waits for the next piece, which may start with its LF), ``:`` lines are comments,
    one optional space after the field colon, a blank line dispatches. UTF-8 sequences
    split between pieces are reassembled.

    It runs once per read of every stream, so the common piece (whole UTF-8, LF only)
    takes a short path: one ``bytes.decode`` and one ``split``.
    """

    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="strict")
    )
    _buf: str = ""
    _data: list[str] = field(default_factory=list)
    _event: str | None = None
    _started: bool = False
    _partial: bool = False  # the incremental decoder holds part of a UTF-8 sequence

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return self._feed_text(self._decode(chunk, final=False), final=False)

    def close(self) -> list[SSEEvent]:
        """Flush at end of stream; a last event without its blank line still counts."""
        events = self._feed_text(self._decode(b"", final=True), final=True)
        if self._buf:
            self._line(self._buf, events)
            self._buf = ""
        self._dispatch(events)
        return events

    def _decode(self, chunk: bytes, *, final: bool) -> str:
        text: str | None = None
        if not self._partial and not final:
            try:
                text = chunk.decode()
            except UnicodeDecodeError:
                text = None  # maybe a sequence split at the end: the slow path knows
        if text is None:
            try:
                text = self._decoder.decode(chunk, final)
            except UnicodeDecodeError as exc:
                raise ValueError(f"invalid UTF-8 in event stream: {exc}") from exc
            self._partial = bool(self._decoder.getstate()[0])
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        return text

    def _feed_text(self, text: str, *, final: bool) -> list[SSEEvent]:
        buf = self._buf + text if self._buf else text
        held = ""
        if "\r" in buf:
            if buf.endswith("\r") and not final:
                buf, held = buf[:-1], "\r"
            buf = buf.replace("\r\n", "\n").replace("\r", "\n")
        lines = buf.split("\n")
        self._buf = lines.pop() + held
        events: list[SSEEvent] = []
        for line in lines:
            if line.startswith("data:"):  # nearly every line: no method call for it
                self._data.append(line[6:] if line[5:6] == " " else line[5:])
            elif line:
                self._line(line, events)
            elif self._data:
                events.append(SSEEvent("\n".join(self._data), self._event))
                self._data = []
                self._event = None
            else:
                self._event = None
        return events

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            return
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            events.append(SSEEvent("\n".join(self._data), self._event))
        self._data = []
        self._event = None


# --------------------------------------------------------------------------- chunks


def _error_message(payload: Any) -> str | None:
    """The message of an OpenAI (``{"error": {...}}``) or vLLM (``object: error``) body."""
    if not isinstance(payload, dict):
        return None
    err = payload.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])
    if isinstance(err, str):
        return err
    if payload.get("object") == "error" and isinstance(payload.get("message"), str):
        return str(payload["message"])
    return None


def _error_status(payload: Mapping[str, Any]) -> int:
    err = payload.get("error")
    source = err if isinstance(err, dict) else payload
    code = source.get("code")
    return code if isinstance(code, int) and 400 <= code <= 599 else 500


def _loads(data: str) -> Any:
    """``json.loads`` without its wrapper frames and whitespace scans when ``data`` is
    one bare JSON value (every chunk a replica sends); anything else, including every
    error, goes through ``json.loads`` itself."""
    try:
        value, end = _scan_json(data, 0)
    except (StopIteration, ValueError):
        return json.loads(data)
    return value if end == len(data) else json.loads(data)


def _parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def completion_text(choice: Mapping[str, Any]) -> str | None:
    """Text delta of a ``/v1/completions`` chunk choice."""
    text = choice.get("text")
    return text if isinstance(text, str) else None


def chat_text(choice: Mapping[str, Any]) -> str | None:
    """Text delta of a ``/v1/chat/completions`` chunk choice (``delta.content``)."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return None
    content = delta.get("content")
    return content if isinstance(content, str) else None


TextOf = Callable[[Mapping[str, Any]], str | None]


@dataclass
class _Progress:
    """What one stream has produced so far."""

    url: str
    clock: Clock
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    done: bool = False

    @property
    def after_first_token(self) -> bool:
        return bool(self.parts)

    def protocol_error(self, message: str) -> ReplicaProtocolError:
        return ReplicaProtocolError(message, after_first_token=self.after_first_token, url=self.url)

    def tokens(
        self, decoder: SSEDecoder, chunk: bytes, text_of: TextOf
    ) -> tuple[list[StreamEvent], ReplicaError | None]:
        """Tokens of the events ``chunk`` completes, up to ``[DONE]``; ``b""`` ends it.

        An error after some of them is returned, not raised, so that the caller can
        hand those tokens on first (as a token-by-token stream would have).
        """
        try:
            events = decoder.feed(chunk) if chunk else decoder.close()
        except ValueError as exc:
            raise self.protocol_error(str(exc)) from exc
        tokens: list[StreamEvent] = []
        for event in events:
            try:
                token = self.handle(event, text_of)
            except ReplicaError as exc:
                if not tokens:
                    raise
                return tokens, exc
            if token is not None:
                tokens.append(token)
            if self.done:
                break
        return tokens, None

    def handle(self, event: SSEEvent, text_of: TextOf) -> Token | None:
        """Fold one SSE event in; return the token it carries, if any."""
        if event.data[:1] != "{" and event.data.strip() == DONE:
            self.done = True
            return None
        try:
            payload = _loads(event.data)
        except json.JSONDecodeError as exc:
            raise self.protocol_error(f"invalid JSON in stream: {exc}") from exc
        if not isinstance(payload, dict):
            raise self.protocol_error("stream chunk is not a JSON object")
        message = _error_message(payload)
        if message is not None:
            raise ReplicaHTTPError(
                _error_status(payload),
                event.data,
                message,
                after_first_token=self.after_first_token,
                url=self.url,
            )
        return self._chunk(payload, text_of)

    def _chunk(self, payload: Mapping[str, Any], text_of: TextOf) -> Token | None:
        usage = _parse_usage(payload.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = payload.get("choices")
        if choices is None:
            return None
        if not isinstance(choices, list):
            raise self.protocol_error("'choices' is not a list")
        text = ""
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            text += text_of(choice) or ""
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self.finish_reason = reason
        if not text:
            return None
        token = Token(text=text, t=self.clock(), first=not self.parts)
        self.parts.append(text)
        return token

    def finished(self) -> Finished:
        return Finished(
            finish_reason=self.finish_reason,
            usage=self.usage,
            t=self.clock(),
            text="".join(self.parts),
        )


# --------------------------------------------------------------------------- client


def _root_url(base_url: str) -> str:
    """Accept ``http://host:port`` as well as the OpenAI-style ``http://host:port/v1``."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


def _request_body(
    model: str,
    *,
    max_tokens: int,
    stop: Sequence[str],
    temperature: float,
    seed: int | None,
    priority: int | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if stop:
        body["stop"] = list(stop)
    if seed is not None:
        body["seed"] = seed
    if priority is not None:
        body["priority"] = priority
    if extra:
        body.update(extra)
    return body


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
        self.base_url = _root_url(base_url)
        self.clock = clock
        self.priority_mode: PriorityMode = priority
        self.sends_priority = priority != "off"
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._read_timeout_s = read_timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    # ---- lifecycle

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=self._keepalive_s)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        body = _request_body(
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
        body = _request_body(
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
        body = _request_body(
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
        url = self.base_url + path
        progress = _Progress(url=url, clock=self.clock)
        resp = await self._open(url, body)
        decoder = SSEDecoder()
        content = resp.content
        watch = _ReadWatch.start(resp, self._read_timeout_s)
        try:
            while True:
                try:
                    if watch is None:
                        chunk = await content.readany()
                    else:
                        watch.waiting_since = watch.loop.time()
                        chunk = await content.readany()
                        watch.waiting_since = None
                except TimeoutError as exc:
                    raise ReplicaTimeout(
                        "no data from replica within the read timeout",
                        after_first_token=progress.after_first_token,
                        url=url,
                    ) from exc
                except (aiohttp.ClientError, OSError) as exc:
                    raise progress.protocol_error(
                        f"stream broken: {type(exc).__name__}: {exc}"
                    ) from exc
                tokens, error = progress.tokens(decoder, chunk, text_of)
                if tokens:
                    yield tokens
                if error is not None:
                    raise error
                if progress.done:
                    break
                if not chunk:
                    raise progress.protocol_error("stream ended without [DONE]")
            resp.release()
            yield [progress.finished()]
        finally:
            if watch is not None:
                watch.stop()
            resp.close()

    async def _open(self, url: str, body: Mapping[str, Any]) -> aiohttp.ClientResponse:
        """Send the request and wait for the response head; raise on non-2xx.

        A refused ``priority`` is dealt with here, before any token: see the module doc.
        """
        if "priority" not in body:
            return await self._post(url, body)
        if not self.sends_priority:
            return await self._post(url, _without_priority(body))
        try:
            return await self._post(url, body)
        except ReplicaHTTPError as exc:
            if not _refuses_priority(exc):
                raise
            if self.priority_mode == "on":
                raise _priority_required(exc) from exc
            resp = await self._post(url, _without_priority(body))
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

    async def _post(self, url: str, body: Mapping[str, Any]) -> aiohttp.ClientResponse:
        try:
            resp = await self._get_session().post(
                url, json=body, headers={"Accept": "text/event-stream"}
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
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
            async with self._get_session().get(
                self.base_url + "/health", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
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
            resp = await self._get_session().get(url)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _before_response_error(exc, url) from exc
        try:
            if not 200 <= resp.status < 300:
                raise await _http_error(resp, url)
            return await resp.text()
        except TimeoutError as exc:
            raise ReplicaTimeout(f"read timeout on {url}", url=url) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ReplicaProtocolError(f"response broken: {exc}", url=url) from exc
        finally:
            resp.release()


class _ReadWatch:
    """The read timeout of a streamed body: one timer per stream that checks how long
    the current read has waited. aiohttp's own (``sock_read``, kept for the response
    head) re-arms a timer at every chunk received, a timer per token."""

    __slots__ = ("_handle", "content", "loop", "timeout_s", "waiting_since")

    def __init__(self, content: aiohttp.StreamReader, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.content = content
        self.timeout_s = timeout_s
        self.waiting_since: float | None = None
        self._handle: asyncio.TimerHandle | None = self.loop.call_later(timeout_s, self._check)

    @classmethod
    def start(cls, resp: aiohttp.ClientResponse, timeout_s: float | None) -> _ReadWatch | None:
        """Take the body's read timeout over from aiohttp; None leaves it to aiohttp."""
        conn = resp.connection
        proto = conn.protocol if conn is not None else None
        if not timeout_s or proto is None or not hasattr(proto, "read_timeout"):
            return None
        proto.read_timeout = None
        return cls(resp.content, timeout_s)

    def _check(self) -> None:
        now = self.loop.time()
        since = self.waiting_since
        if since is not None and now - since >= self.timeout_s:
            self._handle = None
            self.content.set_exception(TimeoutError("no data within the read timeout"))
            return
        self._handle = self.loop.call_at(
            (now if since is None else since) + self.timeout_s, self._check
        )

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _before_response_error(exc: BaseException, url: str) -> ReplicaError:
    """Classify a failure that happened before any response head arrived."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ReplicaUnreachable(f"connect timeout to {url}", url=url)
    if isinstance(exc, TimeoutError):
        return ReplicaTimeout(f"no response head from {url} within the read timeout", url=url)
    return ReplicaUnreachable(f"cannot reach {url}: {type(exc).__name__}: {exc}", url=url)


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body; whatever arrived if reading it fails."""
    parts: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = await resp.content.read(limit - size)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    return b"".join(parts)


def _without_priority(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "priority"}


def _refuses_priority(exc: ReplicaHTTPError) -> bool:
    """A 400 (or 422) whose message is about ``priority``, as vLLM's FCFS engine says
    "Got priority 1 but Priority scheduling is not enabled."; servers that reject the
    unknown field name it too. A false match costs one retry, never the setting: the
    setting changes only when the call then goes through without the field."""
    return exc.status in (400, 422) and "priority" in exc.message.lower()


def _priority_required(exc: ReplicaHTTPError) -> ReplicaHTTPError:
    message = (
        f'{exc.message} (this model has priority = "on" but the replica refuses '
        "priorities: start vLLM with --scheduling-policy priority, or set priority = "
        '"auto" or "off" for the model in cato.toml)'
    )
    return ReplicaHTTPError(exc.status, exc.body, message, url=exc.url)


async def _http_error(resp: aiohttp.ClientResponse, url: str) -> ReplicaHTTPError:
    """Build the error for a non-2xx response, with the OpenAI error message if any."""
    body = (await _read_limited(resp, ERROR_BODY_LIMIT)).decode("utf-8", errors="replace")
    try:
        message = _error_message(json.loads(body))
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
