"""Code actions and commands end to end: summarize, generate, translate file, progress."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from lsp_fixtures import (
    WAIT_S,
    Editor,
    EditorFactory,
    editors,
    external_config,
    metrics_async,
    wait_idle,
)
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams

from orchestrator.emulator.process import RunningEmulator, launch_emulator

PYTHON = (
    "import math\n"
    "\n"
    "\n"
    "def norm(xs):\n"
    "    total = sum(x * x for x in xs)\n"
    "    return math.sqrt(total)\n"
    "\n"
    "\n"
    "def main():\n"
    "    # print the norm of three numbers read from the user\n"
    "    pass\n"
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(model="tiny", profile="tiny@cpu", speed=4.0) as running:
        yield running


@pytest.fixture(scope="module")
def slow_emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(model="tiny", profile="tiny@cpu", speed=0.05) as running:
        yield running


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[EditorFactory]:
    async with editors(tmp_path) as factory:
        yield factory


async def opened(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path, text: str = PYTHON
) -> tuple[Editor, str]:
    config = external_config(tmp_path / "cato.toml", emulator)
    editor = await start({"config": str(config), "debounceMs": 0})
    uri = (tmp_path / "calc.py").as_uri()
    editor.open(uri, text)
    return editor, uri


def where(uri: str, line: int, character: int = 0) -> dict[str, Any]:
    at = {"line": line, "character": character}
    return {"uri": uri, "range": {"start": at, "end": at}}


def single_edit(editor: Editor) -> tuple[types.TextDocumentEdit, types.TextEdit]:
    assert len(editor.edits) == 1
    changes = editor.edits[0].document_changes
    assert changes is not None and len(changes) == 1
    change = changes[0]
    assert isinstance(change, types.TextDocumentEdit)
    assert len(change.edits) == 1
    edit = change.edits[0]
    assert isinstance(edit, types.TextEdit)
    return change, edit


def progress_values(editor: Editor) -> list[Any]:
    """The one progress token's begin / report / end values, in order."""
    reports = list(editor.client.progress_reports.values())
    assert len(reports) == 1
    return list(reports[0])


def progress_kinds(editor: Editor) -> list[str]:
    return [str(value.kind) for value in progress_values(editor)]


# --------------------------------------------------------------------------- code actions


async def test_code_actions_offer_what_fits_the_cursor(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor, uri = await opened(start, emulator, tmp_path)

    def actions(line: int, only: list[str] | None = None) -> Any:
        at = types.Position(line=line, character=4)
        return editor.client.text_document_code_action_async(
            types.CodeActionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                range=types.Range(start=at, end=at),
                context=types.CodeActionContext(diagnostics=[], only=only),
            )
        )

    in_function = await actions(4)
    on_comment = await actions(9)
    sources = await actions(4, ["source"])

    titles = [a.title for a in in_function]
    assert "CATO: Summarize `norm`" in titles
    assert "CATO: Translate file to javascript" in titles
    assert "CATO: Translate file to python" not in titles
    assert not any("Generate" in t for t in titles)
    assert any("Generate code from the comment" in a.title for a in on_comment)
    assert sources and all(a.kind == "source.cato.translate" for a in sources)
    summarize = next(a for a in in_function if "Summarize" in a.title)
    assert summarize.command is not None and summarize.command.command == "cato.summarize"


# --------------------------------------------------------------------------- summarize


