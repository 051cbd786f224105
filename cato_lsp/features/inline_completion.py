"""Inline completion: from a cursor to a suggestion, as cheaply as the keystrokes allow.

A request becomes a FIM prompt (`prompts`) over a prefix/suffix window and snippets of
other open files (`context`), waits out the debounce, and streams a `complete` task from
the orchestrator; the raw text is then fitted to the document (`postprocess`).

Per document only the newest request lives: a new one cancels the one before it even
when the client sends no `$/cancelRequest`, and cancelling closes the orchestrator
stream so the replica aborts the sequence. A suggestion is kept in an LRU cache so that
typing its first characters is answered with the rest, without a new request.

A suggestion that comes after its SLA is a stale one (the user has typed on), so each
request asks to be shed when late (`on_late="shed"`): the orchestrator ends it with
`sla_unreachable` as soon as it is late (when routed, or at its deadline without a first
token, wherever it waits), and the answer is no suggestion, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Final, Protocol

from lsprotocol import types
from pygls.workspace import Workspace

from cato_lsp.backend import BackendError, Orchestrator
from cato_lsp.context import column_of
from cato_lsp.features.completion_prompt import (
    Budget,
    Prepared,
    choose_family,
    ends_line,
    fitted_budget,
    prepare,
    skip_at,
)
from cato_lsp.features.documents import (
    DocumentView,
    encoding_name,
    offset_of,
    open_views,
    view,
)
from cato_lsp.settings import Settings
from orchestrator.api import SLA_UNREACHABLE, TaskKind

__all__ = ["InlineCompletion", "Prepared", "Suggestion", "choose_family", "prepare"]

KIND: Final = TaskKind.COMPLETE.value
_CACHE_HEAD: Final = 256
_CACHE_TAIL: Final = 256
_TRACKED_IDS: Final = 4_096
_RECENT_EDITS: Final = 6

# Task error codes of the orchestrator, as the status reporter groups them.
_ERROR_CODES: Final = {
    "unknown_model": "config",
    "no_replica": "unavailable",
    "replica_error": "unavailable",
}


class TaskObserver(Protocol):
    """Told how each task ended, for status and messages."""

    def task_done(self, kind: str, ttft_ms: float | None, sla_met: bool | None) -> None: ...

    def task_failed(self, code: str, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Suggestion:
    """Text to insert at the cursor; `id` is reported back when the user accepts it."""

    id: str
    text: str
    cached: bool = False


@dataclass
class CompletionStats:
    """Counters behind `cato.status` and the acceptance rate."""

    requests: int = 0
    upstream: int = 0
    cache_hits: int = 0
    superseded: int = 0
    cancelled: int = 0
    errors: int = 0
    shed: int = 0  # ended at once: no replica could answer within the SLA any more
    skipped: int = 0  # nothing asked: inside a word, a binary file, a language left out
    empty: int = 0
    stopped_early: int = 0  # the stream was closed once the suggestion was whole
    context_tokens: int | None = None  # the last prompt's budget (window and snippets)
    shown: int = 0
    accepted: int = 0

    def as_dict(self) -> dict[str, float | int | None]:
        data: dict[str, float | int | None] = dict(asdict(self))
        data["acceptance_rate"] = self.accepted / self.shown if self.shown else None
        return data


@dataclass(frozen=True, slots=True)
class _Ask:
    """Where a suggestion is asked for; its prompt is built after the debounce."""

    doc: DocumentView
    offset: int
    others: Sequence[DocumentView]
    root: str | None
    edits: tuple[int, tuple[int, ...]] | None = None  # the cursor's line, edited lines


class _Skip:
    """Nothing was asked upstream (see `skip_at` and `prepare`)."""


_SKIPPED: Final = _Skip()


# --------------------------------------------------------------------------- cache


@dataclass(frozen=True, slots=True)
class _Entry:
    id: str
    uri: str
    anchor: int
    head: str
    tail: str
    text: str


class SuggestionCache:
    """Recent suggestions by document and cursor, reusable while the user types them.

    An entry matches a later cursor in the same document when the text around the
    original cursor is unchanged and the characters typed since are the suggestion's
    first characters; the answer is the rest of the suggestion.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, int], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, uri: str, text: str, offset: int, suggestion: str) -> _Entry:
        entry = _Entry(
            uuid.uuid4().hex[:16],
            uri,
            offset,
            text[max(0, offset - _CACHE_HEAD) : offset],
            text[offset : offset + _CACHE_TAIL],
            suggestion,
        )
        if self.capacity <= 0:
            return entry
        self._entries[(uri, offset)] = entry
        self._entries.move_to_end((uri, offset))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return entry

    def lookup(self, uri: str, text: str, offset: int) -> tuple[_Entry, str] | None:
        """The entry typed through up to `offset` and the rest of its text, if any."""
        for key in reversed(self._entries):
            entry = self._entries[key]
            typed = offset - entry.anchor
            if entry.uri != uri or not 0 <= typed < len(entry.text):
                continue
            if not _matches(text, entry, offset):
                continue
            self._entries.move_to_end(key)
            return entry, entry.text[typed:]
        return None

    def forget(self, uri: str) -> None:
        for key in [k for k in self._entries if k[0] == uri]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


