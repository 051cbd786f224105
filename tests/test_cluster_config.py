"""``[cluster]``: where replicas run, and a clear error when the Ray backend cannot."""

from __future__ import annotations

import builtins
import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.commands.config import summary
from orchestrator.config import ConfigError, parse_config
from orchestrator.replicas.local import LocalLauncher
from orchestrator.runtime import Runtime

MODEL = "[[models]]\nname = 'tiny'\nengine = 'emulated'\ngpus_per_replica = 1\n"


def test_local_is_the_default_and_takes_no_address() -> None:
    assert parse_config("[gpus]\ndevices = [0]\n" + MODEL).cluster.backend == "local"
    with pytest.raises(ConfigError, match=re.escape('cluster.address: only for backend = "ray"')):
        parse_config("[cluster]\naddress = 'auto'\n[gpus]\ndevices = [0]\n" + MODEL)
    with pytest.raises(ConfigError, match=re.escape("cluster.backend")):
        parse_config("[cluster]\nbackend = 'k8s'\n" + MODEL)


def test_ray_gpus_come_from_the_cluster_not_gpus_devices() -> None:
    """No ``[gpus]`` list is needed: the nodes' GPUs are counted once the service runs."""
    config = parse_config("[cluster]\nbackend = 'ray'\naddress = 'ray://head:10001'\n" + MODEL)
    assert (config.cluster.backend, config.cluster.address) == ("ray", "ray://head:10001")
    assert "replicas on the Ray cluster at ray://head:10001" in summary(config, "cato.toml")
    with pytest.raises(ConfigError, match=re.escape("1 GPUs per replica but gpus.devices has 0")):
        parse_config(MODEL)


def test_a_local_runtime_uses_the_local_launcher(tmp_path: Path) -> None:
    rt = Runtime(parse_config("[gpus]\ndevices = [0, 1]\n" + MODEL), workdir=tmp_path)
    assert isinstance(rt.manager.launcher, LocalLauncher)
    assert (rt.manager.slots.total, rt.manager.slots.free_by_node()) == (2, {"local": 2})


def test_the_ray_backend_without_ray_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    config = parse_config("[cluster]\nbackend = 'ray'\n" + MODEL)
    with pytest.raises(ConfigError, match=r"needs Ray, which is not installed: pip install"):
        Runtime(config, workdir=tmp_path)
