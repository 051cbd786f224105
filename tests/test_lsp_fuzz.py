"""Generated junk to every method the server has: exactly one answer per request id,
none to notifications, and a server that still completes code after every batch.

The methods are read from the server's feature manager at run time (its own features,
pygls' built-in ones, every command), plus a few it does not have. Params are random
JSON of any shape, or a valid example with parts replaced by junk or removed; some
bodies are not JSON at all, or not JSON-RPC. What each body must get back is decided
by `expected_answer`, from the JSON-RPC spec, not from the server's code.

`CATO_LSP_FUZZ_EXAMPLES` (batches per method, default 10) and
`CATO_LSP_FUZZ_STREAM` (batches of 10 through one server, default 20) size the runs;
`CATO_LSP_FUZZ_STREAM=1000` pushes 10,000 messages and prints the tally.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsp_fixtures import external_config
from lsp_fixtures.rpc import RawServer
from lsprotocol import types

from cato_lsp.server import create_server
from orchestrator.emulator.process import RunningEmulator, launch_emulator

EXAMPLES = int(os.environ.get("CATO_LSP_FUZZ_EXAMPLES", "10"))
STREAM_BATCHES = int(os.environ.get("CATO_LSP_FUZZ_STREAM", "20"))

CODE = "def area(width, height):\n    result = \n    return result\n"
LIVE_URI = "file:///fuzz/live.py"  # the liveness document: no template points at it
OTHER_URI = "file:///fuzz/other.py"
NEVER_URI = "file:///fuzz/never-opened.py"
ENDING = frozenset({types.EXIT, types.SHUTDOWN})  # tested on their own (they end the session)
UNREGISTERED = ["textDocument/hover", "textDocument/definition", "cato/noSuchMethod"]


def registered() -> tuple[list[str], list[str], set[str]]:
    """The methods (all but the ones that end the session) and commands of a server, and
    which of the methods are notifications."""
    protocol = create_server().protocol
    fm = protocol.fm
    methods = {*fm.features, *fm.builtin_features, types.CANCEL_REQUEST} - ENDING
    notifications = set()
    for method in methods:
        message_type = protocol.get_message_type(method)
        if message_type is not None and "id" not in attrs.fields_dict(message_type):
            notifications.add(method)
    return sorted(methods), sorted(fm.commands), notifications


METHODS, COMMANDS, NOTIFICATIONS = registered()

_POSITION = {"line": 1, "character": 4}
_RANGE = {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 4}}
TEMPLATES: dict[str, Any] = {
    types.INITIALIZE: {"capabilities": {}, "initializationOptions": {"debounceMs": 0}},
    types.INITIALIZED: {},
    types.TEXT_DOCUMENT_COMPLETION: {"textDocument": {"uri": OTHER_URI}, "position": _POSITION},
    types.TEXT_DOCUMENT_INLINE_COMPLETION: {
        "textDocument": {"uri": OTHER_URI},
        "position": _POSITION,
        "context": {"triggerKind": 1},
    },
    types.TEXT_DOCUMENT_CODE_ACTION: {
        "textDocument": {"uri": OTHER_URI},
        "range": _RANGE,
        "context": {"diagnostics": [], "only": ["refactor"]},
    },
    types.TEXT_DOCUMENT_DID_OPEN: {
        "textDocument": {"uri": OTHER_URI, "languageId": "python", "version": 1, "text": CODE}
    },
    types.TEXT_DOCUMENT_DID_CHANGE: {
        "textDocument": {"uri": OTHER_URI, "version": 2},
        "contentChanges": [{"range": _RANGE, "text": "x = 1\n"}],
    },
    types.TEXT_DOCUMENT_DID_CLOSE: {"textDocument": {"uri": OTHER_URI}},
    types.WORKSPACE_DID_CHANGE_CONFIGURATION: {"settings": {"cato": {"debounceMs": 0}}},
    types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS: {"event": {"added": [], "removed": []}},
    types.WINDOW_WORK_DONE_PROGRESS_CANCEL: {"token": "progress-1"},
    types.CANCEL_REQUEST: {"id": 1},
    types.SET_TRACE: {"value": "off"},
    types.NOTEBOOK_DOCUMENT_DID_OPEN: {
        "notebookDocument": {
            "uri": "file:///fuzz/n.ipynb",
            "notebookType": "jupyter-notebook",
            "version": 1,
            "cells": [{"kind": 2, "document": "file:///fuzz/n.ipynb#c1"}],
        },
        "cellTextDocuments": [
            {"uri": "file:///fuzz/n.ipynb#c1", "languageId": "python", "version": 1, "text": ""}
        ],
    },
    types.NOTEBOOK_DOCUMENT_DID_CHANGE: {
        "notebookDocument": {"uri": "file:///fuzz/n.ipynb", "version": 2},
        "change": {},
    },
    types.NOTEBOOK_DOCUMENT_DID_CLOSE: {
        "notebookDocument": {"uri": "file:///fuzz/n.ipynb"},
        "cellTextDocuments": [{"uri": "file:///fuzz/n.ipynb#c1"}],
    },
}
COMMAND_ARGUMENTS: dict[str, list[Any]] = {  # commands that would edit run on a never-open file
    "cato.accept": [{"id": "no-such-suggestion"}],
    "cato.status": [],
}


def command_template(command: str) -> dict[str, Any]:
    arguments = COMMAND_ARGUMENTS.get(command, [{"uri": NEVER_URI, "range": _RANGE}])
    return {"command": command, "arguments": arguments}


# --------------------------------------------------------------------------- strategies

_LSP_KEYS = [
    "textDocument", "position", "line", "character", "uri", "range", "start", "end",
    "context", "triggerKind", "capabilities", "command", "arguments", "settings", "id",
    "value", "contentChanges", "text", "version", "languageId", "only", "diagnostics",
    "cato", "items", "event", "token", "selectedCompletionInfo", "notebookDocument",
]  # fmt: skip


def _huge() -> str:
    return "x" * 100_000


def _deep() -> Any:
    value: Any = 0
    for _ in range(200):  # deep, and still printable when hypothesis reports an example
        value = [value]
    return value


_RAW = {  # by name, so that a failing example prints short
    "empty": b"",
    "unclosed": b"[" * 100_000,
    "deepest": b"[" * 900 + b"0" + b"]" * 900,  # as deep as the decoder goes
    "objects": b'{"a":' * 5_000,
    "null": b"null",
    "empty object": b"{}",
    "not utf-8": b"\xff",
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, -(2**63), 10**300]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["", "file:///x.py", LIVE_URI[:-3], "\ud800", "\x00", "💥" * 50]),
    st.builds(_huge),
)
keys = st.one_of(st.sampled_from(_LSP_KEYS), st.text(max_size=12))
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=25,
) | st.builds(_deep)


def _slots(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, inner in items:
        yield (*path, key)
        if isinstance(inner, dict | list) and inner:
            yield from _slots(inner, (*path, key))


@st.composite
def mutated(draw: st.DrawFn, template: Any) -> Any:
    """A valid example with one to three parts replaced by junk or removed."""
    value = copy.deepcopy(template)
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(value)) if isinstance(value, dict | list) else []
        if not slots:
            return draw(junk)
        *parent_path, key = draw(st.sampled_from(slots))
        parent = value
        for part in parent_path:
            parent = parent[part]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(junk)  # a fresh value: never the parent itself
    return value


NO_PARAMS: Any = object()


def params_for(method: str, template: Any) -> st.SearchStrategy[Any]:
    choices = [junk, st.just(NO_PARAMS)]
    if template is not None:  # mostly near-valid: those reach the handlers
        choices += [mutated(template)] * 2 + [st.just(template)] * 2
    return st.one_of(*choices)


@dataclass
class Item:
    """One body to send, with a request id of ours when it is a request."""

    body: bytes
    fresh_id: bool = False


@st.composite
def message(draw: st.DrawFn, method: str, template: Any) -> dict[str, Any]:
    """A request or a notification for `method`; sometimes with a broken envelope."""
    out: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    params = draw(params_for(method, template))
    if params is not NO_PARAMS:
        out["params"] = params
    usual, unusual = "request", "notification"
    if method in NOTIFICATIONS:
        usual, unusual = unusual, usual
    kind = draw(st.sampled_from([usual] * 6 + [unusual, "envelope"]))
    if kind == "request":
        out["id"] = "ours"
    elif kind == "envelope":
        field_name = draw(st.sampled_from(["jsonrpc", "method", "id"]))
        out["id"] = "ours"
        out[field_name] = draw(junk | st.sampled_from(["1.0", 2.0, None, True, 1.5]))
    return out


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.sampled_from(sorted(_RAW)).map(_RAW.__getitem__),
    junk.map(lambda value: json.dumps(value).encode()),
)


def mostly_messages(messages: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three messages for one raw body (`|` would weigh each kind of raw body as much as
    all the messages together)."""
    return st.sampled_from([True, True, True, False]).flatmap(
        lambda is_message: messages if is_message else raw_bodies
    )


