"""Entry point of ``cato-lsp``: the language server over stdio, or TCP for debugging.

Logs go to stderr (stdout carries the protocol) or a file, with every bearer token the
server has seen scrubbed from every line (`cato_lsp.redact`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cato_lsp.redact import RedactingFormatter, Secrets


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cato-lsp",
        description="CATO language server: SLA-aware inline completion and code actions.",
    )
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk LSP over stdio (default)")
    transport.add_argument(
        "--tcp", type=_address, metavar="HOST:PORT", help="listen on TCP instead (debugging)"
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    parser.add_argument("--log-file", help="write logs to this file instead of stderr")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser.parse_args(argv)


def _setup_logging(level: str, path: str | None, secrets: Secrets) -> None:
    handler: logging.Handler = (
        logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stderr)
    )
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(RedactingFormatter(secrets, fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.version:
        from cato_lsp import __version__

        print(f"cato-lsp {__version__}")
        return 0
    from cato_lsp.server import create_server, serve_stdio, serve_tcp

    server = create_server()
    _setup_logging(args.log_level, args.log_file, server.secrets)

    if args.tcp is not None:
        return serve_tcp(server, *args.tcp)
    return serve_stdio(server)


if __name__ == "__main__":
    sys.exit(main())
