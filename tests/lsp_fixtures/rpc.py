"""A language server driven with raw bytes over its stdio, as a fuzzer or a broken editor
would: any body can be sent, and every message that comes back is kept.

Synchronous (a reader thread per pipe), so that hypothesis can drive it from plain
tests. The server's requests to the client are answered: with `answers[method]` when
set (raw, to play a broken client), `workspace/configuration` with `configuration`,
anything else with null.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import IO, Any

from lsp_fixtures import SERVER_COMMAND, WAIT_S

_NO_PARAMS: Any = object()

CAPABILITIES: dict[str, Any] = {
    "textDocument": {
        "inlineCompletion": {},
        "completion": {},
        "codeAction": {
            "codeActionLiteralSupport": {"codeActionKind": {"valueSet": ["refactor", "source"]}}
        },
    },
    "workspace": {"configuration": True, "applyEdit": True},
    "window": {"workDoneProgress": True},
}


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class RawServer:
    """One `cato-lsp` process; `responses` maps each id (None for null) to its answers."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*SERVER_COMMAND, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.responses: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self.notifications: list[dict[str, Any]] = []
        self.server_requests: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []  # every body the server sent, as sent
        self.stderr = bytearray()
        self.configuration: Any = None
        self.answers: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        self._write_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- sending --------------------------------------------------------------------

    def send_body(self, body: bytes) -> None:
        self.send_raw(frame(body))

    def send_raw(self, data: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        with self._write_lock:
            stdin.write(data)
            stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.send_body(json.dumps({"jsonrpc": "2.0", **message}).encode())

    def next_id(self) -> int:
        return next(self._ids)

    def request(self, method: str, params: Any = _NO_PARAMS, msg_id: Any = None) -> Any:
        msg_id = self.next_id() if msg_id is None else msg_id
        message: dict[str, Any] = {"id": msg_id, "method": method}
        if params is not _NO_PARAMS:
            message["params"] = params
        self.send(message)
        return msg_id

    def notify(self, method: str, params: Any = _NO_PARAMS) -> None:
        message: dict[str, Any] = {"method": method}
        if params is not _NO_PARAMS:
            message["params"] = params
        self.send(message)

    def call(self, method: str, params: Any = _NO_PARAMS) -> dict[str, Any]:
        """A request and its one answer."""
        msg_id = self.request(method, params)
        return self.wait([msg_id])[msg_id]

    def initialize(self, options: Any, capabilities: Any = None) -> dict[str, Any]:
        """`initialize` (its result) and `initialized`."""
        answer = self.call(
            "initialize",
            {
                "processId": None,
                "capabilities": CAPABILITIES if capabilities is None else capabilities,
                "initializationOptions": options,
            },
        )
        assert "result" in answer, answer
        self.notify("initialized", {})
        return dict(answer["result"])

    def open(self, uri: str, text: str, language: str = "python") -> None:
        document = {"uri": uri, "languageId": language, "version": 1, "text": text}
        self.notify("textDocument/didOpen", {"textDocument": document})

    # -- waiting --------------------------------------------------------------------

    def wait(self, ids: Iterable[Any], timeout: float = WAIT_S) -> dict[Any, dict[str, Any]]:
        """The answer to each id; fails on a missing answer or on a second one."""
        ids = list(ids)
        deadline = time.monotonic() + timeout
        with self._changed:
            while not all(self.responses.get(i) for i in ids):
                left = deadline - time.monotonic()
                missing = [i for i in ids if not self.responses.get(i)]
                assert left > 0, f"no answer to {len(missing)} requests: {missing[:10]}"
                assert self.alive(), f"the server exited ({self.process.returncode})"
                self._changed.wait(min(left, 0.5))
            answers = {i: self.responses[i] for i in ids}
        doubled = {i: a for i, a in answers.items() if len(a) != 1}
        assert not doubled, f"answered more than once: {doubled}"
        return {i: a[0] for i, a in answers.items()}

    def wait_null_answers(self, count: int, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        """Wait until `count` answers with a null id have come (parse errors and the like)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.responses.get(None, [])) < count:
                left = deadline - time.monotonic()
                got = len(self.responses.get(None, []))
                assert left > 0, f"{got} of {count} answers with a null id"
                assert self.alive(), f"the server exited ({self.process.returncode})"
                self._changed.wait(min(left, 0.5))
            return list(self.responses.get(None, []))

    def assert_answered_once(self) -> None:
        """No id (null aside) was answered twice over the whole session."""
        with self._changed:
            doubled = {i: a for i, a in self.responses.items() if i is not None and len(a) > 1}
        assert not doubled, f"answered more than once: {doubled}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> int:
        """`shutdown` and `exit` as an editor would; the exit code (killed if it hangs)."""
        with contextlib.suppress(Exception):
            if self.alive():
                self.call("shutdown")
                self.notify("exit")
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            code = self.process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        for thread in self._threads:
            thread.join(WAIT_S)
        return code

    # -- reading --------------------------------------------------------------------

    def _read_stdout(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            body = _read_frame(stdout)
            if body is None:
                break
            message = json.loads(body)
            with self._changed:
                self.bodies.append(body)
                if "method" in message and "id" in message:
                    self.server_requests.append(message)
                    self._answer(message)
                elif "method" in message:
                    self.notifications.append(message)
                else:
                    self.responses[message.get("id")].append(message)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _answer(self, request: dict[str, Any]) -> None:
        result: Any = None
        if request["method"] in self.answers:
            result = self.answers[request["method"]]
        elif request["method"] == "workspace/configuration":
            items = request.get("params", {}).get("items", [])
            result = [self.configuration for _ in items]
        body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
        with contextlib.suppress(OSError, ValueError):
            self.send_body(body)

    def _read_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        while chunk := stderr.read1(65536):  # type: ignore[attr-defined]
            self.stderr.extend(chunk)


def _read_frame(stream: IO[bytes]) -> bytes | None:
    length = None
    while True:
        line = stream.readline()
        if not line:
            return None
        if line.strip():
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            continue
        if length is not None:
            body = stream.read(length)
            return body if len(body) == length else None
