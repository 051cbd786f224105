"""The language server's settings: `initializationOptions` merged with the `cato` section.

Editors send settings as JSON objects with camelCase keys (`debounceMs`); snake_case
keys are accepted too. Everything is validated at once so that a typo is reported with
its dotted key instead of being ignored, and the previous settings stay in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from cato_lsp.prompts import get_template
from orchestrator.api import SLA, SLAMetric, TaskKind

SECTION = "cato"
"""The `workspace/configuration` section that holds these settings."""

DEFAULT_FIM_FAMILY = "starcoder2"
"""The FIM format used when neither the settings nor the model name tell one."""

# Which latency each kind's SLA bounds when only `slaMs` is given.
_SLA_METRICS: dict[TaskKind, SLAMetric] = {
    TaskKind.COMPLETE: SLAMetric.TTFT,
    TaskKind.GENERATE: SLAMetric.TTFT,
    TaskKind.SUMMARIZE: SLAMetric.E2E,
    TaskKind.TRANSLATE: SLAMetric.E2E,
}


class SettingsError(ValueError):
    """Settings that cannot be used; one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid cato settings: " + "; ".join(problems))


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=AliasGenerator(validation_alias=to_camel),
        populate_by_name=True,
        frozen=True,
    )


class TaskSettings(_Section):
    """Per task kind: which model, which FIM format (completion only), SLA and budget."""

    model: str | None = Field(default=None, min_length=1, max_length=128)
    fim_family: str | None = Field(default=None, min_length=1)
    sla_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    sla_metric: Literal["ttft", "e2e"] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)

    @model_validator(mode="after")
    def _known_family(self) -> TaskSettings:
        if self.fim_family is not None:
            get_template(self.fim_family)  # raises with the valid names
        return self


class ContextSettings(_Section):
    """Token budgets of a completion prompt; with `fit_sla`, the most it may take."""

    budget_tokens: int = Field(default=1_536, ge=16, le=131_072)
    fit_sla: bool = True
    min_budget_tokens: int = Field(default=256, ge=16, le=131_072)
    prefix_share: float = Field(default=0.75, ge=0.0, le=1.0)
    anchor_share: float = Field(default=0.25, ge=0.0, le=1.0)
    snippet_tokens: int = Field(default=512, ge=0, le=65_536)
    max_snippets: int = Field(default=3, ge=0, le=32)
    max_candidates: int = Field(default=20, ge=0, le=1_000)


class Settings(_Section):
    """Everything the server can be told; the defaults run the built-in emulated setup."""

    mode: Literal["embedded", "remote"] = "embedded"
    config: str | None = Field(default=None, min_length=1, description="cato.toml (embedded)")
    url: str | None = Field(default=None, description="`cato serve` base URL (remote)")
    token: SecretStr | None = None
    user: str | None = Field(default=None, max_length=128)
    tasks: dict[TaskKind, TaskSettings] = Field(default_factory=dict)
    debounce_ms: float = Field(default=75.0, ge=0, le=10_000)
    context: ContextSettings = Field(default_factory=ContextSettings)
    languages: list[str] = Field(default_factory=lambda: ["*"])
    translate_targets: list[str] = Field(
        default_factory=lambda: ["python", "javascript", "typescript", "go", "rust", "java"]
    )
    cache_size: int = Field(default=256, ge=0, le=100_000)
    line_max_tokens: int = Field(default=48, ge=1, le=4_096)
    request_timeout_s: float = Field(default=120.0, gt=0, le=3_600)

    @model_validator(mode="after")
    def _remote_needs_url(self) -> Settings:
        if self.mode == "remote" and not self.url:
            raise ValueError("mode 'remote' needs 'url' (the `cato serve` address)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected an http:// or https:// URL, got {self.url!r}")
        return self

    def task(self, kind: TaskKind) -> TaskSettings:
        return self.tasks.get(kind) or TaskSettings()

    def sla(self, kind: TaskKind) -> SLA | None:
        """The SLA override of a kind, or None to keep the orchestrator's."""
        task = self.task(kind)
        if task.sla_ms is None:
            return None
        metric = SLAMetric(task.sla_metric) if task.sla_metric else _SLA_METRICS[kind]
        return SLA(metric=metric, target_ms=task.sla_ms)

    def language_enabled(self, language: str) -> bool:
        return "*" in self.languages or language.lower() in {x.lower() for x in self.languages}

    def backend_key(self) -> tuple[object, ...]:
        """What identifies the orchestrator connection: a change means a new backend."""
        token = self.token.get_secret_value() if self.token else None
        if self.mode == "remote":
            return ("remote", self.url, token)
        return ("embedded", self.config)

    def describe(self) -> dict[str, Any]:
        """The settings as JSON for status output; the token only says whether it is set."""
        data = self.model_dump(mode="json", exclude={"token"})
        data["token"] = "set" if self.token else None
        return data


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two JSON objects; `override` wins, None values are skipped."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        current = out.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(current, value)
        else:
            out[key] = value
    return out


def _as_object(raw: object, where: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SettingsError([f"{where}: expected an object, got {type(raw).__name__}"])
    return raw


def _key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_settings(*layers: object) -> Settings:
    """Settings from JSON objects, later layers overriding earlier ones.

    A layer may wrap its values in a `cato` key (as `didChangeConfiguration` often does).
    """
    merged: dict[str, Any] = {}
    for index, raw in enumerate(layers):
        layer = _as_object(raw, f"layer {index}")
        if set(layer) == {SECTION} or (SECTION in layer and isinstance(layer[SECTION], Mapping)):
            layer = _as_object(layer[SECTION], SECTION)
        merged = _merge(merged, layer)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{_key(tuple(error['loc']))}: {message}")
        raise SettingsError(problems) from None
