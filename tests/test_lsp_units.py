"""The language server's pure parts: settings, cache, edits, regions, prompts, status."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from cato_lsp.backend import BackendError, EmbeddedOrchestrator, make_backend
from cato_lsp.features import code_actions as actions
from cato_lsp.features.commands import target_path
from cato_lsp.features.diagnostics import line_shift, translation_diagnostics
from cato_lsp.features.documents import DocumentView, apply_change, relative_path
from cato_lsp.features.inline_completion import SuggestionCache, choose_family, prepare
from cato_lsp.prompts import get_template
from cato_lsp.settings import (
    ContextSettings,
    Settings,
    SettingsError,
    TaskSettings,
    parse_settings,
)
from cato_lsp.status import StatusReporter
from orchestrator.api import SLAMetric, TaskKind
from orchestrator.graphs import validate

# --------------------------------------------------------------------------- settings


def test_settings_layers_merge_camel_case_and_a_cato_wrapper() -> None:
    settings = parse_settings(
        {"mode": "embedded", "debounceMs": 10, "tasks": {"complete": {"slaMs": 300}}},
        {"cato": {"context": {"budgetTokens": 100}, "tasks": {"complete": {"model": "m"}}}},
    )
    assert settings.debounce_ms == 10
    assert settings.context.budget_tokens == 100
    assert settings.task(TaskKind.COMPLETE).model == "m"
    sla = settings.sla(TaskKind.COMPLETE)
    assert sla is not None and sla.metric is SLAMetric.TTFT and sla.target_ms == 300
    assert settings.sla(TaskKind.TRANSLATE) is None


def test_settings_errors_name_every_bad_key() -> None:
    with pytest.raises(SettingsError) as raised:
        parse_settings({"debounceMS": 1, "tasks": {"complete": {"fimFamily": "nope"}}})
    text = str(raised.value)
    assert "debounceMS" in text and "nope" in text and "starcoder2" in text
    with pytest.raises(SettingsError, match="url"):
        parse_settings({"mode": "remote"})
    with pytest.raises(SettingsError, match="expected an object"):
        parse_settings(["not", "an", "object"])


def test_settings_never_show_the_token() -> None:
    settings = parse_settings({"mode": "remote", "url": "http://h:1", "token": "abc123xyz"})
    assert "abc123xyz" not in repr(settings) and "abc123xyz" not in str(settings.describe())
    assert settings.describe()["token"] == "set"
    assert (
        settings.backend_key()
        != parse_settings({"mode": "remote", "url": "http://h:1", "token": "other"}).backend_key()
    )


def test_sla_metric_defaults_follow_the_kind() -> None:
    settings = parse_settings({"tasks": {"summarize": {"slaMs": 9000}}})
    sla = settings.sla(TaskKind.SUMMARIZE)
    assert sla is not None and sla.metric is SLAMetric.E2E


_SETTINGS_DOC = Path(__file__).resolve().parent.parent / "docs" / "LSP_SETTINGS.md"
_ROW = re.compile(r"^\| `([^`]+)` \|[^|]*\| ([^|]*) \|", re.MULTILINE)


def _documented_defaults() -> dict[str, Any]:
    """Key -> the default its row shows, as JSON (`None` where it shows no JSON value)."""
    rows: dict[str, Any] = {}
    for key, cell in _ROW.findall(_SETTINGS_DOC.read_text(encoding="utf-8")):
        literal = re.fullmatch(r"\s*`([^`]*)`\s*", cell)
        rows[key] = json.loads(literal.group(1)) if literal else None
    return rows


def _model_defaults() -> dict[str, Any]:
    """Every key an editor can send, as the reference names it, with its default."""
    models: tuple[tuple[str, type[BaseModel]], ...] = (
        ("", Settings),
        ("tasks.<kind>.", TaskSettings),
        ("context.", ContextSettings),
    )
    out: dict[str, Any] = {}
    for prefix, model in models:
        for name, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            out[prefix + to_camel(name)] = None if isinstance(default, BaseModel) else default
    return out


def test_the_settings_reference_lists_every_setting_with_its_default() -> None:
    """docs/LSP_SETTINGS.md cannot drift from the settings model."""
    documented, actual = _documented_defaults(), _model_defaults()
    assert sorted(documented) == sorted(actual)  # nothing missing, nothing made up
    for key, default in actual.items():
        assert documented[key] == default, key


# --------------------------------------------------------------------------- document edits


def _partial(line: int, char: int, end_line: int, end_char: int, text: str) -> Any:
    return types.TextDocumentContentChangePartial(
        range=types.Range(
            start=types.Position(line=line, character=char),
            end=types.Position(line=end_line, character=end_char),
        ),
        text=text,
    )


@pytest.mark.parametrize(
    ("text", "change", "result"),
    [
        ("ab\ncd\n", _partial(1, 1, 1, 1, "X"), "ab\ncXd\n"),
        ("ab\r\ncd\r\n", _partial(1, 0, 1, 2, "zz"), "ab\r\nzz\r\n"),
        ("a\x0cb\ncd", _partial(1, 0, 1, 0, ">"), "a\x0cb\n>cd"),  # form feed is no break
        ("a\u2028b\ncd", _partial(1, 2, 1, 2, "!"), "a\u2028b\ncd!"),
        ("x\U0001f600y\n", _partial(0, 3, 0, 4, ""), "x\U0001f600\n"),  # UTF-16 units
        ("ab\n", _partial(9, 0, 9, 0, "tail"), "ab\ntail"),  # past the end: appended
        ("ab\ncd\n", _partial(0, 1, 1, 1, ""), "ad\n"),
    ],
)
def test_apply_change_counts_lines_as_lsp_does(text: str, change: Any, result: str) -> None:
    assert apply_change(text, change, "utf-16") == result


def test_line_starts_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from cato_lsp import context

    breaks = re.compile(r"\r\n|\r|\n")
    monkeypatch.setattr(context, "_LINE_CHUNK", 7)
    rng = random.Random(5)
    for _ in range(200):
        text = "".join(rng.choice(["a", "bc", "\n", "\r", "\r\n", "  x"]) for _ in range(60))
        starts = [0] + [m.end() for m in breaks.finditer(text)]
        for line, start in enumerate(starts):
            assert context._line_start(text, line) == start
            assert context.offset_at(text, line, 0) == start
        with pytest.raises(context.PositionError):
            context._line_start(text, len(starts))
        for offset in range(len(text) + 1):
            assert context.column_of(text, offset) == context.position_at(text, offset).character


def test_apply_change_whole_document() -> None:
    whole = types.TextDocumentContentChangeWholeDocument(text="new")
    assert apply_change("old", whole, "utf-16") == "new"


def test_relative_path_inside_and_outside_the_root(tmp_path: Path) -> None:
    inner = (tmp_path / "pkg" / "m.py").as_uri()
    assert relative_path(inner, tmp_path.as_uri()) == "pkg/m.py"
    assert relative_path("file:///elsewhere/x.py", tmp_path.as_uri()) == "x.py"
    assert relative_path(inner, None) == "m.py"


# --------------------------------------------------------------------------- cache


def test_cache_answers_typing_through_and_nothing_else() -> None:
    cache = SuggestionCache(8)
    text = "x = \nprint(x)\n"
    entry = cache.put("u", text, 4, "compute(1)")
    typed = "x = com\nprint(x)\n"

    hit = cache.lookup("u", typed, 7)

    assert hit is not None and hit[0].id == entry.id and hit[1] == "pute(1)"
    assert cache.lookup("u", text, 4) is not None  # same spot: the whole suggestion
    assert cache.lookup("u", "x = cox\nprint(x)\n", 7) is None  # diverged
    assert cache.lookup("u", "x = com\nprint(y)\n", 7) is None  # suffix changed
    assert cache.lookup("other", typed, 7) is None
    assert cache.lookup("u", "x = compute(1)\nprint(x)\n", 14) is None  # fully typed
    cache.forget("u")
    assert cache.lookup("u", typed, 7) is None


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = SuggestionCache(2)
    cache.put("u", "a", 1, "xx")
    cache.put("u", "ab", 2, "yy")
    assert cache.lookup("u", "a", 1) is not None  # refreshes the first entry
    cache.put("u", "abc", 3, "zz")
    assert len(cache) == 2
    assert cache.lookup("u", "ab", 2) is None
    assert cache.lookup("u", "a", 1) is not None
    disabled = SuggestionCache(0)
    disabled.put("u", "a", 1, "xx")
    assert disabled.lookup("u", "a", 1) is None


# --------------------------------------------------------------------------- prompts


def _doc(text: str, uri: str = "file:///w/a.py", language: str = "python") -> DocumentView:
    return DocumentView(uri, text, language)


@pytest.mark.parametrize("family", ["starcoder", "starcoder2", "codellama", "deepseek", "qwen25"])
def test_prepare_renders_the_family_template_and_its_stops(family: str) -> None:
    settings = parse_settings({"tasks": {"complete": {"fimFamily": family}}})
    text = "def f(x):\n    return x + \n"
    prepared = prepare(
        _doc(text), text.index("+ ") + 2, [], settings, choose_family(settings, None)
    )

    assert prepared is not None and prepared.mode == "line"
    template = get_template(family)
    assert prepared.request.prompt == template.render(prepared.prefix, prepared.suffix)
    # One line: the replica may stop there; then the template's first stops, at most 4
    # in all (a vLLM replica answers 400 to more).
    assert prepared.request.stop == ["\n", *template.stop[:3]]
    assert prepared.request.max_tokens == settings.line_max_tokens


def test_prepare_block_mode_and_repo_level_snippets() -> None:
    settings = Settings()
    text = "def load(path):\n    \n"
    other = _doc("def parse_row(path):\n    return open(path).read()\n", "file:///w/util.py")
    prepared = prepare(_doc(text), 20, [other], settings, "starcoder2", "file:///w")

    assert prepared is not None and prepared.mode == "block"
    prompt = prepared.request.prompt or ""
    assert prompt.startswith("<repo_name>w<file_sep>util.py\ndef parse_row(path):")
    assert "<file_sep><fim_prefix>a.py\ndef load(path):" in prompt
    assert "\n" not in prepared.request.stop
    # The template's end token, then the block's own ends, 4 stops in all.
    template = get_template("starcoder2")
    assert prepared.request.stop == [template.stop[0], "\ndef ", "\nclass ", "\nasync def "]


def test_prepare_puts_snippets_in_comments_for_file_level_families() -> None:
    settings = Settings()
    text = "def load(path):\n    \n"
    other = _doc("def parse_row(path):\n    return open(path).read()\n", "file:///w/util.py")
    prepared = prepare(_doc(text), 20, [other], settings, "codellama", "file:///w")

    assert prepared is not None
    assert (prepared.request.prompt or "").startswith(
        "<PRE> # Path: util.py\n# def parse_row(path):\n"
    )


def test_prepare_skips_binary_disabled_and_other_language_documents() -> None:
    settings = parse_settings({"languages": ["python"]})
    assert prepare(_doc("\x00\x01\x02" * 50), 3, [], settings, "starcoder2") is None
    rust = _doc("fn main() {}\n", "file:///w/m.rs", "rust")
    assert prepare(rust, 3, [], settings, "starcoder2") is None
    js = _doc("function parse_row(path) { return path }\n", "file:///w/u.js", "javascript")
    prepared = prepare(_doc("def parse_row(p):\n    \n"), 22, [js], settings, "starcoder2")
    assert prepared is not None and "u.js" not in (prepared.request.prompt or "")


def test_family_from_settings_config_or_model_name() -> None:
    assert choose_family(Settings(), None) == "starcoder2"
    named = parse_settings({"tasks": {"complete": {"model": "Qwen/Qwen2.5-Coder-7B"}}})
    assert choose_family(named, None) == "qwen25"
    explicit = parse_settings({"tasks": {"complete": {"fimFamily": "DeepSeek"}}})
    assert choose_family(explicit, None) == "deepseek"


def test_embedded_backend_reads_the_family_from_its_config(tmp_path: Path) -> None:
    config = tmp_path / "cato.toml"
    config.write_text(
        '[[models]]\nname = "cl"\nengine = "external"\nurl = "http://127.0.0.1:9"\n'
        'fim_family = "codellama"\n',
        encoding="utf-8",
    )
    backend = EmbeddedOrchestrator(str(config))
    assert choose_family(Settings(), backend) == "codellama"
    broken = make_backend("embedded", config=str(tmp_path / "missing.toml"))
    with pytest.raises(BackendError) as raised:
        broken.fim_family(None)
    assert raised.value.code == "config"


# --------------------------------------------------------------------------- regions and text

PY = (
    "import os\n"
    "\n"
    "@decorated\n"
    "def outer(a):\n"
    '    """Old words."""\n'
    "    def inner(b):\n"
    "        return b\n"
    "    return inner(a)\n"
    "\n"
    "# make a list of squares\n"
    "# of the first ten numbers\n"
)


def test_enclosing_python_function_is_the_innermost() -> None:
    doc = _doc(PY)
    inner = actions.enclosing_function(doc, 6)
    outer = actions.enclosing_function(doc, 7)
    assert inner is not None and inner.name == "inner" and (inner.first, inner.last) == (5, 6)
    assert outer is not None and outer.name == "outer" and (outer.first, outer.last) == (2, 7)
    assert outer.docstring == (4, 4) and outer.body_line == 4 and outer.body_indent == "    "
    assert actions.enclosing_function(doc, 0) is None


def test_enclosing_function_by_braces_and_indentation() -> None:
    js = _doc(
        "const a = 1;\nfunction add(x, y) {\n  if (x) {\n    return x + y;\n  }\n}\nadd(1, 2);\n",
        language="javascript",
    )
    found = actions.enclosing_function(js, 3)
    assert found is not None and found.name == "add" and (found.first, found.last) == (1, 5)
    ruby = _doc("def total(xs)\n  xs.sum\nend\nputs 1\n", language="ruby")
    block = actions.enclosing_function(ruby, 1)
    assert block is not None and (block.first, block.last) == (0, 2)


def test_comment_block_and_docstring_at_the_cursor() -> None:
    doc = _doc(PY)
    comment = actions.comment_at(doc, 10)
    assert comment is not None and (comment.first, comment.last) == (9, 10)
    assert comment.text == "make a list of squares\nof the first ten numbers"
    docstring = actions.comment_at(doc, 4)
    assert docstring is not None and docstring.text == "Old words." and docstring.indent == "    "
    assert actions.comment_at(doc, 0) is None


def test_inserted_text_shapes() -> None:
    assert (
        actions.docstring_text("Adds two numbers.", "    ", "\n") == '    """Adds two numbers."""\n'
    )
    long = actions.docstring_text("word " * 40, "    ", "\r\n")
    lines = long.split("\r\n")
    assert lines[0].startswith('    """word') and lines[-2] == '    """' and lines[-1] == ""
    assert all(len(line) <= 88 for line in lines)
    assert actions.comment_text("Adds it.", "  ", "javascript", "\n") == "  // Adds it.\n"
    code = actions.code_text("def f():\n    return 1\n", "    ", "\n")
    assert code == "    def f():\n        return 1\n"
    assert actions.clean_model_text("```python\nx = 1\n```\n<|endoftext|>junk") == "x = 1"


def test_target_path_avoids_existing_files() -> None:
    taken = {"/w/a.js", "/w/a.2.js"}
    assert target_path("/w/a.py", "javascript", taken.__contains__) == "/w/a.3.js"
    assert target_path("/w/a.py", "go", taken.__contains__) == "/w/a.go"
    assert target_path("/w/a.py", "python", taken.__contains__) == "/w/a.2.py"


def test_code_actions_follow_the_only_filter() -> None:
    doc = _doc(PY)
    at = types.Position(line=6, character=4)
    everything = actions.code_actions(doc, types.Range(start=at, end=at), Settings())
    sources = actions.code_actions(doc, types.Range(start=at, end=at), Settings(), ["source"])
    refactors = actions.code_actions(doc, types.Range(start=at, end=at), Settings(), ["refactor"])
    # translate: in the lightbulb (refactor) and the Source Action menu, once per request
    assert {a.kind for a in everything} == {
        actions.KIND_SUMMARIZE,
        actions.KIND_TRANSLATE_REFACTOR,
    }
    assert {a.kind for a in sources} == {actions.KIND_TRANSLATE}
    assert {a.kind for a in refactors} == {
        actions.KIND_SUMMARIZE,
        actions.KIND_TRANSLATE_REFACTOR,
    }
    titles = [a.title for a in everything]
    assert len(titles) == len(set(titles))


# --------------------------------------------------------------------------- diagnostics


def _span(d: types.Diagnostic) -> tuple[int, int, int, int]:
    return d.range.start.line, d.range.start.character, d.range.end.line, d.range.end.character


@pytest.mark.parametrize(("encoding", "column"), [("utf-16", 11), ("utf-8", 13), ("utf-32", 10)])
def test_python_syntax_errors_land_on_their_column(encoding: str, column: int) -> None:
    text = 'x = 1\ns = "\U0001f600" + )\n'
    problems = validate(text, "python")  # the orchestrator's own wording
    assert problems and problems[0].startswith("line 2, column 11")

    [diagnostic] = translation_diagnostics(problems, text, encoding)

    assert _span(diagnostic) == (1, column, 1, column + 1)  # the `)`, after a 2-unit emoji
    assert diagnostic.severity == types.DiagnosticSeverity.Warning
    assert diagnostic.source == "cato"
    assert diagnostic.message == problems[0].split(": ", 1)[1]


def test_balance_problems_cover_their_line() -> None:
    text = "function f() {\n  return (1;\n}\n"
    problems = validate(text, "javascript")
    assert len(problems) == 2

    mismatch, unclosed = translation_diagnostics(problems, text)

    assert _span(mismatch) == (2, 0, 2, 1)
    assert mismatch.message == "'}' does not close '(' (line 2)"  # its other line kept as text
    assert _span(unclosed) == (0, 0, 0, 14)
    assert unclosed.message == "unclosed '{'"


def test_problems_without_a_usable_line() -> None:
    text = "let a = 1;\n  let b = 2;\n"
    found = translation_diagnostics(
        [
            "unknown line: source code string cannot contain null bytes",
            "the model stopped early",
            "line 40: unclosed '['",  # past the end: the last line
            "chunk 2 failed at line 2, column 3 of its output",  # a position inside the text
        ],
        text,
    )
    assert [_span(d) for d in found] == [(0, 0, 0, 10), (0, 0, 0, 10), (2, 0, 2, 0), (1, 2, 1, 3)]
    assert found[0].message == "source code string cannot contain null bytes"
    assert found[1].message == "the model stopped early"
    assert found[3].message == "chunk 2 failed at line 2, column 3 of its output"
    assert translation_diagnostics([], text) == []


def test_lines_trimmed_in_front_of_the_file_move_the_positions() -> None:
    validated = "```python\n\ndef f(:\n    pass\n```\n"
    written = actions.clean_model_text(validated).rstrip("\n") + "\n"
    assert written == "def f(:\n    pass\n"
    shift = line_shift(validated, written)
    assert shift == 2

    [diagnostic] = translation_diagnostics(
        ["line 3, column 7: invalid syntax"], written, shift=shift
    )

    assert _span(diagnostic) == (0, 6, 0, 7)
    assert line_shift("x = (\n", "x = (\n") == 0 and line_shift("abc", "zzz\n") == 0


# --------------------------------------------------------------------------- status


def test_status_messages_are_shown_once_per_failure_and_scrubbed() -> None:
    shown: list[str] = []
    logged: list[str] = []
    notified: list[Any] = []
    now = [0.0]
    reporter = StatusReporter(
        notify=lambda method, body: notified.append(body),
        show=lambda kind, text: shown.append(text),
        log=lambda kind, text: logged.append(text),
        secret=lambda: "tok-123",
        clock=lambda: now[0],
    )
    assert reporter.failure("unauthorized", "refused tok-123")
    assert not reporter.failure("unauthorized", "refused again")
    assert len(shown) == 1 and len(logged) == 2
    assert all("tok-123" not in text for text in shown + logged)
    assert reporter.task_done("complete", 12.0, True)  # back to ready
    reporter.failure("unauthorized", "refused")
    assert len(shown) == 2  # shown again after a recovery
    assert reporter.due() and not reporter.due()
    now[0] = 5.0
    assert reporter.due()
    body = reporter.publish(None, {})
    assert body["state"] == "unauthorized" and body["slaAttainment"] == {"complete": 1.0}
    assert notified == [body]


# --------------------------------------------------------------------------- logs and latency


def test_a_user_mistake_is_one_warning_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pygls.exceptions import JsonRpcInternalError, JsonRpcInvalidParams

    from cato_lsp.server import create_server

    create_server()  # installs the filter on pygls' logger
    logger = logging.getLogger("pygls.protocol.json_rpc")
    caplog.set_level(logging.WARNING)
    for error in (JsonRpcInvalidParams("nothing to summarize"), JsonRpcInternalError("boom")):
        try:
            raise error
        except Exception:
            logger.exception('Exception occurred for message "%s"', 7)
    mistake, bug = caplog.records
    assert mistake.levelno == logging.WARNING and mistake.exc_info is None
    assert mistake.getMessage() == 'Exception occurred for message "7": nothing to summarize'
    assert bug.levelno == logging.ERROR and bug.exc_info is not None  # a real failure keeps it


def test_keystroke_to_suggestion_percentiles_cover_the_recent_suggestions() -> None:
    reporter = StatusReporter(notify=lambda *_: None, show=lambda *_: None, log=lambda *_: None)
    assert reporter.suggest_latency() == {
        "p50": None,
        "p90": None,
        "p99": None,
        "last": None,
        "count": 0,
    }
    for ms in range(1, 301):  # only the last 200 count: 101..300
        reporter.suggested(float(ms))
    assert reporter.suggest_latency() == {
        "p50": 200.0,
        "p90": 280.0,
        "p99": 298.0,
        "last": 300.0,
        "count": 200,
    }
    assert reporter.payload(None, {})["suggestMs"]["p50"] == 200.0


def test_the_prompt_budget_fits_the_sla_and_never_exceeds_the_settings() -> None:
    from cato_lsp.features.completion_prompt import Budget, fitted_budget

    settings = parse_settings({})  # window 1536 + snippets 512
    assert fitted_budget(settings, None) == Budget(1536, 512)  # nothing known: as configured
    assert fitted_budget(settings, 10_000) == Budget(1536, 512)  # slack: never above
    assert fitted_budget(settings, 1024) == Budget(768, 256)  # both scaled by half
    assert fitted_budget(settings, 0) == Budget(256, 0)  # overloaded: the window's floor
    fixed = parse_settings({"context": {"fitSla": False}})
    assert fitted_budget(fixed, 0) == Budget(1536, 512)
    # In eighths, so that the window's anchor grid does not move with every estimate.
    assert fitted_budget(settings, 1023) == Budget(576, 192)  # 3/8, not 1023/2048
    assert fitted_budget(settings, 1792) == Budget(1344, 448)  # 7/8
    no_snippets = parse_settings({"context": {"maxSnippets": 0, "minBudgetTokens": 64}})
    assert fitted_budget(no_snippets, 300) == Budget(192, 0)  # 1/8 of 1536
    assert fitted_budget(no_snippets, 100) == Budget(64, 0)  # under an eighth: the floor


def test_the_experience_benchmark_types_into_an_empty_line_of_a_file_of_the_size_asked() -> None:
    from cato_lsp.experience import python_file

    text, line = python_file(60 * 1024)
    lines = text.split("\n")
    assert 60 * 1024 <= len(text.encode()) < 61 * 1024
    assert lines[line] == "" and lines[line - 1] == "def main(values, offset):"
    assert lines[line + 1] == "    return result"


def test_before_the_replicas_are_up_the_prompt_fits_the_models_prior_rates() -> None:
    backend = EmbeddedOrchestrator(None)  # the built-in default: emulated tiny@cpu
    backend.fim_family(None)  # builds the runtime without starting it
    tight = backend.prompt_fit(None, None)  # the configured 500 ms completion SLA
    assert tight is not None and 0 < tight < 1536 + 512
    slack = backend.prompt_fit(None, 60_000.0)
    assert slack is not None and slack > 1536 + 512
    assert make_backend("remote", url="http://127.0.0.1:9").prompt_fit(None, None) is None
