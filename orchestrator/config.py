"""``cato.toml``: the one configuration file of the team service, validated up front.

Everything is checked when the file is read, not when a replica first needs it: unknown
keys (typos) are errors, and each problem names the file, the dotted key
(``models[1].gpus_per_replica``, ``tasks.complete.sla_ms``) and what was expected. All
problems of a file are reported together in one ``ConfigError``.

Without a file the built-in default applies: one emulated model (``tiny``) with two to
four replicas serving every task kind, so a machine without a GPU runs the whole stack.
``examples/default.toml`` spells the same default out as a file.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.api import SLA, OnLate, SLAMetric, TaskKind
from orchestrator.engine_model import builtin_profiles

EngineName = Literal["vllm", "emulated", "external"]
VllmEntrypoint = Literal["auto", "serve", "module"]
# Whether calls carry vLLM's ``priority`` field: until a replica refuses it, always, never.
PriorityMode = Literal["auto", "on", "off"]
PRIORITY_MODES: tuple[PriorityMode, ...] = get_args(PriorityMode)
SchedulerPolicy = Literal[
    "cato", "cato_paper", "cato_triage", "round_robin", "pow2", "least_loaded", "cache_aware"
]
SLA_MS_MAX = 3_600_000
ProvisionerPolicy = Literal["cato", "queue_length", "fixed"]
# Engine admission (``policy/admission.py``): "auto" is the scheduler's own default.
AdmissionPolicy = Literal["auto", "none", "slack", "slack_net"]

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "complete": {"sla_metric": "ttft", "sla_ms": 500.0, "max_tokens": 64},
    "generate": {"sla_metric": "ttft", "sla_ms": 1000.0, "max_tokens": 256},
    "summarize": {"sla_metric": "e2e", "sla_ms": 6000.0, "max_tokens": 160},
    "translate": {"sla_metric": "e2e", "sla_ms": 20000.0, "max_tokens": 1024},
}

# What ``load_config(None)`` validates: the rest comes from the field defaults.
DEFAULT_CONFIG: dict[str, Any] = {
    "models": [
        {
            "name": "tiny",
            "engine": "emulated",
            "profile": "tiny@cpu",
            "min_replicas": 2,
            "max_replicas": 4,
        }
    ],
}

DEFAULT_VLLM_MAX_NUM_SEQS = 256


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem" + ("" if len(problems) == 1 else "s")
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid configuration {source} ({count}):\n{lines}")


class _Problems(ValueError):
    """Problems found across fields; keys are relative to the section that found them."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {m}" for k, m in items))
        self.items = items


def _raise_if(items: list[tuple[str, str]]) -> None:
    if items:
        raise _Problems(items)


class _Section(BaseModel):
    """Strict types (a quoted number is an error) and no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True)


MIN_TOKEN_CHARS = 24
NEW_TOKEN_HINT = "make one with `cato config new-token` (it prints the token and its hash)"
# Tokens printed in docs, examples and tutorials: a config that lets them in lets anyone in.
PLACEHOLDER_TOKENS = (
    "alice-change-me",
    "bob-change-me",
    "change-me",
    "changeme",
    "secret",
    "token",
    "password",
    "unused",
    "test",
)


def hash_token(token: str) -> str:
    """The value to put in ``token_sha256`` for a bearer token.

    A header that was not valid UTF-8 reaches here with lone surrogates; those hash
    (to a value no real token has) instead of raising."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


_PLACEHOLDER_HASHES = {hash_token(t): t for t in PLACEHOLDER_TOKENS}


class User(_Section):
    """One bearer token of the team service; only its SHA-256 is stored."""

    name: str = Field(min_length=1, max_length=128)
    token_sha256: str
    max_concurrency: int = Field(default=8, ge=1, le=10_000)
    # Prompt + completion tokens a minute (none: no budget); past it, 429 + Retry-After.
    tokens_per_minute: int | None = Field(default=None, ge=1, le=1_000_000_000)
    # Per task kind: the tightest SLA (ms) this user may ask for, in place of the
    # kind's ``sla_floor_ms`` (higher for a batch client, lower for a trusted one).
    sla_floor_ms: dict[str, float] = Field(default_factory=dict)

    @field_validator("sla_floor_ms")
    @classmethod
    def _floors(cls, floors: dict[str, float]) -> dict[str, float]:
        problems: list[tuple[str, str]] = []
        kinds = [k.value for k in TaskKind]
        for kind, floor in floors.items():
            if kind not in kinds:
                problems.append((kind, f"unknown task kind (expected one of {', '.join(kinds)})"))
            elif not 0 < floor <= SLA_MS_MAX:
                problems.append((kind, f"must be > 0 and <= {SLA_MS_MAX} ms, got {floor!r}"))
        _raise_if(problems)
        return floors

    @field_validator("token_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(
                f"expected the hex SHA-256 of the bearer token (64 hex digits); {NEW_TOKEN_HINT}"
            )
        if value in _PLACEHOLDER_HASHES:
            raise ValueError(
                f"is the hash of the public placeholder token {_PLACEHOLDER_HASHES[value]!r}, "
                f"which would let anyone in; {NEW_TOKEN_HINT}"
            )
        return value


