"""A stand-in for the ``vllm`` command: it records how it was started, then serves.

``vllm serve MODEL --host H --port P --served-model-name NAME ...`` writes its argv,
``CUDA_VISIBLE_DEVICES`` and pid as ``<pid>.json`` into the folder named by
``FAKE_VLLM_RECORDS``, then replaces itself with the engine emulator on that host and
port, serving NAME, so the replica manager sees a server that becomes ready like vLLM.
Its scheduling policy is vLLM's: FCFS (which refuses priorities) unless the command line
says ``--scheduling-policy priority``.
Tests put a ``vllm`` wrapper that runs this file first on the PATH.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

RECORDS_ENV = "FAKE_VLLM_RECORDS"


def options(args: list[str]) -> dict[str, str]:
    """``--flag value`` and ``--flag=value`` pairs; bare flags map to ""."""
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            found[key] = value
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            found[arg] = args[i + 1]
            i += 1
        elif arg.startswith("--"):
            found[arg] = ""
        i += 1
    return found


def record(argv: list[str]) -> None:
    folder = os.environ.get(RECORDS_ENV)
    if not folder:
        return
    entry = {
        "argv": argv,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }
    path = Path(folder) / f"{os.getpid()}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(entry), encoding="utf-8")
    partial.replace(path)  # readers never see half a file


def main(argv: list[str]) -> int:
    """Exits 2 on a command line vLLM would refuse; otherwise never returns."""
    if len(argv) < 2 or argv[0] != "serve":
        print("usage: vllm serve MODEL [--option value ...]", file=sys.stderr)
        return 2
    record(argv)
    opts = options(argv[2:])
    name = opts.get("--served-model-name") or argv[1]
    emulator = [sys.executable, "-m", "orchestrator.emulator"]
    emulator += ["--host", opts.get("--host", "127.0.0.1"), "--port", opts.get("--port", "8000")]
    emulator += ["--model", name, "--profile", "tiny@cpu", "--speed", "10"]
    emulator += ["--cold-start-s", "0", "--exit-with-stdin"]
    emulator += ["--scheduling-policy", opts.get("--scheduling-policy", "fcfs")]
    os.execv(sys.executable, emulator)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
