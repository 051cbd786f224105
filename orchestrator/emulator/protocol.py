"""Request validation and response framing of the emulator, shaped like vLLM's.

Bodies are checked by hand, not with pydantic: this sits on the hot path of every
request, and streamed chunks are assembled from pre-serialized pieces so that one
token costs a string concatenation, not a JSON encoding.

The emulator is stricter than vLLM in one way: vLLM logs and ignores unknown fields,
the emulator rejects them with 400, so a client that misspells ``max_tokens`` finds out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from orchestrator.emulator.textgen import count_chat_tokens, count_tokens

_COMMON_FIELDS = frozenset(
    {
        "model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream",
        "stream_options", "stop", "stop_token_ids", "presence_penalty", "frequency_penalty",
        "repetition_penalty", "seed", "user", "priority", "ignore_eos", "min_tokens",
        "logit_bias", "logprobs", "skip_special_tokens", "spaces_between_special_tokens",
        "include_stop_str_in_output", "request_id",
        # Sent by routers in front of vLLM (vllm-router, sglang-router); ignored here.
        "no_stop_trim", "return_hidden_states",
    }
)  # fmt: skip
# vLLM's request models (like OpenAI's API) take at most this many stop strings.
MAX_STOPS = 4
COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt", "echo", "suffix", "best_of"}
CHAT_FIELDS = _COMMON_FIELDS | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "add_generation_prompt",
}


class ApiError(Exception):
    """An OpenAI-style error: HTTP status and ``{"error": {...}}`` body, as vLLM sends."""

    _TYPES: ClassVar[dict[int, str]] = {
        400: "BadRequestError",
        404: "NotFoundError",
        503: "ServiceUnavailableError",
    }

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = self._TYPES.get(self.status, "InternalServerError")
        return {
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass(slots=True)
class GenerationRequest:
    """A validated completion or chat request, reduced to what the emulator acts on."""

    chat: bool
    model: str
    prompt: str
    prompt_tokens: int
    max_tokens: int | None  # None: the rest of max_model_len
    stream: bool
    include_usage: bool
    continuous_usage: bool
    stop: tuple[str, ...]
    include_stop: bool
    temperature: float
    seed: int | None
    priority: int
    ignore_eos: bool
    min_tokens: int


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or a 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Invalid JSON in request body: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def parse_request(body: Mapping[str, Any], chat: bool) -> GenerationRequest:
    """Validate a completion (``chat=False``) or chat request body."""
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise ApiError(
            400,
            f"Unknown field(s) in request: {', '.join(unknown)} (this emulator is strict).",
            unknown[0],
        )
    _check_unsupported(body, chat)
    if chat:
        text, tokens = _chat_prompt(body.get("messages"))
        max_tokens = _opt_int(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _opt_int(body, "max_tokens", 1)
    else:
        text, tokens = _prompt(body.get("prompt"))
        max_tokens = _opt_int(body, "max_tokens", 1)
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not stream:
        raise ApiError(
            400, "Stream options can only be defined when `stream=True`.", "stream_options"
        )
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object.", "stream_options")
    options = options or {}
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string.", "model")
    return GenerationRequest(
        chat=chat,
        model=model or "",
        prompt=text,
        prompt_tokens=tokens,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        continuous_usage=bool(options.get("continuous_usage_stats")),
        stop=_stop(body.get("stop")),
        include_stop=_bool(body, "include_stop_str_in_output", False),
        temperature=_temperature(body),
        seed=_opt_int(body, "seed", None),
        priority=_opt_int(body, "priority", None) or 0,
        ignore_eos=_bool(body, "ignore_eos", False),
        min_tokens=_min_tokens(body),
    )


def _min_tokens(body: Mapping[str, Any]) -> int:
    value = _opt_int(body, "min_tokens", None) or 0
    if value < 0:  # vLLM's SamplingParams words (its bound on max_tokens is the engine's)
        raise ApiError(400, f"min_tokens must be greater than or equal to 0, got {value}.")
    return value


def _check_unsupported(body: Mapping[str, Any], chat: bool) -> None:
    """Fields the emulator knows but cannot honour: a 400 rather than a silent lie."""
    n = _opt_int(body, "n", 1)
    if n is not None and n > 1:
        raise ApiError(400, "n > 1 is not supported by this emulator; use n=1.", "n")
    best_of = _opt_int(body, "best_of", 1)
    if best_of is not None and best_of > 1:
        raise ApiError(400, "best_of > 1 is not supported by this emulator.", "best_of")
    if body.get("suffix") is not None:
        raise ApiError(400, "suffix is not currently supported", "suffix")
    if body.get("echo"):
        raise ApiError(400, "echo is not supported by this emulator.", "echo")
    logprobs = body.get("logprobs")
    if logprobs not in (None, False) or body.get("top_logprobs"):
        raise ApiError(400, "logprobs are not supported by this emulator.", "logprobs")


def _prompt(value: Any) -> tuple[str, int]:
    """The prompt text (what seeds the output) and its token count."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        return value, count_tokens(value)
    if isinstance(value, list) and value and all(_is_int(v) for v in value):
        return " ".join(str(v) for v in value), len(value)
    if isinstance(value, list) and len(value) > 1:
        raise ApiError(400, "Batched prompts are not supported by this emulator.", "prompt")
    raise ApiError(400, "prompt must be a string or a list of token ids.", "prompt")


