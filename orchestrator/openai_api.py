"""The OpenAI-compatible layer of the team service: request models and response frames.

The request models are strict where lax parsing would hide a client's bug
(``"stream": "yes"`` or ``"max_tokens": true`` are 400s, not ``True`` and ``1``), and
they are what the service's OpenAPI document describes.
"""

from __future__ import annotations

import json
import time
import uuid
from json.encoder import encode_basestring_ascii
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

from orchestrator.api import OnLate, TaskEvent, TaskKind
from orchestrator.service_limits import bad_request

StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
StrictStr = Annotated[str, Strict()]
# A float that also takes a JSON integer, but never a boolean or a string.
Number = Annotated[float, Strict()]


class CatoExtension(BaseModel):
    """The ``cato`` object OpenAI clients may add (``extra_body={"cato": {...}}``)."""

    model_config = ConfigDict(extra="forbid")
    task: TaskKind | None = Field(default=None, description="The task kind to run.")
    sla_ms: Number | None = Field(
        default=None, gt=0, le=3_600_000, description="The SLA target in milliseconds."
    )
    language: StrictStr | None = Field(default=None, max_length=64)
    target_language: StrictStr | None = Field(default=None, max_length=64)
    on_late: OnLate | None = None


class ChatMessage(BaseModel):
    """One chat turn; ``content`` is text or a list of ``{"type": "text", "text": ...}``."""

    model_config = ConfigDict(extra="allow")
    role: StrictStr = "user"
    content: StrictStr | list[dict[str, Any]] | None = None


class OpenAIBody(BaseModel):
    """The subset of the OpenAI request body the service honours; the rest is ignored."""

    model_config = ConfigDict(extra="allow")
    model: StrictStr | None = None
    prompt: StrictStr | list[StrictStr] | None = None
    messages: list[ChatMessage] | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    temperature: Number | None = Field(default=None, ge=0.0, le=2.0)
    n: StrictInt = 1
    user: StrictStr | None = None
    stream_options: dict[str, Any] | None = None
    cato: CatoExtension = Field(default_factory=CatoExtension)


class CompletionBody(OpenAIBody):
    """``POST /v1/completions``: ``prompt`` is required."""

    prompt: StrictStr | list[StrictStr] | None = Field(
        default=None, description="Required: the text to complete (one prompt)."
    )


class ChatCompletionBody(OpenAIBody):
    """``POST /v1/chat/completions``: ``messages`` is required."""

    messages: list[ChatMessage] | None = Field(
        default=None, description="Required: the conversation, with at least one user turn."
    )


def openai_input(body: OpenAIBody, *, chat: bool, kind: TaskKind) -> tuple[str, str | None]:
    """The text a task works on, and the context, from an OpenAI body."""
    if not chat:
        if body.prompt is None:
            raise bad_request("'prompt' is required")
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise bad_request("exactly one prompt per request is supported")
            return body.prompt[0], None
        return body.prompt, None
    if not body.messages:
        raise bad_request("'messages' is required")
    turns = [(m.role, _message_text(m)) for m in body.messages]
    if kind is TaskKind.COMPLETE:
        return _transcript(turns) + "\nassistant:", None
    last = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
    if last is None:
        raise bad_request("'messages' needs a message with role 'user'")
    earlier = turns[:last]
    return turns[last][1], (_transcript(earlier) if earlier else None)


def _message_text(message: ChatMessage) -> str:
    content: Any = message.content
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise bad_request("each message needs string 'content'")
    return content


def _transcript(turns: list[tuple[str, str]]) -> str:
    return "\n".join(f"{role}: {text}" for role, text in turns)


def sse(data: str) -> bytes:
    return b"data: " + data.encode() + b"\n\n"


class OpenAIWriter:
    """Frames task output as OpenAI completion / chat completion responses."""

    def __init__(self, *, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self._id: str | None = None
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self._role_sent = False
        self._template: tuple[bytes, bytes] | None = None

    @property
    def id(self) -> str:
        """Made on first use: a forwarded stream never needs one of its own."""
        if self._id is None:
            self._id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        return self._id

    @id.setter
    def id(self, value: str) -> None:
        self._id = value

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
        return sse(json.dumps(payload))

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
        return self._frame([], usage(last))

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
            "usage": usage(last),
        }


def usage(last: TaskEvent) -> dict[str, int]:
    u = last.usage
    p, c = (u.prompt_tokens, u.completion_tokens) if u is not None else (0, 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
