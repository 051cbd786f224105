"""Bad input: the server answers with a JSON-RPC error or an empty result, and stays up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from lsp_fixtures import (
    SERVER_COMMAND,
    WAIT_S,
    Editor,
    EditorFactory,
    editors,
    external_config,
    full_capabilities,
    wait_idle,
)
from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcMethodNotFound,
    JsonRpcServerNotInitialized,
)
from pygls.protocol import LanguageServerProtocol

from cato_lsp.context import offset_at
from cato_lsp.features.documents import DocumentView
from cato_lsp.features.inline_completion import choose_family, prepare
from cato_lsp.settings import parse_settings
from orchestrator.emulator.process import RunningEmulator, launch_emulator
from orchestrator.emulator.textgen import TextGenerator
from orchestrator.engine_model import load_profile

CODE = "def area(width, height):\n    result = \n    return result\n"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(model="tiny", profile="tiny@cpu", speed=4.0) as running:
        yield running


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[EditorFactory]:
    async with editors(tmp_path) as factory:
        yield factory


async def ready(start: EditorFactory, emulator: RunningEmulator, tmp_path: Path) -> Editor:
    config = external_config(tmp_path / "cato.toml", emulator)
    return await start(OPTIONS | {"config": str(config)})


# Fixed budgets: the expected prompts here must not depend on the replicas' learned rates.
OPTIONS: dict[str, Any] = {"debounceMs": 0, "context": {"fitSla": False}}


def expected(text: str, line: int, character: int, uri: str) -> str | None:
    settings = parse_settings(OPTIONS)
    offset = offset_at(text, line, character)
    prepared = prepare(
        DocumentView(uri, text, "python"), offset, [], settings, choose_family(settings, None)
    )
    assert prepared is not None
    profile = load_profile("tiny@cpu")
    request = prepared.request
    plan = TextGenerator(0, profile.output_mean_tokens, profile.output_sigma).plan(
        request.prompt or "", request.max_tokens or 64, stop=request.stop
    )
    return prepared.finish(plan.text)


def texts(result: Any) -> list[str]:
    assert isinstance(result, types.InlineCompletionList)
    return [str(item.insert_text) for item in result.items]


async def still_answers(editor: Editor, tmp_path: Path) -> None:
    uri = (tmp_path / "alive.py").as_uri()
    editor.open(uri, CODE)
    assert texts(await editor.inline(uri, 1, 13)) == [expected(CODE, 1, 13, uri)]


async def test_requests_before_initialize_are_refused(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor = await start(initialize=False)
    params = types.InlineCompletionParams(
        context=types.InlineCompletionContext(
            trigger_kind=types.InlineCompletionTriggerKind.Invoked
        ),
        text_document=types.TextDocumentIdentifier(uri=(tmp_path / "a.py").as_uri()),
        position=types.Position(line=0, character=0),
    )
    # pytest-lsp's own wrapper refuses to send before initialize; pygls' does not
    with pytest.raises(JsonRpcException) as refused:
        await LanguageServerProtocol.send_request_async(
            editor.client.protocol, types.TEXT_DOCUMENT_INLINE_COMPLETION, params
        )
    assert refused.value.code == JsonRpcServerNotInitialized.CODE
    config = external_config(tmp_path / "cato.toml", emulator)
    editor.initialized = await editor.client.initialize_session(
        types.InitializeParams(
            capabilities=full_capabilities(),
            initialization_options={"config": str(config), "debounceMs": 0},
        )
    )
    await still_answers(editor, tmp_path)


async def test_positions_that_do_not_exist_are_invalid_params(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor = await ready(start, emulator, tmp_path)
    uri = (tmp_path / "emoji.py").as_uri()
    editor.open(uri, "face = '\U0001f600'\nx = 1\n")

    with pytest.raises(JsonRpcInvalidParams):
        await editor.inline(uri, 40, 0)  # past the last line
    with pytest.raises(JsonRpcInvalidParams):
        await editor.inline(uri, 0, 9)  # between the two UTF-16 units of the emoji
    with pytest.raises(JsonRpcInvalidParams):
        await editor.client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=7, character=0),
            )
        )
    # past the end of a line is the line's end, as LSP says
    assert texts(await editor.inline(uri, 1, 99)) == texts(await editor.inline(uri, 1, 5))
    assert texts(await editor.inline((tmp_path / "never-opened.py").as_uri(), 0, 0)) == []
    await still_answers(editor, tmp_path)


async def test_unknown_methods_are_method_not_found(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor = await ready(start, emulator, tmp_path)
    with pytest.raises(JsonRpcMethodNotFound):
        await editor.client.protocol.send_request_async(  # type: ignore[no-untyped-call]
            "cato/noSuchMethod", {}
        )
    await still_answers(editor, tmp_path)


async def test_crlf_documents_and_their_edits(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor = await ready(start, emulator, tmp_path)
    uri = (tmp_path / "crlf.py").as_uri()
    text = "def area(width, height):\r\n    \r\n    return result\r\n"
    editor.open(uri, text)

    block = texts(await editor.inline(uri, 1, 4))
    editor.insert(uri, 1, 4, "result = ")
    line = texts(await editor.inline(uri, 1, 13))

    edited = "def area(width, height):\r\n    result = \r\n    return result\r\n"
    want_block = expected(text, 1, 4, uri)
    assert block == ([want_block] if want_block else [])
    assert "\n" not in (want_block or "").replace("\r\n", "")  # CRLF kept in the suggestion
    assert line == [expected(edited, 1, 13, uri)]


async def test_edits_count_lines_as_lsp_does(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A form feed or U+2028 does not end a line in LSP (Python's splitlines says it does)."""
    editor = await ready(start, emulator, tmp_path)
    uri = (tmp_path / "ff.py").as_uri()
    text = "# part one\x0c part two \u2028 same line\ndef area(width, height):\n    \n"
    editor.open(uri, text)

    editor.insert(uri, 2, 4, "result = ")

    edited = text.replace("\n    \n", "\n    result = \n")
    assert texts(await editor.inline(uri, 2, 13)) == [expected(edited, 2, 13, uri)]


