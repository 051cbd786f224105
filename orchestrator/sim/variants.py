"""Policy variants for ablations: a simulated scheduler with one lever changed.

A variant is a scheduler name with ``/key=value`` options, e.g. ``cato/admission=none``
(CATO without engine admission) or ``cato/late_bound=inf/urgent_margin=0``. It names a
row of a benchmark table, so each lever's worth is measured on the same seeds by the
same command as the policies themselves. Keys: ``admission`` (any admission policy),
``harm_floor``, ``e2e_floor`` and ``prefill_share`` (the slack admission's, see
``SlackAdmission``), ``engine_priority``
(``route``: the priority the scheduler gives a call, the default;
``kind``: the kind's fixed priority that a plain router's user would configure, as the
peers of ``bench peers`` send) and the options of ``make_scheduler`` (``urgent_margin``,
``late_bound``, ``best_fit``, ``fit_margin``, ``affinity``, ``affinity_margin``,
``affinity_tolerance`` for ``cato`` and ``cato_triage``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from orchestrator.policy.admission import (
    AdmissionConfigError,
    SlackAdmission,
    resolve_admission,
)
from orchestrator.policy.scheduler import SchedulerConfigError
from orchestrator.sim.clairvoyant import SIM_SCHEDULERS, make_sim_scheduler
from orchestrator.sim.config import SimConfig

_FLOATS = ("urgent_margin", "late_bound", "fit_margin", "affinity_margin", "affinity_tolerance")
_BOOLS = ("best_fit", "affinity")
_ENGINE_PRIORITIES = ("route", "kind")
_ADMISSION_FLOATS = ("harm_floor", "e2e_floor", "prefill_share")
KEYS: tuple[str, ...] = ("admission", "engine_priority", *_ADMISSION_FLOATS, *_FLOATS, *_BOOLS)


class VariantError(ValueError):
    """A variant that names no scheduler, an unknown key or a bad value."""


@dataclass(frozen=True)
class Variant:
    """``scheduler`` with ``options`` (``make_scheduler`` keywords), ``admission`` and
    ``admission_options`` (the slack admission's, those changed)."""

    name: str
    scheduler: str
    options: dict[str, Any] = field(default_factory=dict)
    admission: str = "auto"
    kind_priority: bool = False
    admission_options: dict[str, float] = field(default_factory=dict)

    def apply(self, config: SimConfig) -> SimConfig:
        """``config`` running this variant."""
        return dataclasses.replace(
            config,
            scheduler=self.scheduler,
            scheduler_options=dict(self.options),
            admission=self.admission,
            kind_priority=self.kind_priority,
            admission_options=dict(self.admission_options),
        )


def parse_variant(text: str) -> Variant:
    """``name[/key=value...]``; raises ``VariantError`` naming what is wrong."""
    scheduler, *parts = text.strip().split("/")
    if scheduler not in SIM_SCHEDULERS:
        raise VariantError(f"unknown policy {scheduler!r}; known: {', '.join(SIM_SCHEDULERS)}")
    options: dict[str, Any] = {}
    admission = "auto"
    kind_priority = False
    admission_options: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in KEYS:
            raise VariantError(f"{text!r}: expected key=value with key one of {', '.join(KEYS)}")
        if key == "admission":
            admission = value
        elif key == "engine_priority":
            if value not in _ENGINE_PRIORITIES:
                raise VariantError(f"{text!r}: engine_priority must be route or kind")
            kind_priority = value == "kind"
        elif key in _BOOLS:
            if value not in ("true", "false"):
                raise VariantError(f"{text!r}: {key} must be true or false, got {value!r}")
            options[key] = value == "true"
        else:
            try:
                number = float(value)
            except ValueError:
                raise VariantError(f"{text!r}: {key} must be a number, got {value!r}") from None
            if math.isnan(number):
                raise VariantError(f"{text!r}: {key} must be a number, got {value!r}")
            if key in _ADMISSION_FLOATS:
                admission_options[key] = number
            else:
                options[key] = number
    variant = Variant(text.strip(), scheduler, options, admission, kind_priority, admission_options)
    try:  # the scheduler and admission check their own options
        make_sim_scheduler(scheduler, **options)
        resolve_admission(admission, scheduler)
        SlackAdmission(**admission_options)
    except (SchedulerConfigError, AdmissionConfigError) as exc:
        raise VariantError(f"{text!r}: {exc}") from None
    return variant