def _matches(text: str, entry: _Entry, offset: int) -> bool:
    anchor = entry.anchor
    if text[anchor - len(entry.head) : anchor] != entry.head:
        return False
    if text[anchor:offset] != entry.text[: offset - anchor]:
        return False
    return text[offset : offset + len(entry.tail)] == entry.tail


# --------------------------------------------------------------------------- service


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class InlineCompletion:
    """Suggestions per document: debounce, supersession, cache, upstream stream."""

    def __init__(
        self,
        backend: Callable[[], Orchestrator],
        settings: Callable[[], Settings],
        observer: TaskObserver,
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._observer = observer
        self.cache = SuggestionCache(settings().cache_size)
        self.stats = CompletionStats()
        self._inflight: dict[str, asyncio.Task[str | _Skip | None]] = {}
        self._ids: OrderedDict[str, bool] = OrderedDict()
        self._prepared: dict[str, tuple[tuple[object, ...], Prepared | None]] = {}
        self._edits: dict[str, deque[int]] = {}

    # -- public -------------------------------------------------------------------

    async def complete(
        self,
        doc: DocumentView,
        offset: int,
        others: Sequence[DocumentView],
        root: str | None,
        line: int | None = None,
    ) -> Suggestion | None:
        """The suggestion at `offset` (on `line`, when known: then the regions edited
        lately join the prompt's context), or None (nothing worth showing, superseded)."""
        self.stats.requests += 1
        self.supersede(doc.uri)
        hit = self.cache.lookup(doc.uri, doc.text, offset)
        if hit is not None:
            self.stats.cache_hits += 1
            return self._shown(Suggestion(hit[0].id, hit[1], cached=True))
        settings = self._settings()
        try:
            family = choose_family(settings, self._backend())
        except BackendError as exc:
            self._failed(exc.code, str(exc))
            return None
        if skip_at(doc, offset, settings):
            self.stats.skipped += 1
            return None
        recent = tuple(self._edits.get(doc.uri, ()))
        edits = (line, recent) if line is not None and recent else None
        ask = _Ask(doc, offset, others, root, edits)
        task = asyncio.create_task(self._fetch(ask, settings, family))
        self._inflight[doc.uri] = task
        try:
            text = await task
        except asyncio.CancelledError:
            if task.cancelled() and not _cancelling():
                self.stats.superseded += 1
                return None
            self.stats.cancelled += 1
            raise
        finally:
            if self._inflight.get(doc.uri) is task:
                del self._inflight[doc.uri]
        if text is _SKIPPED:
            self.stats.skipped += 1
            return None
        if text is None:
            self.stats.empty += 1
            return None
        assert isinstance(text, str)
        entry = self.cache.put(doc.uri, doc.text, offset, text)
        return self._shown(Suggestion(entry.id, text))

    def supersede(self, uri: str) -> None:
        """Cancel the request in flight for a document, if any."""
        previous = self._inflight.pop(uri, None)
        if previous is not None and not previous.done():
            previous.cancel()

    def accept(self, suggestion_id: str) -> bool:
        """Count an accepted suggestion once; False for an unknown or repeated id."""
        if self._ids.get(suggestion_id) is not False:
            return False
        self._ids[suggestion_id] = True
        self.stats.accepted += 1
        return True

    def forget(self, uri: str) -> None:
        self.supersede(uri)
        self.cache.forget(uri)
        self._prepared.pop(uri, None)
        self._edits.pop(uri, None)

    def note_edit(self, uri: str, line: int) -> None:
        """The document changed at `line`: the latest few such places, one per area."""
        edits = self._edits.setdefault(uri, deque(maxlen=_RECENT_EDITS))
        if edits and abs(edits[-1] - line) <= 2:
            edits[-1] = line  # still typing in the same place
            return
        with contextlib.suppress(ValueError):
            edits.remove(line)
        edits.append(line)

    def reset(self, capacity: int) -> None:
        """New settings: drop the cache (its suggestions came from other settings)."""
        self.cache = SuggestionCache(capacity)

    # -- internals ----------------------------------------------------------------

    def _shown(self, suggestion: Suggestion) -> Suggestion:
        if suggestion.id not in self._ids:
            self._ids[suggestion.id] = False
            self.stats.shown += 1
            while len(self._ids) > _TRACKED_IDS:
                self._ids.popitem(last=False)
        return suggestion

    def _failed(self, code: str, message: str) -> None:
        self.stats.errors += 1
        self._observer.task_failed(code, message)

    async def _fetch(self, ask: _Ask, settings: Settings, family: str) -> str | _Skip | None:
        """After the debounce (a request superseded while it waits costs nothing more),
        the prompt, sized to what fits the SLA now, then the model's answer."""
        if settings.debounce_ms > 0:
            await asyncio.sleep(settings.debounce_ms / 1000.0)
        prepared = self._prepare(ask, settings, family)
        if prepared is None:
            return _SKIPPED
        raw = await self._collect(prepared, settings.request_timeout_s)
        return None if raw is None else prepared.finish(raw)

    def _prepare(self, ask: _Ask, settings: Settings, family: str) -> Prepared | None:
        """The request for `ask`; the same document version and cursor reuse the last one."""
        budget = self._budget(settings)
        doc = ask.doc
        key = (doc.version, ask.offset, family, budget, id(settings), ask.edits)
        last = self._prepared.get(doc.uri)
        if last is not None and last[0] == key and doc.version is not None:
            return last[1]
        prepared = prepare(
            doc, ask.offset, ask.others, settings, family, ask.root, budget, ask.edits
        )
        self._prepared[doc.uri] = (key, prepared)
        if prepared is not None and prepared.budget is not None:
            self.stats.context_tokens = prepared.budget.total
        return prepared

    def _budget(self, settings: Settings) -> Budget:
        """The configured budgets, fitted to what the orchestrator can prefill within the
        SLA now (its replicas' wait and prefill rate)."""
        fits: int | None = None
        if settings.context.fit_sla:
            task = settings.task(TaskKind.COMPLETE)
            sla = settings.sla(TaskKind.COMPLETE)
            try:
                fits = self._backend().prompt_fit(task.model, sla.target_ms if sla else None)
            except BackendError:
                fits = None
        return fitted_budget(settings, fits)

    async def _collect(self, prepared: Prepared, timeout_s: float) -> str | None:
        """The model's text; the stream is closed as soon as the suggestion is whole (its
        line is complete, or its block has ended), which frees the replica sooner."""
        parts: list[str] = []
        first_token_ms: float | None = None
        try:
            backend = self._backend()
            self.stats.upstream += 1
            async with asyncio.timeout(timeout_s):
                stream = backend.submit(prepared.request)
                async with contextlib.aclosing(stream) as events:
                    async for event in events:
                        if event.type == "token" and event.text:
                            if first_token_ms is None:
                                first_token_ms = event.t_ms
                            parts.append(event.text)
                            if ends_line(event.text) and prepared.whole("".join(parts)):
                                self.stats.stopped_early += 1
                                break
                        elif event.type == "done":
                            self._observer.task_done(KIND, event.ttft_ms, event.sla_met)
                            return event.result if event.result is not None else "".join(parts)
                        elif event.type == "error" and event.code == SLA_UNREACHABLE:
                            self.stats.shed += 1  # late: no suggestion beats a stale one
                            return None
                        elif event.type == "error":
                            code = _ERROR_CODES.get(event.code or "", "error")
                            self._failed(code, event.error or "the task failed")
                            return None
        except BackendError as exc:
            self._failed(exc.code, str(exc))
            return None
        except TimeoutError:
            self._failed("unavailable", f"no answer within {timeout_s:g} s")
            return None
        self._observer.task_done(KIND, first_token_ms, None)  # closed early: it was whole
        return "".join(parts)


# --------------------------------------------------------------------------- LSP shapes


async def suggest_at(
    service: InlineCompletion, workspace: Workspace, uri: str, position: types.Position
) -> tuple[Suggestion, types.Position] | None:
    """The suggestion for an LSP cursor and where it goes; InvalidParams for a bad cursor."""
    doc = view(workspace, uri)
    if doc is None:
        return None
    encoding = encoding_name(workspace.position_encoding)
    offset = offset_of(doc, position, encoding)
    suggestion = await service.complete(
        doc, offset, open_views(workspace), workspace.root_uri, position.line
    )
    if suggestion is None:
        return None
    # the client's line, with a character past the line's end moved back to it
    character = column_of(doc.text, offset, encoding)
    return suggestion, types.Position(line=position.line, character=character)


def _accept_command(command: str, suggestion: Suggestion) -> types.Command:
    return types.Command(
        title="Accept CATO suggestion", command=command, arguments=[{"id": suggestion.id}]
    )


def inline_items(
    found: tuple[Suggestion, types.Position] | None, accept_command: str
) -> types.InlineCompletionList:
    if found is None:
        return types.InlineCompletionList(items=[])
    suggestion, at = found
    item = types.InlineCompletionItem(
        insert_text=suggestion.text,
        range=types.Range(start=at, end=at),
        command=_accept_command(accept_command, suggestion),
    )
    return types.InlineCompletionList(items=[item])


def completion_items(
    found: tuple[Suggestion, types.Position] | None, accept_command: str
) -> types.CompletionList:
    """The suggestion as one completion item, for clients without inline completion."""
    if found is None:
        return types.CompletionList(is_incomplete=True, items=[])
    suggestion, at = found
    first_line = suggestion.text.strip().splitlines()[0] if suggestion.text.strip() else ""
    label = first_line if len(first_line) <= 60 else first_line[:57] + "..."
    item = types.CompletionItem(
        label=label or suggestion.text[:60],
        kind=types.CompletionItemKind.Snippet,
        detail="CATO",
        sort_text="0",
        preselect=True,
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=types.Range(start=at, end=at), new_text=suggestion.text),
        command=_accept_command(accept_command, suggestion),
    )
    return types.CompletionList(is_incomplete=True, items=[item])