class ServerConfig(_Section):
    """The HTTP side of ``cato serve``: where it binds, request limits and users."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(default=200_000, ge=1)
    max_tokens_limit: int = Field(default=4096, ge=1, le=32_768)
    # Slow or idle clients: seconds a connection may sit idle between requests, to send
    # a request's headers, and to send its body; then it is closed.
    keepalive_timeout_s: float = Field(default=75.0, gt=0, le=3600)
    header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Open connections at once (keep it under the open-file limit, ``ulimit -n``);
    # more are answered 503 and closed.
    max_connections: int = Field(default=512, ge=1, le=1_000_000)
    # Calls waiting for a replica, service-wide; past it, 503 + Retry-After.
    max_queued: int = Field(default=1024, ge=1, le=1_000_000)
    # With users configured: whether /metrics needs a bearer token as /v1/status does.
    metrics_auth: bool = True
    users: list[User] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_users(self) -> ServerConfig:
        problems: list[tuple[str, str]] = []
        names: set[str] = set()
        hashes: set[str] = set()
        for i, user in enumerate(self.users):
            if user.name in names:
                problems.append((f"users[{i}].name", f"duplicate user name {user.name!r}"))
            if user.token_sha256 in hashes:
                problems.append((f"users[{i}].token_sha256", "same token as an earlier user"))
            names.add(user.name)
            hashes.add(user.token_sha256)
        _raise_if(problems)
        return self

    def user_for_token(self, token: str) -> User | None:
        """The user whose token this is, comparing in constant time against every user."""
        if not token:
            return None
        digest = hash_token(token)
        found: User | None = None
        for user in self.users:
            if hmac.compare_digest(digest, user.token_sha256):
                found = user
        return found


class GpusConfig(_Section):
    """The GPU ids replicas may use (as ``CUDA_VISIBLE_DEVICES`` numbers them)."""

    devices: list[int] = Field(default_factory=list)

    @field_validator("devices")
    @classmethod
    def _non_negative(cls, devices: list[int]) -> list[int]:
        if any(d < 0 for d in devices):
            raise ValueError("GPU ids must be >= 0")
        return devices

    @model_validator(mode="after")
    def _unique(self) -> GpusConfig:
        seen: set[int] = set()
        problems: list[tuple[str, str]] = []
        for i, device in enumerate(self.devices):
            if device in seen:
                problems.append((f"devices[{i}]", f"GPU {device} is listed twice"))
            seen.add(device)
        _raise_if(problems)
        return self


class ModelConfig(_Section):
    """One served model and how its replicas are launched."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^\S+$")
    engine: EngineName
    model: str | None = Field(default=None, min_length=1)
    url: str | None = None
    # For engine "external": a pool of servers, one replica each (health-checked, and
    # left out of routing while unhealthy); instead of ``url``.
    urls: list[str] | None = None
    # For engine "external": the environment variable holding the bearer token the
    # server wants (a vLLM started with --api-key); read at start, never stored in TOML.
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    gpus_per_replica: int | None = Field(default=None, ge=0, le=64)
    entrypoint: VllmEntrypoint = "auto"
    min_replicas: int = Field(default=1, ge=0, le=4096)
    max_replicas: int | None = Field(default=None, ge=1, le=4096)
    # Started with the service (default min_replicas): warm capacity at launch that the
    # provisioner may still release down to min_replicas.
    initial_replicas: int | None = Field(default=None, ge=0, le=4096)
    concurrency_limit: int | None = Field(default=None, ge=1)
    fim_family: str | None = Field(default=None, min_length=1)
    vllm_args: list[str] = Field(default_factory=list)
    profile: str = Field(default="tiny@cpu", min_length=1)
    speed: float = Field(default=1.0, gt=0)
    max_model_len: int | None = Field(default=None, ge=16)
    # "auto": send each call's priority until a replica refuses it (a stock vLLM runs
    # FCFS and answers 400), then not to that replica; "on": always; "off": never (and
    # vLLM replicas are then started without --scheduling-policy priority).
    priority: PriorityMode = "auto"
    # Whether the model's engines cache prompt prefixes (vLLM's automatic prefix
    # caching, on by default in vLLM V1): replicas CATO starts are told (emulated ones
    # get --enable-prefix-caching, vLLM ones --no-enable-prefix-caching when false),
    # and the scheduler's affinity routes by the prefixes each replica was sent.
    prefix_cache: bool = True

    @model_validator(mode="after")
    def _check_engine(self) -> ModelConfig:
        problems = self._engine_problems()
        problems += self._pool_problems()
        if self.urls and "min_replicas" not in self.model_fields_set:
            self.min_replicas = len(self.urls)
        if self.urls and self.max_replicas is None:
            self.max_replicas = len(self.urls)
        if self.gpus_per_replica is None:
            self.gpus_per_replica = 1 if self.engine == "vllm" else 0
        if self.max_replicas is None:
            self.max_replicas = max(self.min_replicas, 1)
        elif self.max_replicas < self.min_replicas:
            problems.append(
                (
                    "max_replicas",
                    f"must be >= min_replicas ({self.min_replicas}), got {self.max_replicas}",
                )
            )
        if self.initial_replicas is None:
            self.initial_replicas = self.min_replicas
        elif not self.min_replicas <= self.initial_replicas <= self.replicas_max:
            problems.append(
                (
                    "initial_replicas",
                    f"must be within min_replicas..max_replicas "
                    f"({self.min_replicas}..{self.replicas_max}), got {self.initial_replicas}",
                )
            )
        _raise_if(problems)
        return self

    def _engine_problems(self) -> list[tuple[str, str]]:
        engine = self.engine
        problems: list[tuple[str, str]] = []
        if engine == "vllm" and self.model is None:
            problems.append(
                ("model", "required for engine 'vllm' (a Hugging Face id or a local path)")
            )
        if engine != "vllm" and "entrypoint" in self.model_fields_set:
            problems.append(("entrypoint", f"only for engine 'vllm', not {engine!r}"))
        # An emulated replica may claim GPU slots (it uses none) so that a GPU box's
        # packing can be rehearsed without GPUs; an external server's GPUs are not ours.
        if engine == "external" and self.gpus_per_replica not in (None, 0):
            problems.append(("gpus_per_replica", f"must be 0 for engine {engine!r}"))
        if engine == "external" and self.url is None and self.urls is None:
            problems.append(
                ("url", "required for engine 'external' (the server's base URL, or urls = [...])")
            )
        if engine != "external" and self.url is not None:
            problems.append(("url", f"only for engine 'external', not {engine!r}"))
        if engine != "external" and self.api_key_env is not None:
            problems.append(
                ("api_key_env", "only for engine 'external' (CATO keys its own replicas)")
            )
        if self.url is not None and (bad := _url_problem(self.url)):
            problems.append(("url", bad))
        if engine != "vllm" and self.vllm_args:
            problems.append(("vllm_args", f"only for engine 'vllm', not {engine!r}"))
        # ``profile`` times an emulated replica; for the other engines, where it is set,
        # it is the scheduler's prior until the replica's own timings are learned.
        if engine == "emulated" or "profile" in self.model_fields_set:
            problems += _profile_problems(self.profile)
        if engine != "emulated" and "speed" in self.model_fields_set:
            problems.append(("speed", f"only for engine 'emulated', not {engine!r}"))
        contrary = (
            "--enable-prefix-caching" if not self.prefix_cache else "--no-enable-prefix-caching"
        )
        if contrary in self.vllm_args:
            problems.append(
                (
                    "prefix_cache",
                    f"is {str(self.prefix_cache).lower()}, but vllm_args has {contrary}: "
                    "set prefix_cache alone",
                )
            )
        policy = _flag_value(self.vllm_args, "--scheduling-policy")
        if self.priority == "on" and policy not in (None, "priority"):
            problems.append(
                (
                    "priority",
                    f'"on" needs priority scheduling, but vllm_args set --scheduling-policy '
                    f'{policy}: use priority = "auto" or "off", or drop that argument',
                )
            )
        return problems

    def _pool_problems(self) -> list[tuple[str, str]]:
        if self.urls is None:
            return []
        if self.engine != "external":
            return [("urls", f"only for engine 'external', not {self.engine!r}")]
        if self.url is not None:
            return [("urls", "give url (one server) or urls (a pool), not both")]
        if not self.urls:
            return [("urls", "an empty list: name at least one server URL")]
        problems: list[tuple[str, str]] = []
        seen: set[str] = set()
        for i, url in enumerate(self.urls):
            if bad := _url_problem(url):
                problems.append((f"urls[{i}]", bad))
            elif url.rstrip("/") in seen:
                problems.append((f"urls[{i}]", f"{url!r} is listed twice"))
            seen.add(url.rstrip("/"))
        if self.max_replicas is not None and self.max_replicas > len(self.urls):
            problems.append(
                (
                    "max_replicas",
                    f"a pool of {len(self.urls)} URLs serves at most {len(self.urls)} "
                    f"replicas, got {self.max_replicas}",
                )
            )
        return problems

    @property
    def pool(self) -> list[str]:
        """An external model's server URLs (``url`` is a pool of one)."""
        return list(self.urls) if self.urls else [self.url] if self.url else []

    @property
    def gpus(self) -> int:
        """GPUs one replica takes (resolved: 1 for vllm, 0 otherwise, unless set)."""
        return self.gpus_per_replica or 0

    @property
    def replicas_max(self) -> int:
        return self.max_replicas if self.max_replicas is not None else max(self.min_replicas, 1)

    def effective_concurrency_limit(self) -> int | None:
        """``concurrency_limit``, else vLLM's ``--max-num-seqs``; None: the engine decides."""
        if self.concurrency_limit is not None:
            return self.concurrency_limit
        seqs = _flag_value(self.vllm_args, "--max-num-seqs")
        if seqs is not None and seqs.isdigit() and int(seqs) > 0:
            return int(seqs)
        return DEFAULT_VLLM_MAX_NUM_SEQS if self.engine == "vllm" else None


