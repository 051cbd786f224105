"""The launcher ``[cluster]`` asks for: local processes, or Ray actors across nodes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from orchestrator.config import ClusterConfig, ConfigError
from orchestrator.replicas.backend import Launcher
from orchestrator.replicas.local import LocalLauncher


def make_launcher(
    cluster: ClusterConfig, *, gpus: Sequence[int], workdir: Path, host: str
) -> Launcher:
    """``local``: processes on ``gpus`` bound to ``host``; ``ray``: actors on the
    cluster at ``cluster.address`` (a clear error when Ray is not installed)."""
    if cluster.backend == "ray":
        from orchestrator.replicas.ray_launcher import RAY_MISSING, RayLauncher, ray_installed

        if not ray_installed():
            raise ConfigError("[cluster]", [RAY_MISSING])
        return RayLauncher(address=cluster.address, workdir=workdir)
    return LocalLauncher(gpus=gpus, workdir=workdir, host=host)
