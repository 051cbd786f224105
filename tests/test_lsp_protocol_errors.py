"""Malformed messages get JSON-RPC errors, once, and the server stays up.

Every request is answered: -32602 naming the field when params do not fit the method,
-32700 (id null) for a body that is not JSON, -32600 for JSON that is not a request,
-32601 for a method the server does not have. Driven with raw bytes over a real
`cato-lsp` process's stdio (`lsp_fixtures.rpc`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lsp_fixtures import external_config
from lsp_fixtures.rpc import RawServer

from orchestrator.emulator.process import RunningEmulator, launch_emulator

CODE = "def area(width, height):\n    result = \n    return result\n"
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
ANSWER = None  # any answer (a result or an error) will do: lsprotocol's types are lax there

COMPLETION = "textDocument/completion"
INLINE = "textDocument/inlineCompletion"
HOVER = "textDocument/hover"
CODE_ACTION = "textDocument/codeAction"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(model="tiny", profile="tiny@cpu", speed=4.0) as running:
        yield running


@pytest.fixture
def server(emulator: RunningEmulator, tmp_path: Path) -> Iterator[RawServer]:
    raw = RawServer()
    try:
        config = external_config(tmp_path / "cato.toml", emulator)
        raw.initialize({"config": str(config), "debounceMs": 0})
        yield raw
    finally:
        assert raw.close() == 0
        raw.assert_answered_once()


def doc(uri: str) -> dict[str, Any]:
    return {"uri": uri}


def at(line: Any, character: Any) -> dict[str, Any]:
    return {"line": line, "character": character}


def position_cases(method: str, uri: str) -> list[tuple[str, Any, int | None, str]]:
    """Bad params for a method that takes a document and a position."""
    extra: dict[str, Any] = {"context": {"triggerKind": 1}} if method == INLINE else {}

    def params(**fields: Any) -> dict[str, Any]:
        return {"textDocument": doc(uri), "position": at(1, 13), **extra, **fields}

    return [
        (method, None, INVALID_PARAMS, "params"),
        (method, [], INVALID_PARAMS, "params"),
        (method, "junk", INVALID_PARAMS, "params"),
        (method, 42, INVALID_PARAMS, "params"),
        (method, True, INVALID_PARAMS, "params"),
        (method, {}, INVALID_PARAMS, "params.textDocument"),
        (method, params(position=at(-1, 0)), INVALID_PARAMS, "Position.line"),
        (method, params(position=at(0, -5)), INVALID_PARAMS, "Position.character"),
        (method, params(position=at(2**31, 0)), INVALID_PARAMS, "Position.line"),
        (method, params(position=at(2**70, 0)), INVALID_PARAMS, "params.position"),
        (method, params(position=at("x", 0)), INVALID_PARAMS, "params.position.line"),
        (method, params(position=at(None, None)), INVALID_PARAMS, "params.position.character"),
        (method, params(position={"line": 0}), INVALID_PARAMS, "params.position.character"),
        (method, params(position=None), INVALID_PARAMS, "params.position"),
        (method, params(position=[1, 13]), INVALID_PARAMS, "params.position"),
        (method, params(textDocument=None), INVALID_PARAMS, "params.textDocument"),
        (method, params(textDocument={}), INVALID_PARAMS, "params.textDocument.uri"),
        (method, params(textDocument="file:///x.py"), INVALID_PARAMS, "params.textDocument"),
        (method, params(textDocument=doc("x" * 100_000)), ANSWER, ""),
        (method, params(position=at(99_999, 0)), INVALID_PARAMS, "line"),
    ]


def cases(uri: str) -> list[tuple[str, Any, int | None, str]]:
    """The issue's malformed requests: (method, params, expected code, text in message)."""
    found = position_cases(COMPLETION, uri) + position_cases(INLINE, uri)
    inline = {"textDocument": doc(uri), "position": at(1, 13)}
    found += [
        (INLINE, inline, INVALID_PARAMS, "params.context"),
        (INLINE, {**inline, "context": None}, INVALID_PARAMS, "params.context"),
        (INLINE, {**inline, "context": {"triggerKind": 99}}, INVALID_PARAMS, "triggerKind"),
        (INLINE, {**inline, "context": {"triggerKind": "x"}}, INVALID_PARAMS, "triggerKind"),
    ]
    found += [(HOVER, p, METHOD_NOT_FOUND, HOVER) for p in (None, {}, inline, [1], "x")]
    start, end = at(0, 0), at(1, 4)
    action = {"textDocument": doc(uri), "range": {"start": start, "end": end}}
    context = {"diagnostics": []}
    found += [
        (CODE_ACTION, None, INVALID_PARAMS, "params"),
        (CODE_ACTION, {}, INVALID_PARAMS, "params.range"),
        (CODE_ACTION, action, INVALID_PARAMS, "params.context"),
        (CODE_ACTION, {**action, "context": None}, INVALID_PARAMS, "params.context"),
        (CODE_ACTION, {**action, "context": {"diagnostics": "x"}}, INVALID_PARAMS, "diagnostics"),
        (CODE_ACTION, {**action, "context": {**context, "only": 5}}, INVALID_PARAMS, "only"),
        (CODE_ACTION, {**action, "range": None, "context": context}, INVALID_PARAMS, "range"),
        (
            CODE_ACTION,
            {**action, "range": {"start": at(-1, 0), "end": end}, "context": context},
            INVALID_PARAMS,
            "Position.line",
        ),
        (
            CODE_ACTION,
            {**action, "range": {"start": start}, "context": context},
            INVALID_PARAMS,
            "params.range.end",
        ),
        (CODE_ACTION, {**action, "context": context}, ANSWER, ""),
    ]
    return found


