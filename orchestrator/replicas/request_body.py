"""The request a replica call sends: its body, and what to do when ``priority`` is refused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.replicas.errors import ReplicaHTTPError

# vLLM's OpenAI server (like OpenAI's API) takes at most 4 stop strings and answers 400
# to more; callers list the ones that matter most first.
MAX_STOPS = 4


def root_url(base_url: str) -> str:
    """Accept ``http://host:port`` as well as the OpenAI-style ``http://host:port/v1``."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


def request_body(
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
        body["stop"] = list(stop)[:MAX_STOPS]
    if seed is not None:
        body["seed"] = seed
    if priority is not None:
        body["priority"] = priority
    if extra:
        body.update(extra)
    return body


def without_priority(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "priority"}


def refuses_priority(exc: ReplicaHTTPError) -> bool:
    """A 400 (or 422) whose message is about ``priority``, as vLLM's FCFS engine says
    "Got priority 1 but Priority scheduling is not enabled."; servers that reject the
    unknown field name it too. A false match costs one retry, never the setting: the
    setting changes only when the call then goes through without the field."""
    return exc.status in (400, 422) and "priority" in exc.message.lower()


def priority_required(exc: ReplicaHTTPError) -> ReplicaHTTPError:
    message = (
        f'{exc.message} (this model has priority = "on" but the replica refuses '
        "priorities: start vLLM with --scheduling-policy priority, or set priority = "
        '"auto" or "off" for the model in cato.toml)'
    )
    return ReplicaHTTPError(exc.status, exc.body, message, url=exc.url)
