"""The errors of a replica call, and the error objects replicas send.

Each error says whether the caller had already been given a token (``after_first_token``):
a call may move to another replica only before that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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


def error_message(payload: Any) -> str | None:
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


def error_status(payload: Mapping[str, Any]) -> int:
    err = payload.get("error")
    source = err if isinstance(err, dict) else payload
    code = source.get("code")
    return code if isinstance(code, int) and 400 <= code <= 599 else 500
