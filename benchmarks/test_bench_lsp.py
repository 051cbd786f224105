"""The language server's own share of completion latency, message in to request out.

Goals (median): ``upstream`` <= 2 ms from a `textDocument/inlineCompletion` message
handed to the protocol to the orchestrator's ``submit`` (debounce 0: beyond the
debounce); ``cache_hit`` <= 1 ms from the message to the response written, when the
user types the first characters of the suggestion shown. Both run the real pygls
protocol (JSON structuring, dispatch, handler) of a `CatoLanguageServer` in-process.
The orchestrator stands in for its HTTP side: its cost is measured by the executor
benchmark.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from cato_lsp.server import create_server
from orchestrator.api import Status, TaskEvent, TaskRequest

URI = "file:///project/app.py"
FILLER = "".join(f"value_{i} = compute(value_{i - 1}, {i})\n" for i in range(1, 3_000))
TEXT = FILLER + "def area(width, height):\n    result = \n    return result\n"
LINE = TEXT.count("\n") - 2
COLUMN = 13


class _Sink:
    """The protocol's writer: `answered` is set when the response to `awaited` is written."""

    def __init__(self) -> None:
        self.answered = asyncio.Event()
        self.awaited: tuple[bytes, ...] = ()

    def write(self, data: bytes) -> None:
        if any(pattern in data for pattern in self.awaited):
            self.answered.set()

    def close(self) -> None:
        pass


class _Upstream:
    """An orchestrator that records the moment a task is submitted and then holds it."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()
        self.requests: list[TaskRequest] = []
        self.reply = ""

    async def submit(self, request: TaskRequest) -> AsyncGenerator[TaskEvent, None]:
        self.requests.append(request)
        self.sent.set()
        if self.reply:
            yield TaskEvent(type="done", task_id=request.id, result=self.reply)
            return
        await asyncio.Event().wait()  # held until superseded
        yield TaskEvent(type="done", task_id=request.id)  # pragma: no cover

    async def status(self) -> Status:
        return Status()

    async def warm(self) -> None:
        pass

    def fim_family(self, model: str | None) -> str | None:
        return None

    def default_max_tokens(self, kind: object) -> int | None:
        return None

    def prompt_fit(self, model: str | None, sla_ms: float | None) -> int | None:
        return None

    def describe(self) -> str:
        return "bench"

    async def close(self) -> None:
        pass


class _Harness:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.ls = create_server()
        self.sink = _Sink()
        self.upstream = _Upstream()
        self.next_id = 1
        self.ls.protocol.set_writer(self.sink)
        self.run(self._start())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def feed(self, method: str, params: dict[str, Any], request: bool = True) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        if request:
            message["id"] = self.next_id
            self.next_id += 1
        body = json.dumps(message).encode()
        self.ls.protocol.handle_message(
            json.loads(body, object_hook=self.ls.protocol.structure_message)
        )

    async def _start(self) -> None:
        capabilities: dict[str, Any] = {"textDocument": {"inlineCompletion": {}}}
        options = {"debounceMs": 0}
        self.feed("initialize", {"capabilities": capabilities, "initializationOptions": options})
        self.feed("initialized", {}, request=False)
        await asyncio.sleep(0.01)
        self.ls.set_backend(self.upstream)
        item = {"uri": URI, "languageId": "python", "version": 1, "text": TEXT}
        self.feed("textDocument/didOpen", {"textDocument": item}, request=False)
        await asyncio.sleep(0)

    def inline(self, line: int, character: int) -> None:
        self.sink.awaited = (b'"id": %d,' % self.next_id, b'"id": %d}' % self.next_id)
        self.feed(
            "textDocument/inlineCompletion",
            {
                "textDocument": {"uri": URI},
                "position": {"line": line, "character": character},
                "context": {"triggerKind": 2},
            },
        )

    async def roundtrip(self, send: Callable[[], None], event: asyncio.Event) -> None:
        """Hand a message to the protocol inside the loop, as the reader does; wait for `event`."""
        send()
        await event.wait()

    def reset(self) -> None:
        """Untimed: drop the request in flight and the cache, clear the events."""
        self.ls.completion.supersede(URI)
        self.ls.completion.cache.clear()
        self.run(asyncio.sleep(0.001))
        self.upstream.sent.clear()
        self.sink.answered.clear()

    def close(self) -> None:
        self.ls.completion.supersede(URI)
        self.run(asyncio.sleep(0.001))
        self.loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def harness() -> Any:
    made = _Harness()
    yield made
    made.close()


def _round(harness: _Harness, send: Callable[[], None], event: asyncio.Event) -> None:
    harness.run(harness.roundtrip(send, event))


def test_inline_completion_to_upstream(benchmark: BenchmarkFixture, harness: _Harness) -> None:
    def send() -> None:
        harness.inline(LINE, COLUMN)

    benchmark.pedantic(  # type: ignore[no-untyped-call]
        _round,
        args=(harness, send, harness.upstream.sent),
        setup=harness.reset,
        rounds=300,
        warmup_rounds=20,
    )
    request = harness.upstream.requests[-1]
    assert request.prompt is not None and request.prompt.startswith("<fim_prefix>")


def test_typing_through_cache_hit(benchmark: BenchmarkFixture, harness: _Harness) -> None:
    harness.upstream.reply = "width * height"
    harness.run(harness.roundtrip(lambda: harness.inline(LINE, COLUMN), harness.sink.answered))
    asked = len(harness.upstream.requests)
    change = {
        "range": {
            "start": {"line": LINE, "character": COLUMN},
            "end": {"line": LINE, "character": COLUMN},
        },
        "text": "wid",
    }
    changed = asyncio.Event()
    changed.set()
    harness.run(
        harness.roundtrip(
            lambda: harness.feed(
                "textDocument/didChange",
                {"textDocument": {"uri": URI, "version": 2}, "contentChanges": [change]},
                request=False,
            ),
            changed,
        )
    )

    def setup() -> None:
        harness.sink.answered.clear()

    def send() -> None:
        harness.inline(LINE, COLUMN + 3)

    benchmark.pedantic(  # type: ignore[no-untyped-call]
        _round,
        args=(harness, send, harness.sink.answered),
        setup=setup,
        rounds=300,
        warmup_rounds=20,
    )
    assert len(harness.upstream.requests) == asked  # every round came from the cache
    assert harness.ls.completion.stats.cache_hits >= 300


def test_prompt_with_open_files(benchmark: BenchmarkFixture) -> None:
    """``prepare`` at line ends of one standard-library module with three others open
    beside it: the open files' windows are cut once per content (``context._cut``, done
    here before timing), so what each keystroke pays is scoring them, not cutting them."""
    import importlib
    import inspect
    import itertools

    from cato_lsp.features.completion_prompt import prepare
    from cato_lsp.features.documents import DocumentView
    from cato_lsp.settings import Settings

    docs = [
        DocumentView(
            f"file:///lib/{name}.py", inspect.getsource(importlib.import_module(name)), "python"
        )
        for name in ("typing", "argparse", "inspect", "difflib")
    ]
    text, settings = docs[0].text, Settings()
    ends = [i for i, char in enumerate(text) if char == "\n" and 10_000 <= i < 60_000]
    cursors = itertools.cycle(ends[::7])
    assert prepare(docs[0], ends[0], docs[1:], settings, "codellama") is not None

    def one() -> None:
        prepared = prepare(docs[0], next(cursors), docs[1:], settings, "codellama")
        assert prepared is not None and prepared.request.prompt

    benchmark(one)
