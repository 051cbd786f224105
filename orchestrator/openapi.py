"""The team service's OpenAPI 3.1 document, generated from the pydantic models the
handlers validate with (requests) and the shapes they answer with (responses), so
the document cannot drift from the code. Served at ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from orchestrator.api import Status, TaskRequest
from orchestrator.openai_api import ChatCompletionBody, CompletionBody

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorBody(BaseModel):
    """Every 4xx and 5xx the service itself answers has this body."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(BaseModel):
    """A whole (not streamed) ``/v1/completions`` answer."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    """A whole (not streamed) ``/v1/chat/completions`` answer."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard] = Field(default_factory=list)


_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (TaskRequest, "validation"),
    (CompletionBody, "validation"),
    (ChatCompletionBody, "validation"),
    (ErrorBody, "serialization"),
    (Completion, "serialization"),
    (ChatCompletion, "serialization"),
    (ModelList, "serialization"),
    (Status, "serialization"),
]

_REFUSALS = {
    "400": "Invalid body, field, limit or model input",
    "401": "Missing, malformed or unknown bearer token (with users configured)",
    "404": "Unknown model",
    "408": "The body did not arrive in time",
    "413": "Body over the size limit",
    "429": "Over the user's concurrency limit or token budget (see Retry-After)",
    "502": "A replica failed the call",
    "503": "No replica, the queue is full, or the SLA cannot be met (see Retry-After)",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ErrorBody, description)


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


# One server-sent event: its ``data`` is a JSON object, or ``[DONE]`` at the end.
_SSE_EVENT = {"type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]}


def _events(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/event-stream": {"schema": _SSE_EVENT}}}


def _post(summary: str, body: type[BaseModel], ok: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    responses.update({code: _error(text) for code, text in _REFUSALS.items()})
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(body)}},
            },
            "responses": responses,
        }
    }


def _get(
    summary: str, ok: dict[str, Any], *, auth: bool = True, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    if auth:
        responses["401"] = _error(_REFUSALS["401"])
    responses.update(extra or {})
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if not auth:
        op["security"] = []
    return {"get": op}


def _history() -> dict[str, Any]:
    """``/v1/status/history``: the service's last hour of 5 s samples (``history.py``)."""
    ok = {
        "description": "Samples (oldest first) and scale events, as the dashboard reads them",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    op = _get(
        "The last hour of status samples, every 5 s",
        ok,
        extra={"400": _error("since is not a number")},
    )
    op["get"]["parameters"] = [
        {
            "name": "since",
            "in": "query",
            "required": False,
            "description": "only the samples after this time (Unix seconds)",
            "schema": {"type": "number"},
        }
    ]
    return op


def openapi_document(version: str = "1") -> dict[str, Any]:
    """The service's OpenAPI 3.1 document."""
    _, schemas = models_json_schema(_MODELS, ref_template=REF)
    stream = "Server-sent events, ending with `data: [DONE]`"

    def completion_ok(model: type[BaseModel]) -> dict[str, Any]:
        ok = _json(model, "The answer; with `stream: true`, server-sent chunks instead")
        ok["content"]["text/event-stream"] = {"schema": _SSE_EVENT}
        return ok

    paths: dict[str, Any] = {
        "/v1/tasks": _post(
            "Run a task; its events as server-sent events",
            TaskRequest,
            _events(stream),
        ),
        "/v1/completions": _post(
            "OpenAI-compatible completion (a `complete` task unless `cato.task` says)",
            CompletionBody,
            completion_ok(Completion),
        ),
        "/v1/chat/completions": _post(
            "OpenAI-compatible chat completion (a `generate` task unless `cato.task` says)",
            ChatCompletionBody,
            completion_ok(ChatCompletion),
        ),
        "/v1/models": _get("The served models", _json(ModelList, "The served models")),
        "/v1/status": _get("Replicas, queues and SLA attainment", _json(Status, "Status")),
        "/v1/status/history": _history(),
        "/health": _get(
            "200 once a replica is ready",
            _text("ok"),
            auth=False,
            extra={"503": _text("No replica is ready yet")},
        ),
        "/metrics": _get("Prometheus metrics", _text("Prometheus text format")),
        "/openapi.json": _get(
            "This document",
            {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}},
            auth=False,
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CATO team service",
            "version": version,
            "description": "SLA-aware orchestration of coding-assistant tasks over vLLM "
            "replicas, with an OpenAI-compatible API. The bearer token is needed only "
            "where users are configured (and for /metrics only with metrics_auth).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
