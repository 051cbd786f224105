"""A replica's stream handed on as it is: vLLM's bytes go to the client unchanged, and
what the scheduler needs is counted on the way without decoding a token's JSON.

The scheduler needs the first token's time, the number of chunks (one per token, as
vLLM streams), the end and the usage; the client needs the bytes. A read is cut at its
last event boundary (``\\n\\n``) and forwarded whole, so one read is one write. Only
three things are looked at in the bytes, each with one C-level search per read:

- ``"error"``: JSON escapes every quote inside a string, so these seven bytes occur only
  as a key or as a whole string value. A read that has them is parsed event by event,
  and an error object ends the stream as the parsing path would end it.
- ``"usage":{`` (or ``"usage": {``): the usage chunk (asked for with
  ``stream_options.include_usage``) is the one event decoded; a usage-only chunk is held
  back unless the client asked for it.
- ``data: [DONE]`` at an event start: the end; it is not forwarded (the service writes
  its own once the task is over).

Framing other than vLLM's (CR line ends, comments, multi-line or named events) goes
through the full ``SSEDecoder`` and comes out as ``data: ...`` events, one line each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from orchestrator.api import Usage
from orchestrator.replicas.errors import (
    ReplicaError,
    ReplicaHTTPError,
    ReplicaProtocolError,
    error_message,
    error_status,
)
from orchestrator.replicas.progress import loads_json, parse_usage
from orchestrator.replicas.sse import SSEDecoder

BOUNDARY: Final = b"\n\n"
EVENT_START: Final = b"\n\ndata: "
DONE_EVENT: Final = b"data: [DONE]"
ERROR_KEY: Final = b'"error"'
USAGE_KEYS: Final = (b'"usage":{', b'"usage": {')  # vLLM's compact JSON; json.dumps'


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """How a forwarded stream is changed on its way: ``keep_usage`` forwards the usage
    chunk; ``rename`` is the model name as the replica serves it and as the client
    asked for it (each with its quotes, JSON-encoded), when the two differ."""

    keep_usage: bool = False
    rename: tuple[bytes, bytes] | None = None

    @classmethod
    def for_client(cls, *, keep_usage: bool, served: str, client: str) -> RelayOptions:
        if served == client:
            return cls(keep_usage=keep_usage)
        old, new = (b'"model":' + json.dumps(n).encode() for n in (served, client))
        return cls(keep_usage=keep_usage, rename=(old, new))


class Relay:
    """What a forwarded stream has carried so far: ``chunks`` (token chunks), ``usage``
    (the last one reported), ``done`` (``[DONE]`` seen)."""

    __slots__ = ("_buf", "_decoder", "chunks", "done", "options", "url", "usage")

    def __init__(self, url: str, options: RelayOptions | None = None) -> None:
        self.url = url
        self.options = options or RelayOptions()
        self.chunks = 0
        self.usage: Usage | None = None
        self.done = False
        self._buf = b""
        self._decoder: SSEDecoder | None = None  # set once the framing is not vLLM's

    @property
    def after_first_token(self) -> bool:
        return self.chunks > 0

    def protocol_error(self, message: str) -> ReplicaProtocolError:
        return ReplicaProtocolError(message, after_first_token=self.after_first_token, url=self.url)

    def take(self, chunk: bytes) -> tuple[tuple[bytes, int] | None, ReplicaError | None]:
        """The whole events ``chunk`` completes, as bytes to forward with the number of
        token chunks among them (None when there are none); ``b""`` ends the stream.

        An error after some events is returned, not raised, so that the caller can
        forward those first; an error before any is raised.
        """
        whole = self._whole(chunk)
        if not whole:
            return None, None
        data, count, error = self._scan(whole)
        if error is not None and not data:
            raise error
        self.chunks += count
        if self.options.rename is not None and data:
            data = data.replace(*self.options.rename)
        return ((data, count) if data else None), error

    # -- framing

    def _whole(self, chunk: bytes) -> bytes:
        """The complete events buffered so far, in vLLM's framing."""
        if self._decoder is not None:
            return self._normalized(chunk, final=not chunk)
        buf = self._buf + chunk if self._buf else chunk
        if chunk and b"\r" not in buf:
            end = buf.rfind(BOUNDARY)
            if end < 0:
                self._buf = buf
                return b""
            whole = buf[: end + 2]
            if _plain(whole):
                self._buf = buf[end + 2 :]
                return whole
        # Not vLLM's framing, or the end of the stream: the full parser from here on.
        self._decoder, self._buf = SSEDecoder(), b""
        whole = self._normalized(buf, final=False)
        return whole if chunk else whole + self._normalized(b"", final=True)

    def _normalized(self, chunk: bytes, *, final: bool) -> bytes:
        assert self._decoder is not None
        try:
            events = self._decoder.close() if final else self._decoder.feed(chunk)
        except ValueError as exc:
            raise self.protocol_error(str(exc)) from exc
        return b"".join(
            b"data: " + event.data.replace("\n", "\ndata: ").encode() + BOUNDARY for event in events
        )

    # -- content

    def _scan(self, whole: bytes) -> tuple[bytes, int, ReplicaError | None]:
        """Cut ``whole`` at ``[DONE]`` and at an error; take the usage out."""
        done = _find_event(whole, DONE_EVENT)
        if done >= 0:
            self.done = True
            whole = whole[:done]
        error: ReplicaError | None = None
        if ERROR_KEY in whole:
            whole, error = self._cut_at_error(whole)
        count = whole.count(BOUNDARY)
        at = max(whole.rfind(USAGE_KEYS[0]), whole.rfind(USAGE_KEYS[1]))
        if at >= 0:
            whole, held = self._usage(whole, at)
            count -= held
        return whole, count, error

    def _usage(self, whole: bytes, at: int) -> tuple[bytes, int]:
        """Read the usage of the event at ``at``; drop a usage-only chunk unless kept.
        Returns the bytes and how many chunks were not token chunks (0 or 1)."""
        start = whole.rfind(BOUNDARY, 0, at) + 2 if whole.rfind(BOUNDARY, 0, at) >= 0 else 0
        end = whole.find(BOUNDARY, at) + 2
        payload = self._payload(whole[start : end - 2])
        usage = parse_usage(payload.get("usage"))
        if usage is not None:
            self.usage = usage
        if payload.get("choices"):
            return whole, 0
        if self.options.keep_usage:
            return whole, 1
        return whole[:start] + whole[end:], 1

    def _cut_at_error(self, whole: bytes) -> tuple[bytes, ReplicaError | None]:
        """The events before the first error object, and that error (None if the
        ``"error"`` bytes were not one)."""
        start = 0
        while start < len(whole):
            end = whole.index(BOUNDARY, start) + 2
            event = whole[start : end - 2]
            if ERROR_KEY in event:
                payload = self._payload(event)
                message = error_message(payload)
                if message is not None:
                    body = event[6:].decode()
                    after = self.after_first_token or start > 0
                    err = ReplicaHTTPError(
                        error_status(payload), body, message, after_first_token=after, url=self.url
                    )
                    self.done = True
                    return whole[:start], err
            start = end
        return whole, None

    def _payload(self, event: bytes) -> dict[str, object]:
        """The JSON object of one ``data: {...}`` event."""
        try:
            payload = loads_json(event[6:].decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self.protocol_error(f"invalid JSON in stream: {exc}") from exc
        if not isinstance(payload, dict):
            raise self.protocol_error("stream chunk is not a JSON object")
        return payload


def _plain(whole: bytes) -> bool:
    """True when ``whole`` (complete events, no CR) is all single-line ``data:`` events."""
    events = whole.count(BOUNDARY)
    return (
        whole.startswith(b"data: ")
        and whole.count(b"\n") == 2 * events
        and whole.count(EVENT_START) == events - 1
    )


def _find_event(whole: bytes, event: bytes) -> int:
    """Where an event that starts with ``event`` begins in ``whole``, or -1."""
    at = whole.find(event)
    while at > 0 and whole[at - 2 : at] != BOUNDARY:
        at = whole.find(event, at + 1)
    return at


__all__ = ["Relay", "RelayOptions"]