def _url_problem(url: str) -> str | None:
    """Why ``url`` is not a server's base URL (None: it is one)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        return f"not a URL: {url!r} ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http:// or https:// URL with a host, got {url!r}"
    return None


def _profile_problems(profile: str) -> list[tuple[str, str]]:
    """A profile is a built-in name or the path of a profile ``.toml`` file."""
    known = builtin_profiles()
    if profile in known or profile.endswith(".toml"):
        return []
    names = ", ".join(sorted(known))
    return [("profile", f"unknown engine profile {profile!r} (built in: {names}; or a .toml path)")]


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


class TaskConfig(_Section):
    """Which model serves a task kind and the latency it promises.

    ``sla_floor_ms``: the tightest SLA a request may ask for (default ``sla_ms``: a
    client may loosen its SLA, never tighten it, so it cannot buy priority with a tiny
    target). ``on_late``: what a request that does not say gets when it is late:
    ``wait`` (a late answer, behind on-time work, within a bounded wait) or ``shed`` (the
    error ``sla_unreachable`` at once).
    """

    model: str | None = Field(default=None, min_length=1)
    sla_metric: Literal["ttft", "e2e"]
    sla_ms: float = Field(gt=0, le=SLA_MS_MAX)
    max_tokens: int = Field(ge=1, le=32_768)
    sla_floor_ms: float | None = Field(default=None, gt=0, le=SLA_MS_MAX)
    on_late: OnLate = "wait"

    @model_validator(mode="after")
    def _floor_below_target(self) -> TaskConfig:
        if self.sla_floor_ms is not None and self.sla_floor_ms > self.sla_ms:
            _raise_if(
                [
                    (
                        "sla_floor_ms",
                        f"must be <= sla_ms ({self.sla_ms:g}), got {self.sla_floor_ms:g}",
                    )
                ]
            )
        return self

    @property
    def sla(self) -> SLA:
        return SLA(metric=SLAMetric(self.sla_metric), target_ms=self.sla_ms)

    @property
    def floor_ms(self) -> float:
        """The tightest SLA target a request may ask for."""
        return self.sla_ms if self.sla_floor_ms is None else self.sla_floor_ms


def _task_default(kind: str) -> TaskConfig:
    return TaskConfig.model_validate(TASK_DEFAULTS[kind])


class TasksConfig(_Section):
    """One section per task kind; a key left out takes that kind's default."""

    complete: TaskConfig = Field(default_factory=lambda: _task_default("complete"))
    generate: TaskConfig = Field(default_factory=lambda: _task_default("generate"))
    summarize: TaskConfig = Field(default_factory=lambda: _task_default("summarize"))
    translate: TaskConfig = Field(default_factory=lambda: _task_default("translate"))

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        merged: dict[str, Any] = dict(data)
        for kind, defaults in TASK_DEFAULTS.items():
            section = merged.get(kind)
            if isinstance(section, Mapping):
                merged[kind] = {**defaults, **section}
        return merged

    def for_kind(self, kind: TaskKind | str) -> TaskConfig:
        task: TaskConfig = getattr(self, TaskKind(kind).value)
        return task


