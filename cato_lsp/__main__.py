"""Entry point of ``cato-lsp``."""

from __future__ import annotations

import sys


def main() -> int:
    print("cato-lsp: the language server is not built yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
