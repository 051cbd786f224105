"""FIM prompt rendering per model family, compared byte for byte with the documented formats."""

from __future__ import annotations

import pytest

from cato_lsp.prompts import (
    FimFamily,
    Snippet,
    get_template,
    guess_family,
    strip_special_tokens,
)

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"
SNIPPETS = (
    Snippet("utils.py", "def clamp():\n    return 1\n"),
    Snippet("models/user.py", "class User:\n    name: str\n"),
)

FILE_LEVEL = {
    "starcoder": "<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>",
    "starcoder2": "<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>",
    "codellama": "<PRE> def add(a, b):\n     <SUF>\n\nprint(add(1, 2))\n <MID>",
    "deepseek": (
        "<｜fim▁begin｜>def add(a, b):\n    <｜fim▁hole｜>\n\nprint(add(1, 2))\n<｜fim▁end｜>"
    ),
    "qwen25": (
        "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    ),
    "codegemma": (
        "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    ),
    "codestral": "[SUFFIX]\n\nprint(add(1, 2))\n[PREFIX]def add(a, b):\n    ",
    "plain": "def add(a, b):\n    ",
}


@pytest.mark.parametrize("family", sorted(FILE_LEVEL))
def test_file_level_prompt_is_byte_exact(family: str) -> None:
    rendered = get_template(family).render(PREFIX, SUFFIX)
    assert rendered.encode("utf-8") == FILE_LEVEL[family].encode("utf-8")


def test_every_family_has_a_file_level_expectation() -> None:
    assert set(FILE_LEVEL) == {f.value for f in FimFamily}


def test_deepseek_tokens_use_full_width_bars_and_lower_blocks() -> None:
    rendered = get_template("deepseek").render("a", "b")
    expected = (
        b"<\xef\xbd\x9cfim\xe2\x96\x81begin\xef\xbd\x9c>a"
        b"<\xef\xbd\x9cfim\xe2\x96\x81hole\xef\xbd\x9c>b"
        b"<\xef\xbd\x9cfim\xe2\x96\x81end\xef\xbd\x9c>"
    )
    assert rendered.encode("utf-8") == expected
    assert "|" not in rendered


def test_starcoder2_repo_level_with_two_snippets() -> None:
    rendered = get_template("starcoder2").render(
        PREFIX, SUFFIX, SNIPPETS, path="app/main.py", repo="acme/shop"
    )
    expected = (
        "<repo_name>acme/shop"
        "<file_sep>utils.py\ndef clamp():\n    return 1\n"
        "<file_sep>models/user.py\nclass User:\n    name: str\n"
        "<file_sep><fim_prefix>app/main.py\ndef add(a, b):\n    "
        "<fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>"
    )
    assert rendered.encode("utf-8") == expected.encode("utf-8")


def test_qwen25_repo_level_with_two_snippets() -> None:
    rendered = get_template("qwen25").render(
        PREFIX, SUFFIX, SNIPPETS, path="app/main.py", repo="acme/shop"
    )
    expected = (
        "<|repo_name|>acme/shop\n"
        "<|file_sep|>utils.py\ndef clamp():\n    return 1\n\n"
        "<|file_sep|>models/user.py\nclass User:\n    name: str\n\n"
        "<|file_sep|>app/main.py\n"
        "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    )
    assert rendered.encode("utf-8") == expected.encode("utf-8")


def test_deepseek_repo_level_with_two_snippets() -> None:
    rendered = get_template("deepseek").render(PREFIX, SUFFIX, SNIPPETS, path="app/main.py")
    expected = (
        "<｜fim▁begin｜>"
        "#utils.py\ndef clamp():\n    return 1\n\n"
        "#models/user.py\nclass User:\n    name: str\n\n"
        "#app/main.py\ndef add(a, b):\n    "
        "<｜fim▁hole｜>\n\nprint(add(1, 2))\n<｜fim▁end｜>"
    )
    assert rendered.encode("utf-8") == expected.encode("utf-8")


def test_deepseek_snippet_without_final_newline_gets_one() -> None:
    rendered = get_template("deepseek").render("p", "s", [Snippet("a.py", "x = 1")])
    assert rendered == "<｜fim▁begin｜>#a.py\nx = 1\n\np<｜fim▁hole｜>s<｜fim▁end｜>"


@pytest.mark.parametrize("family", ["starcoder", "codellama", "codegemma", "codestral", "plain"])
def test_file_level_families_ignore_repository_context(family: str) -> None:
    template = get_template(family)
    assert not template.supports_repo_level
    with_context = template.render(PREFIX, SUFFIX, SNIPPETS, path="a.py", repo="r")
    assert with_context == FILE_LEVEL[family]


@pytest.mark.parametrize("family", ["starcoder2", "deepseek", "qwen25"])
def test_repo_level_families_without_context_render_file_level(family: str) -> None:
    template = get_template(family)
    assert template.supports_repo_level
    assert template.render(PREFIX, SUFFIX, ()) == FILE_LEVEL[family]


def test_starcoder2_path_alone_opens_a_file_section() -> None:
    rendered = get_template("starcoder2").render("p", "s", path="x.py")
    assert rendered == "<file_sep><fim_prefix>x.py\np<fim_suffix>s<fim_middle>"


STOPS = {
    "starcoder": {"<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"},
    "starcoder2": {"<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"},
    "codellama": {"<EOT>", "</s>"},
    "deepseek": {"<｜end▁of▁sentence｜>", "<|EOT|>"},
    "qwen25": {
        "<|endoftext|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
        "<|im_end|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
    },
    "codegemma": {
        "<|file_separator|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<eos>",
    },
    "codestral": {"</s>", "[PREFIX]", "[SUFFIX]"},
    "plain": {"<|endoftext|>"},
}


@pytest.mark.parametrize("family", sorted(STOPS))
def test_stop_tokens(family: str) -> None:
    template = get_template(family)
    assert STOPS[family] <= set(template.stop)
    assert set(template.stop) <= set(template.special_tokens)
    assert len(template.stop) == len(set(template.stop))


@pytest.mark.parametrize("family", sorted(FILE_LEVEL))
def test_template_markers_are_special_tokens(family: str) -> None:
    """Every marker the template writes around empty inputs is a known special token.

    CodeLlama's format puts plain spaces between its markers; nothing else may remain.
    """
    template = get_template(family)
    rendered = template.render("", "")
    assert template.sanitize(rendered).strip(" ") == ""


@pytest.mark.parametrize("family", sorted(FILE_LEVEL))
def test_special_tokens_in_the_document_cannot_break_the_prompt(family: str) -> None:
    template = get_template(family)
    hostile = "x = '" + "".join(template.special_tokens) + "'"
    rendered = template.render(hostile, hostile)
    for token in template.special_tokens:
        assert rendered.count(token) == FILE_LEVEL[family].count(token)
    assert "x = ''" in rendered


def test_get_template_accepts_enum_and_any_case() -> None:
    assert get_template(FimFamily.QWEN25) is get_template(" QWEN25 ")
    assert get_template("CodeLlama").family is FimFamily.CODELLAMA


def test_unknown_family_error_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown FIM family 'gpt'") as caught:
        get_template("gpt")
    for family in FimFamily:
        assert family.value in str(caught.value)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("Qwen/Qwen2.5-Coder-7B", FimFamily.QWEN25),
        ("bigcode/starcoder2-3b", FimFamily.STARCODER2),
        ("bigcode/starcoderbase-1b", FimFamily.STARCODER),
        ("codellama/CodeLlama-7b-hf", FimFamily.CODELLAMA),
        ("deepseek-ai/deepseek-coder-6.7b-base", FimFamily.DEEPSEEK),
        ("google/codegemma-2b", FimFamily.CODEGEMMA),
        ("mistralai/Codestral-22B-v0.1", FimFamily.CODESTRAL),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", FimFamily.PLAIN),
    ],
)
def test_guess_family(model: str, family: FimFamily) -> None:
    assert guess_family(model) is family


def test_strip_special_tokens_cuts_at_first_token() -> None:
    text = "return x<|file_sep|>other.py\nimport os<|endoftext|>"
    assert strip_special_tokens(text, "qwen25") == "return x"


def test_strip_special_tokens_keeps_text_of_other_families_when_family_given() -> None:
    assert strip_special_tokens("a[PREFIX]b", "qwen25") == "a[PREFIX]b"
    assert strip_special_tokens("a[PREFIX]b") == "a"


def test_strip_special_tokens_leaves_clean_text_alone() -> None:
    text = "if a < b and c > d:\n    return '<tag>'"
    for family in FimFamily:
        assert strip_special_tokens(text, family) == text
