"""Shared pieces of the language-server tests: a real client over stdio, configs, metrics.

The server under test is always ``python -m cato_lsp`` in a child process, driven by
pytest-lsp's client. Emulators are started by the tests themselves (so their
``/metrics`` can be read) and reached through ``engine = "external"`` models.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from orchestrator.emulator.process import RunningEmulator

SERVER_COMMAND = [sys.executable, "-m", "cato_lsp"]
WAIT_S = 60.0  # generous: the machine is shared


def full_capabilities(
    *, inline: bool = True, encoding: str | None = None
) -> types.ClientCapabilities:
    """An editor with everything the server can use (inline completion optional)."""
    general = None
    if encoding is not None:
        general = types.GeneralClientCapabilities(position_encodings=[encoding])
    return types.ClientCapabilities(
        general=general,
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities() if inline else None,
            completion=types.CompletionClientCapabilities(),
            code_action=types.CodeActionClientCapabilities(
                code_action_literal_support=types.ClientCodeActionLiteralOptions(
                    code_action_kind=types.ClientCodeActionKindOptions(
                        value_set=[types.CodeActionKind.Refactor, types.CodeActionKind.Source]
                    )
                )
            ),
        ),
        window=types.WindowClientCapabilities(
            work_done_progress=True,
            show_document=types.ShowDocumentClientCapabilities(support=True),
        ),
        workspace=types.WorkspaceClientCapabilities(
            apply_edit=True,
            configuration=True,
            workspace_edit=types.WorkspaceEditClientCapabilities(
                document_changes=True,
                resource_operations=[types.ResourceOperationKind.Create],
            ),
        ),
    )


def external_config(path: Path, emulator: RunningEmulator, model: str = "tiny") -> Path:
    """A cato.toml whose one model is an emulator the test started."""
    path.write_text(
        f'[[models]]\nname = "{model}"\nengine = "external"\nurl = "{emulator.url}"\n',
        encoding="utf-8",
    )
    return path


def metrics(url: str) -> dict[str, float]:
    """The emulator's Prometheus samples, summed over labels."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        body = response.read().decode()
    samples: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        samples[name] = samples.get(name, 0.0) + float(value)
        if "finished_reason=" in name_labels:
            reason = name_labels.split('finished_reason="', 1)[1].split('"', 1)[0]
            samples[f"{name}:{reason}"] = float(value)
    return samples


async def metrics_async(url: str) -> dict[str, float]:
    return await asyncio.to_thread(metrics, url)


async def wait_idle(url: str, timeout_s: float = WAIT_S) -> dict[str, float]:
    """Metrics once the emulator runs and queues nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        sample = await metrics_async(url)
        busy = sample.get("vllm:num_requests_running", 0) + sample.get(
            "vllm:num_requests_waiting", 0
        )
        if busy == 0 or loop.time() > deadline:
            return sample
        await asyncio.sleep(0.05)


@dataclass
class Editor:
    """A test client plus what the server asked of it."""

    client: LanguageClient
    edits: list[types.WorkspaceEdit] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)
    version: dict[str, int] = field(default_factory=dict)
    initialized: types.InitializeResult | None = None

    @property
    def capabilities(self) -> types.ServerCapabilities:
        assert self.initialized is not None
        return self.initialized.capabilities

    def open(self, uri: str, text: str, language: str = "python") -> None:
        self.version[uri] = 1
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)
            )
        )

    async def terminate(self) -> int:
        """SIGTERM the server, as an editor does with one that does not exit; its exit code."""
        process = self.client._server
        assert process is not None
        self.client.capabilities = None  # no shutdown at teardown: it is gone
        process.terminate()
        return await asyncio.wait_for(process.wait(), WAIT_S)

    def close(self, uri: str) -> None:
        self.client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )

    def insert(self, uri: str, line: int, character: int, text: str) -> None:
        self.version[uri] += 1
        at = types.Position(line=line, character=character)
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(
                    uri=uri, version=self.version[uri]
                ),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(start=at, end=at), text=text
                    )
                ],
            )
        )

    def inline(self, uri: str, line: int, character: int) -> Awaitable[Any]:
        return self.client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic
                ),
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=line, character=character),
            )
        )

    async def command(self, name: str, *arguments: Any) -> Any:
        return await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=name, arguments=list(arguments))
        )


def _fix_code_action_union(client: LanguageClient) -> None:
    """lsprotocol 2025.0's hook reads every CodeAction that has a `command` as a Command
    (with the object turned into a string); tell the two apart by the field's type."""
    converter = client.protocol._converter

    def structure(obj: Any, _: type) -> types.Command | types.CodeAction:
        if isinstance(obj.get("command"), str):
            return converter.structure(obj, types.Command)
        return converter.structure(obj, types.CodeAction)

    converter.register_structure_hook(Union[types.Command, types.CodeAction], structure)  # noqa: UP007


def _plain(value: Any) -> Any:
    """pygls hands unknown notifications' params over as named tuples: back to JSON shapes."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _record(editor: Editor) -> None:
    client = editor.client
    _fix_code_action_union(client)

    @client.feature(types.WORKSPACE_APPLY_EDIT)  # type: ignore[untyped-decorator]
    def apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        editor.edits.append(params.edit)
        return types.ApplyWorkspaceEditResult(applied=True)

    @client.feature("cato/status")  # type: ignore[untyped-decorator]
    def status(params: Any) -> None:
        editor.statuses.append(_plain(params))


EditorFactory = Callable[..., Awaitable[Editor]]


@asynccontextmanager
async def editors(root: Path) -> AsyncIterator[EditorFactory]:
    """Start servers on demand; every one is shut down (and its process gone) at the end."""
    started: list[Editor] = []

    async def start(
        options: dict[str, Any] | None = None,
        capabilities: types.ClientCapabilities | None = None,
        initialize: bool = True,
    ) -> Editor:
        client = await ClientServerConfig(server_command=SERVER_COMMAND).start()
        assert isinstance(client, LanguageClient)
        editor = Editor(client)
        _record(editor)
        started.append(editor)
        if initialize:
            editor.initialized = await client.initialize_session(
                types.InitializeParams(
                    capabilities=capabilities or full_capabilities(),
                    initialization_options=options,
                    root_uri=root.as_uri(),
                )
            )
        return editor

    try:
        yield start
    finally:
        problems = [await _close(editor.client) for editor in started]
        assert not any(problems), problems


async def _close(client: LanguageClient) -> str | None:
    """Shut the server down as an editor would; make sure its process is gone either way.

    Returns what went wrong (a server that does not exit after `exit` is a bug).
    """
    process = client._server
    problem = None
    if client.capabilities is not None and client.error is None:
        try:
            await asyncio.wait_for(client.shutdown_session(), WAIT_S)
        except (TimeoutError, RuntimeError) as exc:
            problem = f"shutdown failed: {exc!r}"
    if process is not None and process.returncode is None:
        if process.stdin is not None:
            process.stdin.close()  # end of input: the server exits by itself
        try:
            await asyncio.wait_for(process.wait(), WAIT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            problem = problem or "the server ignored the end of its input"
    await client.stop()  # type: ignore[no-untyped-call]
    return problem
