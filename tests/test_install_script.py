"""``scripts/install`` and ``scripts/_env`` on the paths a CI machine does not take by itself:
which environment each situation picks, a Python too old, and a distribution Python
without ``venv`` (where the script installs ``python3-venv`` with apt-get). The scripts
run from a copy of ``scripts/``, with stand-in ``python3`` and ``apt-get`` executables
on PATH, and stop before anything is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(tmp_path: Path) -> Path:
    """A folder with the project's scripts, where .venv may be made and removed."""
    root = tmp_path / "cato"
    shutil.copytree(ROOT / "scripts", root / "scripts")
    return root


def executable(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHON", "CATO_BASE_PYTHON", "PYENV_VERSION")
    }
    return subprocess.run(
        argv, cwd=cwd, env=base | env, capture_output=True, text=True, timeout=120, check=False
    )


def picked(root: Path, **env: str) -> str:
    out = run(["bash", "-c", 'source scripts/_env && echo "$PY"'], root, **env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_env_prefers_python_then_active_venv_then_dot_venv(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    assert picked(root) == "python3"
    dot_venv = executable(root / ".venv" / "bin", "python", "exit 0")
    assert picked(root) == str(dot_venv)
    active = executable(tmp_path / "active" / "bin", "python", "exit 0")
    assert picked(root, VIRTUAL_ENV=str(tmp_path / "active")) == str(active)
    assert picked(root, VIRTUAL_ENV=str(tmp_path / "active"), PYTHON="/opt/py") == "/opt/py"


def test_install_refuses_a_python_older_than_3_11(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    bin_dir = tmp_path / "bin"
    old = executable(
        bin_dir,
        "python3",
        'case "$1" in --version) echo "Python 3.9.2";; -c) exit 1;; esac\nexit 0',
    )
    out = run(["scripts/install"], root, CATO_BASE_PYTHON=str(old))
    assert out.returncode == 1
    assert "Python 3.9.2" in out.stderr and "CATO needs Python 3.11 or newer" in out.stderr
    assert not (root / ".venv").exists()


def test_install_adds_python3_venv_from_the_distribution_when_venv_is_missing(
    tmp_path: Path,
) -> None:
    """A Python whose ``import venv, ensurepip`` fails: apt-get is asked for the venv
    package of that Python's version, then the generic one; their failure is reported."""
    root = checkout(tmp_path)
    bin_dir = tmp_path / "bin"
    log = tmp_path / "apt.log"
    no_venv = executable(
        bin_dir,
        "python3",
        f'[ "$2" = "import venv, ensurepip" ] && exit 1\nexec {sys.executable} "$@"',
    )
    executable(bin_dir, "apt-get", f'echo "$@" >> {log}\n[ "$1" = update ] && exit 0\nexit 100')
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    out = run(
        ["scripts/install"],
        root,
        CATO_BASE_PYTHON=str(no_venv),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    )
    assert out.returncode == 1, out.stdout + out.stderr
    if os.geteuid() != 0:
        assert "sudo apt-get install python3-venv" in out.stderr
        assert not log.exists()
        return
    assert f"installing python{version}-venv from the distribution" in out.stdout
    assert log.read_text().splitlines() == [
        "update -qq",
        f"install -y -qq python{version}-venv",
        "install -y -qq python3-venv",
    ]
    assert f"could not install python{version}-venv or python3-venv" in out.stderr
    assert not (root / ".venv").exists()