# --------------------------------------------------------------------------- the oracle


def expected_answer(body: bytes) -> tuple[str, Any]:
    """What JSON-RPC 2.0 (as LSP uses it) says comes back for a body:
    ("id", id) one answer with that id, ("null", None) one answer with a null id,
    ("none", None) no answer (a notification, or something shaped like a response)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "null", None
    if not isinstance(data, dict):
        return "null", None
    if "method" not in data and ("result" in data or "error" in data):
        return "none", None
    if "method" in data and "id" not in data:
        return "none", None
    msg_id = data.get("id")
    valid = isinstance(msg_id, str) or (isinstance(msg_id, int) and not isinstance(msg_id, bool))
    return ("id", msg_id) if valid else ("null", None)


@dataclass
class Tally:
    messages: int = 0
    requests: int = 0
    notifications: int = 0
    null_answers: int = 0
    batches: int = 0
    results: int = 0
    errors: dict[int, int] = field(default_factory=dict)


class Session:
    """A fuzzed server: sends a batch, checks its answers, checks it still completes."""

    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.tally = Tally()
        self.ours: set[Any] = set(server.responses) - {None}  # initialize's
        self.expected_nulls = len(server.responses.get(None, []))
        server.open(LIVE_URI, CODE)
        self.live_params = {
            "textDocument": {"uri": LIVE_URI},
            "position": {"line": 1, "character": 13},
            "context": {"triggerKind": 1},
        }
        self.live = self.liveness()
        assert self.live["items"], "the liveness request must produce a suggestion"

    def fresh_id(self) -> int:
        """An id no request of this session had (junk ids included)."""
        while (msg_id := self.server.next_id()) in self.ours:
            pass
        return msg_id

    def liveness(self) -> Any:
        msg_id = self.fresh_id()
        self.ours.add(msg_id)
        self.server.request(types.TEXT_DOCUMENT_INLINE_COMPLETION, self.live_params, msg_id)
        return self.server.wait([msg_id])[msg_id]["result"]

    def run(self, batch: list[dict[str, Any] | bytes]) -> None:
        waiting = []
        for entry in batch:
            if isinstance(entry, dict) and entry.get("id") == "ours":
                entry = {**entry, "id": self.fresh_id()}
            body = entry if isinstance(entry, bytes) else json.dumps(entry).encode()
            kind, msg_id = expected_answer(body)
            if kind == "id" and msg_id in self.ours:  # a junk id seen before: make it new
                fresh = self.fresh_id()
                msg_id = f"re-{fresh}" if isinstance(msg_id, str) else fresh
                body = json.dumps({**json.loads(body), "id": msg_id}).encode()
            if kind == "id":
                self.ours.add(msg_id)
                waiting.append(msg_id)
            elif kind == "null":
                self.expected_nulls += 1
            self.tally.messages += 1
            self.tally.requests += kind != "none"
            self.tally.notifications += kind == "none"
            self.server.send_body(body)
        answers = self.server.wait(waiting)
        nulls = self.server.wait_null_answers(self.expected_nulls)
        assert self.liveness() == self.live, "a normal request no longer works"
        assert len(nulls) == self.expected_nulls, "a null-id answer too many"
        unexpected = set(self.server.responses) - self.ours - {None}
        assert not unexpected, f"answers to ids never sent: {unexpected}"
        self.server.assert_answered_once()
        for answer in [*answers.values(), *nulls[self.tally.null_answers :]]:
            assert answer["jsonrpc"] == "2.0" and ("result" in answer) != ("error" in answer)
            self.tally.results += "result" in answer
            if "error" in answer:
                code = answer["error"]["code"]
                self.tally.errors[code] = self.tally.errors.get(code, 0) + 1
        self.tally.null_answers = len(nulls)
        self.tally.batches += 1


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(model="tiny", profile="tiny@cpu", speed=4.0) as running:
        yield running


@pytest.fixture(scope="module")
def session(
    emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Session]:
    config = external_config(tmp_path_factory.mktemp("fuzz") / "cato.toml", emulator)
    server = RawServer()
    try:
        server.initialize({"config": str(config), "debounceMs": 0})
        yield Session(server)
        assert server.alive(), "the server crashed"
    finally:
        assert server.close() == 0


def targets() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = [(m, TEMPLATES.get(m)) for m in METHODS + UNREGISTERED]
    found += [(f"{types.WORKSPACE_EXECUTE_COMMAND}:{c}", command_template(c)) for c in COMMANDS]
    return found


def test_every_registered_method_is_a_target() -> None:
    assert {types.TEXT_DOCUMENT_INLINE_COMPLETION, types.TEXT_DOCUMENT_COMPLETION} <= set(METHODS)
    assert {types.TEXT_DOCUMENT_CODE_ACTION, types.WORKSPACE_EXECUTE_COMMAND} <= set(METHODS)
    assert set(METHODS) - set(TEMPLATES) <= {types.WORKSPACE_EXECUTE_COMMAND}
    assert "cato.summarize" in COMMANDS


@pytest.mark.parametrize(("target", "template"), targets(), ids=lambda v: str(v)[:40])
def test_junk_to_one_method_is_answered_once(session: Session, target: str, template: Any) -> None:
    method = target.split(":", 1)[0]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(batch=st.lists(mostly_messages(message(method, template)), min_size=1, max_size=6))
    def check(batch: list[dict[str, Any] | bytes]) -> None:
        session.run(batch)

    check()


def test_a_long_stream_of_mixed_junk(session: Session) -> None:
    messages = [message(target.split(":", 1)[0], template) for target, template in targets()]
    anything = mostly_messages(st.one_of(*messages))
    before = session.tally.messages

    @settings(
        max_examples=STREAM_BATCHES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(batch=st.lists(anything, min_size=10, max_size=10))
    def check(batch: list[dict[str, Any] | bytes]) -> None:
        session.run(batch)

    check()
    tally = session.tally
    print(
        f"\nfuzz: {tally.messages - before} messages in this stream, {tally.messages} in all"
        f" ({tally.requests} to answer, {tally.notifications} not), {tally.batches} batches,"
        f" 0 unanswered, 0 answered twice, server alive; {tally.results} results,"
        f" errors by code {sorted(tally.errors.items())}"
    )
    assert session.server.alive()
