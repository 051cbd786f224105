"""The bearer token never reaches a log line or a message to the editor.

pygls logs whole messages (`initialize`'s params among them) before the server has
read its settings; the token is learned from the raw message first and scrubbed from
every log record and every outgoing message from then on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lsp_fixtures.rpc import RawServer

from cato_lsp.redact import MASK, RedactingFormatter, Secrets
from orchestrator.config import User, hash_token
from orchestrator.emulator.process import RunningEmulator, launch_emulator
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.server import ServiceOptions, create_app, serve_app

CODE = "def area(width, height):\n    result = \n    return result\n"
FIRST = "first-lsp-token-0123456789abcdef"
SECOND = "second-lsp-token-0123456789abcdef"
REFUSED = "refused-lsp-token-0123456789abcdef"
ODD = 'odd-"token"\\with-ü-0123456789abcdef'  # quoted, escaped and not ASCII


def forms(token: str) -> list[str]:
    """The token as text, inside JSON and inside a Python repr."""
    return [token, json.dumps(token)[1:-1], repr(token)[1:-1]]


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(model="tiny", profile="tiny@cpu", speed=4.0) as running:
        yield running


@contextmanager
def team_service(emulator: RunningEmulator, tokens: list[str]) -> Iterator[str]:
    """`cato serve`'s app on a thread of its own (the test drives the server blocking)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    orchestrator = Orchestrator([ReplicaSpec(id="r1", url=emulator.url, model="tiny")])
    users = [User(name=f"dev{i}", token_sha256=hash_token(t)) for i, t in enumerate(tokens)]
    app = create_app(orchestrator, ServiceOptions(users=users, models=["tiny"]))
    runner = asyncio.run_coroutine_threadsafe(serve_app(app, "127.0.0.1", 0), loop).result(60)
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:

        async def stop() -> None:
            await runner.cleanup()
            await orchestrator.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def inline(server: RawServer, uri: str) -> dict[str, Any]:
    params = {
        "textDocument": {"uri": uri},
        "position": {"line": 1, "character": 13},
        "context": {"triggerKind": 1},
    }
    return server.call("textDocument/inlineCompletion", params)


def switch_token(server: RawServer, settings: dict[str, Any], token: str) -> None:
    """Push a new token (and have the pull return it); wait until it is in force."""
    applied = _count_applied(server)
    server.configuration = {"cato": {**settings, "token": token}}
    server.notify("workspace/didChangeConfiguration", {"settings": {"cato": {"token": token}}})
    deadline = time.monotonic() + 60
    while _count_applied(server) == applied:
        assert time.monotonic() < deadline, "the new settings were never applied"
        time.sleep(0.05)


def _count_applied(server: RawServer) -> int:
    return sum("settings applied" in json.dumps(n) for n in server.notifications)


def test_the_token_is_in_no_log_line_and_no_message(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    with team_service(emulator, [FIRST, SECOND]) as url:
        server = RawServer("--log-level", "debug")
        try:
            settings = {"mode": "remote", "url": url, "debounceMs": 0}
            server.configuration = {"cato": {**settings, "token": FIRST}}
            server.initialize({**settings, "token": FIRST})
            uri = (tmp_path / "area.py").as_uri()
            server.open(uri, CODE)

            assert inline(server, uri)["result"]["items"]  # the service took the token

            switch_token(server, settings, SECOND)
            assert inline(server, uri)["result"]["items"]
            status = server.call("workspace/executeCommand", {"command": "cato.status"})
            assert status["result"]["settings"]["token"] == "set"

            switch_token(server, settings, REFUSED)
            assert inline(server, uri)["result"]["items"] == []  # 401: nothing to suggest
            switch_token(server, settings, ODD)
            assert "result" in inline(server, uri)
            server.call("workspace/executeCommand", {"command": "cato.summarize", "arguments": [1]})
        finally:
            assert server.close() == 0

    stderr = server.stderr.decode("utf-8", "replace")
    sent = [body.decode("utf-8") for body in server.bodies]
    for token in (FIRST, SECOND, REFUSED, ODD):
        for form in forms(token):
            assert form not in stderr, f"{token!r} in the log"
            assert not [body for body in sent if form in body], f"{token!r} sent to the client"
    # the logs did hold the messages that carried the tokens, masked
    assert "initialization_options" in stderr and MASK in stderr
    assert "Sending data" in stderr
    assert any("refused the token" in body for body in sent)  # the 401 was reported


def test_tokens_are_learned_from_the_messages_that_carry_settings() -> None:
    secrets = Secrets()
    secrets.learn({"method": "initialize", "params": {"initializationOptions": {"token": "a1"}}})
    secrets.learn({"method": "initialize", "params": {"initializationOptions": "junk"}})
    secrets.learn(
        {
            "method": "workspace/didChangeConfiguration",
            "params": {"settings": {"cato": {"token": "b2"}}},
        }
    )
    secrets.learn({"id": 3, "result": [{"cato": {"token": "c3"}}, None, 5]})
    secrets.learn({"id": 4, "result": {"token": "d4"}})
    # a progress token is not a secret; neither is a value that is not a string
    secrets.learn({"method": "window/workDoneProgress/cancel", "params": {"token": "e5"}})
    secrets.learn({"method": "initialize", "params": {"initializationOptions": {"token": 7}}})
    secrets.learn([1, 2])

    assert secrets.scrub("a1 b2 c3 d4 e5 7") == f"{MASK} {MASK} {MASK} {MASK} e5 7"


def test_scrubbing_keeps_json_valid_and_masks_the_longer_token_whole() -> None:
    secrets = Secrets()
    secrets.add("abcd1234")
    secrets.add("xabcd1234x")
    secrets.add('q"uote-5678')
    message = {"k-xabcd1234x": ["xabcd1234x", 'say q"uote-5678', 5, None], "abcd1234": {"n": 1}}

    scrubbed = secrets.scrub_json(message)

    assert scrubbed == {f"k-{MASK}": [MASK, f"say {MASK}", 5, None], MASK: {"n": 1}}
    assert secrets.found_in(json.dumps(message)) and not secrets.found_in(json.dumps(scrubbed))
    assert secrets.scrub(json.dumps(message)) == json.dumps(scrubbed)  # the escaped form too


def test_a_short_token_is_masked_in_logs_but_does_not_change_messages() -> None:
    secrets = Secrets()
    secrets.add("abc")
    completion = {"insertText": "abc = compute(abc)"}

    assert secrets.scrub("Bearer abc") == f"Bearer {MASK}"
    assert not secrets.found_in(json.dumps(completion))
    assert secrets.scrub_json(completion) == completion


def test_the_formatter_masks_arguments_and_tracebacks() -> None:
    secrets = Secrets()
    secrets.add("tok-123456")
    formatter = RedactingFormatter(secrets, "%(levelname)s %(message)s")
    try:
        raise ValueError("bad header Bearer tok-123456")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "params %s", ({"token": "tok-123456"},), None
        )
        record.exc_info = sys.exc_info()

    text = formatter.format(record)

    assert "tok-123456" not in text
    assert "ValueError: bad header Bearer ***" in text and "'token': '***'" in text
    broken = logging.LogRecord("x", logging.INFO, __file__, 1, "%d", ("tok-123456",), None)
    assert formatter.format(broken) == "INFO x: unformattable record (TypeError)"
