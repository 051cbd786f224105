"""``cato config``: check a ``cato.toml``, make a bearer token, hash one you have.

The configuration itself (its sections, validation and loading) is ``orchestrator.config``.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from orchestrator.api import TaskKind
from orchestrator.config import (
    MIN_TOKEN_CHARS,
    NEW_TOKEN_HINT,
    PLACEHOLDER_TOKENS,
    CatoConfig,
    ConfigError,
    hash_token,
    load_config,
)


def configure(parser: argparse.ArgumentParser) -> None:
    """``check [FILE]`` validates a config; ``new-token`` makes a bearer token and its
    hash; ``hash-token [TOKEN]`` prints the hash of a token you have."""
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate a cato.toml (or the built-in default)")
    check.add_argument("file", nargs="?", default=None, help="path to cato.toml")
    sub.add_parser("new-token", help="a random bearer token and its token_sha256 line")
    token = sub.add_parser("hash-token", help="print the token_sha256 value for a bearer token")
    token.add_argument(
        "token", nargs="?", default=None, help="the token (read from stdin if absent)"
    )


def run(args: argparse.Namespace) -> int:
    if args.config_command == "new-token":
        token = secrets.token_urlsafe(32)
        print(f"token (give it to the user; it is not stored): {token}")
        print(f'token_sha256 = "{hash_token(token)}"')
        return 0
    if args.config_command == "hash-token":
        token = args.token if args.token is not None else sys.stdin.readline().strip()
        problem = token_problem(token)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        print(hash_token(token))
        return 0
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(summary(config, args.file or "<built-in default>"))
    return 0


def token_problem(token: str) -> str | None:
    """Why a bearer token should not be used, or None."""
    if token in PLACEHOLDER_TOKENS:
        return f"{token!r} is a public placeholder token; {NEW_TOKEN_HINT}"
    if len(token) < MIN_TOKEN_CHARS:
        return (
            f"a token needs {MIN_TOKEN_CHARS} characters at least (this one has {len(token)}); "
            f"{NEW_TOKEN_HINT}"
        )
    return None


def summary(config: CatoConfig, source: str) -> str:
    """A few lines saying what a valid config will run."""
    lines = [f"{source}: ok"]
    for m in config.models:
        what = m.model or ", ".join(m.pool) or m.profile
        lines.append(
            f"  model {m.name}: {m.engine} {what}, replicas {m.min_replicas}..{m.replicas_max}, "
            f"{m.gpus} GPU(s) each"
        )
    for kind in TaskKind:
        t = config.task(kind)
        lines.append(f"  task {kind.value}: {t.model}, {t.sla_metric} <= {t.sla_ms:g} ms")
    lines.append(f"  scheduler {config.scheduler.policy}, provisioner {config.provisioner.policy}")
    if config.cluster.backend == "ray":
        lines.append(f"  replicas on the Ray cluster at {config.cluster.address}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cato config", description=configure.__doc__)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
