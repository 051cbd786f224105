"""The ``cato`` command line's own behaviour, apart from any one command."""

from __future__ import annotations

import subprocess
import sys

_LOUD_COMMAND = """
import sys, types
from orchestrator import cli
mod = types.ModuleType("loud_cmd")
mod.configure = lambda parser: None
def run(args):
    for _ in range(200_000):
        print("x" * 80)
    return 0
mod.run = run
sys.modules["loud_cmd"] = mod
cli.COMMANDS["loud"] = ("loud_cmd", "prints a lot")
sys.exit(cli.main(["loud"]))
"""


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """``cato ... | head``: the pipe closes under the command; it stops quietly."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOUD_COMMAND], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(100) == b"x" * 80 + b"\n" + b"x" * 19
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
