"""LSP positions, prefix/suffix windows, binary detection and neighbouring-file snippets."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cato_lsp.context import (
    CHARS_PER_TOKEN,
    Position,
    PositionError,
    Snippet,
    approx_tokens,
    identifiers,
    jaccard,
    looks_binary,
    offset_at,
    position_at,
    prefix_suffix_window,
    select_snippets,
)
from cato_lsp.features.completion_prompt import prepare
from cato_lsp.features.documents import DocumentView
from cato_lsp.imports import import_context
from cato_lsp.settings import parse_settings

ENCODINGS = ("utf-8", "utf-16", "utf-32")

# --------------------------------------------------------------------------- positions


def test_utf16_counts_an_emoji_before_the_cursor_as_two_units() -> None:
    text = "s = '😀' + name\n"
    # "s = '" is 5 units, the emoji 2, the quote 1: "name" starts at unit 11.
    assert text[offset_at(text, 0, 11) :].startswith("name")
    assert offset_at(text, 0, 11) == text.index("name")
    assert position_at(text, text.index("name")) == Position(0, 11)


def test_utf8_and_utf32_count_their_own_units() -> None:
    text = "é😀x"
    assert offset_at(text, 0, 6, "utf-8") == 2  # é is 2 bytes, the emoji 4
    assert offset_at(text, 0, 2, "utf-32") == 2
    assert position_at(text, 2, "utf-8") == Position(0, 6)
    assert position_at(text, 2, "utf-32") == Position(0, 2)


def test_position_inside_a_surrogate_pair_is_an_error() -> None:
    with pytest.raises(PositionError, match="inside"):
        offset_at("a😀b", 0, 2)


def test_position_inside_a_utf8_sequence_is_an_error() -> None:
    with pytest.raises(PositionError):
        offset_at("aé", 0, 2, "utf-8")


def test_line_past_the_end_is_an_error() -> None:
    with pytest.raises(PositionError, match="line 2"):
        offset_at("one\ntwo", 2, 0)


def test_empty_line_after_final_newline_exists() -> None:
    assert offset_at("one\ntwo\n", 2, 0) == 8


def test_character_past_the_line_end_is_clamped() -> None:
    assert offset_at("abc\ndef", 0, 99) == 3
    assert offset_at("a😀\ndef", 0, 99) == 2


def test_negative_positions_are_errors_and_value_errors() -> None:
    with pytest.raises(ValueError):
        offset_at("abc", -1, 0)
    with pytest.raises(PositionError):
        offset_at("abc", 0, -1)
    with pytest.raises(PositionError):
        position_at("abc", 4)


def test_unknown_encoding_is_rejected() -> None:
    with pytest.raises(ValueError, match="utf-7"):
        offset_at("abc", 0, 0, "utf-7")


def test_crlf_and_cr_line_endings() -> None:
    crlf = "ab\r\ncd\r\nef"
    assert offset_at(crlf, 1, 1) == 5
    assert offset_at(crlf, 2, 0) == 8
    assert offset_at(crlf, 0, 9) == 2  # clamped before the CR
    assert position_at(crlf, 8) == Position(2, 0)
    assert position_at(crlf, 3) == Position(0, 2)  # between CR and LF: the line's end
    cr = "ab\rcd"
    assert offset_at(cr, 1, 0) == 3
    assert position_at(cr, 4) == Position(1, 1)


_PIECES = st.sampled_from(["a", "z", " ", "\t", "é", "中", "😀", "𝔘", "\n", "\r", "\r\n", "\u0301"])
TEXTS = st.lists(_PIECES, max_size=40).map("".join)


@given(text=TEXTS, data=st.data())
def test_offset_round_trips_through_position(text: str, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(text)))
    if 0 < offset < len(text) and text[offset - 1 : offset + 1] == "\r\n":
        offset -= 1  # inside a line break is no position of its own
    for encoding in ENCODINGS:
        line, character = position_at(text, offset, encoding)
        assert offset_at(text, line, character, encoding) == offset


@given(text=TEXTS, data=st.data())
def test_position_round_trips_through_offset(text: str, data: st.DataObject) -> None:
    lines = re.split(r"\r\n|\r|\n", text)
    line = data.draw(st.integers(0, len(lines) - 1))
    split = data.draw(st.integers(0, len(lines[line])))
    character = len(lines[line][:split].encode("utf-16-le")) // 2
    offset = offset_at(text, line, character)
    assert position_at(text, offset) == Position(line, character)
    assert text[offset:].startswith(lines[line][split:])


# --------------------------------------------------------------------------- windows


def test_approx_tokens_rounds_up() -> None:
    assert [approx_tokens(s) for s in ("", "abc", "abcd", "abcde")] == [0, 1, 1, 2]


def _numbered(lines: int) -> str:
    return "".join(f"line {i:04d} = compute({i})\n" for i in range(lines))


def test_window_keeps_lines_nearest_the_cursor_and_cuts_at_line_starts() -> None:
    text = _numbered(200)
    offset = text.index("line 0100")
    prefix, suffix = prefix_suffix_window(text, offset, budget_tokens=100)
    assert text[offset - len(prefix) : offset] == prefix
    assert text[offset : offset + len(suffix)] == suffix
    assert prefix.startswith("line ") and prefix.endswith("\n")
    assert suffix.endswith("\n")
    assert "line 0099" in prefix and "line 0100" in suffix
    assert len(prefix) + len(suffix) <= 100 * CHARS_PER_TOKEN
    assert len(prefix) > len(suffix)


def test_window_gives_unused_suffix_budget_to_the_prefix() -> None:
    text = _numbered(200)
    prefix, suffix = prefix_suffix_window(text, len(text), budget_tokens=100)
    assert suffix == ""
    assert len(prefix) > 0.9 * 100 * CHARS_PER_TOKEN - len("line 0000 = compute(0)\n")


def test_window_returns_the_whole_small_document() -> None:
    text = "a = 1\nb = 2\n"
    assert prefix_suffix_window(text, 6, budget_tokens=1000) == ("a = 1\n", "b = 2\n")


def test_window_on_one_long_line_cuts_at_characters() -> None:
    text = "x" * 1000
    prefix, suffix = prefix_suffix_window(text, 500, budget_tokens=10, prefix_share=0.5)
    assert prefix == "x" * 20 and suffix == "x" * 20


def test_window_with_zero_budget_is_empty() -> None:
    assert prefix_suffix_window("abc\ndef", 3, budget_tokens=0) == ("", "")


def test_window_of_a_crlf_document_never_starts_with_half_a_line_break() -> None:
    text = "".join(f"row{i}\r\n" for i in range(100))
    for budget in range(1, 40):
        prefix, _ = prefix_suffix_window(text, len(text) // 2, budget_tokens=budget)
        assert not prefix.startswith("\n")


def test_window_of_a_5mb_document_is_bounded() -> None:
    text = _numbered(5_000_000 // 24)
    assert len(text) >= 5_000_000
    offset = offset_at(text, 120_000, 4)
    prefix, suffix = prefix_suffix_window(text, offset, budget_tokens=2048)
    assert 0 < len(prefix) + len(suffix) <= 2048 * CHARS_PER_TOKEN
    assert text[offset - len(prefix) : offset + len(suffix)] == prefix + suffix


def test_window_rejects_bad_arguments() -> None:
    with pytest.raises(PositionError):
        prefix_suffix_window("abc", 4, 10)
    with pytest.raises(ValueError):
        prefix_suffix_window("abc", 1, -1)
    with pytest.raises(ValueError):
        prefix_suffix_window("abc", 1, 10, prefix_share=1.5)
    with pytest.raises(ValueError, match="anchor_share"):
        prefix_suffix_window("abc", 1, 10, anchor_share=-0.1)


def _starts(text: str, cursors: range, anchor_share: float) -> list[int]:
    """Where each cursor's prefix starts in `text` (budget 100 tokens: 300 characters)."""
    found = []
    for cursor in cursors:
        prefix, _ = prefix_suffix_window(text, cursor, 100, 0.75, anchor_share)
        assert text[cursor - len(prefix) : cursor] == prefix
        found.append(cursor - len(prefix))
    return found