def test_the_issues_malformed_requests_are_all_answered(server: RawServer, tmp_path: Path) -> None:
    uri = (tmp_path / "area.py").as_uri()
    server.open(uri, CODE)
    before = server.call(INLINE, inline_params(uri))
    assert before["result"]["items"], before

    sent = {server.request(m, params): (m, code, text) for m, params, code, text in cases(uri)}
    answers = server.wait(sent)
    readable = server.call(COMPLETION, {"textDocument": doc(uri), "position": at("x", 0)})

    assert len(answers) >= 57
    for msg_id, (method, code, text) in sent.items():
        answer = answers[msg_id]
        if code is None:
            assert "result" in answer or "error" in answer, answer
            continue
        assert answer.get("error", {}).get("code") == code, (method, answer)
        assert text in answer["error"]["message"], (text, answer)
    assert readable["error"]["message"] == (
        "Invalid params for textDocument/completion: "
        'params.position.line: invalid value for type, expected int (got a string "x")'
    )
    assert readable["error"]["data"]["problems"] == [
        'params.position.line: invalid value for type, expected int (got a string "x")'
    ]
    assert server.call(INLINE, inline_params(uri))["result"] == before["result"]


def inline_params(uri: str) -> dict[str, Any]:
    return {"textDocument": doc(uri), "position": at(1, 13), "context": {"triggerKind": 1}}


def still_answers(server: RawServer, uri: str, text: str = CODE) -> None:
    server.open(uri, text)
    assert server.call(INLINE, inline_params(uri))["result"]["items"]


BAD_BODIES: list[tuple[bytes, int]] = [
    (b"{not json", PARSE_ERROR),
    (b"", PARSE_ERROR),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "shutdown"', PARSE_ERROR),  # cut short
    (b"[" * 100_000, PARSE_ERROR),  # deeper than any decoder's stack
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, PARSE_ERROR),
    (b"\xff\xfe\x00junk", PARSE_ERROR),  # not UTF-8
    (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": 1' + b"9" * 5000 + b"}", PARSE_ERROR),
    (b"null", INVALID_REQUEST),
    (b"5", INVALID_REQUEST),
    (b'"initialize"', INVALID_REQUEST),
    (b"[]", INVALID_REQUEST),
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "shutdown"}]', INVALID_REQUEST),  # a batch
    (b"{}", INVALID_REQUEST),
    (b'{"jsonrpc": "2.0"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": 1.5, "method": "shutdown"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": true, "method": "shutdown"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": null, "method": "shutdown"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": [1], "method": "shutdown"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "shutdown"}', INVALID_REQUEST),
]


def test_bodies_that_are_not_requests_get_an_answer_with_a_null_id(
    server: RawServer, tmp_path: Path
) -> None:
    for body, _ in BAD_BODIES:
        server.send_body(body)
    answers = server.wait_null_answers(len(BAD_BODIES))

    assert [a["error"]["code"] for a in answers] == [code for _, code in BAD_BODIES]
    assert all(a["id"] is None and a["jsonrpc"] == "2.0" for a in answers)
    assert "Parse error" in answers[0]["error"]["message"]
    assert "batches" in answers[11]["error"]["message"]
    still_answers(server, (tmp_path / "a.py").as_uri())
    assert len(server.responses[None]) == len(BAD_BODIES)  # nothing answered twice


