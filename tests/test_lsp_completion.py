"""Inline completion end to end: a real client, `python -m cato_lsp`, real emulators.

Expected suggestions are computed from the emulator's own deterministic text generator
applied to the prompt the language server is meant to send, so a test fails when the
prompt (FIM format, window, snippets) or the post-processing differs in any byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from lsp_fixtures import (
    WAIT_S,
    Editor,
    EditorFactory,
    editors,
    external_config,
    full_capabilities,
    metrics_async,
    wait_idle,
)
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcRequestCancelled

from cato_lsp.context import offset_at
from cato_lsp.features.documents import DocumentView
from cato_lsp.features.inline_completion import choose_family, prepare
from cato_lsp.settings import parse_settings
from orchestrator.config import User, hash_token
from orchestrator.emulator.process import RunningEmulator, health_status, launch_emulator
from orchestrator.emulator.textgen import TextGenerator
from orchestrator.engine_model import load_profile
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.server import ServiceOptions, create_app, serve_app

SOURCE = (
    "import os\n"
    "\n"
    "def load_items(path):\n"
    "    items = []\n"
    "    for line in open(path):\n"
    "        \n"
    "    return items\n"
)
MID_LINE = (3, 12)  # after "    items = "
BLOCK = (5, 8)  # the empty line after "for line in open(path):"
TOKEN = "s3cret-t0ken-for-tests"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(model="tiny", profile="tiny@cpu", speed=4.0) as running:
        yield running


@pytest.fixture(scope="module")
def slow_emulator() -> Iterator[RunningEmulator]:
    """Every request takes over a second, so a stale one is still running when superseded."""
    with launch_emulator(model="tiny", profile="tiny@cpu", speed=0.05) as running:
        yield running


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[EditorFactory]:
    async with editors(tmp_path) as factory:
        yield factory


def options_for(tmp_path: Path, emulator: RunningEmulator, **extra: Any) -> dict[str, Any]:
    config = external_config(tmp_path / "cato.toml", emulator)
    return {"config": str(config), "debounceMs": 0, **extra}


def expected(
    text: str,
    position: tuple[int, int],
    options: dict[str, Any],
    uri: str,
    others: Sequence[DocumentView] = (),
    root: str | None = None,
) -> str | None:
    """What the server must suggest, from the emulator's deterministic output."""
    settings = parse_settings(options)
    doc = DocumentView(uri, text, "python")
    offset = offset_at(text, *position)
    prepared = prepare(doc, offset, others, settings, choose_family(settings, None), root)
    assert prepared is not None
    profile = load_profile("tiny@cpu")
    generator = TextGenerator(0, profile.output_mean_tokens, profile.output_sigma)
    request = prepared.request
    plan = generator.plan(request.prompt or "", request.max_tokens or 64, stop=request.stop)
    return prepared.finish(plan.text)


async def busy(url: str) -> bool:
    sample = await metrics_async(url)
    return (
        sample.get("vllm:num_requests_running", 0) + sample.get("vllm:num_requests_waiting", 0) > 0
    )


async def wait_for_state(editor: Editor, state: str, timeout_s: float = WAIT_S) -> None:
    """Until a `cato/status` notification says `state`."""
    async with asyncio.timeout(timeout_s):
        while not any(s["state"] == state for s in editor.statuses):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def settings_hold(editor: Editor, sla_ms: float) -> None:
    """Until the server's settings have this completion SLA."""
    async with asyncio.timeout(WAIT_S):
        while True:
            tasks = (await editor.command("cato.status"))["settings"]["tasks"]
            if tasks.get("complete", {}).get("sla_ms") == sla_ms:
                return
            await asyncio.sleep(0.05)


def texts(result: Any) -> list[str]:
    assert isinstance(result, types.InlineCompletionList)
    return [str(item.insert_text) for item in result.items]


# --------------------------------------------------------------------------- suggestions


