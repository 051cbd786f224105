"""``python -m orchestrator.emulator``: the same command as ``cato emulate``."""

from __future__ import annotations

import argparse
import sys

from orchestrator.emulator import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.emulator",
        description="Run a vLLM-compatible engine emulator.",
    )
    cli.configure(parser)
    return cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
