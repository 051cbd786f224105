"""Turning raw model output into suggestions: modes, suffix repeats, blocks, indentation."""

from __future__ import annotations

import pytest

from cato_lsp.postprocess import (
    block_ended,
    complete_lines,
    completion_mode,
    detect_indent,
    inside_identifier,
    next_line_lead,
    postprocess,
)
from cato_lsp.prompts import FimFamily, get_template
from cato_lsp.syntax import parser_for, trim_to_parse

# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [
        ("total = ", "\n"),  # code before the cursor
        ("def f(x):\n    ", "return x\n"),  # code after the cursor
        ("print(", ")\n"),
        ("def f(x):\n    return x\n", "\n"),  # empty line after a plain statement
        ("", ""),  # empty document
    ],
)
def test_python_line_mode(prefix: str, suffix: str) -> None:
    assert completion_mode(prefix, suffix) == "line"


@pytest.mark.parametrize(
    "prefix",
    [
        "def f(x):\n    ",
        "def f(x):\n",
        "class A:\n    def f(self):  # the method\n        ",
        "if ready:\n\n    ",  # blank lines between the opener and the cursor
        "items = [\n    ",
    ],
)
def test_python_block_mode(prefix: str) -> None:
    assert completion_mode(prefix, "\n\nprint(1)\n") == "block"


@pytest.mark.parametrize(
    ("prefix", "suffix", "mode"),
    [
        ("int main() {\n    ", "\n}\n", "block"),
        ("for (int i = 0; i < n; i++) {  // loop\n        ", "\n    }\n", "block"),
        ("const f = (x) => {\n  ", "\n};\n", "block"),
        ("int x = 1;\n    ", "\n}\n", "line"),
        ("if (x) {", "}\n", "line"),  # between braces on one line
        ("    return compute(", ");\n", "line"),
        ("items.each do |item|\n  ", "\nend\n", "block"),
        ("if [ -f x ]; then\n  ", "\nfi\n", "block"),
    ],
)
def test_c_like_and_keyword_block_openers(prefix: str, suffix: str, mode: str) -> None:
    assert completion_mode(prefix, suffix) == mode


# --------------------------------------------------------------------------- suffix repeats


def test_drops_lines_that_repeat_the_suffix() -> None:
    prefix = "def f(x):\n    "
    suffix = "\n    return y\n\nprint(f(1))\n"
    raw = "y = x + 1\n    return y\n\nprint(f(1))"
    assert postprocess(raw, prefix, suffix, "block") == "y = x + 1"


def test_drops_a_long_repeat_even_when_the_model_runs_on() -> None:
    prefix = "def f(x):\n    "
    suffix = "\n    a = 1\n    b = 2\n    c = 3\n    d = 4\n"
    raw = "x += 1\n    a = 1\n    b = 2\n    c = 3\n    e = 5"
    assert postprocess(raw, prefix, suffix, "block") == "x += 1"


def test_a_single_matching_line_inside_new_code_is_kept() -> None:
    prefix = "int main() {\n    "
    suffix = "\n}\n"
    raw = "if (x) {\n        y();\n    }\n    z();"
    assert postprocess(raw, prefix, suffix, "block") == raw


def test_line_that_repeats_the_next_line_gives_nothing() -> None:
    prefix = "def f(x):\n    y = x\n    "
    suffix = "\n    return y\n"
    assert postprocess("return y", prefix, suffix, "line") is None


def test_drops_the_rest_of_the_line_when_the_suggestion_ends_with_it() -> None:
    assert postprocess("a, b) + 1", "x = foo(", ") + 1\n", "line") == "a, b"
    assert postprocess("price * qty  # total", "value = ", "  # total\n", "line") == "price * qty"


def test_closing_bracket_is_only_dropped_when_it_would_be_doubled() -> None:
    assert postprocess("f(x))", "print(", ")\n", "line") == "f(x)"
    assert postprocess("f(x)", "print(", ")\n", "line") == "f(x)"


# --------------------------------------------------------------------------- modes applied


def test_line_mode_keeps_the_first_line_only() -> None:
    assert postprocess("a + b\nprint(total)", "total = ", "\n", "line") == "a + b"


def test_block_mode_stops_at_the_first_dedent_in_python() -> None:
    prefix = "def f(x):\n    "
    raw = "y = x * 2\n\n    return y\n\ndef g():\n    pass"
    assert postprocess(raw, prefix, "\n", "block") == "y = x * 2\n\n    return y"


def test_block_mode_stops_before_else() -> None:
    prefix = "def f(x):\n    if x:\n        "
    raw = "a = 1\n    else:\n        a = 2"
    assert postprocess(raw, prefix, "\n", "block") == "a = 1"


def test_block_mode_in_c_drops_a_closing_brace_the_suffix_already_has() -> None:
    prefix = "int main() {\n    "
    raw = "int x = 1;\n    return x;\n}\n\nint g() {"
    assert postprocess(raw, prefix, "\n}\n", "block") == "int x = 1;\n    return x;"


