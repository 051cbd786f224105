"""Wire types shared by the orchestrator, the team service and the language server.

These pydantic models are the only orchestrator types ``cato_lsp`` imports. They travel
as JSON (one ``TaskEvent`` per SSE ``data:`` line on ``POST /v1/tasks``), so every
change to them bumps ``API_VERSION`` and stays backward compatible within a version.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION: Final = 1

# ``TaskEvent.code`` of a task whose request asked to end rather than answer late
# (``on_late="shed"``) and that was late: when routed, or at its deadline without its
# SLA point reached (queued or running: the engine then aborts its call).
SLA_UNREACHABLE: Final = "sla_unreachable"

# What a request wants when no replica can meet its deadline any more: a late answer
# (served behind on-time work, within a bounded wait) or an immediate error.
OnLate = Literal["wait", "shed"]


class TaskKind(StrEnum):
    """What the developer asked for; each kind has its own graph and SLA."""

    COMPLETE = "complete"
    GENERATE = "generate"
    SUMMARIZE = "summarize"
    TRANSLATE = "translate"


class SLAMetric(StrEnum):
    """Which latency the SLA bounds: time to first token, or end to end."""

    TTFT = "ttft"
    E2E = "e2e"


class SLA(BaseModel):
    """A latency target for one task, measured from its arrival at the orchestrator."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: SLAMetric
    target_ms: float = Field(gt=0, le=3_600_000)


def _new_id() -> str:
    return uuid.uuid4().hex


class TaskRequest(BaseModel):
    """One editor request, before it becomes a task graph.

    ``prompt`` is a ready model prompt (the language server renders FIM prompts
    itself); ``code`` is the input the graph works on (the function to summarize, the
    file to translate, the comment to generate from). A ``complete`` task needs
    ``prompt``; the other kinds need ``code`` and build their prompts in the graph.
    """

    model_config = ConfigDict(extra="forbid")

    api_version: Literal[1] = API_VERSION
    id: str = Field(default_factory=_new_id, min_length=1, max_length=128)
    kind: TaskKind
    prompt: str | None = None
    code: str | None = None
    language: str = Field(default="python", max_length=64)
    target_language: str | None = Field(default=None, max_length=64)
    context: str | None = Field(default=None, description="Snippets from other files.")
    model: str | None = Field(default=None, description="Overrides the kind's model.")
    sla: SLA | None = Field(default=None, description="Overrides the kind's SLA.")
    on_late: OnLate | None = Field(
        default=None,
        description="'shed': end with code 'sla_unreachable' instead of answering late; "
        "None: the kind's default.",
    )
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    stop: list[str] = Field(default_factory=list, max_length=16)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    user: str | None = Field(default=None, max_length=128)


EventType = Literal["started", "node", "token", "done", "error"]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TaskEvent(BaseModel):
    """One step of a task's life, streamed to the caller in order.

    ``started`` once; ``node`` when a graph node starts or finishes (``node``,
    ``state``, ``replica``); ``token`` for each text delta of the final llm node;
    then exactly one ``done`` (with the whole ``result``) or ``error``. ``t_ms`` is
    the time since the task arrived at the orchestrator.
    """

    model_config = ConfigDict(extra="forbid")

    type: EventType
    task_id: str
    t_ms: float = 0.0
    node: str | None = None
    state: Literal["running", "finished", "failed"] | None = None
    replica: str | None = None
    priority: int | None = None
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    text: str | None = None
    result: str | None = None
    diagnostics: list[str] = Field(default_factory=list)
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    sla_met: bool | None = None
    usage: Usage | None = None
    error: str | None = None
    code: str | None = Field(default=None, description="Machine-readable error code.")


class ReplicaInfo(BaseModel):
    """One replica as the status endpoint shows it."""

    id: str
    model: str
    url: str
    state: Literal["pending", "ready", "draining", "stopped", "failed"]
    engine: str = "external"
    gpus: list[int] = Field(default_factory=list)
    in_flight: int = 0
    queued: int = 0
    concurrency_limit: int = 0
    cold_start_s: float | None = None
    restarts: int = 0


class KindStats(BaseModel):
    """SLA attainment and latency percentiles of one task kind over a window."""

    requests: int = 0
    cancelled: int = 0
    errors: int = 0
    sla_met: int = 0
    goodput_rate: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    ttft_p99_ms: float | None = None
    e2e_p50_ms: float | None = None
    e2e_p95_ms: float | None = None
    e2e_p99_ms: float | None = None


class Status(BaseModel):
    """What ``status()`` and ``GET /v1/status`` return."""

    api_version: Literal[1] = API_VERSION
    ok: bool = True
    scheduler: str = ""
    provisioner: str = ""
    replicas: list[ReplicaInfo] = Field(default_factory=list)
    gpus_total: int = 0
    gpus_free: int = 0
    queued: int = 0
    in_flight: int = 0
    window_s: float = 60.0
    kinds: dict[str, KindStats] = Field(default_factory=dict)
    last_ttft_ms: float | None = None
    message: str | None = None
