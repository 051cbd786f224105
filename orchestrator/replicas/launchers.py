"""How each engine kind becomes a replica: a command line and its environment.

``vllm`` runs vLLM's OpenAI-compatible server, ``emulated`` runs ``cato emulate``
through the same code path (so tests of the manager exercise the real process
handling), and ``external`` is a fixed URL nobody launches.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Engine = Literal["vllm", "emulated", "external"]

# ``{model}``, ``{name}``, ``{port}`` and ``{host}`` are filled in per replica.
VLLM_SERVE_TEMPLATE: tuple[str, ...] = (
    "vllm",
    "serve",
    "{model}",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--served-model-name",
    "{name}",
    "--scheduling-policy",
    "priority",
)


@dataclass(frozen=True)
class LaunchSpec:
    """What to start for one model's replicas (the manager's view of a ``[[models]]``)."""

    name: str
    engine: Engine
    model: str | None = None
    url: str | None = None
    gpus_per_replica: int = 0
    concurrency_limit: int = 16
    extra_args: tuple[str, ...] = ()
    profile: str = "tiny@cpu"
    speed: float = 1.0
    cold_start_s: float | None = None
    command_template: tuple[str, ...] = VLLM_SERVE_TEMPLATE
    env: Mapping[str, str] = field(default_factory=dict)


def build_command(spec: LaunchSpec, *, host: str, port: int) -> list[str]:
    """The argv that starts one replica of ``spec`` listening on ``host:port``."""
    if spec.engine == "vllm":
        if not spec.model:
            raise ValueError(f"model {spec.name!r}: engine 'vllm' needs a model id or path")
        values = {"model": spec.model, "name": spec.name, "port": str(port), "host": host}
        argv = [part.format(**values) for part in spec.command_template]
        return argv + list(spec.extra_args)
    if spec.engine == "emulated":
        argv = [
            sys.executable,
            "-m",
            "orchestrator.emulator",
            "--host",
            host,
            "--port",
            str(port),
            "--model",
            spec.name,
            "--profile",
            spec.profile,
            "--speed",
            str(spec.speed),
        ]
        if spec.cold_start_s is not None:
            argv += ["--cold-start-s", str(spec.cold_start_s)]
        return argv + list(spec.extra_args)
    raise ValueError(f"model {spec.name!r}: engine {spec.engine!r} is not launched by CATO")


def build_env(
    spec: LaunchSpec, gpus: Sequence[int], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The replica's environment: the server's own, the model's extras, its GPU slots."""
    env = dict(os.environ if base is None else base)
    env.update(spec.env)
    if spec.engine == "vllm":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def describe(argv: Sequence[str]) -> str:
    return shlex.join(argv)


class GpuSlots:
    """Hands out whole GPUs so that two replicas never share one."""

    def __init__(self, devices: Sequence[int]) -> None:
        self._free = list(dict.fromkeys(devices))
        self.total = len(self._free)

    @property
    def free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        if n <= 0:
            return []
        if n > len(self._free):
            return None
        taken, self._free = self._free[:n], self._free[n:]
        return taken

    def release(self, gpus: Sequence[int]) -> None:
        for g in gpus:
            if g not in self._free:
                self._free.append(g)
        self._free.sort()
