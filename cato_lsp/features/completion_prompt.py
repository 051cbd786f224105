"""A completion request from a cursor: the FIM prompt, its mode, its stops, its size.

The prompt is a prefix/suffix window around the cursor (`context`) plus snippets of
other open files and, for Python, of the definitions the file imports from the
workspace (`imports`), rendered in the model family's FIM format (`prompts`). Its size comes
from the settings' budgets, scaled down to what the orchestrator says fits the SLA now
(`fitted_budget`): under load a long prompt's prefill alone would miss the SLA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pygls.uris import to_fs_path

from cato_lsp.backend import Orchestrator
from cato_lsp.context import (
    Snippet,
    anchor_point,
    anchor_step,
    looks_binary,
    prefix_suffix_window,
    select_snippets,
)
from cato_lsp.features.documents import (
    DocumentView,
    comment_prefix,
    relative_path,
    valid_unicode,
)
from cato_lsp.imports import import_context
from cato_lsp.postprocess import (
    Mode,
    block_ended,
    completion_mode,
    inside_identifier,
    next_line_lead,
    postprocess,
)
from cato_lsp.prompts import FimFamily, FimTemplate, get_template, guess_family
from cato_lsp.settings import DEFAULT_FIM_FAMILY, Settings
from cato_lsp.syntax import trim_to_parse
from orchestrator.api import TaskKind, TaskRequest

_BINARY_PROBE: Final = 4_096
# A replica takes at most 4 stop strings (vLLM's and OpenAI's limit; the orchestrator
# sends no more): the line's or block's own ends first, then the template's.
_MAX_STOPS: Final = 4


def ends_line(text: str) -> bool:
    """In line mode only the first line is kept, so a line break ends the suggestion."""
    return "\n" in text or "\r" in text


@dataclass(frozen=True, slots=True)
class Budget:
    """Token budgets of one prompt: the text around the cursor, and the snippets."""

    window: int
    snippets: int

    @property
    def total(self) -> int:
        return self.window + self.snippets


def fitted_budget(settings: Settings, fits: int | None) -> Budget:
    """The configured budgets, scaled down together to `fits` prompt tokens (what fits the
    SLA now, from the orchestrator) when `context.fitSla` is on, in steps of an eighth;
    never above the configured budgets, and the window never below
    `context.minBudgetTokens`."""
    ctx = settings.context
    snippets = ctx.snippet_tokens if ctx.max_snippets > 0 and ctx.max_candidates > 0 else 0
    full = Budget(ctx.budget_tokens, snippets)
    if not ctx.fit_sla or fits is None or fits >= full.total:
        return full
    # In eighths: a budget that moved with every estimate would move the window's
    # anchor grid (`context.anchor_step`) and lose the prompt head an engine caches.
    share = int(8 * max(fits, 0) / full.total) / 8
    floor = min(ctx.min_budget_tokens, ctx.budget_tokens)
    return Budget(max(floor, int(ctx.budget_tokens * share)), int(snippets * share))


def skip_at(doc: DocumentView, offset: int, settings: Settings) -> bool:
    """Cheap reasons to ask for nothing at all (checked before the debounce)."""
    if not settings.language_enabled(doc.language):
        return True
    return inside_identifier(doc.text, offset)  # `de|f`: a suggestion would split the word


@dataclass(frozen=True, slots=True)
class Prepared:
    """A completion request ready to go upstream, with what post-processing needs.

    `lead` is text the suggestion starts with that the model was given as part of the
    prefix (the line break and indentation after a block opener); `prefix` includes it.
    """

    prefix: str
    suffix: str
    mode: Mode
    family: str
    request: TaskRequest
    lead: str = ""
    budget: Budget | None = None

    def whole(self, raw: str) -> bool:
        """Whether the output so far already holds the whole suggestion (stop the stream)."""
        if self.mode == "line":
            return ends_line(raw)
        return block_ended(raw, self.prefix, self.suffix, self.family)

    def finish(self, raw: str) -> str | None:
        """The suggestion for the model's raw text, or None if none is worth showing.

        A block is also cut where it stops parsing, where a grammar is installed."""
        text = postprocess(raw, self.prefix, self.suffix, self.mode, None, self.family)
        if text is not None and self.mode == "block":
            text = trim_to_parse(self.prefix, text, self.suffix, self.request.language or "")
        return self.lead + text if text else None


def choose_family(settings: Settings, backend: Orchestrator | None) -> str:
    """The FIM family: the setting, else the orchestrator config's, else by model name."""
    task = settings.task(TaskKind.COMPLETE)
    if task.fim_family:
        return get_template(task.fim_family).family.value
    configured = backend.fim_family(task.model) if backend is not None else None
    if configured:
        return get_template(configured).family.value
    if task.model and guess_family(task.model) is not FimFamily.PLAIN:
        return guess_family(task.model).value
    return DEFAULT_FIM_FAMILY