def test_block_mode_in_c_keeps_a_missing_closing_brace() -> None:
    prefix = "int main() {\n    "
    raw = "int x = 1;\n    return x;\n}\n\nint g() {"
    assert postprocess(raw, prefix, "\n", "block") == "int x = 1;\n    return x;\n}"


# --------------------------------------------------------------------------- indentation


FOUR_SPACE_DOC = "class A:\n    x = 1\n\n    def f(self):\n        return 1\n\n\n"


def test_two_space_model_output_in_a_four_space_document() -> None:
    prefix = FOUR_SPACE_DOC + "def f(a):\n"
    raw = "  if a:\n    return 1\n  return 2"
    expected = "    if a:\n        return 1\n    return 2"
    assert postprocess(raw, prefix, "\n", "block") == expected


def test_two_space_columns_after_document_indentation() -> None:
    prefix = FOUR_SPACE_DOC + "def f(a):\n    "
    raw = "if a:\n      return 1\n    return 2"
    assert postprocess(raw, prefix, "\n", "block") == "if a:\n        return 1\n    return 2"


def test_tabs_from_the_model_in_a_spaces_document() -> None:
    prefix = "def f(a):\n    b = 1\n    if a:\n        pass\n    for i in b:\n        "
    raw = "if i:\n\t\t\tcontinue\n\t\tprint(i)"
    expected = "if i:\n            continue\n        print(i)"
    assert postprocess(raw, prefix, "\n", "block") == expected


def test_spaces_from_the_model_in_a_tabs_document() -> None:
    prefix = "func f() {\n\tx := 1\n\tif x > 0 {\n\t\tx++\n\t}\n\tfor {\n\t\t"
    raw = "if x > 0 {\n            return\n        }"
    assert postprocess(raw, prefix, "\n\t}\n}\n", "block") == "if x > 0 {\n\t\t\treturn\n\t\t}"


def test_explicit_indent_unit_wins_over_detection() -> None:
    prefix = "def f(a):\n"
    raw = "    if a:\n        return 1"
    assert postprocess(raw, prefix, "\n", "block", indent_unit="\t") == "\tif a:\n\t\treturn 1"


def test_output_matching_the_document_indentation_is_untouched() -> None:
    prefix = "function f(a) {\n  if (a) {\n    a++;\n  }\n  "
    raw = "while (a) {\n    a--;\n  }"
    assert postprocess(raw, prefix, "\n}\n", "block") == raw


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("def f():\n    if x:\n        y()\n    return 1\n", "    "),
        ("function f() {\n  if (x) {\n    y();\n  }\n}\n", "  "),
        ("func f() {\n\tif x {\n\t\ty()\n\t}\n}\n", "\t"),
        ("x = 1\ny = 2\n", "    "),
        ("/**\n * doc\n */\nint f() {\n  return 1;\n}\n", "  "),
    ],
)
def test_detect_indent(text: str, unit: str) -> None:
    assert detect_indent(text) == unit


# --------------------------------------------------------------------------- cleanup


def test_trailing_whitespace_is_trimmed() -> None:
    prefix = "def f():\n    "
    raw = "a = 1   \n    b = 2\t\n\n\n"
    assert postprocess(raw, prefix, "\n", "block") == "a = 1\n    b = 2"


def test_crlf_documents_get_crlf_suggestions() -> None:
    prefix = "def f():\r\n    "
    raw = "a = 1\n    return a"
    assert postprocess(raw, prefix, "\r\n", "block") == "a = 1\r\n    return a"


@pytest.mark.parametrize("raw", ["", "   ", "\n\n", ");", "}", "<|endoftext|>", "  ,\n"])
def test_trivial_suggestions_are_dropped(raw: str) -> None:
    assert postprocess(raw, "x = compute(", "\n", "line") is None
    assert postprocess(raw, "def f():\n    ", "\n", "block") is None


# --------------------------------------------------------------------------- special tokens


@pytest.mark.parametrize("family", [f.value for f in FimFamily])
def test_no_special_token_ever_leaks(family: str) -> None:
    for token in get_template(family).special_tokens:
        raw = f"compute(1){token}\nimport os{token}"
        for mode in ("line", "block"):
            result = postprocess(raw, "x = ", "\n", mode, family=family)
            assert result == "compute(1)", (token, mode)


def test_tokens_of_every_family_are_cut_without_a_family() -> None:
    for family in FimFamily:
        for token in get_template(family).special_tokens:
            result = postprocess(f"value{token}junk", "x = ", "\n", "line")
            assert result == "value", token


# --------------------------------------------------------------------------- cursor shape


@pytest.mark.parametrize(
    ("text", "offset", "inside"),
    [
        ("def", 2, True),  # de|f
        ("x_1 = 2", 2, True),
        ("def", 3, False),  # end of the word
        ("def", 0, False),  # before it
        ("f(x)", 2, False),  # f(|x)
        ("a b", 1, False),
        ("", 0, False),
    ],
)
def test_inside_identifier(text: str, offset: int, inside: bool) -> None:
    assert inside_identifier(text, offset) is inside


