"""Start an emulator as a real child process and find its URL (tests, benchmarks, launchers).

The child binds port 0 and prints its URL, so there is no race for a free port. It
holds a pipe on stdin and exits when that pipe closes, so it cannot outlive its parent
even when the parent is killed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

_LISTENING = re.compile(r"listening on (http://\S+)")


@dataclass
class RunningEmulator:
    """A live emulator process: ``url`` is the server root, ``base_url`` the OpenAI root."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until ``/health`` answers 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode}:\n{self.log()}")
            if health_status(self.url) == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"emulator at {self.url} not ready after {timeout_s} s:\n{self.log()}")

    def stop(self, timeout_s: float = 5.0) -> int:
        """Terminate the process (kill it if it lingers), drop its log, return its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.log_path.unlink(missing_ok=True)
        return self.proc.returncode

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class StartEmulator(Protocol):
    """The type of the ``start_emulator`` test fixture: ``launch_emulator`` by keyword."""

    def __call__(self, **kwargs: Any) -> RunningEmulator: ...


def health_status(url: str) -> int | None:
    """HTTP status of ``GET {url}/health``, None when nothing answers."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2.0) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def emulator_command(
    model: str = "m",
    profile: str = "tiny@cpu",
    speed: float = 1.0,
    max_num_seqs: int | None = None,
    cold_start_s: float = 0.0,
    policy: str = "priority",
    seed: int = 0,
    port: int = 0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line of an emulator child process."""
    cmd = [sys.executable, "-m", "orchestrator.emulator", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--model", model, "--profile", profile, "--speed", str(speed)]
    cmd += ["--cold-start-s", str(cold_start_s), "--scheduling-policy", policy]
    cmd += ["--seed", str(seed), "--exit-with-stdin"]
    if max_num_seqs is not None:
        cmd += ["--max-num-seqs", str(max_num_seqs)]
    return cmd + list(extra_args)


def launch_emulator(
    model: str = "m",
    profile: str = "tiny@cpu",
    speed: float = 1.0,
    max_num_seqs: int | None = None,
    cold_start_s: float = 0.0,
    policy: str = "priority",
    seed: int = 0,
    extra_args: Sequence[str] = (),
    wait_ready: bool = True,
    timeout_s: float = 30.0,
    log_dir: Path | None = None,
) -> RunningEmulator:
    """Start ``python -m orchestrator.emulator`` on a free 127.0.0.1 port.

    Returns once the server listens (and, with ``wait_ready``, once ``/health`` is 200).
    The caller must ``stop()`` it (or use it as a context manager).
    """
    cmd = emulator_command(
        model, profile, speed, max_num_seqs, cold_start_s, policy, seed, 0, extra_args
    )
    fd, name = tempfile.mkstemp(prefix="cato-emulator-", suffix=".log", dir=log_dir)
    log_path = Path(name)
    with os.fdopen(fd, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        url = _wait_for_url(proc, log_path, timeout_s)
        emulator = RunningEmulator(url, int(url.rsplit(":", 1)[1]), proc, log_path)
        if wait_ready:
            emulator.wait_ready(timeout_s)
    except BaseException:
        proc.kill()
        proc.wait()
        log_path.unlink(missing_ok=True)
        raise
    return emulator


def _wait_for_url(proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        found = _LISTENING.search(text)
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}:\n{text}")
        time.sleep(0.02)
    raise TimeoutError(f"emulator did not start listening in {timeout_s} s")
