"""Fill-in-the-middle prompts per model family, rendered byte-exact.

vLLM's `/v1/completions` takes no `suffix`, so the language server writes the FIM prompt
itself with the special tokens each family was trained on. Sources for the formats:
the models' tokenizer configs and model cards (StarCoder2 paper section 5, the
Qwen2.5-Coder and DeepSeek-Coder READMEs, mistral-common's FIM encoding for Codestral,
Meta's CodeLlama infilling) and the templates of continue.dev and TabbyML.

The BOS token (`<s>`, `<bos>`) is not part of any rendered prompt: vLLM's tokenizer adds it.
For Codestral, serve with the Hugging Face tokenizer (vLLM's `--tokenizer-mode auto`):
Mistral's own tokenizer mode does not turn `[SUFFIX]` / `[PREFIX]` text into control tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from cato_lsp.context import Snippet

__all__ = [
    "FimFamily",
    "FimTemplate",
    "Snippet",
    "get_template",
    "guess_family",
    "strip_special_tokens",
]


class FimFamily(StrEnum):
    """Model families with a distinct FIM format; `plain` is prefix-only completion."""

    STARCODER = "starcoder"
    STARCODER2 = "starcoder2"
    CODELLAMA = "codellama"
    DEEPSEEK = "deepseek"
    QWEN25 = "qwen25"
    CODEGEMMA = "codegemma"
    CODESTRAL = "codestral"
    PLAIN = "plain"


# (prefix, suffix, snippets, path, repo) -> prompt
_Renderer = Callable[[str, str, Sequence[Snippet], str | None, str | None], str]


@dataclass(frozen=True)
class FimTemplate:
    """How one family wants its FIM prompt, and which strings end or pollute its output.

    `stop` goes to the server as stop strings; `special_tokens` (a superset of `stop`)
    never appears in a suggestion and is removed from document text before rendering so
    that code which mentions a token cannot break the prompt's structure.
    """

    family: FimFamily
    stop: tuple[str, ...]
    special_tokens: tuple[str, ...]
    supports_repo_level: bool
    _renderer: _Renderer = field(repr=False, compare=False)

    def render(
        self,
        prefix: str,
        suffix: str,
        snippets: Sequence[Snippet] = (),
        path: str | None = None,
        repo: str | None = None,
    ) -> str:
        """The prompt text; snippets, path and repo are ignored by file-level-only families."""
        clean = self.sanitize
        prefix, suffix = clean(prefix), clean(suffix)
        if not self.supports_repo_level:
            return self._renderer(prefix, suffix, (), None, None)
        snippets = [Snippet(clean(s.path), clean(s.content)) for s in snippets]
        path = None if path is None else clean(path)
        repo = None if repo is None else clean(repo)
        return self._renderer(prefix, suffix, snippets, path, repo)

    def sanitize(self, text: str) -> str:
        """`text` without this family's special tokens."""
        for token in self.special_tokens:
            if token in text:
                text = text.replace(token, "")
        return text


def _ensure_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


# --------------------------------------------------------------------------- renderers


def _render_starcoder(
    prefix: str, suffix: str, snippets: Sequence[Snippet], path: str | None, repo: str | None
) -> str:
    return f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"


def _render_starcoder2(
    prefix: str, suffix: str, snippets: Sequence[Snippet], path: str | None, repo: str | None
) -> str:
    """Repository-context FIM as in the StarCoder2 paper (section 5.1).

    `<repo_name>repo<file_sep>path0\\ncode0<file_sep><fim_prefix>path1\\npre<fim_suffix>suf<fim_middle>`
    """
    fim = f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"
    if not snippets and path is None and repo is None:
        return fim
    head = "" if repo is None else f"<repo_name>{repo}"
    files = "".join(f"<file_sep>{s.path}\n{s.content}" for s in snippets)
    current = "" if path is None else f"{path}\n"
    return f"{head}{files}<file_sep><fim_prefix>{current}{prefix}<fim_suffix>{suffix}<fim_middle>"


def _render_codellama(
    prefix: str, suffix: str, snippets: Sequence[Snippet], path: str | None, repo: str | None
) -> str:
    return f"<PRE> {prefix} <SUF>{suffix} <MID>"


_DS_BEGIN: Final = "<\uff5cfim\u2581begin\uff5c>"
_DS_HOLE: Final = "<\uff5cfim\u2581hole\uff5c>"
_DS_END: Final = "<\uff5cfim\u2581end\uff5c>"
_DS_EOS: Final = "<\uff5cend\u2581of\u2581sentence\uff5c>"
_DS_BOS: Final = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"


def _render_deepseek(
    prefix: str, suffix: str, snippets: Sequence[Snippet], path: str | None, repo: str | None
) -> str:
    """Repository files as `#path` headed blocks ahead of the current file, as in the README."""
    files = "".join(f"#{s.path}\n{_ensure_newline(s.content)}\n" for s in snippets)
    current = "" if path is None else f"#{path}\n"
    return f"{_DS_BEGIN}{files}{current}{prefix}{_DS_HOLE}{suffix}{_DS_END}"


def _render_qwen25(
    prefix: str, suffix: str, snippets: Sequence[Snippet], path: str | None, repo: str | None
) -> str:
    """Repository-level infilling as in the Qwen2.5-Coder README."""
    fim = f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    if not snippets and path is None and repo is None:
        return fim
    head = "" if repo is None else f"<|repo_name|>{repo}\n"
    files = "".join(f"<|file_sep|>{s.path}\n{s.content}\n" for s in snippets)
    current = "" if path is None else f"<|file_sep|>{path}\n"
    return f"{head}{files}{current}{fim}"


