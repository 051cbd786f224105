"""What a replica's token stream has produced: its OpenAI chunks folded into tokens.

This is the parsing path, for callers that need the text (a model call whose output
another step reads); a stream handed on to a client as it is goes through
``orchestrator.replicas.relay`` instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from orchestrator.api import Usage
from orchestrator.replicas.errors import (
    ReplicaError,
    ReplicaHTTPError,
    ReplicaProtocolError,
    error_message,
    error_status,
)
from orchestrator.replicas.sse import SSEDecoder, SSEEvent

Clock = Callable[[], float]

DONE: Final = "[DONE]"
# The C scanner that ``json.loads`` runs (set in ``JSONDecoder.__init__``; not in typeshed).
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


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


def loads_json(data: str) -> Any:
    """``json.loads`` without its wrapper frames and whitespace scans when ``data`` is
    one bare JSON value (every chunk a replica sends); anything else, including every
    error, goes through ``json.loads`` itself."""
    try:
        value, end = _scan_json(data, 0)
    except (StopIteration, ValueError):
        return json.loads(data)
    return value if end == len(data) else json.loads(data)


def parse_usage(raw: Any) -> Usage | None:
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
class Progress:
    """What one stream has produced so far."""

    url: str
    clock: Clock
    text_of: TextOf
    decoder: SSEDecoder = field(default_factory=SSEDecoder)
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    done: bool = False

    @property
    def after_first_token(self) -> bool:
        return bool(self.parts)

    def protocol_error(self, message: str) -> ReplicaProtocolError:
        return ReplicaProtocolError(message, after_first_token=self.after_first_token, url=self.url)

    def take(self, chunk: bytes) -> tuple[list[StreamEvent] | None, ReplicaError | None]:
        """``tokens`` of one read, None for none."""
        tokens, error = self.tokens(self.decoder, chunk, self.text_of)
        return tokens or None, error

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
            payload = loads_json(event.data)
        except json.JSONDecodeError as exc:
            raise self.protocol_error(f"invalid JSON in stream: {exc}") from exc
        if not isinstance(payload, dict):
            raise self.protocol_error("stream chunk is not a JSON object")
        message = error_message(payload)
        if message is not None:
            raise ReplicaHTTPError(
                error_status(payload),
                event.data,
                message,
                after_first_token=self.after_first_token,
                url=self.url,
            )
        return self._chunk(payload, text_of)

    def _chunk(self, payload: Mapping[str, Any], text_of: TextOf) -> Token | None:
        usage = parse_usage(payload.get("usage"))
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
