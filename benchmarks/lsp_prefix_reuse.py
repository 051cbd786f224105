"""How much of a completion prompt an engine's prefix cache can reuse as a developer types.

Typing through standard-library modules (8-120 characters between completions, from
the 5,000th character on, where the window no longer starts at the top of the file),
with three other modules open beside it, each completion's prompt is built by the
language server (``cato_lsp.features.completion_prompt.prepare``: the window, the
snippets of the open files, the CodeLlama FIM format) with each ``context.anchorShare``
given, and, for comparison, with the prefix window anchored as the ``sessions`` workload
anchors it (``bench.sessions``: the start moves in steps of half the window; no
snippets). A prompt's reusable share is the leading run of its KV blocks
(``block_hashes``) that the previous prompt of the same file also had: what a replica
that served that prompt still holds. Prints the Markdown table quoted in
docs/BENCHMARKS.md::

    python3 -m benchmarks.lsp_prefix_reuse
"""

from __future__ import annotations

import argparse
import bisect
import importlib
import inspect
import random
from collections.abc import Sequence

from cato_lsp.features.completion_prompt import prepare
from cato_lsp.features.documents import DocumentView
from cato_lsp.prompts import get_template
from cato_lsp.settings import Settings
from orchestrator.bench.sessions import ANCHOR_CHARS
from orchestrator.engine_model import block_hashes

MODULES = ("typing", "argparse", "inspect", "difflib", "textwrap", "configparser", "tarfile")
START, END = 5_000, 60_000  # characters typed through in each module
BLOCK = 16
NEIGHBOURS = 3  # other modules open beside the one typed in
SESSIONS = "sessions workload (anchored, no snippets)"


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


def _doc(name: str) -> DocumentView:
    text = inspect.getsource(importlib.import_module(name))
    return DocumentView(f"file:///lib/{name}.py", text, "python")


def measure(shares: Sequence[float], seed: int = 0) -> tuple[int, dict[str, tuple[float, float]]]:
    """Completions typed, and per prompt design: the share of prompt blocks the previous
    prompt's replica holds, and the mean prompt length in characters."""
    template = get_template("codellama")
    rng = random.Random(seed)
    designs = {f"language server, anchorShare {s:g}": s for s in shares}
    hit = dict.fromkeys([*designs, SESSIONS], 0)
    total = dict.fromkeys(hit, 0)
    chars = dict.fromkeys(hit, 0)
    prompts = 0
    docs = [_doc(name) for name in MODULES]
    settings = {s: Settings.model_validate({"context": {"anchor_share": s}}) for s in shares}
    for i, doc in enumerate(docs):
        others = [docs[(i + k) % len(docs)] for k in range(1, NEIGHBOURS + 1)]
        starts = [0, *(j + 1 for j, c in enumerate(doc.text) if c == "\n")]
        held: dict[str, set[int]] = {k: set() for k in hit}
        cursor = START
        while cursor < min(len(doc.text), END):
            built = {
                k: prepare(doc, cursor, others, settings[v], "codellama")
                for k, v in designs.items()
            }
            ready = {k: p for k, p in built.items() if p is not None}
            if len(ready) < len(designs):  # inside an identifier: no request
                cursor += 1
                continue
            rendered = {k: p.request.prompt or "" for k, p in ready.items()}
            suffix = next(iter(ready.values())).suffix  # the anchor moves the prefix only
            pre = doc.text[anchored_start(starts, cursor) : cursor]
            rendered[SESSIONS] = template.render(pre, suffix)
            for key, prompt in rendered.items():
                hashes = block_hashes(prompt, BLOCK)
                hit[key] += leading(hashes, held[key])
                total[key] += len(hashes)
                chars[key] += len(prompt)
                held[key] = set(hashes)
            prompts += 1
            cursor += rng.randint(8, 120)
    return prompts, {k: (hit[k] / total[k], chars[k] / prompts) for k in hit}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shares", default="0,0.25,0.5", help="anchorShare values")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shares = [float(s) for s in args.shares.split(",")]
    prompts, found = measure(shares, args.seed)
    print(
        f"{prompts:,} completions typed through {len(MODULES)} modules, "
        f"{NEIGHBOURS} others open (seed {args.seed})\n"
    )
    print("| prompt | blocks the previous prompt's replica holds | mean prompt (characters) |")
    print("|---|---|---|")
    for key, (share, length) in found.items():
        print(f"| {key} | {100 * share:.0f}% | {length:,.0f} |")


if __name__ == "__main__":
    main()
