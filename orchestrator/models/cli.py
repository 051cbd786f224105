"""``cato models``: build servable model folders from packaged weights, and list them."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from orchestrator.models.prepare import (
    PREFIX,
    RECIPES,
    PrepareError,
    is_prepared,
    model_dir,
    prepare,
)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    prep = sub.add_parser(
        "prepare",
        help="build a model folder vLLM can serve (prints its path)",
        description="Build a model folder vLLM can serve from weights an installed package "
        "carries; nothing is downloaded. Prints the folder's path.",
    )
    prep.add_argument("name", choices=sorted(RECIPES), help="which model")
    prep.add_argument(
        "--dest", type=Path, help="folder to build (default: the user's cache, cato/models/NAME)"
    )
    prep.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    sub.add_parser("list", help="the preparable models and where they are")


def run(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        return _list()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        folder = prepare(args.name, args.dest, force=args.force)
    except PrepareError as exc:
        print(f"cato models prepare: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


def _list() -> int:
    for name, rec in sorted(RECIPES.items()):
        folder = model_dir(name)
        state = "prepared" if is_prepared(folder) else "not prepared"
        print(f"{name:<8} {state:<12} {folder}")
        print(f'         {rec.description}; use model = "{PREFIX}{name}" in cato.toml')
    return 0