@pytest.mark.parametrize(
    ("prefix", "suffix", "lead"),
    [
        ("def fibonacci(n):", "\n", "\n    "),
        ("class A:\n    def f(self):  # the method", "\n", "\n        "),
        ("if (x) {", "", "\n    "),
        ("\tif (x) {", "\r\n}\r\n", "\r\n\t\t"),
        ("items.each do |item|", "\nend\n", "\n    "),
        ("def f(a:", "\n", None),  # a `:` inside brackets
        ('data = {"key":', "\n", None),
        ("print(", "\n", None),  # continues the expression
        ("def f(n):", ")\n", None),  # text after the cursor on the line
        ("total = compute(x)", "\n", None),
        ("", "", None),
    ],
)
def test_next_line_lead_at_the_end_of_a_block_opener(
    prefix: str, suffix: str, lead: str | None
) -> None:
    assert next_line_lead(prefix, suffix) == lead


@pytest.mark.parametrize(
    ("code", "kept"),
    [
        ("a = 1\nb = compu", "a = 1"),
        ("a = 1\r\nb = 2\r\nc", "a = 1\r\nb = 2"),
        ("def f():\n    return 1\n", "def f():\n    return 1"),
        ("one line only", ""),
    ],
)
def test_complete_lines_keeps_whole_lines(code: str, kept: str) -> None:
    assert complete_lines(code) == kept


# --------------------------------------------------------------------------- early stop


@pytest.mark.parametrize(
    ("raw", "ended"),
    [
        ("total += x\n        count += 1\n", False),  # still inside the block
        ("total += x\n    return total", False),  # the dedent's line is not complete yet
        ("total += x\n    return total\n", True),  # a complete line left the block
        ("total += x\n", False),
        ("total += x\n\n    print(total)\n", True),
    ],
)
def test_block_ended_once_a_whole_line_leaves_the_block(raw: str, ended: bool) -> None:
    prefix = "def f(xs):\n    total = 0\n    for x in xs:\n        "
    assert block_ended(raw, prefix, "\n") is ended


def test_block_ended_when_the_output_repeats_the_code_after_the_cursor() -> None:
    prefix = "def f(xs):\n    "
    suffix = "\n    return total\n\n\nprint(f([1]))\n"
    raw = "total = sum(xs)\n    return total\n\n\nprint(f([1]))\n"
    assert block_ended(raw, prefix, suffix)
    assert not block_ended("total = sum(xs)\n", prefix, suffix)


# --------------------------------------------------------------------------- parse (tree-sitter)

_LOOP = "def f(xs):\n    total = 0\n    for x in xs:\n        "
_AFTER = "\n    return total\n"


@pytest.mark.parametrize(
    ("suggestion", "kept"),
    [
        ("total += x\n        if total > 10:", "total += x"),  # an opener with no body
        ("total += x\n        print(total,", "total += x"),  # a call never closed
        ("total += x\n        count += 1", "total += x\n        count += 1"),  # whole
        ("if x:\n            total += x", "if x:\n            total += x"),
    ],
)
def test_a_python_block_is_cut_where_it_stops_parsing(suggestion: str, kept: str) -> None:
    assert trim_to_parse(_LOOP, suggestion, _AFTER, "python") == kept


def test_without_a_grammar_the_suggestion_stands() -> None:
    cut = "total += x\n        if total > 10:"
    assert trim_to_parse(_LOOP, cut, _AFTER, "cobol") == cut  # no grammar installed
    assert trim_to_parse(_LOOP, "total += x", _AFTER, "python") == "total += x"  # one line
    assert parser_for("python") is not None and parser_for("cobol") is None


@pytest.mark.parametrize(
    "broken",
    [
        "print(\n        ((",  # no version of it parses
        "result =",  # one line, cut off by the token limit mid-statement
        "total += x *",
    ],
)
def test_a_suggestion_no_version_of_which_parses_is_dropped_where_the_code_parses(
    broken: str,
) -> None:
    assert trim_to_parse(_LOOP, broken, _AFTER, "python") == ""
    # Where the code is broken there already, the parse cannot judge: it stands.
    assert trim_to_parse(_LOOP, broken, "\n    return total +\n", "python") == broken


def test_a_block_cut_mid_statement_gives_no_suggestion_but_its_parsing_lines_do() -> None:
    from cato_lsp.features.completion_prompt import prepare
    from cato_lsp.features.documents import DocumentView
    from cato_lsp.settings import parse_settings

    text = "def fib(n):\n\n\nprint(fib(10))\n"
    doc = DocumentView("file:///ws/fib.py", text, "python")
    prepared = prepare(doc, len("def fib(n):"), [], parse_settings({}), "codellama")
    assert prepared is not None and prepared.mode == "block"
    assert prepared.finish("result =") is None
    kept = prepared.finish("if n < 2:\n        return n\n    result =")
    assert kept == "\n    if n < 2:\n        return n"
