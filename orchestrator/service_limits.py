"""Who may use the team service and how much: bearer tokens, per-user concurrency and
token budgets, and the bound on the service's queue.

Every refusal is a ``Rejected`` carrying the HTTP answer (401, 429 or 503 with
``Retry-After``), so handlers refuse before any work starts.
"""

from __future__ import annotations

import contextlib
import hmac
import math
from collections.abc import Callable, Iterator, Sequence
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
class TokenBucket:
    """Tokens per minute as a bucket that refills continuously. A request takes what
    it may use (prompt + max_tokens, at most a minute's worth) before it starts, and
    at its end is refunded what it did not use, or charged the rest: so what a user
    has running never outruns the budget, and a long answer is never cut."""

    per_minute: int
    level: float
    updated: float

    @property
    def rate_per_s(self) -> float:
        return self.per_minute / 60.0

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.level = min(float(self.per_minute), self.level + elapsed * self.rate_per_s)
        self.updated = now

    def wait_s(self, tokens: float, now: float) -> float:
        """Seconds until the bucket holds ``tokens``; 0 when it does now."""
        self.refill(now)
        return max(0.0, tokens - self.level) / self.rate_per_s

    def charge(self, tokens: int, now: float) -> None:
        self.refill(now)
        self.level -= tokens


@dataclass
class Users:
    """Bearer-token users, how many requests each has running and their token budgets."""

    users: Sequence[User]
    retry_after_s: int
    clock: Callable[[], float]
    active: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

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

    def _bucket(self, user: User) -> TokenBucket | None:
        if user.tokens_per_minute is None:
            return None
        bucket = self.buckets.get(user.name)
        if bucket is None or bucket.per_minute != user.tokens_per_minute:
            now = self.clock()
            bucket = TokenBucket(user.tokens_per_minute, float(user.tokens_per_minute), now)
            self.buckets[user.name] = bucket
        return bucket

    def _rate_limited(self, message: str, wait_s: float) -> Rejected:
        retry = max(self.retry_after_s, math.ceil(wait_s))
        return Rejected(error(429, message, "RateLimitError", **{"Retry-After": str(retry)}))

    @contextlib.contextmanager
    def admitted(self, user: User | None) -> Iterator[None]:
        """Count one running request of ``user``; ``Rejected`` (429) over its
        concurrency limit or with its token budget spent."""
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
        bucket = self._bucket(user)
        if bucket is not None and (wait := bucket.wait_s(1, self.clock())) > 0:
            # Spent: refuse before the body is even read (``reserve`` checks the
            # request's own size once it is known).
            raise self._spent(user, wait)
        self.active[user.name] = running + 1
        try:
            yield
        finally:
            self.active[user.name] -= 1

    def reserve(self, user: User | None, tokens: int) -> int:
        """Take what a request may use from ``user``'s budget before it starts (at most
        a minute's worth); ``Rejected`` (429) until the budget holds it. Returns what
        was taken, for ``settle``."""
        bucket = None if user is None else self._bucket(user)
        if user is None or bucket is None:
            return 0
        need = min(max(tokens, 1), bucket.per_minute)
        wait = bucket.wait_s(need, self.clock())
        if wait > 0:
            raise self._spent(user, wait, f" (this request may use {need})")
        bucket.charge(need, self.clock())
        return need

    def _spent(self, user: User, wait: float, why: str = "") -> Rejected:
        return self._rate_limited(
            f"user {user.name!r} has used its budget of {user.tokens_per_minute} tokens "
            f"per minute{why}; retry in {math.ceil(wait)} s",
            wait,
        )

    def settle(self, user: User | None, reserved: int, used: int) -> None:
        """Charge ``user`` the tokens a request used (prompt + completion) in place of
        the ``reserved`` ones."""
        bucket = None if user is None else self._bucket(user)
        if bucket is not None and used != reserved:
            bucket.charge(used - reserved, self.clock())


@dataclass
class QueueBound:
    """The most calls the service lets wait for a replica; past it, 503 + Retry-After.

    Reading the queue walks every replica, so a reading serves for ``refresh_s``, plus
    one for each request admitted since (as if each had queued a call). Only a reading
    with no admission since it refuses a request, so a stale count never turns one away.
    """

    max_queued: int | None
    queued: Callable[[], int]
    retry_after_s: int
    clock: Callable[[], float]
    refresh_s: float = 0.05
    _seen: int = 0
    _seen_at: float = -math.inf
    _fresh: bool = False

    def check(self) -> None:
        if self.max_queued is None:
            return
        now = self.clock()
        stale = now - self._seen_at >= self.refresh_s
        if stale or (self._seen >= self.max_queued and not self._fresh):
            self._seen, self._seen_at, self._fresh = self.queued(), now, True
        if self._seen >= self.max_queued:
            raise Rejected(
                error(
                    503,
                    f"the service's queue is full ({self._seen} calls waiting for a replica, "
                    f"limit {self.max_queued}); retry later",
                    "ServiceUnavailableError",
                    **{"Retry-After": str(self.retry_after_s)},
                )
            )
        self._seen += 1
        self._fresh = False