def _render_codegemma(
    prefix: str, suffix: str, snippets: Sequence[Snippet], path: str | None, repo: str | None
) -> str:
    return f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"


def _render_codestral(
    prefix: str, suffix: str, snippets: Sequence[Snippet], path: str | None, repo: str | None
) -> str:
    """Suffix first, as mistral-common encodes FIM requests (`<s>` comes from the tokenizer)."""
    return f"[SUFFIX]{suffix}[PREFIX]{prefix}"


def _render_plain(
    prefix: str, suffix: str, snippets: Sequence[Snippet], path: str | None, repo: str | None
) -> str:
    return prefix


# --------------------------------------------------------------------------- registry

_STARCODER_FIM: Final = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>")
_STARCODER_EXTRA: Final = (
    "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>",
    "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<empty_output>",
)  # fmt: skip
_STARCODER_METADATA: Final = (
    "<reponame>", "<filename>", "<gh_stars>", "<commit_before>", "<commit_msg>", "<commit_after>",
)  # fmt: skip
_QWEN_FIM: Final = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
_QWEN_REPO: Final = ("<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")


def _template(
    family: FimFamily,
    renderer: _Renderer,
    stop: tuple[str, ...],
    extra: tuple[str, ...] = (),
    repo_level: bool = False,
) -> FimTemplate:
    special = tuple(dict.fromkeys(stop + extra))
    return FimTemplate(family, stop, special, repo_level, renderer)


_TEMPLATES: Final[dict[FimFamily, FimTemplate]] = {
    FimFamily.STARCODER: _template(
        FimFamily.STARCODER,
        _render_starcoder,
        stop=("<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"),
        extra=("<fim_pad>", *_STARCODER_METADATA, *_STARCODER_EXTRA),
    ),
    FimFamily.STARCODER2: _template(
        FimFamily.STARCODER2,
        _render_starcoder2,
        stop=("<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"),
        extra=("<fim_pad>", "<repo_name>", *_STARCODER_EXTRA),
        repo_level=True,
    ),
    FimFamily.CODELLAMA: _template(
        FimFamily.CODELLAMA,
        _render_codellama,
        stop=("<EOT>", "</s>", "<PRE>", "<SUF>", "<MID>"),
    ),
    FimFamily.DEEPSEEK: _template(
        FimFamily.DEEPSEEK,
        _render_deepseek,
        stop=(_DS_EOS, "<|EOT|>", _DS_BEGIN, _DS_HOLE, _DS_END),
        extra=(_DS_BOS,),
        repo_level=True,
    ),
    FimFamily.QWEN25: _template(
        FimFamily.QWEN25,
        _render_qwen25,
        stop=("<|endoftext|>", *_QWEN_FIM, *_QWEN_REPO, "<|im_start|>", "<|im_end|>"),
        repo_level=True,
    ),
    FimFamily.CODEGEMMA: _template(
        FimFamily.CODEGEMMA,
        _render_codegemma,
        stop=("<|file_separator|>", *_QWEN_FIM, "<eos>", "<end_of_turn>"),
        extra=("<start_of_turn>",),
    ),
    FimFamily.CODESTRAL: _template(
        FimFamily.CODESTRAL,
        _render_codestral,
        stop=("</s>", "[INST]", "[/INST]", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"),
    ),
    FimFamily.PLAIN: _template(
        FimFamily.PLAIN,
        _render_plain,
        stop=("<|endoftext|>", "<|im_end|>", "<|im_start|>"),
    ),
}

_ALL_SPECIAL_TOKENS: Final = tuple(
    dict.fromkeys(token for template in _TEMPLATES.values() for token in template.special_tokens)
)


def get_template(family: str) -> FimTemplate:
    """The template of a family name (case-insensitive); unknown names list the valid ones."""
    try:
        return _TEMPLATES[FimFamily(family.strip().lower())]
    except ValueError:
        valid = ", ".join(f.value for f in FimFamily)
        raise ValueError(f"unknown FIM family {family!r}; expected one of: {valid}") from None


def guess_family(model: str) -> FimFamily:
    """The FIM family of a model name such as `Qwen/Qwen2.5-Coder-7B`; `plain` if none fits."""
    name = model.lower()
    rules: tuple[tuple[FimFamily, bool], ...] = (
        (FimFamily.QWEN25, "qwen" in name and "coder" in name),
        (FimFamily.STARCODER2, "starcoder2" in name),
        (FimFamily.STARCODER, "starcoder" in name or "santacoder" in name),
        (FimFamily.CODELLAMA, "codellama" in name or "code-llama" in name),
        (FimFamily.DEEPSEEK, "deepseek" in name and "coder" in name),
        (FimFamily.CODEGEMMA, "codegemma" in name),
        (FimFamily.CODESTRAL, "codestral" in name),
    )
    return next((family for family, matches in rules if matches), FimFamily.PLAIN)


def strip_special_tokens(text: str, family: str | None = None) -> str:
    """`text` cut at its first special or stop token, so none reaches a suggestion.

    With no family, the tokens of every known family count.
    """
    tokens = _ALL_SPECIAL_TOKENS if family is None else get_template(family).special_tokens
    cut = len(text)
    for token in tokens:
        found = text.find(token, 0, cut)
        if found >= 0:
            cut = found
    return text[:cut]
