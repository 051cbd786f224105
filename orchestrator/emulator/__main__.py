"""``python -m orchestrator.emulator``: the same command as ``cato emulate``.

The process start is noted before anything else is imported: the emulated cold start
counts from it, as a real engine's does (its imports are part of it), so a replica
whose imports took 1 s of a 3 s cold start is ready 2 s after it listens.
"""

from __future__ import annotations

import time

STARTED_AT = time.monotonic()

import argparse  # noqa: E402
import sys  # noqa: E402

from orchestrator.emulator import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.emulator",
        description="Run a vLLM-compatible engine emulator.",
    )
    cli.configure(parser)
    return cli.run(parser.parse_args(argv), started_at=STARTED_AT)


if __name__ == "__main__":
    sys.exit(main())
