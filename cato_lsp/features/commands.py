"""`workspace/executeCommand`: summarize, generate, translate a file, status, accept.

Each long command runs its task under a server-created `$/progress` token
(begin / report / end) when the client supports it, and stops when the client cancels
that progress (`window/workDoneProgress/cancel`) or the request (`$/cancelRequest`):
the orchestrator stream is closed, which cancels every model call of the task.
Edits reach the editor through `workspace/applyEdit`; a translation is written to disk
next to its source (every editor then has the same saved file) and opened with
`window/showDocument`. Problems the orchestrator found in a translation are
published as diagnostics on the new file until it is translated again or closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import unquote

from lsprotocol import types
from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from cato_lsp.backend import BackendError, Orchestrator
from cato_lsp.context import position_at
from cato_lsp.features import code_actions as actions
from cato_lsp.features.diagnostics import line_shift, translation_diagnostics
from cato_lsp.features.documents import (
    LANGUAGE_EXTENSIONS,
    DocumentView,
    encoding_name,
    valid_unicode,
    view,
)
from cato_lsp.features.inline_completion import TaskObserver
from cato_lsp.postprocess import complete_lines
from cato_lsp.settings import Settings
from orchestrator.api import TaskEvent, TaskKind, TaskRequest

REQUEST_FAILED: Final = -32803
"""LSP's `RequestFailed`: the request was valid but the orchestrator could not serve it."""


class _Args(BaseModel):
    model_config = ConfigDict(
        extra="ignore", alias_generator=AliasGenerator(validation_alias=to_camel)
    )


class _Pos(_Args):
    line: int = Field(ge=0)
    character: int = Field(ge=0)


class _Range(_Args):
    start: _Pos
    end: _Pos


class Where(_Args):
    """A document and a cursor or selection, as code actions pass them."""

    uri: str = Field(min_length=1)
    range: _Range | None = None
    position: _Pos | None = None

    def lines(self) -> tuple[int, int, bool]:
        """(first line, last line, whether a selection was given)."""
        if self.range is not None and self.range.start != self.range.end:
            last = self.range.end.line
            if self.range.end.character == 0 and last > self.range.start.line:
                last -= 1  # a selection of whole lines ends at the next line's start
            return self.range.start.line, last, True
        cursor = self.position or (self.range.start if self.range else _Pos(line=0, character=0))
        return cursor.line, cursor.line, False


class TranslateArgs(_Args):
    uri: str = Field(min_length=1)
    target_language: str = Field(min_length=1, max_length=64)


class AcceptArgs(_Args):
    id: str = Field(min_length=1, max_length=64)


_ArgsT = TypeVar("_ArgsT", bound=_Args)


def parse_args(model: type[_ArgsT], arguments: Sequence[Any]) -> _ArgsT:
    """The first command argument as `model`; anything else is InvalidParams."""
    if not arguments or not isinstance(arguments[0], dict):
        raise JsonRpcInvalidParams(f"expected one object argument ({model.__name__})")
    try:
        return model.model_validate(arguments[0])
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'argument'}: {e['msg']}" for e in exc.errors()
        )
        raise JsonRpcInvalidParams(f"invalid arguments: {problems}") from None


def _failed(message: str) -> JsonRpcException:
    return JsonRpcException(message, code=REQUEST_FAILED)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _reached(done: TaskEvent, limit: int | None) -> bool:
    """Whether the output stopped at its token limit (so its last line may be cut)."""
    usage = done.usage
    return limit is not None and usage is not None and usage.completion_tokens >= limit


def target_path(source: str, target_language: str, exists: Callable[[str], bool]) -> str:
    """A free path next to `source` for its translation (`x.py` -> `x.js`, `x.2.js`, ...)."""
    ext = LANGUAGE_EXTENSIONS.get(target_language.lower(), "." + target_language.lower())
    base = os.path.splitext(source)[0]
    candidate = base + ext
    counter = 2
    while exists(candidate) or candidate == source:
        candidate = f"{base}.{counter}{ext}"
        counter += 1
    return candidate


@dataclass
class CommandHost:
    """What the commands use of the server."""

    ls: LanguageServer
    backend: Callable[[], Orchestrator]
    settings: Callable[[], Settings]
    observer: TaskObserver