def _chat_prompt(value: Any) -> tuple[str, int]:
    """The conversation as text and its token count (text parts of multi-part contents)."""
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty list.", "messages")
    contents: list[str] = []
    lines: list[str] = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, "each message needs a string role.", "messages")
        content = message.get("content")
        if content is None or isinstance(content, str):
            text = content or ""
        elif isinstance(content, list):
            text = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        else:
            raise ApiError(400, "message content must be a string or a list.", "messages")
        contents.append(text)
        lines.append(f"{message['role']}: {text}")
    return "\n".join(lines), count_chat_tokens(contents)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > MAX_STOPS:  # as vLLM's request model (and OpenAI's API)
            raise ApiError(
                400, f"stop: List should have at most {MAX_STOPS} items, not {len(value)}", "stop"
            )
        return tuple(value)
    raise ApiError(400, "stop must be a string or a list of strings.", "stop")


def _temperature(body: Mapping[str, Any]) -> float:
    value = body.get("temperature")
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ApiError(400, "temperature must be a number >= 0.", "temperature")
    return float(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_int(body: Mapping[str, Any], key: str, minimum: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value):
        raise ApiError(400, f"{key} must be an integer.", key)
    if minimum is not None and value < minimum:
        raise ApiError(400, f"{key} must be at least {minimum}, got {value}.", key)
    return int(value)


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{key} must be a boolean.", key)
    return value


def escape(text: str, _cache: dict[str, str] = {}) -> str:  # noqa: B006 - a deliberate memo
    """``text`` as a JSON string literal, memoized (token texts repeat a lot)."""
    found = _cache.get(text)
    if found is None:
        found = json.dumps(text, ensure_ascii=False)
        if len(_cache) < 50_000:
            _cache[text] = found
    return found


class ChunkWriter:
    """Pre-serialized SSE pieces of one streamed response, framed as vLLM frames them.

    Completions: ``{"id": "cmpl-..", "object": "text_completion", "created", "model",
    "choices": [{"index", "text", "logprobs", "finish_reason", "stop_reason"}]}``.
    Chat: ``"chat.completion.chunk"`` with ``delta``; the first chunk carries the role,
    and only the last one a ``stop_reason`` (vLLM omits unset fields).
    """

    def __init__(self, request_id: str, created: int, model: str, chat: bool) -> None:
        self.chat = chat
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._envelope = (
            f'{{"id":"{request_id}","object":"{obj}","created":{created},"model":{escape(model)},'
        )
        if chat:
            self._head = "data: " + self._envelope + '"choices":[{"index":0,"delta":{"content":'
            self._tail = '},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._head = "data: " + self._envelope + '"choices":[{"index":0,"text":'
            self._tail = ',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'

    def role(self) -> str:
        return (
            "data: " + self._envelope + '"choices":[{"index":0,"delta":{"role":"assistant",'
            '"content":""},"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def token(self, delta: str) -> str:
        return self._head + escape(delta) + self._tail

    def last(self, delta: str, finish_reason: str, stop_reason: str | None, usage: str = "") -> str:
        stop = "null" if stop_reason is None else escape(stop_reason)
        close = "}" if self.chat else ""
        return (
            f'{self._head}{escape(delta)}{close},"logprobs":null,"finish_reason":"{finish_reason}",'
            f'"stop_reason":{stop}}}]{usage}}}\n\n'
        )

    def with_usage(self, delta: str, usage: str) -> str:
        """A non-final chunk carrying running usage (``continuous_usage_stats``)."""
        return self.token(delta)[: -len("}\n\n")] + usage + "}\n\n"

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        return (
            "data: "
            + self._envelope
            + '"choices":[]'
            + usage_json(prompt_tokens, completion_tokens)
            + "}\n\n"
        )


def usage_json(prompt_tokens: int, completion_tokens: int) -> str:
    """The ``,"usage":{...}`` member of a chunk."""
    total = prompt_tokens + completion_tokens
    return (
        f',"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{total},'
        f'"completion_tokens":{completion_tokens}}}'
    )


DONE = "data: [DONE]\n\n"


def full_response(
    request_id: str,
    created: int,
    model: str,
    chat: bool,
    text: str,
    finish_reason: str,
    stop_reason: str | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """The body of a non-streamed completion or chat completion."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }
    choice: dict[str, Any] = {"index": 0}
    if chat:
        choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
    else:
        choice["text"] = text
    choice.update(logprobs=None, finish_reason=finish_reason, stop_reason=stop_reason)
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage,
    }
    if chat:
        body["prompt_logprobs"] = None
    else:
        choice["prompt_logprobs"] = None
    return body


def models_list(names: Sequence[str], created: int, max_model_len: int) -> dict[str, Any]:
    """``GET /v1/models`` as vLLM answers it."""
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": name,
                "parent": None,
                "max_model_len": max_model_len,
                "permission": [],
            }
            for name in names
        ],
    }
