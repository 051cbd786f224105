"""The orchestrator's validation messages about a translation, as LSP diagnostics.

The orchestrator's `validate` step reports plain strings ("line 3, column 9: expected
an indented block", "line 2: unclosed '('", "unknown line: ..."), with 1-based lines
and 1-based code-point columns of the text it validated. The editor needs 0-based
positions in the negotiated encoding of the file it was given, whose first lines may
have been trimmed on the way (`clean_model_text`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from lsprotocol import types

from cato_lsp.context import column_of

SOURCE: Final = "cato"

_WHERE: Final = r"line\s+(\d+)(?:\s*,\s*col(?:umn)?\s+(\d+))?"
_PREFIX: Final = re.compile(rf"\s*(?:{_WHERE}|unknown line)\s*:\s*", re.IGNORECASE)
_ANYWHERE: Final = re.compile(rf"\b{_WHERE}", re.IGNORECASE)
_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")


def line_shift(validated: str, written: str) -> int:
    """Lines the orchestrator's text has before the start of the written file (fence or
    blank lines dropped in front), so that its line numbers can be moved onto the file."""
    head = written.lstrip("\n")[:200]
    if not head:
        return 0
    at = validated.find(head)
    return validated.count("\n", 0, at) if at > 0 else 0


def _location(problem: str) -> tuple[int | None, int | None, str]:
    """(1-based line, 1-based column, message without the location) of one problem."""
    prefix = _PREFIX.match(problem)
    if prefix is not None:
        message = problem[prefix.end() :].strip() or problem.strip()
        line, column = prefix.group(1), prefix.group(2)
        return (int(line) if line else None), (int(column) if column else None), message
    found = _ANYWHERE.search(problem)
    if found is None:
        return None, None, problem.strip()
    column = found.group(2)
    return int(found.group(1)), (int(column) if column else None), problem.strip()


def _range(lines: list[str], line: int | None, column: int | None, encoding: str) -> types.Range:
    index = 0 if line is None else min(max(line - 1, 0), len(lines) - 1)
    text = lines[index]
    if column is None:
        # the whole line, from its first non-blank character
        first = len(text) - len(text.lstrip())
        start, end = column_of(text, first, encoding), column_of(text, len(text), encoding)
    else:
        at = min(max(column - 1, 0), len(text))
        start = column_of(text, at, encoding)
        end = column_of(text, min(at + 1, len(text)), encoding)
    return types.Range(
        start=types.Position(line=index, character=start),
        end=types.Position(line=index, character=end),
    )


def translation_diagnostics(
    problems: Sequence[str], text: str, encoding: str = "utf-16", shift: int = 0
) -> list[types.Diagnostic]:
    """Warnings on `text` (the file as written) for the orchestrator's `problems`.

    A problem that names a line (and column) gets that place, moved up by `shift` lines
    and clamped to the file; one that names none sits on the first line.
    """
    lines = _LINE_BREAK.split(text) or [""]
    out = []
    for problem in problems:
        line, column, message = _location(problem)
        if line is not None:
            line -= shift
        out.append(
            types.Diagnostic(
                range=_range(lines, line, column, encoding),
                message=message,
                severity=types.DiagnosticSeverity.Warning,
                source=SOURCE,
            )
        )
    return out