_CATO_OPTIONS = ("urgent_margin", "late_bound", "best_fit", "fit_margin", "affinity_tolerance")


class SchedulerConfig(_Section):
    """Which routing policy places model calls on replicas, and CATO's knobs.

    ``urgent_margin``: a call still waiting when its slack falls under this share of
    its time budget goes first (priority 0); ``late_bound``: a late call waits behind on-time
    work for at most this many budgets past its deadline (``inf``: no bound);
    ``best_fit``: among replicas that meet a deadline with ``fit_margin`` of its budget
    to spare, prefer the busiest, so that others go idle and can be released;
    ``affinity_tolerance``: a replica holding a call's prompt prefix (where the engines
    cache prefixes) keeps it while expected late by at most this many budgets. They
    apply to ``cato`` and ``cato_triage`` only. ``admission``: whether a replica's batch may
    take one more call now (``policy/admission.py``); ``auto`` is ``slack_net`` for
    ``cato`` and ``none`` (fill up to the replica's limit) for the others.
    """

    policy: SchedulerPolicy = "cato"
    seed: int = 0
    urgent_margin: float | None = Field(default=None, ge=0, lt=1)
    late_bound: float | None = Field(default=None, gt=0)
    best_fit: bool | None = None
    fit_margin: float | None = Field(default=None, ge=0, lt=1)
    affinity_tolerance: float | None = Field(default=None, ge=0, le=100)
    admission: AdmissionPolicy = "auto"

    @model_validator(mode="after")
    def _options_for_cato(self) -> SchedulerConfig:
        if self.policy not in ("cato", "cato_triage"):
            _raise_if(
                [
                    (key, f"only for policy 'cato' or 'cato_triage', not {self.policy!r}")
                    for key in _CATO_OPTIONS
                    if key in self.model_fields_set
                ]
            )
        return self

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``make_scheduler`` beyond ``seed``: those set."""
        return {k: getattr(self, k) for k in _CATO_OPTIONS if getattr(self, k) is not None}


class ProvisionerConfig(_Section):
    """Which autoscaling policy adds and releases replicas, and its knobs.

    ``window_s`` .. ``idle_timeout_s`` drive CATO Algorithm 2; ``target_ongoing_requests``
    .. ``downscaling_factor`` drive the Ray-Serve-style ``queue_length`` baseline.
    """

    policy: ProvisionerPolicy = "cato"
    interval_s: float = Field(default=1.0, gt=0)
    window_s: float = Field(default=10.0, gt=0)
    violation_threshold: float = Field(default=0.1, ge=0, le=1)
    windows_in_row: int = Field(default=2, ge=1)
    scale_factor: float = Field(default=1.0, gt=0)
    idle_timeout_s: float = Field(default=120.0, ge=0)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    look_back_s: float = Field(default=30.0, gt=0)
    upscaling_factor: float = Field(default=1.0, gt=0)
    downscaling_factor: float = Field(default=1.0, gt=0)


ClusterBackend = Literal["local", "ray"]


class ClusterConfig(_Section):
    """Where replicas run: ``local`` child processes on ``[gpus] devices``, or ``ray``
    actors placed on the nodes of a Ray cluster (its GPUs, not ``[gpus]``).

    ``address``: ``"auto"`` joins the cluster ``ray start`` set up on this machine,
    ``"ray://host:10001"`` or ``"host:6379"`` a remote one, ``"local"`` starts a
    one-node cluster inside the service."""

    backend: ClusterBackend = "local"
    address: str = Field(default="auto", min_length=1)

    @model_validator(mode="after")
    def _address_for_ray(self) -> ClusterConfig:
        if self.backend == "local" and "address" in self.model_fields_set:
            _raise_if([("address", 'only for backend = "ray"')])
        return self


class CatoConfig(_Section):
    """The whole ``cato.toml``."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    gpus: GpusConfig = Field(default_factory=GpusConfig)
    models: list[ModelConfig] = Field(min_length=1)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    provisioner: ProvisionerConfig = Field(default_factory=ProvisionerConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _cross_check(self) -> CatoConfig:
        problems = self._duplicate_models()
        problems += self._resolve_task_models()
        problems += self._gpu_fit()
        _raise_if(problems)
        return self

    def _duplicate_models(self) -> list[tuple[str, str]]:
        seen: set[str] = set()
        problems: list[tuple[str, str]] = []
        for i, model in enumerate(self.models):
            if model.name in seen:
                problems.append((f"models[{i}].name", f"duplicate model name {model.name!r}"))
            seen.add(model.name)
        return problems

    def _resolve_task_models(self) -> list[tuple[str, str]]:
        names = [m.name for m in self.models]
        problems: list[tuple[str, str]] = []
        for kind in TaskKind:
            task = self.tasks.for_kind(kind)
            if task.model is None:
                task.model = names[0]
            elif task.model not in names:
                known = ", ".join(repr(n) for n in names)
                problems.append(
                    (
                        f"tasks.{kind.value}.model",
                        f"{task.model!r} is not a [[models]] name ({known})",
                    )
                )
        return problems

    def _gpu_fit(self) -> list[tuple[str, str]]:
        if self.cluster.backend != "local":
            return []  # the cluster's nodes say what fits, once the service is up
        available = len(self.gpus.devices)
        problems: list[tuple[str, str]] = []
        for i, model in enumerate(self.models):
            if model.gpus > available:
                problems.append(
                    (
                        f"models[{i}].gpus_per_replica",
                        f"{model.gpus} GPUs per replica but gpus.devices has {available}",
                    )
                )
        needed = sum(m.min_replicas * m.gpus for m in self.models)
        if needed > available:
            problems.append(
                (
                    "gpus.devices",
                    f"the models' min_replicas need {needed} GPUs but {available} are listed",
                )
            )
        return problems

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def task(self, kind: TaskKind | str) -> TaskConfig:
        return self.tasks.for_kind(kind)

    def sla_floors_ms(self) -> dict[str, float]:
        """The tightest SLA target (ms) a request may ask for, per task kind."""
        return {kind.value: self.task(kind).floor_ms for kind in TaskKind}


# ---------------------------------------------------------------- loading and errors


def load_config(path: str | os.PathLike[str] | None = None) -> CatoConfig:
    """Read and validate ``path``; None gives the built-in default."""
    if path is None:
        return config_from_dict(DEFAULT_CONFIG, "<built-in default>")
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, [f"{source}: no such file"]) from None
    except OSError as exc:
        raise ConfigError(source, [f"{source}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    return parse_config(text, source)


def parse_config(text: str, source: str = "<string>") -> CatoConfig:
    """Validate TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"{source}: invalid TOML: {exc}"]) from None
    return config_from_dict(data, source)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> CatoConfig:
    try:
        return CatoConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{source}: {line}" for line in _describe(exc)]
        raise ConfigError(source, problems) from None


def _describe(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _Problems):
            lines += [f"{_join(_key(loc), key)}: {msg}" for key, msg in cause.items]
        else:
            lines.append(f"{_key(loc) or '(top level)'}: {_message(error, loc)}")
    return lines


def _key(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _join(base: str, key: str) -> str:
    if not base:
        return key
    return f"{base}{key}" if key.startswith("[") else f"{base}.{key}"


def _message(error: Any, loc: tuple[int | str, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "missing (required)"
    msg = str(error["msg"]).removeprefix("Value error, ")
    if kind in ("value_error", "assertion_error"):
        return msg
    got = repr(error.get("input"))
    return f"{msg}, got {got[:60] + '...' if len(got) > 60 else got}"


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    name = str(loc[-1])
    known = _fields_at(loc[:-1])
    if loc[:-1] == ("tasks",):
        return f"unknown task kind {name!r} (expected one of {', '.join(known)})"
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; expected one of: {', '.join(known)}"


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the section at ``loc`` accepts, found by walking the model classes."""
    tp: Any = CatoConfig
    for part in loc:
        if isinstance(part, int):
            args = get_args(tp)
            tp = args[0] if args else None
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return []
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []
