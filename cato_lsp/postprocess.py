"""Turning raw model output into an inline suggestion that fits the document.

Models run on past the hole: they repeat code that already follows the cursor, leave the
block they were asked to fill, emit special tokens, or indent in their own style. These
rules undo that without knowing the language, so they apply to every file type.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Final, Literal

from cato_lsp.prompts import strip_special_tokens

Mode = Literal["line", "block"]

DEFAULT_INDENT: Final = "    "

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_TRAILING_COMMENT: Final = re.compile(r"\s+(#|//).*$")
_BLOCK_PARAMETERS: Final = re.compile(r"(?<=\bdo)\s*\|[^|]*\|$")  # Ruby's `do |item|`
_CLOSING_LINE: Final = re.compile(r"^(?:[)\]}]+|end|fi|done|esac)[;,]?$")
_BLOCK_OPENER_CHARS: Final = (":", "{", "(", "[", "=>", "->")
_BLOCK_OPENER_WORDS: Final = frozenset({"do", "then", "else", "begin", "repeat"})
_BRACKETS: Final = {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}
# Line ends after which a suggestion belongs on the next line (a bracket or an arrow at
# the end of a line usually continues the same expression instead).
_NEXT_LINE_OPENER_CHARS: Final = (":", "{")
_SCAN_CHARS: Final = 20_000


# --------------------------------------------------------------------------- lines


def _leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _current_line_before(prefix: str) -> str:
    return prefix[max(prefix.rfind("\n"), prefix.rfind("\r")) + 1 :]


def _current_line_after(suffix: str) -> str:
    found = _LINE_BREAK.search(suffix)
    return suffix if found is None else suffix[: found.start()]


def _lines_after_cursor_line(suffix: str, count: int) -> list[str]:
    """The next `count` non-empty lines after the cursor's line."""
    lines = _LINE_BREAK.split(suffix[:_SCAN_CHARS])[1:]
    return [line for line in lines if line.strip()][:count]


def _previous_code_line(prefix: str) -> str:
    """The last non-empty line before the cursor's line."""
    head = prefix[: len(prefix) - len(_current_line_before(prefix))][-_SCAN_CHARS:]
    for line in reversed(_LINE_BREAK.split(head)):
        if line.strip():
            return line
    return ""


def _line_ending(prefix: str, suffix: str) -> str:
    sample = prefix[-_SCAN_CHARS:] + suffix[:_SCAN_CHARS]
    if "\r\n" in sample:
        return "\r\n"
    if "\r" in sample and "\n" not in sample:
        return "\r"
    return "\n"


# --------------------------------------------------------------------------- mode


def _opens_block(line: str) -> bool:
    code = _BLOCK_PARAMETERS.sub("", _TRAILING_COMMENT.sub("", line).rstrip())
    if code.endswith(_BLOCK_OPENER_CHARS):
        return True
    words = code.split()
    return bool(words) and words[-1] in _BLOCK_OPENER_WORDS


def completion_mode(prefix: str, suffix: str) -> Mode:
    """`line` when the cursor is inside code; `block` on an empty line that opens a block.

    Code before the cursor or non-blank text after it on the same line asks for the rest of
    one line. An empty line right after a block opener (a line ending in `:`, `{`, `(`,
    `=>`, or in `do`, `then`, ...) asks for the block's body.
    """
    if _current_line_before(prefix).strip() or _current_line_after(suffix).strip():
        return "line"
    return "block" if _opens_block(_previous_code_line(prefix)) else "line"


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def inside_identifier(text: str, offset: int) -> bool:
    """Whether the cursor splits a word (`de|f`): a suggestion there would land inside it."""
    if offset <= 0 or offset >= len(text):
        return False
    return _is_word_char(text[offset - 1]) and _is_word_char(text[offset])


def next_line_lead(prefix: str, suffix: str, indent_unit: str | None = None) -> str | None:
    """The line break and indentation a suggestion needs at the end of a block opener.

    At the end of `def f(n):` or `if (x) {` (nothing but blanks after the cursor on that
    line) the body belongs on the next line, one level deeper; None elsewhere. A `:` inside
    open brackets (`f(a:`, `{"k":`) opens no block.
    """
    if _current_line_after(suffix).strip():
        return None
    line = _current_line_before(prefix)
    code = _BLOCK_PARAMETERS.sub("", _TRAILING_COMMENT.sub("", line).rstrip())
    words = code.split()
    if not words:
        return None
    opens = code.endswith(_NEXT_LINE_OPENER_CHARS) or words[-1] in _BLOCK_OPENER_WORDS
    if not opens or (code.endswith(":") and _bracket_depth(code) != 0):
        return None
    unit = indent_unit or detect_indent(prefix[-_SCAN_CHARS:] + suffix[:_SCAN_CHARS])
    return _line_ending(prefix, suffix) + _leading_ws(line) + unit


def complete_lines(code: str) -> str:
    """`code` up to its last line break: what is left of output cut at `max_tokens`."""
    found = [m.start() for m in _LINE_BREAK.finditer(code)]
    return code[: found[-1]].rstrip() if found else ""


# --------------------------------------------------------------------------- indentation


def _unit_width(unit: str) -> int:
    return len(DEFAULT_INDENT) if unit == "\t" else len(unit)


def _columns_of(ws: str, doc_unit: str) -> int:
    return ws.count("\t") * _unit_width(doc_unit) + ws.count(" ")


def _doc_levels(ws: str, doc_unit: str) -> int:
    """Whole indentation levels of document whitespace."""
    return _columns_of(ws, doc_unit) // _unit_width(doc_unit)


def detect_indent(text: str) -> str:
    """The document's indentation unit: a tab, or the most common step between space indents."""
    tab_lines = space_lines = 0
    steps: Counter[int] = Counter()
    previous = 0
    for line in _LINE_BREAK.split(text[-_SCAN_CHARS * 5 :]):
        content = line.lstrip(" \t")
        if not content or content.startswith("*"):
            continue
        ws = line[: len(line) - len(content)]
        if "\t" in ws:
            tab_lines += 1
            continue
        space_lines += bool(ws)
        if 2 <= len(ws) - previous <= 8:
            steps[len(ws) - previous] += 1
        previous = len(ws)
    if tab_lines > space_lines:
        return "\t"
    if not steps:
        return DEFAULT_INDENT
    best = max(steps.values())
    return " " * min(step for step, seen in steps.items() if seen == best)


def _model_unit(own_ws: str, others: list[str], doc_unit: str) -> str:
    """The unit the model indented with, when it differs visibly from the document's.

    Space indents that are all multiples of the document's unit count as the document's
    own: they cannot be told apart from deeper nesting.
    """
    spaces = [own_ws, *others] if own_ws else others
    if any("\t" in ws for ws in spaces):
        return "\t"
    widths = [len(ws) for ws in spaces if ws]
    if not widths:
        return doc_unit
    step = math.gcd(*widths)
    if doc_unit == "\t":
        return " " * step if 2 <= step <= 8 else DEFAULT_INDENT
    if all(width % len(doc_unit) == 0 for width in widths) or not 2 <= step <= 8:
        return doc_unit
    return " " * step


def _normalize_indent(lines: list[str], cursor_ws: str | None, doc_unit: str) -> list[str]:
    """Re-express the model's indentation in the document's unit, relative to the first line.

    `cursor_ws` is the document's whitespace before the cursor when the cursor line holds
    nothing else (then the first line's own leading whitespace is indentation too), else
    None. Columns are counted in the model's unit: a tab is one level; document spaces are
    taken literally when both sides use spaces, else as whole levels.
    """
    own_ws = _leading_ws(lines[0]) if cursor_ws is not None else ""
    others = [_leading_ws(line) for line in lines[1:] if line.strip()]
    model_unit = _model_unit(own_ws, others, doc_unit)
    if model_unit == doc_unit:
        return lines
    step = _unit_width(model_unit) if model_unit != "\t" else _unit_width(doc_unit)

    def model_columns(ws: str) -> int:
        return ws.count("\t") * step + ws.count(" ")

    cursor = cursor_ws or ""
    both_spaces = model_unit != "\t" and doc_unit != "\t"
    cursor_columns = len(cursor) if both_spaces else _doc_levels(cursor, doc_unit) * step
    own_levels, own_rest = divmod(model_columns(own_ws), step)
    anchor_levels = _doc_levels(cursor, doc_unit) + own_levels
    anchor_columns = cursor_columns + model_columns(own_ws)
    out = [doc_unit * own_levels + " " * own_rest + lines[0][len(own_ws) :]]
    for line in lines[1:]:
        ws = _leading_ws(line)
        if not line.strip():
            out.append(line)
            continue
        levels, rest = divmod(model_columns(ws) - anchor_columns, step)
        out.append(doc_unit * max(0, anchor_levels + levels) + " " * rest + line[len(ws) :])
    return out


# --------------------------------------------------------------------------- trimming


def _line_key(line: str, doc_unit: str) -> tuple[int, str]:
    """A line as indentation width and content, so a `}` closing an inner block differs."""
    return _columns_of(_leading_ws(line), doc_unit), line.strip()


def _drop_suffix_lines(lines: list[str], line_before: str, suffix: str, doc_unit: str) -> list[str]:
    """Cut the suggestion where it starts repeating the lines that follow the cursor.

    A cut needs the rest of the suggestion to be a prefix of the following lines, or at
    least three consecutive lines of it to match them. Lines match when both their text
    and their indentation do.
    """
    following = [_line_key(x, doc_unit) for x in _lines_after_cursor_line(suffix, len(lines) + 1)]
    if not following:
        return lines
    texts = [line_before + lines[0], *lines[1:]]
    keys = [_line_key(text, doc_unit) if text.strip() else None for text in texts]
    for start, key in enumerate(keys):
        if key != following[0]:
            continue
        rest = [k for k in keys[start:] if k is not None]
        matched = next(
            (n for n, (a, b) in enumerate(zip(rest, following, strict=False)) if a != b),
            min(len(rest), len(following)),
        )
        if matched == len(rest) or matched >= 3:
            return lines[:start]
    return lines