def test_an_anchored_prefix_keeps_its_start_while_the_cursor_moves_on() -> None:
    text = _numbered(400)  # 23-character lines
    cursors = range(2_000, 4_000, 7)
    anchored = _starts(text, cursors, 0.5)
    sliding = _starts(text, cursors, 0.0)
    # The start moves once per step of 150 characters, to a line start, and the prefix
    # is between half the window (less the line it skips) and the whole window.
    assert len(set(anchored)) <= 2_000 // 150 + 1 < len(set(sliding))
    assert all(text[s - 1] == "\n" for s in anchored)
    for cursor, start in zip(cursors, anchored, strict=True):
        assert 150 - 23 <= cursor - start <= 300
    # A sliding window keeps the lines nearest the cursor: never shorter than anchored.
    assert all(a >= s for a, s in zip(anchored, sliding, strict=True))


@given(
    st.text(alphabet="ab \n\r", max_size=400),
    st.integers(min_value=0, max_value=200),
    st.floats(min_value=0.0, max_value=1.0),
    st.integers(min_value=0, max_value=400),
)
def test_an_anchored_window_is_the_text_around_the_cursor_within_budget(
    text: str, budget: int, share: float, cursor: int
) -> None:
    cursor = min(cursor, len(text))
    prefix, suffix = prefix_suffix_window(text, cursor, budget, 0.75, share)
    assert text[cursor - len(prefix) : cursor + len(suffix)] == prefix + suffix
    assert len(prefix) + len(suffix) <= budget * CHARS_PER_TOKEN


