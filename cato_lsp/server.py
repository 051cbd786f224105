"""The pygls server: capabilities, settings, the orchestrator connection, thin handlers.

Handlers only translate between LSP and the features (`features/*`); the server owns
what they share: settings (from `initializationOptions` and the `cato` section of
`workspace/configuration`), the orchestrator backend (rebuilt when its settings
change), and the status reporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import signal
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Executor, Future
from typing import Any, BinaryIO, Final
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidRequest,
    JsonRpcServerNotInitialized,
)
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.protocol import lsp_method

from cato_lsp import __version__
from cato_lsp.backend import BackendError, Orchestrator, make_backend
from cato_lsp.features import code_actions
from cato_lsp.features import inline_completion as inline
from cato_lsp.features.commands import (
    REQUEST_FAILED,
    AcceptArgs,
    CommandHost,
    Commands,
    parse_args,
)
from cato_lsp.features.documents import apply_change, encoding_name, view
from cato_lsp.jsonrpc import StrictProtocol, read_messages
from cato_lsp.redact import Secrets
from cato_lsp.settings import SECTION, Settings, SettingsError, parse_settings
from cato_lsp.status import StatusReporter
from orchestrator.api import Status

log = logging.getLogger(__name__)

ACCEPT: Final = "cato.accept"
STATUS: Final = "cato.status"
_BEFORE_INIT_OK: Final = frozenset({types.INITIALIZE, types.SHUTDOWN})


class CatoProtocol(StrictProtocol):
    """pygls' protocol with the LSP rules it leaves to servers.

    Every request is answered, malformed ones included (`StrictProtocol`). Requests
    before `initialize` get `ServerNotInitialized` (notifications are dropped), a second
    `initialize` gets `InvalidRequest`; inline completion is advertised only to clients
    that declare it (they then get no `completionProvider`, so one keystroke does not
    cost two model calls); document changes count lines as LSP does.
    """

    initialized = False

    def _handle_request(self, msg_id: Any, method_name: str, params: Any) -> None:
        if not self.initialized and method_name not in _BEFORE_INIT_OK:
            error = JsonRpcServerNotInitialized(f"{method_name} before initialize")
            self._send_response(msg_id, None, error.to_response_error())
            return
        if self.initialized and method_name == types.INITIALIZE:
            again = JsonRpcInvalidRequest("initialize was already called")
            self._send_response(msg_id, None, again.to_response_error())
            return
        super()._handle_request(msg_id, method_name, params)

    def _handle_notification(self, method_name: str, params: Any) -> None:
        if not self.initialized and method_name != types.EXIT:
            return
        super()._handle_notification(method_name, params)

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(
        self, params: types.InitializeParams
    ) -> Generator[Any, Any, types.InitializeResult]:
        result: types.InitializeResult = yield from super().lsp_initialize(params)
        text_caps = params.capabilities.text_document
        if text_caps is not None and text_caps.inline_completion is not None:
            result.capabilities.completion_provider = None
        else:
            result.capabilities.inline_completion_provider = None
        self.initialized = True
        return result

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(
        self, params: types.DidChangeTextDocumentParams
    ) -> Generator[Any, Any, None]:
        doc = self.workspace.text_documents.get(unquote(params.text_document.uri))
        if doc is not None:
            encoding = encoding_name(self.workspace.position_encoding)
            text = doc.source
            for change in params.content_changes:
                text = apply_change(text, change, encoding)
            whole = types.TextDocumentContentChangeWholeDocument(text=text)
            self.workspace.update_text_document(params.text_document, whole)
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None


class CatoLanguageServer(LanguageServer):
    """The server and what its features share."""

    def __init__(self) -> None:
        super().__init__(
            "cato-lsp",
            __version__,
            protocol_cls=CatoProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.settings = Settings()
        self.settings_problem: str | None = None
        self._valid_once = False
        self.init_options: object = None
        self._backend: Orchestrator | None = None
        self._backend_key: tuple[object, ...] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._status_task: asyncio.Task[dict[str, Any]] | None = None
        self._warm_task: asyncio.Task[None] | None = None
        self._warmed: Orchestrator | None = None
        self.reporter = StatusReporter(
            notify=self.protocol.notify,
            show=self._show,
            log=self._log,
            secret=self._token,
        )
        self.completion = inline.InlineCompletion(self.backend, lambda: self.settings, self)
        self.commands = Commands(CommandHost(self, self.backend, lambda: self.settings, self))

    # -- messages -------------------------------------------------------------------

    @property
    def cato_protocol(self) -> CatoProtocol:
        protocol = self.protocol
        assert isinstance(protocol, CatoProtocol)
        return protocol

    @property
    def secrets(self) -> Secrets:
        """Every token seen so far, for scrubbing logs and outgoing messages."""
        return self.cato_protocol.secrets

    def _token(self) -> str | None:
        return self.settings.token.get_secret_value() if self.settings.token else None

    def _show(self, kind: types.MessageType, message: str) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def _log(self, kind: types.MessageType, message: str) -> None:
        self.window_log_message(types.LogMessageParams(type=kind, message=message))

    # -- settings and backend ---------------------------------------------------------

    def configure(self, *layers: object) -> bool:
        """Apply settings layers over the initialization options; False if invalid."""
        try:
            settings = parse_settings(self.init_options, *layers)
        except SettingsError as exc:
            self.reporter.failure("settings", str(exc))
            if not self._valid_once:
                self.settings_problem = str(exc)  # nothing valid yet: stay idle
            return False
        self.settings_problem, self._valid_once = None, True
        if settings.token is not None:
            self.secrets.add(settings.token.get_secret_value())
        if settings == self.settings and self._backend is not None:
            return True
        self.settings = settings
        self.completion.reset(settings.cache_size)
        if settings.backend_key() != self._backend_key:
            self._replace_backend()
        self._log(types.MessageType.Info, f"cato: settings applied ({self.backend().describe()})")
        return True

    def _replace_backend(self) -> None:
        old, self._backend = self._backend, None
        self._backend_key = None
        self._stop_warming()
        if old is not None:
            task = asyncio.ensure_future(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def backend(self) -> Orchestrator:
        """The orchestrator for the current settings, created on first use."""
        if self._backend is None:
            s = self.settings
            token = s.token.get_secret_value() if s.token else None
            self._backend = make_backend(s.mode, config=s.config, url=s.url, token=token)
            self._backend_key = s.backend_key()
        return self._backend

    def require_settings(self) -> None:
        """Refuse work while no valid settings were ever given (rather than guess a mode)."""
        if self.settings_problem is not None:
            raise JsonRpcException(self.settings_problem, code=REQUEST_FAILED)

    def set_backend(self, backend: Orchestrator) -> None:
        """Use this orchestrator (e.g. one the host process already runs) until the
        settings change the connection."""
        self._replace_backend()
        self._backend, self._backend_key = backend, self.settings.backend_key()

    async def pull_configuration(self, pushed: object = None) -> None:
        """Re-read the `cato` section (pull model), or take what the client pushed."""
        workspace_caps = self.client_capabilities.workspace
        if workspace_caps is not None and workspace_caps.configuration:
            try:
                items = await self.workspace_configuration_async(
                    types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
                )
            except Exception as exc:  # a client that fails the request keeps what it pushed
                self._log(types.MessageType.Warning, f"cato: workspace/configuration: {exc}")
                items = []
            self.configure(pushed, items[0] if items else None)
        else:
            self.configure(pushed)

    def warm_up(self) -> None:
        """Start the current backend's replicas now, once per backend, in the background:
        the status says `starting` until they are ready, and the first suggestion does not
        wait for them."""
        if self.settings_problem is not None:
            return
        backend = self.backend()
        if self._warmed is backend:
            return
        self._stop_warming()
        self._warmed = backend
        self._warm_task = asyncio.ensure_future(self._warm(backend))

    def _stop_warming(self) -> None:
        task, self._warm_task, self._warmed = self._warm_task, None, None
        if task is not None and not task.done():
            task.cancel()  # stops the wait only: the start itself is shared and shielded

    async def _warm(self, backend: Orchestrator) -> None:
        if self.reporter.starting() and self.reporter.due(force=True):
            self._schedule_status()
        try:
            await backend.warm()
        except BackendError as exc:
            self.task_failed(exc.code, str(exc))
            return
        except Exception as exc:
            log.exception("starting the orchestrator failed")
            self.task_failed("unavailable", f"the replicas did not start: {exc}")
            return
        if self.reporter.ready() and self.reporter.due(force=True):
            self._schedule_status()

    async def close_backend(self) -> None:
        self._stop_warming()
        backend, self._backend = self._backend, None
        self._backend_key = None
        if backend is not None:
            with contextlib.suppress(Exception):
                await backend.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- status (the features' TaskObserver) ----------------------------------------

    def task_done(self, kind: str, ttft_ms: float | None, sla_met: bool | None) -> None:
        changed = self.reporter.task_done(kind, ttft_ms, sla_met)
        if self.reporter.due(force=changed):
            self._schedule_status()

    def task_failed(self, code: str, message: str) -> None:
        if self.reporter.failure(code, message) and self.reporter.due(force=True):
            self._schedule_status()

    def _schedule_status(self) -> None:
        if self._status_task is None or self._status_task.done():
            self._status_task = asyncio.ensure_future(self.publish_status())

    async def publish_status(self) -> dict[str, Any]:
        status: Status | None = None
        backend = self.backend()
        try:
            status = await backend.status()
        except BackendError as exc:
            self._log(types.MessageType.Warning, f"cato: status: {exc}")
        extra = {
            "mode": self.settings.mode,
            "backend": backend.describe(),
            "message": None if status is None else status.message,
            "completions": self.completion.stats.as_dict(),
        }
        return self.reporter.publish(status, extra)

    async def status_report(self) -> dict[str, Any]:
        """What `cato.status` returns: the notification's body plus settings and status."""
        body = await self.publish_status()
        backend = self.backend()
        with contextlib.suppress(BackendError):
            body["orchestrator"] = (await backend.status()).model_dump(mode="json")
        body["settings"] = self.settings.describe()
        return body


