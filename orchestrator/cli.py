"""The ``cato`` command: one sub-command per module, imported only when used.

Each sub-command module exposes ``configure(parser)`` and ``run(args) -> int``, so that
``cato --help`` stays fast and an optional dependency only matters to its own command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("orchestrator.commands.serve", "run the team service over managed replicas"),
    "status": ("orchestrator.commands.status", "show a running service's replicas and SLAs"),
    "emulate": ("orchestrator.emulator.cli", "run a vLLM-compatible engine emulator"),
    "config": ("orchestrator.commands.config", "check a cato.toml or hash a bearer token"),
    "models": ("orchestrator.models.cli", "prepare servable model folders from packaged weights"),
    "bench": ("orchestrator.bench.cli", "simulate, benchmark and compare schedulers"),
    "plan": ("orchestrator.bench.plan", "smallest replica count that meets a goodput target"),
    "doctor": ("orchestrator.commands.doctor", "check this machine for what CATO needs"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="cato",
        description="CATO: SLA-aware orchestration of coding-assistant LLM tasks.",
        epilog=f"commands:\n{lines}\n\nRun 'cato COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        from orchestrator import __version__

        print(f"cato {__version__}")
        return 0
    if not args or args[0] not in COMMANDS:
        parser = _top_parser()
        parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
        parser.parse_args(args[:1])
        parser.print_help()
        return 2
    name = args[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"cato {name}", description=help_text)
    module.configure(parser)
    try:
        code: int = module.run(parser.parse_args(args[1:]))
    except BrokenPipeError:
        # The reader left (``cato config show | head``): stop quietly, as a Unix tool does,
        # and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    return code


if __name__ == "__main__":
    sys.exit(main())