@dataclass
class _Run:
    """A task run under a progress token."""

    token: str | None
    done: TaskEvent | None = None
    cancelled: bool = False


class Commands:
    """Runs the commands; `cancel_progress` stops the one holding a progress token."""

    def __init__(self, host: CommandHost) -> None:
        self.host = host
        self._by_token: dict[str, asyncio.Task[TaskEvent]] = {}
        self._diagnosed: dict[str, str] = {}  # unquoted URI -> URI published to

    # -- plumbing -------------------------------------------------------------------

    @property
    def _caps(self) -> types.ClientCapabilities:
        return self.host.ls.client_capabilities

    def _document(self, uri: str) -> DocumentView:
        doc = view(self.host.ls.workspace, uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"{uri} is not an open document")
        return doc

    def _request(self, kind: TaskKind, doc: DocumentView, code: str, **extra: Any) -> TaskRequest:
        settings = self.host.settings()
        task = settings.task(kind)
        return TaskRequest(
            kind=kind,
            code=valid_unicode(code),
            language=doc.language[:64],
            model=task.model,
            sla=settings.sla(kind),
            max_tokens=task.max_tokens,
            user=settings.user,
            **extra,
        )

    async def _begin(self, title: str) -> str | None:
        window = self._caps.window
        if window is None or not window.work_done_progress:
            return None
        token = f"cato-{uuid.uuid4().hex[:12]}"
        progress = self.host.ls.work_done_progress
        await progress.create_async(token)
        progress.begin(
            token, types.WorkDoneProgressBegin(title=title, cancellable=True, percentage=0)
        )
        return token

    def _report(self, token: str | None, event: TaskEvent) -> None:
        if token is None or event.progress is None or event.state != "finished":
            return
        percentage = int(event.progress * 100)
        message = f"{event.node} done" if event.node else None
        self.host.ls.work_done_progress.report(
            token, types.WorkDoneProgressReport(percentage=percentage, message=message)
        )

    def _end(self, token: str | None, message: str) -> None:
        if token is None:
            return
        self.host.ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
        self.host.ls.work_done_progress.tokens.pop(token, None)

    async def _consume(self, request: TaskRequest, token: str | None) -> TaskEvent:
        timeout = self.host.settings().request_timeout_s
        async with asyncio.timeout(timeout):
            stream = self.host.backend().submit(request)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    if event.type == "node":
                        self._report(token, event)
                    elif event.type == "done":
                        self.host.observer.task_done(
                            request.kind.value, event.ttft_ms, event.sla_met
                        )
                        return event
                    elif event.type == "error":
                        raise _failed(f"{request.kind.value} failed: {event.error}")
        raise _failed(f"{request.kind.value}: the orchestrator ended the task without a result")

    async def _run(self, request: TaskRequest, title: str) -> _Run:
        """Run a task under progress; cancelled through progress -> `cancelled`."""
        run = _Run(await self._begin(title))
        task = asyncio.create_task(self._consume(request, run.token))
        if run.token is not None:
            self._by_token[run.token] = task
        outcome = "Failed"
        try:
            run.done = await task
            outcome = "Done"
        except asyncio.CancelledError:
            outcome = "Cancelled"
            if task.cancelled() and not _cancelling():
                run.cancelled = True
                return run
            raise
        except BackendError as exc:
            self.host.observer.task_failed(exc.code, str(exc))
            raise _failed(str(exc)) from exc
        except TimeoutError as exc:
            raise _failed(f"{request.kind.value}: no result in time") from exc
        finally:
            if run.token is not None:
                self._by_token.pop(run.token, None)
            self._end(run.token, outcome)
        return run

    def _output_limit(self, request: TaskRequest) -> int | None:
        if request.max_tokens is not None:
            return request.max_tokens
        try:
            return self.host.backend().default_max_tokens(request.kind)
        except BackendError:
            return None

    def cancel_progress(self, token: str) -> bool:
        task = self._by_token.get(token)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def _apply(self, label: str, edit: types.WorkspaceEdit) -> bool:
        result = await self.host.ls.workspace_apply_edit_async(
            types.ApplyWorkspaceEditParams(edit=edit, label=label)
        )
        return bool(result is not None and result.applied)

    def _document_edit(self, doc: DocumentView, edits: list[types.TextEdit]) -> types.WorkspaceEdit:
        workspace_caps = self._caps.workspace
        edit_caps = workspace_caps.workspace_edit if workspace_caps else None
        if edit_caps is not None and edit_caps.document_changes:
            identifier = types.OptionalVersionedTextDocumentIdentifier(
                uri=doc.uri, version=doc.version
            )
            return types.WorkspaceEdit(
                document_changes=[types.TextDocumentEdit(text_document=identifier, edits=edits)]
            )
        return types.WorkspaceEdit(changes={doc.uri: edits})

    def _position(self, doc: DocumentView, offset: int) -> types.Position:
        pos = position_at(doc.text, offset, encoding_name(self.host.ls.workspace.position_encoding))
        return types.Position(line=pos.line, character=pos.character)

    def _insert_at_line(self, doc: DocumentView, line: int, text: str) -> types.TextEdit:
        """Insert `text` at the start of `line` (or after the last line's end)."""
        lines = actions.split_lines(doc.text)
        if line >= len(lines):
            end = self._position(doc, len(doc.text))
            prefix = doc.line_ending() if doc.text and not doc.text.endswith(("\n", "\r")) else ""
            return types.TextEdit(range=types.Range(start=end, end=end), new_text=prefix + text)
        start = types.Position(line=line, character=0)
        return types.TextEdit(range=types.Range(start=start, end=start), new_text=text)

    # -- commands -------------------------------------------------------------------

    async def summarize(self, arguments: Sequence[Any]) -> dict[str, Any]:
        """Summarize the selection or the enclosing function into a docstring or comment."""
        where = parse_args(Where, arguments)
        doc = self._document(where.uri)
        first, last, selected = where.lines()
        region = (
            actions.selection(doc, first, last)
            if selected
            else actions.enclosing_function(doc, first)
        )
        if region is None:
            raise JsonRpcInvalidParams(
                "nothing to summarize: select code or place the cursor in a function"
            )
        run = await self._run(
            self._request(TaskKind.SUMMARIZE, doc, region.text), "CATO: summarize"
        )
        if run.cancelled or run.done is None:
            return {"cancelled": True, "applied": False}
        summary = actions.clean_model_text(run.done.result or "")
        if not summary.strip():
            raise _failed("the model returned an empty summary")
        edit = self._summary_edit(doc, region, summary)
        applied = await self._apply("CATO: summarize", self._document_edit(doc, [edit]))
        return {"applied": applied, "summary": summary, "line": edit.range.start.line}

    def _summary_edit(
        self, doc: DocumentView, region: actions.Region, summary: str
    ) -> types.TextEdit:
        eol = doc.line_ending()
        if region.body_line is not None:
            text = actions.docstring_text(summary, region.body_indent, eol)
            if region.docstring is not None:
                first, last = region.docstring
                start = types.Position(line=first, character=0)
                end = types.Position(line=last + 1, character=0)
                if last + 1 >= len(actions.split_lines(doc.text)):
                    end = self._position(doc, len(doc.text))
                    text = text.rstrip("\r\n")
                return types.TextEdit(range=types.Range(start=start, end=end), new_text=text)
            return self._insert_at_line(doc, region.body_line, text)
        text = actions.comment_text(summary, region.indent, doc.language, eol)
        return self._insert_at_line(doc, region.first, text)

    async def generate(self, arguments: Sequence[Any]) -> dict[str, Any]:
        """Code for the comment, docstring or selection at the cursor, inserted below it."""
        where = parse_args(Where, arguments)
        doc = self._document(where.uri)
        first, last, selected = where.lines()
        region = actions.selection(doc, first, last) if selected else actions.comment_at(doc, first)
        if region is None:
            raise JsonRpcInvalidParams(
                "nothing to generate from: no comment or docstring at the cursor"
            )
        request = self._request(TaskKind.GENERATE, doc, region.text)
        run = await self._run(request, "CATO: generate")
        if run.cancelled or run.done is None:
            return {"cancelled": True, "applied": False}
        code = actions.clean_model_text(run.done.result or "")
        limit = self._output_limit(request)
        truncated = _reached(run.done, limit)
        if truncated:
            code = complete_lines(code)  # the last line was cut mid-way
        if not code.strip():
            raise _failed(
                f"the model's code was cut at {limit} tokens before its first line ended;"
                " raise tasks.generate.maxTokens"
                if truncated
                else "the model returned no code"
            )
        if truncated:
            self.host.ls.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Warning,
                    message=f"CATO: the generated code reached its {limit}-token limit; "
                    "kept up to its last complete line (raise tasks.generate.maxTokens "
                    "for more)",
                )
            )
        text = actions.code_text(code, region.indent, doc.line_ending())
        edit = self._insert_at_line(doc, region.last + 1, text)
        applied = await self._apply("CATO: generate", self._document_edit(doc, [edit]))
        return {
            "applied": applied,
            "code": code,
            "line": edit.range.start.line,
            "diagnostics": list(run.done.diagnostics),
            "truncated": truncated,
        }

    async def translate_file(self, arguments: Sequence[Any]) -> dict[str, Any]:
        """Translate a whole file into a new file next to it, and open that file."""
        args = parse_args(TranslateArgs, arguments)
        doc = self._document(args.uri)
        source = to_fs_path(doc.uri)
        if source is None:
            raise JsonRpcInvalidParams(f"{doc.uri} is not a file; cannot place its translation")
        if not doc.text.strip():
            raise JsonRpcInvalidParams(f"{doc.uri} is empty")
        target = args.target_language.lower()
        request = self._request(TaskKind.TRANSLATE, doc, doc.text, target_language=target)
        run = await self._run(request, f"CATO: translate to {target}")
        if run.cancelled or run.done is None:
            return {"cancelled": True, "applied": False}
        code = actions.clean_model_text(run.done.result or "")
        if not code.strip():
            raise _failed("the model returned an empty translation")
        text = code.rstrip("\n") + "\n"
        open_paths = {to_fs_path(uri) for uri in self.host.ls.workspace.text_documents}
        path = target_path(source, target, lambda p: os.path.exists(p) or p in open_paths)
        uri = from_fs_path(path) or path
        applied = await self._create_file(path, text)
        shown = await self._show(uri) if applied else False
        problems = list(run.done.diagnostics)
        if applied:
            raw = run.done.result or ""
            self._publish(uri, problems, text, line_shift(raw, text))
        if problems:
            self.host.ls.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Warning,
                    message=f"CATO: the {target} translation has {len(problems)} problem(s): "
                    + "; ".join(problems[:3]),
                )
            )
        return {"applied": applied, "uri": uri, "shown": shown, "diagnostics": problems}

    def _publish(self, uri: str, problems: Sequence[str], text: str, shift: int) -> None:
        """Diagnostics of a freshly written translation; an empty list clears old ones."""
        encoding = encoding_name(self.host.ls.workspace.position_encoding)
        diagnostics = translation_diagnostics(problems, text, encoding, shift)
        if diagnostics:
            self._diagnosed[unquote(uri)] = uri
        else:
            self._diagnosed.pop(unquote(uri), None)
        self.host.ls.text_document_publish_diagnostics(
            types.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics)
        )

    def forget(self, uri: str) -> None:
        """A document was closed: withdraw the translation problems published on it."""
        published = self._diagnosed.pop(unquote(uri), None)
        if published is not None:
            self.host.ls.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(uri=published, diagnostics=[])
            )

    async def _create_file(self, path: str, text: str) -> bool:
        """Write the new file to disk: in every editor the translation is then a saved
        file next to its source (a `CreateFile` edit would leave it empty on disk until
        the user saves). Never overwrites: the path was chosen free."""

        def write() -> None:
            with open(path, "x", encoding="utf-8", newline="") as out:
                out.write(text)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise _failed(f"cannot write {path}: {exc.strerror or exc}") from exc
        return True

    async def _show(self, uri: str) -> bool:
        window = self._caps.window
        if window is None or window.show_document is None or not window.show_document.support:
            self.host.ls.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Info, message=f"CATO: wrote {uri}")
            )
            return False
        result = await self.host.ls.window_show_document_async(
            types.ShowDocumentParams(uri=uri, take_focus=True)
        )
        return bool(result is not None and result.success)