def _as_comments(snippets: Sequence[Snippet], language: str) -> str:
    """Snippets as a comment block, for families with no repository-level format."""
    mark = comment_prefix(language)
    lines: list[str] = []
    for snippet in snippets:
        lines.append(f"{mark} Path: {snippet.path}")
        lines.extend(f"{mark} {line}".rstrip() for line in snippet.content.splitlines())
    return "\n".join(lines) + "\n" if lines else ""


def _render(
    template: FimTemplate,
    prefix: str,
    suffix: str,
    snippets: Sequence[Snippet],
    doc: DocumentView,
    root: str | None,
) -> str:
    if not snippets:
        return template.render(prefix, suffix)
    if template.supports_repo_level:
        path = relative_path(doc.uri, root)
        repo = relative_path(root, None) if root else None
        return template.render(prefix, suffix, snippets, path=path, repo=repo)
    return template.render(_as_comments(snippets, doc.language) + prefix, suffix)


_NEAR_BEFORE: Final = 2_000  # characters before the cursor (or anchor) the snippets match
_NEAR_AFTER: Final = 500


def _snippets(
    near_cursor: str,
    doc: DocumentView,
    others: Sequence[DocumentView],
    settings: Settings,
    root: str | None,
    tokens: int,
    edited: Sequence[str] = (),
) -> list[Snippet]:
    ctx = settings.context
    if ctx.max_snippets <= 0 or tokens <= 0 or ctx.max_candidates <= 0:
        return []
    same = [o for o in others if o.uri != doc.uri and o.language == doc.language]
    here = f"{relative_path(doc.uri, root)} (edited)"
    candidates = [(here, region) for region in edited]
    candidates += _imported(doc, root)
    candidates += [(relative_path(o.uri, root), o.text) for o in same[-ctx.max_candidates :]]
    if not candidates:
        return []
    return select_snippets(near_cursor, candidates, tokens, ctx.max_snippets)


_EDIT_RADIUS: Final = 6  # lines kept on each side of a recent edit
_MAX_WALK_LINES: Final = 5_000  # a recent edit farther from the cursor is left out


def _line_bounds(text: str, offset: int, lines_away: int) -> tuple[int, int]:
    """Start and end of the line `lines_away` lines from the one holding `offset`
    (negative: above; clamped to the first and last lines), found by walking line breaks
    from the cursor, never over the whole text of a large file."""
    start = text.rfind("\n", 0, offset) + 1
    for _ in range(-lines_away):
        if start == 0:
            break
        start = text.rfind("\n", 0, start - 1) + 1
    for _ in range(lines_away):
        found = text.find("\n", start)
        if found < 0:
            break
        start = found + 1
    end = text.find("\n", start)
    return start, len(text) if end < 0 else end


def edited_regions(
    text: str, offset: int, cursor_line: int, lines: Sequence[int], window: tuple[int, int]
) -> list[str]:
    """The text around recently edited lines (most recent first) that the prompt's window
    (`window`: its character range) does not already show."""
    regions: list[str] = []
    for line in reversed(lines):
        away = line - cursor_line
        if abs(away) > _MAX_WALK_LINES:
            continue
        lo = _line_bounds(text, offset, away - _EDIT_RADIUS)[0]
        hi = _line_bounds(text, offset, away + _EDIT_RADIUS)[1]
        if lo >= window[0] and hi <= window[1]:
            continue  # in the window already
        region = text[lo:hi]
        if region.strip() and region not in regions:
            regions.append(region)
    return regions


