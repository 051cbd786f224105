"""The ``cato`` command: one sub-command per module, imported only when used.

Each sub-command module exposes ``configure(parser)`` and ``run(args) -> int`` so that
``cato --help`` stays fast and an optional dependency only matters to its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "emulate": ("orchestrator.emulator.cli", "run a vLLM-compatible engine emulator"),
    "serve": ("orchestrator.commands.serve", "run the team service over managed replicas"),
    "status": ("orchestrator.commands.status", "show a running service's replicas and SLAs"),
    "config": ("orchestrator.config", "check a cato.toml or hash a bearer token"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cato", description="CATO: SLA-aware orchestration of coding-assistant LLM tasks."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    code: int = args._run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
