"""Smoke-test installed ``cato`` and ``cato-lsp`` executables from outside the source tree.

Usage: python scripts/wheel_smoke.py BIN_DIR

Runs, from a scratch folder, ``BIN_DIR/cato --version``, a ``BIN_DIR/cato serve`` answering
a streamed completion through the ``openai`` client, and ``BIN_DIR/cato-lsp`` over stdio
answering ``initialize`` and an inline completion. It imports neither ``orchestrator`` nor
``cato_lsp``, so a file that only the source tree has (a profile, an asset) fails here.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

WAIT_S = 90.0

# One fast emulated replica: the quickest embedded orchestrator to start.
CATO_TOML = """
[[models]]
name = "tiny"
engine = "emulated"
profile = "tiny@cpu"
speed = 20.0
min_replicas = 1
max_replicas = 1

[provisioner]
policy = "fixed"
"""

SOURCE = "import os\n\ndef load_items(path):\n    items = \n    return items\n"


def fail(message: str) -> None:
    print(f"wheel smoke: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check_version(cato: Path, cwd: Path) -> None:
    out = subprocess.run(
        [str(cato), "--version"], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0 or not re.search(r"\d+\.\d+", out.stdout):
        fail(f"cato --version: rc {out.returncode}, {out.stdout!r} {out.stderr!r}")
    print(f"cato --version: {out.stdout.strip()}")


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def check_serve(cato: Path, cwd: Path) -> None:
    """``cato serve`` on a free port with its built-in default, one streamed completion."""
    from openai import OpenAI

    proc = subprocess.Popen(
        [str(cato), "serve", "--port", "0"],
        cwd=cwd,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    threading.Thread(target=_pump, args=(proc.stderr, lines), daemon=True).start()
    try:
        url = _wait_for_url(proc, lines, log)
        deadline = time.monotonic() + WAIT_S
        while _health(url) != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                fail(f"cato serve at {url} never became healthy:\n" + "".join(log))
            time.sleep(0.2)
        client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=60)
        stream = client.completions.create(
            model="tiny",
            prompt="def fibonacci(n):\n",
            max_tokens=16,
            stream=True,
            extra_body={"cato": {"task": "complete", "sla_ms": 2000}},
        )
        text = "".join(c.choices[0].text for c in stream if c.choices)
        if not text.strip():
            fail("cato serve streamed an empty completion")
        print(f"cato serve {url}: streamed {len(text)} characters through the openai client")
        for path in ("/dashboard/", "/dashboard/static/uPlot.iife.min.js"):
            with urllib.request.urlopen(url + path, timeout=10) as resp:  # package data
                if resp.status != 200 or not resp.read():
                    fail(f"cato serve {url}{path}: HTTP {resp.status} or an empty body")
        print(f"cato serve {url}: /dashboard and its charting library come from the wheel")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            fail("cato serve did not stop within 60 s of SIGINT")
    if rc != 0:
        fail(f"cato serve exited with {rc}:\n" + "".join(log))


def _pump(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def _wait_for_url(proc: subprocess.Popen[str], lines: queue.Queue[str], log: list[str]) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        log.append(line)
        found = re.search(r"listening on (http://\S+?:\d+)", line)
        if found:
            return found.group(1)
    fail("cato serve never said where it listens:\n" + "".join(log))
    raise AssertionError  # unreachable: fail exits


class Lsp:
    """A minimal LSP client over a child's stdio: requests, and answers to its requests."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.next_id = 0
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            length = 0
            while (line := out.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if line == b"":
                return
            message = json.loads(out.read(length))
            if "method" in message and "id" in message:  # a request from the server
                result: Any = None
                if message["method"] == "workspace/configuration":
                    result = [{} for _ in message["params"]["items"]]
                self._send({"id": message["id"], "result": result})
            elif "id" in message:
                self.replies.put(message)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        self._send({"id": self.next_id, "method": method, "params": params})
        try:
            reply = self.replies.get(timeout=WAIT_S)
        except queue.Empty:
            fail(f"cato-lsp did not answer {method}:\n" + b"".join(self.stderr).decode())
        if reply.get("id") != self.next_id or "error" in reply:
            fail(f"cato-lsp answered {method} with {reply}")
        return reply.get("result")

    def notify(self, method: str, params: Any) -> None:
        self._send({"method": method, "params": params})


def check_lsp(cato_lsp: Path, cwd: Path) -> None:
    """``initialize`` advertises inline completion; one inline completion comes back."""
    (cwd / "cato.toml").write_text(CATO_TOML)
    lsp = Lsp([str(cato_lsp)], cwd)
    try:
        init = lsp.request(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": cwd.as_uri(),
                "capabilities": {
                    "textDocument": {"inlineCompletion": {}},
                    "workspace": {"configuration": True},
                },
                "initializationOptions": {"config": str(cwd / "cato.toml"), "debounceMs": 0},
            },
        )
        if init["capabilities"].get("inlineCompletionProvider") is None:
            fail(f"initialize did not advertise inline completion: {init['capabilities']}")
        lsp.notify("initialized", {})
        uri = (cwd / "items.py").as_uri()
        lsp.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": SOURCE}},
        )
        position = {"line": 3, "character": 12}
        params = {"textDocument": {"uri": uri}, "position": position, "context": {"triggerKind": 1}}
        items = lsp.request("textDocument/inlineCompletion", params)["items"]
        if not items or not str(items[0].get("insertText", "")).strip():
            fail(f"inline completion came back empty: {items}")
        print(f"cato-lsp: initialize, then an inline completion {items[0]['insertText']!r}")
        lsp.request("shutdown", None)
        lsp.notify("exit", None)
        try:
            rc = lsp.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            fail("cato-lsp did not exit after shutdown and exit")
    finally:
        if lsp.proc.poll() is None:
            os.killpg(lsp.proc.pid, signal.SIGKILL)
    if rc != 0:
        fail(f"cato-lsp exited with {rc}:\n" + b"".join(lsp.stderr).decode())


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not (Path(argv[0]) / "cato").is_file():
        print("usage: wheel_smoke.py BIN_DIR  (the folder holding cato and cato-lsp)")
        return 2
    bin_dir = Path(argv[0]).resolve()
    with tempfile.TemporaryDirectory(prefix="cato-wheel-smoke-") as scratch:
        cwd = Path(scratch)
        check_version(bin_dir / "cato", cwd)
        check_serve(bin_dir / "cato", cwd)
        check_lsp(bin_dir / "cato-lsp", cwd)
    print("wheel smoke: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
