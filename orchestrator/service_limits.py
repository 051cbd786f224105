"""Who may use the team service and how much: bearer tokens and per-user concurrency.

Every refusal is a ``Rejected`` carrying the HTTP answer (401, or 429 with
``Retry-After``), so handlers refuse before any work starts.
"""

from __future__ import annotations

import contextlib
import hmac
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from orchestrator.config import User, hash_token


class Rejected(Exception):
    """A request refused before any work started; ``response`` says why."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def error(status: int, message: str, kind: str, **headers: str) -> web.Response:
    """An OpenAI-style error body."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status, headers=headers or None)


def bad_request(message: str) -> Rejected:
    return Rejected(error(400, message, "BadRequestError"))


def unauthorized(message: str) -> web.Response:
    resp = error(401, message, "AuthenticationError")
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def _printable_ascii(token: str) -> bool:
    return all("!" <= c <= "~" for c in token)


@dataclass
class Users:
    """Bearer-token users and how many requests each has running."""

    users: Sequence[User]
    retry_after_s: int
    active: dict[str, int] = field(default_factory=dict)

    def authenticate(self, request: web.Request) -> User | None:
        """The caller; None when auth is off. Raises ``Rejected`` (401) when it fails."""
        if not self.users:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Rejected(unauthorized("missing bearer token"))
        if not _printable_ascii(token):
            raise Rejected(
                unauthorized("malformed bearer token: only printable ASCII characters are allowed")
            )
        digest = hash_token(token)
        found: User | None = None
        for user in self.users:  # constant time: every user is compared
            if hmac.compare_digest(digest, user.token_sha256):
                found = user
        if found is None:
            raise Rejected(unauthorized("invalid bearer token"))
        return found

    def _rate_limited(self, message: str, wait_s: float) -> Rejected:
        retry = max(self.retry_after_s, math.ceil(wait_s))
        return Rejected(error(429, message, "RateLimitError", **{"Retry-After": str(retry)}))

    @contextlib.contextmanager
    def admitted(self, user: User | None) -> Iterator[None]:
        """Count one running request of ``user``; ``Rejected`` (429) over its limit."""
        if user is None:
            yield
            return
        running = self.active.get(user.name, 0)
        if running >= user.max_concurrency:
            raise self._rate_limited(
                f"user {user.name!r} already has {running} requests running "
                f"(limit {user.max_concurrency})",
                0.0,
            )
        self.active[user.name] = running + 1
        try:
            yield
        finally:
            self.active[user.name] -= 1
