"""Code actions (summarize, generate from comment, translate file) and the text they touch.

Finding what an action works on is local and cheap: the enclosing function (Python's
`ast`, else indentation and braces), the comment or docstring at the cursor. The text
an action inserts (a docstring, a comment block, generated code) is shaped here too,
so that `commands` only runs tasks and applies edits.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from lsprotocol import types

from cato_lsp.features.documents import DocumentView, comment_prefix
from cato_lsp.prompts import strip_special_tokens
from cato_lsp.settings import Settings

SUMMARIZE: Final = "cato.summarize"
GENERATE: Final = "cato.generate"
TRANSLATE_FILE: Final = "cato.translateFile"

KIND_SUMMARIZE: Final = "refactor.rewrite.cato.summarize"
KIND_GENERATE: Final = "refactor.rewrite.cato.generate"
KIND_TRANSLATE: Final = "source.cato.translate"
KIND_TRANSLATE_REFACTOR: Final = "refactor.rewrite.cato.translate"
"""Translate is offered under both kinds: `source` (VS Code's Source Action menu) and
`refactor` (the lightbulb). A request without `only` gets the refactor ones alone, so a
client that lists everything shows each target once."""

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_HEADER: Final = re.compile(
    r"^\s*(?:(?:export|public|private|protected|internal|static|async|pub|override|final|"
    r"inline|virtual|extern|unsafe|const)\s+)*"
    r"(?:def|fn|func|function|fun|sub|proc|class|impl|interface|struct)\b"
    r"|^\s*(?!(?:if|for|foreach|while|switch|catch|else|return|do|try|with|using|new|await)\b)"
    r"(?:[\w<>\[\],.*&:]+\s+)+\**[\w:~]+\s*\([^;]*\)\s*(?:const\s*)?(?:->\s*[^{;]+)?\{?\s*$"
)
_COMMENT_MARKS: Final = ("#", "//", "--", "/*", "*/", "*")
_FENCE: Final = re.compile(r"^\s*```[\w+#.-]*[ \t]*$")
_PYTHON: Final = frozenset({"python"})
_WRAP: Final = 88


@dataclass(frozen=True, slots=True)
class Region:
    """Whole lines `first..last` (0-based, inclusive) of a document, and their text."""

    first: int
    last: int
    text: str
    indent: str
    name: str | None = None
    # Python functions: where a docstring goes (its line, indentation, and the lines of
    # an existing docstring it replaces).
    body_line: int | None = None
    body_indent: str = ""
    docstring: tuple[int, int] | None = None


def split_lines(text: str) -> list[str]:
    """Lines as LSP numbers them (only CR, LF and CRLF end a line)."""
    return _LINE_BREAK.split(text)


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _region(lines: Sequence[str], first: int, last: int, **extra: Any) -> Region:
    text = "\n".join(lines[first : last + 1])
    return Region(first, last, text, _indent_of(lines[first]), **extra)


# --------------------------------------------------------------------------- functions


def _python_function(source: str, lines: Sequence[str], line: int) -> Region | None:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return None
    best: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | None = None
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
        last = (node.end_lineno or node.lineno) - 1
        if first <= line <= last and (best is None or node.lineno > best.lineno):
            best = node
    if best is None:
        return None
    first = min([best.lineno, *(d.lineno for d in best.decorator_list)]) - 1
    last = (best.end_lineno or best.lineno) - 1
    body = best.body[0]
    body_line = body.lineno - 1 if body.lineno > best.lineno else None
    docstring = None
    if ast.get_docstring(best, clean=False) is not None and body_line is not None:
        docstring = (body.lineno - 1, (body.end_lineno or body.lineno) - 1)
    body_indent = _indent_of(lines[body.lineno - 1]) if body_line is not None else ""
    return _region(
        lines,
        first,
        last,
        name=best.name,
        body_line=body_line,
        body_indent=body_indent,
        docstring=docstring,
    )


def _block_end(lines: Sequence[str], header: int) -> int:
    """Last line of the block a header opens: by braces when it has one, else by indent."""
    depth = 0
    opened = False
    for index in range(header, min(len(lines), header + 5_000)):
        code = lines[index]
        depth += code.count("{") - code.count("}")
        opened = opened or "{" in code
        if opened and depth <= 0:
            return index
        if not opened and index > header + 1:
            break
    own = len(_indent_of(lines[header]).expandtabs(4))
    last = header
    for index in range(header + 1, len(lines)):
        line = lines[index]
        if not line.strip():
            continue
        if len(_indent_of(line).expandtabs(4)) <= own:
            return index if line.strip() in ("end", "}", "};", "end;") else last
        last = index
    return last


def _heuristic_function(lines: Sequence[str], line: int) -> Region | None:
    for header in range(line, max(-1, line - 2_000), -1):
        if _HEADER.match(lines[header]):
            last = _block_end(lines, header)
            if last >= line:
                name = re.search(r"(\w+)\s*\(", lines[header])
                return _region(lines, header, last, name=name.group(1) if name else None)
    return None


def enclosing_function(doc: DocumentView, line: int) -> Region | None:
    """The innermost function (or class) around a line, None when there is none."""
    lines = split_lines(doc.text)
    if not 0 <= line < len(lines):
        return None
    if doc.language in _PYTHON:
        found = _python_function(doc.text, lines, line)
        if found is not None:
            return found
    return _heuristic_function(lines, line)


def selection(doc: DocumentView, first: int, last: int) -> Region | None:
    """Whole lines of a selection, None when they hold no code."""
    lines = split_lines(doc.text)
    first, last = max(0, first), min(last, len(lines) - 1)
    if first > last:
        return None
    region = _region(lines, first, last)
    return region if region.text.strip() else None


# --------------------------------------------------------------------------- comments


def _is_comment(line: str) -> bool:
    return line.strip().startswith(_COMMENT_MARKS)


def _uncomment(line: str) -> str:
    text = line.strip()
    for mark in ("/**", "/*", "*/", "//", "--", "#", "*"):
        if text.startswith(mark):
            text = text[len(mark) :]
            break
    return text.removesuffix("*/").strip()


def _python_docstring(source: str, lines: Sequence[str], line: int) -> Region | None:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and node.lineno - 1 <= line <= (node.end_lineno or node.lineno) - 1
        ):
            region = _region(lines, node.lineno - 1, (node.end_lineno or node.lineno) - 1)
            return Region(region.first, region.last, inspect_clean(node.value.value), region.indent)
    return None


def inspect_clean(text: str) -> str:
    return textwrap.dedent(text).strip()


def comment_at(doc: DocumentView, line: int) -> Region | None:
    """The comment block (or Python docstring) on a line, its text without markers."""
    lines = split_lines(doc.text)
    if not 0 <= line < len(lines):
        return None
    if _is_comment(lines[line]):
        first = last = line
        while first > 0 and _is_comment(lines[first - 1]):
            first -= 1
        while last + 1 < len(lines) and _is_comment(lines[last + 1]):
            last += 1
        body = "\n".join(_uncomment(x) for x in lines[first : last + 1]).strip()
        return Region(first, last, body, _indent_of(lines[first])) if body else None
    if doc.language in _PYTHON:
        return _python_docstring(doc.text, lines, line)
    return None


# --------------------------------------------------------------------------- inserted text


def clean_model_text(text: str) -> str:
    """Model output without special tokens and without a Markdown fence around it."""
    text = strip_special_tokens(text)
    lines = text.splitlines()
    if lines and _FENCE.match(lines[0]):
        lines = lines[1:]
    if lines and lines[-1].strip().startswith("```"):
        lines = lines[:-1]
    return "\n".join(lines).strip("\n")


def _wrap(text: str, width: int) -> list[str]:
    out: list[str] = []
    for paragraph in text.split("\n"):
        out.extend(textwrap.wrap(paragraph, max(20, width)) or [""])
    while out and not out[-1]:
        out.pop()
    return out


def docstring_text(summary: str, indent: str, eol: str) -> str:
    """A Python docstring of `summary`, with its own trailing line break."""
    body = " ".join(summary.split()).replace('"""', r"\"\"\"").rstrip("\\")
    lines = _wrap(body, _WRAP - len(indent) - 3)
    if len(lines) <= 1:
        return f'{indent}"""{body}"""{eol}'
    inner = eol.join(f"{indent}{line}" if line else "" for line in lines[1:])
    return f'{indent}"""{lines[0]}{eol}{inner}{eol}{indent}"""{eol}'


def comment_text(summary: str, indent: str, language: str, eol: str) -> str:
    """`summary` as line comments at `indent`, with a trailing line break."""
    mark = comment_prefix(language)
    body = " ".join(summary.split())
    lines = _wrap(body, _WRAP - len(indent) - len(mark) - 1)
    return "".join(f"{indent}{mark} {line}{eol}" for line in lines)


def code_text(code: str, indent: str, eol: str) -> str:
    """Generated code re-indented at `indent`, with a trailing line break."""
    body = textwrap.dedent(code.expandtabs(4) if "\t" in code and " " in code else code)
    lines = [f"{indent}{line}" if line.strip() else "" for line in body.strip("\n").split("\n")]
    return eol.join(line.rstrip() for line in lines) + eol


# --------------------------------------------------------------------------- actions


def _allowed(kind: str, only: Sequence[str] | None) -> bool:
    return not only or any(kind == k or kind.startswith(k + ".") for k in only)


def _action(title: str, kind: str, command: str, arguments: dict[str, Any]) -> types.CodeAction:
    return types.CodeAction(
        title=title,
        kind=kind,
        command=types.Command(title=title, command=command, arguments=[arguments]),
    )


def _range_json(selected: types.Range) -> dict[str, Any]:
    return {
        "start": {"line": selected.start.line, "character": selected.start.character},
        "end": {"line": selected.end.line, "character": selected.end.character},
    }


def code_actions(
    doc: DocumentView,
    selected: types.Range,
    settings: Settings,
    only: Sequence[str] | None = None,
) -> list[types.CodeAction]:
    """The actions offered at a cursor or selection."""
    actions: list[types.CodeAction] = []
    line = selected.start.line
    has_selection = selected.start != selected.end
    where = {"uri": doc.uri, "range": _range_json(selected)}
    if _allowed(KIND_SUMMARIZE, only):
        function = None if has_selection else enclosing_function(doc, line)
        if has_selection:
            actions.append(
                _action("CATO: Summarize the selection", KIND_SUMMARIZE, SUMMARIZE, where)
            )
        elif function is not None:
            title = f"CATO: Summarize `{function.name}`" if function.name else "CATO: Summarize"
            actions.append(_action(title, KIND_SUMMARIZE, SUMMARIZE, where))
    if _allowed(KIND_GENERATE, only) and (has_selection or comment_at(doc, line) is not None):
        title = "CATO: Generate code from the " + ("selection" if has_selection else "comment")
        actions.append(_action(title, KIND_GENERATE, GENERATE, where))
    kinds = [KIND_TRANSLATE_REFACTOR] if not only else [KIND_TRANSLATE_REFACTOR, KIND_TRANSLATE]
    for kind in (k for k in kinds if _allowed(k, only)):
        for target in settings.translate_targets:
            if target.lower() != doc.language:
                args = {"uri": doc.uri, "targetLanguage": target}
                actions.append(
                    _action(f"CATO: Translate file to {target}", kind, TRANSLATE_FILE, args)
                )
    return actions