# --------------------------------------------------------------------------- binary


@pytest.mark.parametrize(
    "text",
    [
        "ELF\x00\x00\x01",
        "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "abc" * 200 + "\x01\x02\x03\x04\x05\x06\x07",
        "\ufffd\ufffd\ufffd" + "x" * 100,
    ],
)
def test_binary_content_is_detected(text: str) -> None:
    assert looks_binary(text)


@pytest.mark.parametrize(
    "text",
    ["", "def f():\r\n\treturn 1\r\n", "x = '\x1b[31m'\n" + "y = 2\n" * 300, "中文 😀 é\n"],
)
def test_text_content_is_not_binary(text: str) -> None:
    assert not looks_binary(text)


# --------------------------------------------------------------------------- snippets


def test_identifiers_and_jaccard() -> None:
    assert identifiers("def total_price(items): return self.x") == {"total_price", "items", "x"}
    assert jaccard(frozenset({"a", "b"}), frozenset({"b", "c"})) == pytest.approx(1 / 3)
    assert jaccard(frozenset(), frozenset()) == 0.0


CURSOR = "order = Order(customer)\ntotal = order.total_price(discount_rate)\n"
RELATED = "class Order:\n    def total_price(self, discount_rate):\n        return customer\n"
UNRELATED = "import os\nwidth = os.get_terminal_size().columns\nprint(width)\n"


def test_snippet_selection_prefers_the_file_sharing_identifiers() -> None:
    chosen = select_snippets(
        CURSOR, [("cli.py", UNRELATED), ("order.py", RELATED)], budget_tokens=500, max_snippets=1
    )
    assert chosen == [Snippet("order.py", RELATED)]


def test_snippet_selection_follows_an_open_file_as_it_is_edited() -> None:
    # The windows of a file are cut once per content: an edit is seen at once.
    candidates = [("cli.py", UNRELATED), ("order.py", RELATED)]
    assert select_snippets(CURSOR, candidates, 500, 1) == [Snippet("order.py", RELATED)]
    edited = [("cli.py", UNRELATED + RELATED), ("order.py", UNRELATED)]
    [chosen] = select_snippets(CURSOR, edited, 500, 1)
    assert chosen.path == "cli.py" and "total_price" in chosen.content


def test_snippet_selection_finds_nothing_without_shared_identifiers() -> None:
    assert select_snippets(CURSOR, [("cli.py", UNRELATED)], 500, 3) == []
    assert select_snippets("", [("order.py", RELATED)], 500, 3) == []


