"""How much of a completion prompt an engine's prefix cache can reuse as a developer types.

Typing through standard-library modules (8-120 characters between completions, from
the 5,000th character on, where the window no longer starts at the top of the file),
each completion's prompt is rendered by the language server's window
(``cato_lsp.context.prefix_suffix_window`` with its default budget, in the CodeLlama FIM
format) and, for comparison, with the prefix window anchored as the ``sessions``
workload anchors it (``bench.sessions``: the start moves in steps of half the window).
A prompt's reusable share is the leading run of its KV blocks (``block_hashes``) that
the previous prompt of the same file also had: what a replica that served that prompt
still holds. Prints the Markdown table quoted in docs/BENCHMARKS.md::

    python3 -m benchmarks.lsp_prefix_reuse
"""

from __future__ import annotations

import bisect
import importlib
import inspect
import random

from cato_lsp.context import prefix_suffix_window
from cato_lsp.prompts import get_template
from cato_lsp.settings import Settings
from orchestrator.bench.sessions import ANCHOR_CHARS
from orchestrator.engine_model import block_hashes

MODULES = ("typing", "argparse", "inspect", "difflib", "textwrap", "configparser", "tarfile")
START, END = 5_000, 60_000  # characters typed through in each module
BLOCK = 16


def anchored_start(starts: list[int], cursor: int) -> int:
    """The sessions workload's window start (``bench.sessions._anchor``)."""
    if cursor <= 2 * ANCHOR_CHARS:
        return 0
    point = -(-(cursor - 2 * ANCHOR_CHARS) // ANCHOR_CHARS) * ANCHOR_CHARS
    return min(starts[bisect.bisect_left(starts, point)], cursor)


def leading(hashes: tuple[int, ...], held: set[int]) -> int:
    n = 0
    for h in hashes:
        if h not in held:
            break
        n += 1
    return n


def main() -> None:
    ctx = Settings().context
    template = get_template("codellama")
    rng = random.Random(0)
    found = {"language server (sliding)": [0, 0], "anchored (sessions)": [0, 0]}
    prompts = 0
    for name in MODULES:
        text = inspect.getsource(importlib.import_module(name))
        starts = [0, *(i + 1 for i, c in enumerate(text) if c == "\n")]
        held: dict[str, set[int]] = {k: set() for k in found}
        cursor = START
        while cursor < min(len(text), END):
            prefix, suffix = prefix_suffix_window(text, cursor, ctx.budget_tokens, ctx.prefix_share)
            anchored = text[anchored_start(starts, cursor) : cursor]
            for key, pre in zip(found, (prefix, anchored), strict=True):
                hashes = block_hashes(template.render(pre, suffix), BLOCK)
                found[key][0] += leading(hashes, held[key])
                found[key][1] += len(hashes)
                held[key] = set(hashes)
            prompts += 1
            cursor += rng.randint(8, 120)
    print(f"{prompts:,} completions typed through {len(MODULES)} modules (seed 0)\n")
    print("| prefix window | prompt blocks the previous prompt's replica holds |")
    print("|---|---|")
    for key, (hit, total) in found.items():
        print(f"| {key} | {100 * hit / total:.0f}% |")


if __name__ == "__main__":
    main()