async def test_summarize_inserts_a_docstring(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor, uri = await opened(start, emulator, tmp_path)

    result = await editor.command("cato.summarize", where(uri, 4, 8))

    assert result["applied"] is True and result["summary"].strip()
    change, edit = single_edit(editor)
    assert change.text_document.uri == uri and change.text_document.version == 1
    at = types.Position(line=4, character=0)  # the first line of the body
    assert edit.range == types.Range(start=at, end=at)
    assert edit.new_text.startswith('    """') and edit.new_text.endswith('"""\n')
    first_words = " ".join(result["summary"].split())[:20]
    assert first_words in " ".join(edit.new_text.split())
    assert progress_kinds(editor)[0] == "begin" and progress_kinds(editor)[-1] == "end"


async def test_summarize_a_selection_in_a_crlf_javascript_file(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    config = external_config(tmp_path / "cato.toml", emulator)
    editor = await start({"config": str(config), "debounceMs": 0})
    uri = (tmp_path / "app.js").as_uri()
    text = "const a = 1;\r\nfunction add(x, y) {\r\n  return x + y;\r\n}\r\n"
    editor.open(uri, text, "javascript")
    selection = {
        "uri": uri,
        "range": {"start": {"line": 1, "character": 0}, "end": {"line": 4, "character": 0}},
    }

    result = await editor.command("cato.summarize", selection)

    _, edit = single_edit(editor)
    at = types.Position(line=1, character=0)
    assert result["applied"] is True
    assert edit.range == types.Range(start=at, end=at)
    lines = edit.new_text.split("\r\n")
    assert lines[-1] == "" and all(line.startswith("// ") for line in lines[:-1])


# --------------------------------------------------------------------------- generate


async def test_generate_inserts_code_below_the_comment(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor, uri = await opened(start, emulator, tmp_path)

    result = await editor.command("cato.generate", where(uri, 9, 10))

    assert result["applied"] is True and result["code"].strip()
    _, edit = single_edit(editor)
    at = types.Position(line=10, character=0)
    assert edit.range == types.Range(start=at, end=at)
    code_lines = [line for line in edit.new_text.split("\n") if line.strip()]
    assert code_lines and all(line.startswith("    ") for line in code_lines)
    assert result["code"].strip().split("\n")[0].strip() in edit.new_text


async def test_generate_cut_at_its_token_limit_keeps_whole_lines_and_warns(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    config = external_config(tmp_path / "cato.toml", emulator)
    uri = (tmp_path / "calc.py").as_uri()
    results = {}
    for limit in (2048, 24):
        editor = await start(
            {"config": str(config), "debounceMs": 0, "tasks": {"generate": {"maxTokens": limit}}}
        )
        editor.open(uri, PYTHON)
        results[limit] = (await editor.command("cato.generate", where(uri, 9, 10)), editor)

    whole, _ = results[2048]
    cut, editor = results[24]
    assert whole["truncated"] is False and cut["truncated"] is True
    # the same output, ended at the last line break before the limit
    assert cut["code"] and whole["code"].startswith(cut["code"]), (cut, whole)
    assert whole["code"][len(cut["code"])] == "\n"
    warnings = [m for m in editor.client.messages if m.type == types.MessageType.Warning]
    assert len(warnings) == 1 and "24-token limit" in warnings[0].message
    _, edit = single_edit(editor)
    assert edit.new_text.rstrip("\n").endswith(cut["code"].rstrip().split("\n")[-1])


async def test_generate_without_a_comment_is_invalid_params(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor, uri = await opened(start, emulator, tmp_path)
    with pytest.raises(JsonRpcInvalidParams):
        await editor.command("cato.generate", where(uri, 0))
    assert editor.edits == []


# --------------------------------------------------------------------------- translate


def long_python(functions: int) -> str:
    body = "".join(f"    value_{i} = compute_{i}(items, {i})\n" for i in range(12))
    return "\n\n".join(f"def step_{n}(items):\n{body}    return items\n" for n in range(functions))


async def test_translate_file_creates_the_file_with_progress(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor, uri = await opened(start, emulator, tmp_path, long_python(6))

    result = await asyncio.wait_for(
        editor.command("cato.translateFile", {"uri": uri, "targetLanguage": "javascript"}), WAIT_S
    )

    target = (tmp_path / "calc.js").as_uri()
    assert result["applied"] is True and result["uri"] == target and result["shown"] is True
    # written to disk (saved, as in every editor), then opened; no edit to apply
    assert editor.edits == []
    new_text = (tmp_path / "calc.js").read_text(encoding="utf-8")
    assert new_text.strip() and new_text.endswith("\n")
    assert [d.uri for d in editor.client.shown_documents] == [target]
    kinds = progress_kinds(editor)
    assert kinds[0] == "begin" and kinds[-1] == "end"
    reports = [v for v in progress_values(editor) if v.kind == "report"]
    percentages = [r.percentage for r in reports if r.percentage is not None]
    assert len(percentages) >= 2  # one per translated chunk: the file was fanned out
    assert percentages == sorted(percentages) and percentages[-1] == 100


async def test_translate_next_to_an_existing_file_picks_a_free_name(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    (tmp_path / "calc.js").write_text("// already here\n", encoding="utf-8")
    editor, uri = await opened(start, emulator, tmp_path)

    result = await editor.command(
        "cato.translateFile", {"uri": uri, "targetLanguage": "javascript"}
    )

    assert result["uri"] == (tmp_path / "calc.2.js").as_uri()
    assert (tmp_path / "calc.js").read_text(encoding="utf-8") == "// already here\n"


def created_text(path: Path) -> str:
    """The text a translation wrote to its new file."""
    return path.read_text(encoding="utf-8")


async def diagnostics_become(editor: Editor, uri: str, expected: list[Any]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while list(editor.client.diagnostics.get(uri, [None])) != expected:
        assert loop.time() < deadline, f"diagnostics of {uri}: {editor.client.diagnostics}"
        await asyncio.sleep(0.05)


async def test_translation_problems_are_published_on_the_new_file_until_it_closes(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    config = external_config(tmp_path / "cato.toml", emulator)
    editor = await start({"config": str(config), "debounceMs": 0})
    uri = (tmp_path / "app.js").as_uri()
    editor.open(uri, "function add(x, y) {\n  return x + y;\n}\n", "javascript")

    result = await editor.command("cato.translateFile", {"uri": uri, "targetLanguage": "python"})

    target = (tmp_path / "app.py").as_uri()
    problems = result["diagnostics"]
    # The emulator's text is code-like but cut at its budget: not valid Python.
    assert result["applied"] is True and result["uri"] == target and problems
    published = editor.client.diagnostics[target]  # sent before the command's answer
    assert len(published) == len(problems)
    lines = created_text(tmp_path / "app.py").split("\n")
    for problem, diagnostic in zip(problems, published, strict=True):
        assert diagnostic.source == "cato"
        assert diagnostic.severity == types.DiagnosticSeverity.Warning
        assert diagnostic.message in problem
        where = re.match(r"line (\d+)(?:, column (\d+))?", problem)
        assert where is not None, problem  # ast's errors name their line
        assert diagnostic.range.start.line == int(where.group(1)) - 1
        assert diagnostic.range.end.line == diagnostic.range.start.line < len(lines)
        if where.group(2) is not None:  # ASCII text: columns are characters
            column = min(int(where.group(2)) - 1, len(lines[diagnostic.range.start.line]))
            assert diagnostic.range.start.character == column
    assert any("problem(s)" in m.message for m in editor.client.messages)  # as before
    assert uri not in editor.client.diagnostics

    editor.open(target, created_text(tmp_path / "app.py"))
    editor.close(target)

    await diagnostics_become(editor, target, [])


async def test_a_clean_translation_clears_the_problems_of_its_file(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor, uri = await opened(start, emulator, tmp_path)
    target = (tmp_path / "calc.js").as_uri()

    def budget(max_tokens: int) -> None:
        editor.client.set_configuration(
            {"tasks": {"translate": {"maxTokens": max_tokens}}}, section="cato"
        )
        editor.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings=None)
        )

    async def translate() -> Any:
        result = await editor.command(
            "cato.translateFile", {"uri": uri, "targetLanguage": "javascript"}
        )
        assert result["applied"] is True and result["uri"] == target
        return result

    budget(4)  # the emulator's text stops right after its first `(`
    await settings_after(editor, ["tasks", "translate", "max_tokens"], 4)
    cut = await translate()
    assert cut["diagnostics"] == ["line 1: unclosed '('"], "the emulator's text changed"
    [diagnostic] = editor.client.diagnostics[target]
    assert diagnostic.message == "unclosed '('" and diagnostic.range.start.line == 0

    (tmp_path / "calc.js").unlink()  # the bad translation is thrown away: its name is free
    budget(2048)
    await settings_after(editor, ["tasks", "translate", "max_tokens"], 2048)
    whole = await translate()

    assert whole["diagnostics"] == []
    assert list(editor.client.diagnostics[target]) == []


async def settings_after(editor: Editor, path: list[str], value: Any) -> None:
    """Wait until the server's settings (as `cato.status` shows them) hold `value`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        found: Any = (await editor.command("cato.status"))["settings"]
        for key in path:
            found = found.get(key) if isinstance(found, dict) else None
        if found == value:
            return
        assert loop.time() < deadline, f"settings never had {'.'.join(path)} = {value!r}"
        await asyncio.sleep(0.05)


async def test_cancelling_the_progress_stops_the_translation_upstream(
    start: EditorFactory, slow_emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor, uri = await opened(start, slow_emulator, tmp_path, long_python(2))
    before = await wait_idle(slow_emulator.url)
    running = asyncio.ensure_future(
        editor.command("cato.translateFile", {"uri": uri, "targetLanguage": "go"})
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        sample = await metrics_async(slow_emulator.url)
        started = sample.get("vllm:num_requests_running", 0) + sample.get(
            "vllm:num_requests_waiting", 0
        )
        if started and editor.client.progress_reports:
            break
        assert loop.time() < deadline, "the translation never reached the emulator"
        await asyncio.sleep(0.05)
    token = next(iter(editor.client.progress_reports))

    editor.client.window_work_done_progress_cancel(types.WorkDoneProgressCancelParams(token=token))

    result = await asyncio.wait_for(running, WAIT_S)
    assert result == {"cancelled": True, "applied": False}
    after = await wait_idle(slow_emulator.url)
    aborted = after["cato_emulator_aborted_total"] - before.get("cato_emulator_aborted_total", 0)
    assert aborted >= 1
    assert after.get("vllm:request_success_total:stop", 0) == before.get(
        "vllm:request_success_total:stop", 0
    )
    assert editor.edits == []
    assert progress_kinds(editor)[-1] == "end"


# --------------------------------------------------------------------------- bad commands


async def test_unknown_commands_and_bad_arguments_are_errors(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor, uri = await opened(start, emulator, tmp_path)

    with pytest.raises(JsonRpcException) as unknown:
        await editor.command("cato.doesNotExist")
    with pytest.raises(JsonRpcInvalidParams):
        await editor.command("cato.summarize")
    with pytest.raises(JsonRpcInvalidParams):
        await editor.command("cato.translateFile", {"uri": uri})
    with pytest.raises(JsonRpcInvalidParams):
        await editor.command("cato.summarize", where((tmp_path / "closed.py").as_uri(), 0))

    assert unknown.value.code == -32602
    assert (await editor.command("cato.status"))["state"] in ("starting", "ready")