def test_snippet_selection_respects_budget_and_count() -> None:
    candidates = [(f"f{i}.py", RELATED) for i in range(5)]
    assert len(select_snippets(CURSOR, candidates, budget_tokens=10_000, max_snippets=3)) == 3
    one = approx_tokens(RELATED)
    assert len(select_snippets(CURSOR, candidates, budget_tokens=2 * one, max_snippets=5)) == 2
    assert select_snippets(CURSOR, candidates, budget_tokens=one - 1, max_snippets=5) == []


def test_snippets_are_non_overlapping_windows_of_large_files() -> None:
    def filler(name: str) -> str:
        return "".join(f"{name}_{i} = {i}\n" for i in range(200))

    big = filler("a") + RELATED + filler("b") + RELATED + filler("c")
    chosen = select_snippets(CURSOR, [("big.py", big)], 10_000, 5, window_lines=10)
    assert 2 <= len(chosen) <= 5
    spans = []
    for snippet in chosen:
        assert snippet.content.count("\n") <= 10
        assert "total_price" in snippet.content
        start = big.index(snippet.content)
        spans.append((start, start + len(snippet.content)))
    # No two windows share a line.
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))


def test_binary_candidates_are_skipped() -> None:
    binary = "\x00" + RELATED
    assert select_snippets(CURSOR, [("blob.bin", binary)], 500, 3) == []


# --------------------------------------------------------------------------- imports


def _workspace(root: Path) -> Path:
    (root / "geometry").mkdir(parents=True)
    (root / "geometry" / "__init__.py").write_text("", encoding="utf-8")
    (root / "geometry" / "shapes.py").write_text(
        "import math\n\n\n"
        "UNIT = 1.0\n\n\n"
        "def area(width: float, height: float) -> float:\n"
        '    """The area of a width by height rectangle."""\n'
        "    return width * height\n\n\n"
        "def _private():\n    pass\n\n\n"
        "class Circle:\n"
        '    """A circle around the origin."""\n\n'
        "    def __init__(self, radius):\n        self.radius = radius\n\n"
        "    def scaled(self, factor: float) -> 'Circle':\n"
        "        return Circle(self.radius * factor)\n",
        encoding="utf-8",
    )
    (root / "app").mkdir()
    (root / "app" / "helpers.py").write_text(
        "def scale(values, factor):\n    return [v * factor for v in values]\n", encoding="utf-8"
    )
    main = root / "app" / "main.py"
    main.write_text("", encoding="utf-8")
    return main


def test_imported_definitions_become_stubs(tmp_path: Path) -> None:
    main = _workspace(tmp_path)
    text = (
        "import os\n"
        "from geometry.shapes import area, Circle as C  # shapes\n"
        "from .helpers import (\n    scale,\n)\n"
        "from outside import thing\n"
        "total = area(\n"  # mid-edit: the file need not parse
    )
    context = dict(import_context(text, str(main), str(tmp_path)))

    shapes = context[os.path.join("geometry", "shapes.py")]
    assert "def area(width: float, height: float) -> float:" in shapes
    assert '"""The area of a width by height rectangle."""' in shapes
    assert "class Circle:" in shapes and "def scaled(self, factor: float) -> 'Circle':" in shapes
    assert "def __init__(self, radius):" in shapes
    assert "_private" not in shapes and "return width * height" not in shapes
    assert "def scale(values, factor):" in context[os.path.join("app", "helpers.py")]
    assert len(context) == 2  # os and `outside` are not workspace modules


def test_import_module_brings_its_public_definitions_and_stays_in_the_root(
    tmp_path: Path,
) -> None:
    main = _workspace(tmp_path / "ws")
    (tmp_path / "secret.py").write_text("def leaked():\n    pass\n", encoding="utf-8")
    text = "import geometry.shapes\nfrom ... import secret\nfrom .. import secret\nimport secret\n"
    context = dict(import_context(text, str(main), str(tmp_path / "ws")))
    [(path, stubs)] = context.items()
    assert path == os.path.join("geometry", "shapes.py")
    assert "UNIT = 1.0" in stubs and "def area(" in stubs and "leaked" not in str(context)