def test_requests_with_a_bad_envelope_are_invalid_requests(
    server: RawServer, tmp_path: Path
) -> None:
    shapes: list[dict[str, Any]] = [
        {"jsonrpc": "1.0", "method": "shutdown"},
        {"method": "shutdown"},  # no jsonrpc
        {"jsonrpc": 2.0, "method": COMPLETION, "params": {}},
        {"jsonrpc": "2.0", "method": 5},
        {"jsonrpc": "2.0", "method": None, "params": {}},
        {"jsonrpc": "2.0", "method": ["shutdown"]},
        {"jsonrpc": "2.0"},  # no method
        {"jsonrpc": "2.0", "params": {}},
    ]
    ids: list[Any] = []
    for index, shape in enumerate(shapes):
        msg_id: Any = 9_000 + index if index % 2 else f"req-{index}"
        server.send_body(json_bytes({**shape, "id": msg_id}))
        ids.append(msg_id)

    answers = server.wait(ids)

    assert {a["error"]["code"] for a in answers.values()} == {INVALID_REQUEST}
    still_answers(server, (tmp_path / "a.py").as_uri())


def test_bad_notifications_are_dropped_without_an_answer(server: RawServer, tmp_path: Path) -> None:
    uri = (tmp_path / "a.py").as_uri()
    for method, params in [
        ("textDocument/didOpen", None),
        ("textDocument/didOpen", {"textDocument": {"uri": uri, "text": 5}}),
        ("textDocument/didChange", []),
        ("textDocument/didChange", {"textDocument": {"uri": uri}, "contentChanges": "x"}),
        ("textDocument/didClose", "x"),
        ("workspace/didChangeConfiguration", None),
        ("$/cancelRequest", {"id": [1]}),
        ("$/cancelRequest", None),
        ("window/workDoneProgress/cancel", {"token": None}),
        ("initialized", 5),
        ("$/setTrace", {"value": "loud"}),
        ("cato/noSuchNotification", {"a": 1}),
    ]:
        server.notify(method, params)
    server.send_body(json_bytes({"jsonrpc": "1.0", "method": "initialized"}))
    server.send_body(json_bytes({"jsonrpc": "2.0", "method": 5}))

    still_answers(server, uri)
    assert set(server.responses) == {1, 2}  # initialize and the liveness call only


def test_framing_junk_is_skipped_and_reading_goes_on(server: RawServer, tmp_path: Path) -> None:
    unknown = json_bytes({"jsonrpc": "2.0", "id": "framed", "method": "cato/none"})
    server.send_raw(b"X-Junk: 1\r\n\r\n")  # a header block without a length
    server.send_raw(b"Content-Length: abc\r\n\r\n")
    server.send_raw(b"Content-Length: -5\r\n\r\n")
    server.send_raw(b"\r\n\r\n")
    server.send_raw(b"H" * 3_000_000 + b"\r\n")  # past the reader's line limit
    server.send_raw(b"content-length:  %d \r\n\r\n" % len(unknown) + unknown)
    second = unknown.replace(b"framed", b"f2")
    server.send_raw(
        b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n" % len(second) + second
    )

    answers = server.wait(["framed", "f2"])

    assert {a["error"]["code"] for a in answers.values()} == {METHOD_NOT_FOUND}
    still_answers(server, (tmp_path / "a.py").as_uri())


def test_second_initialize_and_requests_after_shutdown_are_invalid_requests(
    server: RawServer,
) -> None:
    again = server.call("initialize", {"capabilities": {}})
    assert again["error"]["code"] == INVALID_REQUEST

    assert server.call("shutdown") == {"jsonrpc": "2.0", "id": again["id"] + 1, "result": None}
    after = [server.request(m, p) for m, p in [(COMPLETION, {}), ("shutdown", None), ("x", 1)]]
    answers = server.wait(after)
    assert [a["error"]["code"] for a in answers.values()] == [INVALID_REQUEST] * 3
    assert "after shutdown" in answers[after[0]]["error"]["message"]
    server.notify("exit")
    assert server.process.wait(30) == 0


def test_a_broken_answer_from_the_client_does_not_leave_the_server_waiting(
    server: RawServer, tmp_path: Path
) -> None:
    server.answers["workspace/configuration"] = 5  # not the list LSP says
    server.notify("workspace/didChangeConfiguration", {"settings": {"cato": {"debounceMs": 1}}})

    deadline = 200
    while deadline and not any("workspace/configuration" in str(n) for n in server.notifications):
        server.call("cato/none")  # lets time pass with the server's loop busy
        deadline -= 1
    logged = [n for n in server.notifications if "workspace/configuration" in str(n)]
    assert logged, "the pending workspace/configuration request never failed"
    assert logged[0]["method"] == "window/logMessage"
    still_answers(server, (tmp_path / "a.py").as_uri())


def json_bytes(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()