async def test_a_5_mb_document(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor = await ready(start, emulator, tmp_path)
    uri = (tmp_path / "big.py").as_uri()
    filler = "".join(f"value_{i} = compute(value_{i - 1}, {i})\n" for i in range(1, 160_000))
    text = filler + CODE
    assert len(text) > 5_000_000
    last = text.count("\n") - 2  # the line "    result = "
    editor.open(uri, text)

    result = texts(await editor.inline(uri, last, 13))
    editor.insert(uri, 0, 0, "# header\n")
    shifted = texts(await editor.inline(uri, last + 1, 13))

    assert result == [expected(text, last, 13, uri)]
    assert shifted == [expected("# header\n" + text, last + 1, 13, uri)]


async def test_binary_content_gets_no_completion(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor = await ready(start, emulator, tmp_path)
    uri = (tmp_path / "blob.py").as_uri()
    editor.open(uri, "\x00\x01\x02PNG\x00\x1a" * 100 + "\nx = ")
    before = await wait_idle(emulator.url)

    assert texts(await editor.inline(uri, 1, 4)) == []

    after = await wait_idle(emulator.url)
    assert after["vllm:prompt_tokens_total"] == before["vllm:prompt_tokens_total"]
    await still_answers(editor, tmp_path)


async def test_bad_command_arguments_keep_the_server_up(
    start: EditorFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    editor = await ready(start, emulator, tmp_path)
    for arguments in ([], [42], [{"uri": ""}], [{"uri": "file:///x.py", "range": "everything"}]):
        with pytest.raises(JsonRpcException) as raised:
            await editor.command("cato.summarize", *arguments)
        assert raised.value.code == -32602
    with pytest.raises(JsonRpcInvalidParams):
        await editor.command("cato.accept", {"id": ""})
    await still_answers(editor, tmp_path)


async def _rpc(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: dict[str, Any]
) -> dict[str, Any] | None:
    """Send one message; for a request, return its response (skipping notifications)."""
    body = json.dumps({"jsonrpc": "2.0", **message}).encode()
    writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    while "id" in message:
        header = await reader.readuntil(b"\r\n\r\n")
        length = int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        reply: dict[str, Any] = json.loads(await reader.readexactly(length))
        if reply.get("id") == message["id"]:
            return reply
    return None


async def test_tcp_transport_for_debugging() -> None:
    process = await asyncio.create_subprocess_exec(
        *SERVER_COMMAND, "--tcp", "127.0.0.1:0", stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        line = (await asyncio.wait_for(process.stderr.readline(), WAIT_S)).decode()
        host, port = line.split("('", 1)[1].split(")", 1)[0].replace("'", "").split(", ")
        reader, writer = await asyncio.open_connection(host, int(port))
        init = await _rpc(
            reader, writer, {"id": 1, "method": "initialize", "params": {"capabilities": {}}}
        )
        assert init is not None and "completionProvider" in init["result"]["capabilities"]
        assert await _rpc(reader, writer, {"id": 2, "method": "shutdown"}) == {
            "jsonrpc": "2.0",
            "id": 2,
            "result": None,
        }
        await _rpc(reader, writer, {"method": "exit"})
        assert await asyncio.wait_for(process.wait(), WAIT_S) == 0
        writer.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