def test_a_python_prompt_carries_the_imported_definitions(tmp_path: Path) -> None:
    main = _workspace(tmp_path)
    text = "from geometry.shapes import area\n\n\ndef room(w, h):\n    return area(\n"
    main.write_text(text, encoding="utf-8")
    settings = parse_settings({})
    doc = DocumentView(main.as_uri(), text, "python")
    prepared = prepare(doc, len(text) - 1, [], settings, "starcoder2", tmp_path.as_uri())
    assert prepared is not None and prepared.request.prompt is not None
    assert "def area(width: float, height: float) -> float:" in prepared.request.prompt
    assert "<file_sep>geometry/shapes.py\n" in prepared.request.prompt


def _head(prompt: str) -> str:
    """A CodeLlama prompt up to its suffix: what the next prompt may reuse from the cache."""
    return prompt[: prompt.index(" <SUF>")]


def test_typing_on_keeps_the_prompt_head_with_its_snippets_until_the_anchor_moves() -> None:
    body = "".join(
        f"def step_{i}(value):\n    return helper_{i % 7}(value) + {i}\n\n" for i in range(300)
    )
    doc = DocumentView("file:///ws/main.py", body, "python")
    helpers = "".join(f"def helper_{i}(value):\n    return value * {i}\n\n\n" for i in range(7))
    others = [DocumentView("file:///ws/helpers.py", helpers, "python")]
    cursors = [body.index(f"def step_{i}(") for i in range(100, 140)]

    def heads(anchor_share: float) -> list[str]:
        settings = parse_settings({"context": {"anchorShare": anchor_share}})
        found = []
        for cursor in cursors:
            prepared = prepare(doc, cursor, others, settings, "codellama")
            assert prepared is not None and prepared.request.prompt is not None
            found.append(_head(prepared.request.prompt))
        return found

    anchored, sliding = heads(0.5), heads(0.0)
    assert all("helper_" in head.split("def step_")[0] for head in anchored)  # snippets first
    kept = sum(later.startswith(head) for head, later in itertools.pairwise(anchored))
    assert kept >= len(cursors) - 3  # 40 cursors over 1,960 characters; a step is 2,304
    assert sum(later.startswith(h) for h, later in itertools.pairwise(sliding)) == 0


# --------------------------------------------------------------------------- recent edits


def test_recently_edited_regions_outside_the_window_join_the_snippets() -> None:
    filler = "".join(f"value_{i} = compute(value_{i - 1}, {i})\n" for i in range(1, 3_000))
    edited_line = 10
    lines = filler.split("\n")
    lines[edited_line] = "threshold_limit = load_threshold_limit(config)"
    text = "\n".join(lines) + "def check(value):\n    return value > threshold_limit\n"
    cursor_line = text.count("\n") - 1
    offset = len(text) - 1  # end of the return line
    settings = parse_settings({"context": {"fitSla": False}})
    doc = DocumentView("file:///w/app.py", text, "python")

    with_edits = prepare(
        doc, offset, [], settings, "starcoder2", "file:///w", None, (cursor_line, (edited_line,))
    )
    without = prepare(doc, offset, [], settings, "starcoder2", "file:///w")

    assert with_edits is not None and without is not None
    assert "<file_sep>app.py (edited)\n" in (with_edits.request.prompt or "")
    assert "load_threshold_limit(config)" in (with_edits.request.prompt or "")
    assert "load_threshold_limit" not in (without.request.prompt or "")


def test_edited_regions_walk_lines_from_the_cursor_and_skip_the_window() -> None:
    from cato_lsp.features.completion_prompt import edited_regions

    text = "".join(f"line {i}\n" for i in range(100))
    offset = text.index("line 90")
    window = (offset - 100, offset + 100)  # lines 78 to 102: the edit at 88 is shown already
    regions = edited_regions(text, offset, 90, [5, 88, 2_000_000], window)
    assert regions == ["".join(f"line {i}\n" for i in range(0, 12)).rstrip("\n")]