def _imported(doc: DocumentView, root: str | None) -> list[tuple[str, str]]:
    """Python: the definitions the file imports from workspace modules (`imports`),
    ranked with the open files' windows under the same budget."""
    if doc.language != "python" or root is None:
        return []
    doc_path, root_path = doc.path, to_fs_path(root)
    if not doc_path or not root_path or not os.path.isfile(doc_path):
        return []
    return import_context(doc.text, doc_path, root_path)


def prepare(
    doc: DocumentView,
    offset: int,
    others: Sequence[DocumentView],
    settings: Settings,
    family: str,
    root: str | None = None,
    budget: Budget | None = None,
    edits: tuple[int, Sequence[int]] | None = None,
) -> Prepared | None:
    """The request for a cursor, or None where no completion should be asked for.

    `budget` sizes the prompt (default: the configured budgets, see `fitted_budget`);
    `edits` (the cursor's line, recently edited lines) adds the regions around those
    edits that the window leaves out to the snippet candidates."""
    if skip_at(doc, offset, settings):
        return None
    if looks_binary(doc.text) or looks_binary(
        doc.text[max(0, offset - _BINARY_PROBE) : offset + _BINARY_PROBE]
    ):
        return None
    ctx = settings.context
    budget = budget or fitted_budget(settings, None)
    shape = (budget.window, ctx.prefix_share, ctx.anchor_share)
    prefix, suffix = prefix_suffix_window(doc.text, offset, *shape)
    # Snippets come before the prefix in the prompt: chosen by the text before the
    # window's anchor point, they change when its start does, not on every keystroke.
    # Before the first anchor point (the top of a file), or with a sliding window, the
    # text around the cursor chooses them.
    point = anchor_point(offset, anchor_step(*shape))
    near_cursor = doc.text[max(0, point - _NEAR_BEFORE) : point]
    if point in (0, offset):
        near_cursor = doc.text[max(0, offset - _NEAR_BEFORE) : offset] + suffix[:_NEAR_AFTER]
    lead = next_line_lead(prefix, suffix) or ""
    prefix += lead  # at the end of `def f(n):` the body starts on the next line
    template = get_template(family)
    edited: list[str] = []
    if edits is not None:
        window = (offset - len(prefix) + len(lead), offset + len(suffix))
        edited = edited_regions(doc.text, offset, edits[0], edits[1], window)
    snippets = _snippets(near_cursor, doc, others, settings, root, budget.snippets, edited)
    prompt = valid_unicode(_render(template, prefix, suffix, snippets, doc, root))
    if not prompt.strip():
        return None
    mode: Mode = "block" if lead else completion_mode(prefix, suffix)
    task = settings.task(TaskKind.COMPLETE)
    max_tokens = task.max_tokens
    stop = list(template.stop)
    if mode == "line":
        # Only the first line is kept: the replica may stop there by itself.
        max_tokens = min(max_tokens or settings.line_max_tokens, settings.line_max_tokens)
        stop = ["\n", *stop]
    else:  # the template's end token first: the block's ends must not crowd it out
        stop = [*stop[:1], *_block_stops(doc.language), *stop[1:]]
    request = TaskRequest(
        kind=TaskKind.COMPLETE,
        prompt=prompt,
        language=doc.language[:64],
        model=task.model,
        sla=settings.sla(TaskKind.COMPLETE),
        max_tokens=max_tokens,
        stop=stop[:_MAX_STOPS],
        user=settings.user,
        on_late="shed",
    )
    return Prepared(prefix, suffix, mode, template.family.value, request, lead, budget)


# A new top-level definition ends any block a suggestion fills.
_TOP_LEVEL_STOPS: Final[dict[str, tuple[str, ...]]] = {
    "python": ("\ndef ", "\nclass ", "\nasync def ", "\n@", "\nif __name__"),
    "javascript": ("\nfunction ", "\nexport ", "\nclass "),
    "typescript": ("\nfunction ", "\nexport ", "\nclass ", "\ninterface "),
    "go": ("\nfunc ", "\ntype "),
    "rust": ("\nfn ", "\npub fn ", "\nimpl ", "\nstruct "),
}


def _block_stops(language: str) -> tuple[str, ...]:
    return _TOP_LEVEL_STOPS.get(language.lower(), ())