# --------------------------------------------------------------------------- handlers


def on_initialize(ls: CatoLanguageServer, params: types.InitializeParams) -> None:
    ls.init_options = params.initialization_options
    ls.configure()


async def on_initialized(ls: CatoLanguageServer, params: types.InitializedParams) -> None:
    await ls.pull_configuration()
    ls.warm_up()


async def on_configuration(
    ls: CatoLanguageServer, params: types.DidChangeConfigurationParams
) -> None:
    await ls.pull_configuration(params.settings)
    ls.warm_up()


def on_change(ls: CatoLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    """Remember where the user edits: those regions join later completions' context."""
    for change in params.content_changes:
        if isinstance(change, types.TextDocumentContentChangePartial):
            ls.completion.note_edit(params.text_document.uri, change.range.start.line)


def on_close(ls: CatoLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.completion.forget(params.text_document.uri)
    ls.commands.forget(params.text_document.uri)


async def _suggest(
    ls: CatoLanguageServer, uri: str, position: types.Position
) -> tuple[inline.Suggestion, types.Position] | None:
    """The suggestion, timed from the request's arrival to its answer (what the user
    waits for) when there is one."""
    if ls.settings_problem is not None:
        return None
    started = time.perf_counter()
    found = await inline.suggest_at(ls.completion, ls.workspace, uri, position)
    if found is not None:
        ls.reporter.suggested((time.perf_counter() - started) * 1000.0)
    return found


async def on_inline_completion(
    ls: CatoLanguageServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    found = await _suggest(ls, params.text_document.uri, params.position)
    return inline.inline_items(found, ACCEPT)


async def on_completion(
    ls: CatoLanguageServer, params: types.CompletionParams
) -> types.CompletionList:
    found = await _suggest(ls, params.text_document.uri, params.position)
    return inline.completion_items(found, ACCEPT)


def on_code_action(
    ls: CatoLanguageServer, params: types.CodeActionParams
) -> list[types.CodeAction] | list[types.Command]:
    doc = view(ls.workspace, params.text_document.uri)
    if doc is None:
        return []
    only = params.context.only if params.context else None
    found = code_actions.code_actions(doc, params.range, ls.settings, only)
    text_caps = ls.client_capabilities.text_document
    action_caps = text_caps.code_action if text_caps else None
    if action_caps is None or action_caps.code_action_literal_support is None:
        return [action.command for action in found if action.command is not None]
    return list(found)


def on_progress_cancel(ls: CatoLanguageServer, params: types.WorkDoneProgressCancelParams) -> None:
    ls.commands.cancel_progress(str(params.token))


async def on_shutdown(ls: CatoLanguageServer, params: None) -> None:
    await ls.close_backend()


async def on_exit(ls: CatoLanguageServer, params: None) -> None:
    await ls.close_backend()


async def cmd_summarize(ls: CatoLanguageServer, *args: Any) -> dict[str, Any]:
    ls.require_settings()
    return await ls.commands.summarize(args)


async def cmd_generate(ls: CatoLanguageServer, *args: Any) -> dict[str, Any]:
    ls.require_settings()
    return await ls.commands.generate(args)


async def cmd_translate_file(ls: CatoLanguageServer, *args: Any) -> dict[str, Any]:
    ls.require_settings()
    return await ls.commands.translate_file(args)


async def cmd_status(ls: CatoLanguageServer, *args: Any) -> dict[str, Any]:
    return await ls.status_report()


def cmd_accept(ls: CatoLanguageServer, *args: Any) -> dict[str, Any]:
    accepted = ls.completion.accept(parse_args(AcceptArgs, args).id)
    return {"accepted": accepted, "completions": ls.completion.stats.as_dict()}


_CODE_ACTION_OPTIONS: Final = types.CodeActionOptions(
    code_action_kinds=[
        code_actions.KIND_SUMMARIZE,
        code_actions.KIND_GENERATE,
        code_actions.KIND_TRANSLATE,
        code_actions.KIND_TRANSLATE_REFACTOR,
    ]
)
_FEATURES: Final[tuple[tuple[str, Any, Callable[..., Any]], ...]] = (
    (types.INITIALIZE, None, on_initialize),
    (types.INITIALIZED, None, on_initialized),
    (types.WORKSPACE_DID_CHANGE_CONFIGURATION, None, on_configuration),
    (types.TEXT_DOCUMENT_DID_CHANGE, None, on_change),
    (types.TEXT_DOCUMENT_DID_CLOSE, None, on_close),
    (types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions(), on_inline_completion),
    (types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(), on_completion),
    (types.TEXT_DOCUMENT_CODE_ACTION, _CODE_ACTION_OPTIONS, on_code_action),
    (types.WINDOW_WORK_DONE_PROGRESS_CANCEL, None, on_progress_cancel),
    (types.SHUTDOWN, None, on_shutdown),
    (types.EXIT, None, on_exit),
)
_COMMANDS: Final[tuple[tuple[str, Callable[..., Any]], ...]] = (
    (code_actions.SUMMARIZE, cmd_summarize),
    (code_actions.GENERATE, cmd_generate),
    (code_actions.TRANSLATE_FILE, cmd_translate_file),
    (STATUS, cmd_status),
    (ACCEPT, cmd_accept),
)


_INVALID_PARAMS: Final = -32602


class QuietUserErrors(logging.Filter):
    """pygls logs every error a request handler raises at ERROR with its traceback. A
    request refused as the user's mistake (InvalidParams: "nothing to summarize") or one
    that failed with a message already sent to the editor (RequestFailed) is one line at
    WARNING instead: an editor shows the server's stderr, and a traceback reads as a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, JsonRpcException) and exc.code in (_INVALID_PARAMS, REQUEST_FAILED):
            record.msg, record.args = f"{record.getMessage()}: {exc}", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_user_errors() -> None:
    logger = logging.getLogger("pygls.protocol.json_rpc")
    if not any(isinstance(f, QuietUserErrors) for f in logger.filters):
        logger.addFilter(QuietUserErrors())


def create_server() -> CatoLanguageServer:
    """A server with every feature and command registered."""
    _quiet_user_errors()
    ls = CatoLanguageServer()
    for method, options, handler in _FEATURES:
        ls.feature(method, options)(handler)
    for name, command in _COMMANDS:
        ls.command(name)(command)
    return ls


# --------------------------------------------------------------------------- transports


class _DaemonExecutor(Executor):
    """Runs blocking reads on one daemon thread, so a read blocked on stdin cannot keep
    the process alive after `exit` (a ThreadPoolExecutor's workers are joined at exit)."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="cato-lsp stdin", daemon=True).start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._work.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def _run(self) -> None:
        while True:
            future, call = self._work.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)


class _ThreadReader:
    """stdin read on a daemon thread, for when it is not a pipe."""

    def __init__(self, stdin: BinaryIO) -> None:
        self.stdin = stdin
        self.executor = _DaemonExecutor()

    def readline(self) -> Awaitable[bytes]:
        return asyncio.get_running_loop().run_in_executor(self.executor, self.stdin.readline)

    def readexactly(self, n: int) -> Awaitable[bytes]:
        return asyncio.get_running_loop().run_in_executor(self.executor, self.stdin.read, n)


async def _stdin_reader() -> Any:
    """stdin as an asyncio stream when it is a pipe or socket (no thread at all), else a
    daemon-thread reader (files, terminals, /dev/null)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        mode = 0
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return _ThreadReader(sys.stdin.buffer)
    stream = asyncio.StreamReader(limit=1 << 20)
    protocol = asyncio.StreamReaderProtocol(stream)
    await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, sys.stdin.buffer)
    return stream


async def _run_protocol(ls: CatoLanguageServer, reader: Any) -> None:
    try:
        await read_messages(reader, ls.cato_protocol, ls.report_server_error)
    finally:
        await ls.close_backend()


async def _until_signal(run: Awaitable[object]) -> None:
    """Run until done or SIGTERM / SIGINT; either way the orchestrator is closed first
    (embedded replicas are child processes that must not outlive the server)."""
    task = asyncio.ensure_future(run)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _serve_stdio(ls: CatoLanguageServer) -> None:
    ls.protocol.set_writer(StdoutWriter(sys.stdout.buffer))
    await _until_signal(_run_protocol(ls, await _stdin_reader()))


async def _serve_tcp(ls: CatoLanguageServer, host: str, port: int) -> None:
    """One client at a time, for debugging; the server ends with its first client."""
    finished = asyncio.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ls.protocol.set_writer(writer)
        try:
            await _run_protocol(ls, reader)
        finally:
            finished.set()

    listener = await asyncio.start_server(connection, host, port)
    addresses = ", ".join(str(s.getsockname()) for s in listener.sockets)
    print(f"cato-lsp listening on {addresses}", file=sys.stderr, flush=True)
    async with listener:
        await _until_signal(finished.wait())
    await ls.close_backend()


def _exit_code(run: Callable[[], None]) -> int:
    """Run a transport; `exit` ends it with SystemExit (0 after `shutdown`, else 1)."""
    try:
        run()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except (KeyboardInterrupt, BrokenPipeError):
        return 1
    return 0


def serve_stdio(ls: CatoLanguageServer) -> int:
    return _exit_code(lambda: asyncio.run(_serve_stdio(ls)))


def serve_tcp(ls: CatoLanguageServer, host: str, port: int) -> int:
    return _exit_code(lambda: asyncio.run(_serve_tcp(ls, host, port)))
