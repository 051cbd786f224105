"""Where a block suggestion really ends, from a tree-sitter parse when a grammar is there.

The indentation rules of `postprocess` work for every language but cannot see that a
block's last line opens something it never closes (a model cut off after `if total:` or
in the middle of a call). Where a tree-sitter grammar wheel is installed
(`tree-sitter-python` comes with CATO; `tree-sitter-javascript`, `-go`, `-rust`, ...
are used when present), a multi-line suggestion is parsed in place, in the prompt's
window around the cursor, and its last lines are dropped until none of the syntax
errors overlaps it. Without a grammar the heuristic result stands; when no version of
the suggestion parses, it is dropped if the code parses without it.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any, Final

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
# language id -> (module, attribute that returns the grammar)
_GRAMMARS: Final[dict[str, tuple[str, str]]] = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "javascriptreact": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "typescriptreact": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "java": ("tree_sitter_java", "language"),
}
_MAX_WINDOW_CHARS: Final = 8_000  # the prompt window is about this size; parses stay cheap
_NEAR_LINES: Final = 3  # lines after the cursor that must parse for a suggestion to be judged


@functools.cache
def parser_for(language: str) -> Any | None:
    """A tree-sitter parser of `language`, or None when no grammar is installed."""
    found = _GRAMMARS.get(language.lower())
    if found is None:
        return None
    try:
        from tree_sitter import Language, Parser

        grammar = getattr(importlib.import_module(found[0]), found[1])()
        return Parser(Language(grammar))
    except (ImportError, AttributeError, ValueError, TypeError):
        return None


def _errors_in(parser: Any, text: str, start: int, end: int, empty_blocks: bool = True) -> bool:
    """Whether a syntax error (an ERROR or MISSING node, and with `empty_blocks` a body
    with nothing in it) overlaps bytes start..end."""
    tree = parser.parse(text.encode("utf-8"))
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.end_byte < start or node.start_byte > end:
            continue
        if node.type == "ERROR" or node.is_missing:
            return True
        if empty_blocks and _empty_block(node, start, end):
            return True
        stack.extend(node.children)
    return False


def _empty_block(node: Any, start: int, end: int) -> bool:
    """A body with nothing in it (Python's grammar takes `if x:` with no body without an
    error node); only inside the suggestion, where the model stopped after the opener."""
    at: int = node.start_byte
    return bool(node.type == "block" and node.end_byte == at and start <= at <= end)


def trim_to_parse(prefix: str, suggestion: str, suffix: str, language: str) -> str:
    """`suggestion` without the last lines that leave it unparsable in place.

    Only the errors that overlap the suggestion count (the window's own edges, or code
    the user is still typing elsewhere, do not). Returns `suggestion` itself when there
    is no grammar or it parses already. When no version of it parses: "" if the code
    parses without it (an empty body aside: accepting any version would break code that
    parses, as a model cut off by its token limit mid-statement does), else `suggestion`
    (the code there is broken already, and the parse cannot judge it).
    """
    parser = parser_for(language)
    lines = _LINE_BREAK.split(suggestion)
    if parser is None or not suggestion.strip():
        return suggestion
    prefix, suffix = prefix[-_MAX_WINDOW_CHARS:], suffix[:_MAX_WINDOW_CHARS]
    line_ends = [m.start() for m in _LINE_BREAK.finditer(suggestion)]
    start = len(prefix.encode("utf-8"))
    for keep in range(len(lines), 0, -1):
        candidate = suggestion if keep == len(lines) else suggestion[: line_ends[keep - 1]]
        if not candidate.strip():
            continue
        end = start + len(candidate.encode("utf-8"))
        if not _errors_in(parser, prefix + candidate + suffix, start, end):
            return candidate
    # The code around the cursor without the suggestion: up to the end of the next
    # lines after it, where an error would show the surroundings broken already.
    near = "".join(suffix.splitlines(keepends=True)[:_NEAR_LINES])
    end = start + len(near.encode("utf-8"))
    if not _errors_in(parser, prefix + suffix, start, end, empty_blocks=False):
        return ""
    return suggestion