def _block_indent(lines: list[str], line_before: str, doc_unit: str) -> int | None:
    """Indentation width of the suggestion's first code line once inserted at the cursor."""
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return None
    if first > 0:
        return _columns_of(_leading_ws(lines[first]), doc_unit)
    own_ws = _leading_ws(lines[0]) if not line_before.strip() else ""
    return _columns_of(_leading_ws(line_before) + own_ws, doc_unit)


def _limit_to_block(
    lines: list[str], line_before: str, opener_ws: str, suffix: str, doc_unit: str
) -> list[str]:
    """Keep lines until one dedents below the block; a lone closing bracket may end it."""
    block = _block_indent(lines, line_before, doc_unit)
    if block is None:
        return lines
    following = [_line_key(x, doc_unit) for x in _lines_after_cursor_line(suffix, 1)]
    for index in range(1, len(lines)):
        line = lines[index]
        if not line.strip() or _columns_of(_leading_ws(line), doc_unit) >= block:
            continue
        closes = _CLOSING_LINE.match(line.strip()) is not None
        at_opener = _columns_of(_leading_ws(line), doc_unit) >= _columns_of(opener_ws, doc_unit)
        repeated = _line_key(line, doc_unit) in following
        keep = closes and at_opener and not repeated
        return lines[: index + 1] if keep else lines[:index]
    return lines


def _bracket_depth(text: str) -> int:
    return sum(_BRACKETS.get(char, 0) for char in text)


def _drop_rest_of_line(text: str, line_before: str, suffix: str) -> str:
    """Remove a copy of the text after the cursor from the suggestion's end.

    Closing brackets are only removed when that leaves the line at least as balanced, so
    `f(x)` typed into `print(|)` keeps its own parenthesis.
    """
    rest = _current_line_after(suffix).strip()
    body = text.rstrip()
    if not rest or not body.endswith(rest):
        return text
    cut = body[: len(body) - len(rest)]
    last_before = _current_line_before(line_before + text)
    last_after = _current_line_before(line_before + cut)
    kept = abs(_bracket_depth(last_before + rest))
    removed = abs(_bracket_depth(last_after + rest))
    return cut if removed <= kept else text


def _is_trivial(text: str) -> bool:
    return not any(char.isalnum() for char in text)


# --------------------------------------------------------------------------- entry point


def block_ended(raw: str, prefix: str, suffix: str, family: str | None = None) -> bool:
    """Whether a block-mode output is already whole, so the stream may stop now.

    True once a complete line (the last line may still grow) leaves the block or starts
    repeating the code after the cursor: `postprocess` would cut there whatever follows.
    """
    lines = _LINE_BREAK.split(strip_special_tokens(raw, family))[:-1]
    if len(lines) < 2:
        return False
    line_before = _current_line_before(prefix)
    cursor_ws = line_before if not line_before.strip() else None
    doc_unit = detect_indent(prefix[-_SCAN_CHARS:] + suffix[:_SCAN_CHARS])
    lines = _normalize_indent(lines, cursor_ws, doc_unit)
    kept = _drop_suffix_lines(lines, line_before, suffix, doc_unit)
    if len(kept) < len(lines):
        return True
    opener_ws = _leading_ws(_previous_code_line(prefix))
    return len(_limit_to_block(kept, line_before, opener_ws, suffix, doc_unit)) < len(kept)


def postprocess(
    raw: str,
    prefix: str,
    suffix: str,
    mode: Mode,
    indent_unit: str | None = None,
    family: str | None = None,
) -> str | None:
    """The suggestion to show for `raw` model output at the cursor, or None if none is worth it.

    Special tokens end the text (those of `family`, or of every family when it is None).
    Lines that repeat the document after the cursor are dropped, `line` mode keeps one line
    and `block` mode the current block, indentation follows the document (`indent_unit`, or
    detected from the text), lines lose trailing whitespace and use the document's line
    endings. Empty suggestions and ones with no letter or digit give None.
    """
    text = strip_special_tokens(raw, family)
    lines = _LINE_BREAK.split(text)
    if mode == "line":
        lines = lines[:1]
    line_before = _current_line_before(prefix)
    cursor_ws = line_before if not line_before.strip() else None
    doc_unit = indent_unit or detect_indent(prefix[-_SCAN_CHARS:] + suffix[:_SCAN_CHARS])
    lines = _normalize_indent(lines, cursor_ws, doc_unit)
    lines = _drop_suffix_lines(lines, line_before, suffix, doc_unit)
    if mode == "block" and lines:
        opener_ws = _leading_ws(_previous_code_line(prefix))
        lines = _limit_to_block(lines, line_before, opener_ws, suffix, doc_unit)
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    result = _line_ending(prefix, suffix).join(lines)
    result = _drop_rest_of_line(result, line_before, suffix).rstrip()
    return None if _is_trivial(result) else result