async def test_no_suggestion_inside_a_word_and_a_block_body_starts_on_the_next_line(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    options = options_for(tmp_path, emulator)
    editor = await start(options)
    uri = (tmp_path / "shape.py").as_uri()
    editor.open(uri, SOURCE)

    assert texts(await editor.inline(uri, 2, 2)) == []  # de|f
    assert texts(await editor.inline(uri, 3, 6)) == []  # it|ems
    end_of_for = (4, len("    for line in open(path):"))
    [body] = texts(await editor.inline(uri, *end_of_for))

    assert body == expected(SOURCE, end_of_for, options, uri)
    assert body.startswith("\n        ") and body.strip()  # one level below the `for`


async def test_inline_completion_embedded_matches_the_emulator_output(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    options = options_for(tmp_path, emulator)
    editor = await start(options)
    uri = (tmp_path / "a.py").as_uri()
    editor.open(uri, SOURCE)
    before = await metrics_async(emulator.url)

    result = await editor.inline(uri, *MID_LINE)

    want = expected(SOURCE, MID_LINE, options, uri)
    assert want is not None and want.strip()
    assert texts(result) == [want]
    item = result.items[0]
    at = types.Position(line=MID_LINE[0], character=MID_LINE[1])
    assert item.range == types.Range(start=at, end=at)
    assert item.command is not None and item.command.command == "cato.accept"
    after = await metrics_async(emulator.url)
    assert after["vllm:prompt_tokens_total"] > before.get("vllm:prompt_tokens_total", 0)

    accepted = await editor.command("cato.accept", *(item.command.arguments or []))
    assert accepted["accepted"] is True
    again = await editor.command("cato.accept", *(item.command.arguments or []))
    assert again["accepted"] is False  # one suggestion counts once
    status = await editor.command("cato.status")
    assert status["completions"]["shown"] == 1
    assert status["completions"]["accepted"] == 1
    assert status["state"] == "ready"
    assert status["replicasReady"] == 1
    assert status["slaAttainment"]["complete"] in (0.0, 1.0)
    assert status["lastTtftMs"] is not None
    waited = status["suggestMs"]  # keystroke to suggestion, as the editor waited for it
    assert waited["count"] == 1 and waited["last"] == waited["p50"] == waited["p99"]
    assert waited["p50"] > 0
    assert status["settings"]["token"] is None
    notified = editor.statuses[-1]  # `cato/status` went out as well
    assert notified["state"] == "ready" and notified["replicasReady"] == 1
    assert notified["completions"]["accepted"] == 1


async def test_a_completion_no_replica_can_serve_in_time_is_shed_not_shown_late(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Completions ask to be shed when late: with an SLA no replica can meet, the
    orchestrator ends the request at once and the editor gets no suggestion (not a stale
    one later), and no error: the request never reaches the replica."""
    options = options_for(tmp_path, emulator, tasks={"complete": {"slaMs": 0.001}})
    editor = await start(options)
    uri = (tmp_path / "shed.py").as_uri()
    editor.open(uri, SOURCE)
    before = await metrics_async(emulator.url)

    result = await editor.inline(uri, *MID_LINE)

    assert result is None or texts(result) == []
    after = await metrics_async(emulator.url)
    prompt_tokens = "vllm:prompt_tokens_total"
    assert after.get(prompt_tokens, 0) == before.get(prompt_tokens, 0)
    status = await editor.command("cato.status")
    assert status["completions"]["shed"] == 1 and status["completions"]["errors"] == 0
    assert status["completions"]["shown"] == 0
    assert status["state"] == "ready"  # no failure state: a shed is not an error


async def test_block_completion_stays_in_the_block(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    options = options_for(tmp_path, emulator)
    editor = await start(options)
    uri = (tmp_path / "b.py").as_uri()
    editor.open(uri, SOURCE)

    result = await editor.inline(uri, *BLOCK)

    want = expected(SOURCE, BLOCK, options, uri)
    assert texts(result) == ([want] if want else [])
    for line in (want or "").splitlines()[1:]:
        assert not line.strip() or line.startswith(" " * 8)  # never leaves the loop body


async def test_a_block_stream_stops_once_the_block_is_whole(
    start: EditorFactory, slow_emulator: RunningEmulator, tmp_path: Path
) -> None:
    options = options_for(tmp_path, slow_emulator)
    editor = await start(options)
    uri = (tmp_path / "early.py").as_uri()
    # A loop body whose emulated completion (64 tokens) leaves the loop after 28 tokens.
    source = SOURCE.replace("load_items", "collect").replace("items", "found")
    editor.open(uri, source)
    before = await wait_idle(slow_emulator.url)

    result = await asyncio.wait_for(editor.inline(uri, *BLOCK), 120)

    want = expected(source, BLOCK, options, uri)
    assert want and texts(result) == [want]
    after = await wait_idle(slow_emulator.url)
    # the model's next line left the loop body: the stream was closed, not read to its end
    aborted = after.get("cato_emulator_aborted_total", 0) - before.get(
        "cato_emulator_aborted_total", 0
    )
    assert aborted == 1
    status = await editor.command("cato.status")
    assert status["completions"]["stopped_early"] == 1


async def test_the_prompt_shrinks_to_what_the_replicas_can_prefill_within_the_sla(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    big = "".join(f"value_{i} = compute(value_{i - 1}, {i})\n" for i in range(1, 2_000))
    text = big + SOURCE
    line = text.count("\n") - 4  # "    items = "
    editor = await start(options_for(tmp_path, emulator))
    uri = (tmp_path / "big.py").as_uri()
    editor.open(uri, text)
    await wait_for_state(editor, "ready")  # the replicas' rates are known from here
    used = {}
    for sla_ms in (60_000.0, 60.0):
        editor.client.set_configuration({"tasks": {"complete": {"slaMs": sla_ms}}}, section="cato")
        editor.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings=None)
        )
        await settings_hold(editor, sla_ms)
        await editor.inline(uri, line, 12)
        status = await editor.command("cato.status")
        used[sla_ms] = status["completions"]["context_tokens"]
    # with slack: the configured budgets (1536 + 512); a tight SLA: only what fits it
    assert used[60_000.0] == 1536 + 512
    assert 256 <= used[60.0] < 1536 + 512


async def test_snippets_of_other_open_files_reach_the_prompt(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    options = options_for(tmp_path, emulator)
    editor = await start(options)
    other_uri = (tmp_path / "util.py").as_uri()
    other = (
        "def parse_line(line):\n"
        "    return line.strip().split(',')\n"
        "\n\n"
        "def load_items(path):\n"
        "    pass\n"
    )
    editor.open(other_uri, other)
    editor.open((tmp_path / "notes.md").as_uri(), "load_items path line items", "markdown")
    uri = (tmp_path / "a.py").as_uri()
    editor.open(uri, SOURCE)

    result = await editor.inline(uri, *MID_LINE)

    others = [DocumentView(other_uri, other, "python")]
    want = expected(SOURCE, MID_LINE, options, uri, others, tmp_path.as_uri())
    assert want != expected(SOURCE, MID_LINE, options, uri)  # the snippet changes the output
    assert texts(result) == [want]


async def test_fim_family_setting_changes_the_prompt(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    options = options_for(tmp_path, emulator, tasks={"complete": {"fimFamily": "codellama"}})
    editor = await start(options)
    uri = (tmp_path / "a.py").as_uri()
    editor.open(uri, SOURCE)

    result = await editor.inline(uri, *MID_LINE)

    want = expected(SOURCE, MID_LINE, options, uri)
    assert want != expected(SOURCE, MID_LINE, options_for(tmp_path, emulator), uri)
    assert texts(result) == [want]


async def test_completion_fallback_for_clients_without_inline_completion(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    options = options_for(tmp_path, emulator)
    editor = await start(options, full_capabilities(inline=False))
    assert editor.capabilities.inline_completion_provider is None
    assert editor.capabilities.completion_provider is not None
    uri = (tmp_path / "a.py").as_uri()
    editor.open(uri, SOURCE)

    result = await editor.client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=MID_LINE[0], character=MID_LINE[1]),
        )
    )

    assert isinstance(result, types.CompletionList)
    assert len(result.items) == 1
    edit = result.items[0].text_edit
    assert isinstance(edit, types.TextEdit)
    assert edit.new_text == expected(SOURCE, MID_LINE, options, uri)
    assert result.items[0].command is not None


async def test_inline_capable_clients_get_no_completion_provider(
    start: EditorFactory, tmp_path: Path
) -> None:
    editor = await start({"debounceMs": 0})
    assert editor.capabilities.inline_completion_provider is not None
    assert editor.capabilities.completion_provider is None
    assert editor.capabilities.execute_command_provider is not None
    commands = set(editor.capabilities.execute_command_provider.commands)
    assert {"cato.summarize", "cato.translateFile", "cato.generate", "cato.status"} <= commands


# --------------------------------------------------------------------------- cancellation


async def test_a_burst_of_keystrokes_aborts_stale_requests_upstream(
    start: EditorFactory, slow_emulator: RunningEmulator, tmp_path: Path
) -> None:
    options = options_for(tmp_path, slow_emulator)
    editor = await start(options)
    uri = (tmp_path / "burst.py").as_uri()
    editor.open(uri, "def total(values):\n    return \n")
    await wait_for_state(editor, "ready")  # requests reach the replica, not a starting runtime
    before = await wait_idle(slow_emulator.url)

    pending = []
    word = "sum(values) + offset"
    for index, char in enumerate(word[:20]):
        editor.insert(uri, 1, 11 + index, char)
        pending.append(asyncio.ensure_future(editor.inline(uri, 1, 12 + index)))
        await asyncio.sleep(0.03)
    results = await asyncio.wait_for(asyncio.gather(*pending), 120)

    assert [bool(texts(r)) for r in results] == [False] * 19 + [True]
    after = await wait_idle(slow_emulator.url)
    finished = sum(
        after.get(f"vllm:request_success_total:{r}", 0)
        - before.get(f"vllm:request_success_total:{r}", 0)
        for r in ("stop", "length")
    )
    aborted = after.get("cato_emulator_aborted_total", 0) - before.get(
        "cato_emulator_aborted_total", 0
    )
    assert finished == 1  # only the last request ran to its end
    assert aborted >= 1  # stale requests that reached the replica were aborted there
    status = await editor.command("cato.status")
    # each stale request was superseded, or found the cursor inside the word typed since
    counts = status["completions"]
    assert counts["superseded"] + counts["skipped"] == 19 and counts["superseded"] > 0


async def test_cancel_request_aborts_the_upstream_sequence(
    start: EditorFactory, slow_emulator: RunningEmulator, tmp_path: Path
) -> None:
    options = options_for(tmp_path, slow_emulator)
    editor = await start(options)
    uri = (tmp_path / "c.py").as_uri()
    editor.open(uri, SOURCE)
    before = await wait_idle(slow_emulator.url)
    params = types.InlineCompletionParams(
        context=types.InlineCompletionContext(
            trigger_kind=types.InlineCompletionTriggerKind.Invoked
        ),
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=MID_LINE[0], character=MID_LINE[1]),
    )
    future = asyncio.ensure_future(
        editor.client.protocol.send_request_async(  # type: ignore[no-untyped-call]
            types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="cancel-me"
        )
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not await busy(slow_emulator.url):
        assert loop.time() < deadline, "the request never reached the emulator"
        await asyncio.sleep(0.05)

    editor.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))

    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(future, 60)
    after = await wait_idle(slow_emulator.url)
    assert after["cato_emulator_aborted_total"] - before.get("cato_emulator_aborted_total", 0) == 1
    # the server is still there
    assert (await editor.command("cato.status"))["completions"]["cancelled"] == 1


async def test_typing_through_is_answered_from_the_cache(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    options = options_for(tmp_path, emulator)
    editor = await start(options)
    uri = (tmp_path / "t.py").as_uri()
    editor.open(uri, SOURCE)
    first = texts(await editor.inline(uri, *MID_LINE))
    assert len(first) == 1 and len(first[0]) >= 3
    suggestion = first[0]
    before = await wait_idle(emulator.url)

    editor.insert(uri, MID_LINE[0], MID_LINE[1], suggestion[:2])
    rest = texts(await editor.inline(uri, MID_LINE[0], MID_LINE[1] + 2))
    editor.insert(uri, MID_LINE[0], MID_LINE[1] + 2, "#")  # diverges: no reuse
    after = await wait_idle(emulator.url)

    assert rest == [suggestion[2:]]
    assert after["vllm:prompt_tokens_total"] == before["vllm:prompt_tokens_total"]
    status = await editor.command("cato.status")
    assert status["completions"]["cache_hits"] == 1
    assert status["completions"]["upstream"] == 1


# --------------------------------------------------------------------------- settings


async def settings_after(editor: Editor, key: str, value: Any) -> dict[str, Any]:
    """The server's settings once `key` has `value` (configuration is pulled asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        settings: dict[str, Any] = (await editor.command("cato.status"))["settings"]
        if settings[key] == value or loop.time() > deadline:
            return settings
        await asyncio.sleep(0.05)


async def test_settings_from_workspace_configuration_are_reread(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor = await start(options_for(tmp_path, emulator))
    uri = (tmp_path / "s.py").as_uri()
    editor.open(uri, SOURCE)
    assert texts(await editor.inline(uri, *MID_LINE))

    editor.client.set_configuration({"languages": ["rust"]}, section="cato")
    editor.client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings=None)
    )
    assert (await settings_after(editor, "languages", ["rust"]))["languages"] == ["rust"]
    before = await wait_idle(emulator.url)
    assert texts(await editor.inline(uri, 3, 11)) == []  # python is off now
    after = await wait_idle(emulator.url)
    assert after["vllm:prompt_tokens_total"] == before["vllm:prompt_tokens_total"]

    editor.client.set_configuration({"debounceMs": "soon"}, section="cato")
    editor.client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings=None)
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not any("debounceMs" in m.message for m in editor.client.messages):
        assert loop.time() < deadline, "no message about the invalid setting"
        await asyncio.sleep(0.05)
    settings = (await editor.command("cato.status"))["settings"]
    assert settings["languages"] == ["rust"]  # the invalid change was refused as a whole
    assert settings["debounce_ms"] == 0


# --------------------------------------------------------------------------- transports


@pytest.fixture
async def service(emulator: RunningEmulator) -> AsyncIterator[str]:
    """`cato serve`'s app in this event loop, with one user."""
    orchestrator = Orchestrator([ReplicaSpec(id="r1", url=emulator.url, model="tiny")])
    users = [User(name="dev", token_sha256=hash_token(TOKEN))]
    app = create_app(orchestrator, ServiceOptions(users=users, models=["tiny"]))
    runner = await serve_app(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
        await orchestrator.close()


async def test_remote_mode_against_the_team_service(
    start: EditorFactory, emulator: RunningEmulator, service: str, tmp_path: Path
) -> None:
    options = {"mode": "remote", "url": service, "token": TOKEN, "debounceMs": 0}
    editor = await start(options)
    uri = (tmp_path / "r.py").as_uri()
    editor.open(uri, SOURCE)

    result = await editor.inline(uri, *MID_LINE)

    assert texts(result) == [expected(SOURCE, MID_LINE, options, uri)]
    # a lone surrogate (valid JSON, invalid Unicode) must not break the HTTP request
    editor.close(uri)  # no snippets from it in the next prompt
    odd_uri = (tmp_path / "odd.py").as_uri()
    odd = SOURCE.replace("import os", "import os  # \ud800")
    editor.open(odd_uri, odd)
    assert texts(await editor.inline(odd_uri, *MID_LINE)) == [
        expected(odd, MID_LINE, options, odd_uri)
    ]
    status = await editor.command("cato.status")
    assert status["mode"] == "remote" and status["state"] == "ready"
    assert status["settings"]["token"] == "set"
    assert TOKEN not in str(status)


async def test_unauthorized_is_shown_once_and_never_logs_the_token(
    start: EditorFactory, service: str, tmp_path: Path
) -> None:
    wrong = "wrong-token-0123456789"
    editor = await start({"mode": "remote", "url": service, "token": wrong, "debounceMs": 0})
    uri = (tmp_path / "u.py").as_uri()
    editor.open(uri, SOURCE)

    for column in (10, 11, 12):
        assert texts(await editor.inline(uri, 3, column)) == []

    shown = [m for m in editor.client.messages if "token" in m.message]
    assert len(shown) == 1
    assert shown[0].type == types.MessageType.Error
    logs = " ".join(m.message for m in editor.client.log_messages)
    assert "401" in logs
    assert wrong not in logs and all(wrong not in m.message for m in editor.client.messages)
    status = await editor.command("cato.status")
    assert status["state"] == "unauthorized" and status["reachable"] is False


async def test_unreachable_orchestrator_gives_empty_results(
    start: EditorFactory, tmp_path: Path
) -> None:
    editor = await start({"mode": "remote", "url": "http://127.0.0.1:9", "debounceMs": 0})
    uri = (tmp_path / "x.py").as_uri()
    editor.open(uri, SOURCE)
    assert texts(await editor.inline(uri, *MID_LINE)) == []
    assert texts(await editor.inline(uri, 3, 11)) == []
    assert len([m for m in editor.client.messages if "reached" in m.message]) == 1


async def test_embedded_built_in_default_starts_replicas_at_initialize(
    start: EditorFactory, tmp_path: Path
) -> None:
    editor = await start({"debounceMs": 0})
    # No request yet: the replicas start with the server, and the status says so.
    await wait_for_state(editor, "ready", 120)
    states = [s["state"] for s in editor.statuses]
    assert states[0] == "starting", states
    # Ready once one replica is: the second joins when it is ready too.
    assert editor.statuses[-1]["replicasReady"] >= 1
    assert editor.statuses[-1]["replicasTotal"] == 2
    uri = (tmp_path / "d.py").as_uri()
    editor.open(uri, SOURCE)

    result = await asyncio.wait_for(editor.inline(uri, *MID_LINE), 120)

    assert texts(result) == [expected(SOURCE, MID_LINE, {"debounceMs": 0}, uri)]
    async with asyncio.timeout(120):
        while (status := await editor.command("cato.status"))["replicasReady"] < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    urls = [replica["url"] for replica in status["orchestrator"]["replicas"]]
    assert all(await asyncio.gather(*(asyncio.to_thread(health_status, u) for u in urls)))

    await editor.terminate()  # SIGTERM: the replica processes go with the server

    assert not any(await asyncio.gather(*(asyncio.to_thread(health_status, u) for u in urls)))


async def test_invalid_initial_settings_keep_the_server_idle(
    start: EditorFactory, tmp_path: Path
) -> None:
    editor = await start({"mode": "remote", "debounceMs": 0})  # no url
    uri = (tmp_path / "i.py").as_uri()
    editor.open(uri, SOURCE)

    assert texts(await editor.inline(uri, *MID_LINE)) == []

    assert [m.type for m in editor.client.messages] == [types.MessageType.Error]
    assert "url" in editor.client.messages[0].message
    with pytest.raises(JsonRpcException) as refused:
        await editor.command(
            "cato.summarize", {"uri": uri, "position": {"line": 3, "character": 4}}
        )
    assert refused.value.code == -32803
    status = await editor.command("cato.status")
    assert status["state"] == "settings" and status["replicasTotal"] == 0
