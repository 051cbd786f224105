"""The editor experience measured from the client's side: `python -m cato_lsp.experience`.

Starts `python -m cato_lsp` over stdio as an editor does, opens a generated Python file
of the chosen size, and types a line into it one character at a time, asking for an
inline suggestion after each keystroke and waiting for the answer before the next (a
user who pauses). It reports when the status said "ready" (the embedded replicas start
at initialize), the first suggestion's latency once ready and from opening the file,
keystroke to suggestion as the client saw it, and what the server's `cato.status` says
(its own keystroke-to-suggestion percentiles, TTFT, SLA attainment, prompt budget).

With `--startup-runs N` it measures the start instead, as a user who opens a file and
types at once: N fresh servers, each asked for a suggestion right after the file is
open; it reports the median, least and most of the time to initialize, to the status
saying "ready", and to the first suggestion (from opening the file and from spawning
the server). Wall-clock figures: for a benchmark run, not for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient


def typed_line(round_index: int) -> str:
    """A different line each round, so a round is not answered from the last one's cache."""
    return f"    result_{round_index} = compute_total(values, offset + {round_index})"


def python_file(size_bytes: int) -> tuple[str, int]:
    """A Python module of about `size_bytes`, and the line where the typing goes (an empty
    line inside the last function, before its return)."""
    parts: list[str] = ["import math\n\n\n"]
    n = 0
    while sum(len(p) for p in parts) < size_bytes:
        parts.append(
            f"def step_{n}(values, offset):\n"
            f'    """Scale the values of step {n} and shift them by the offset."""\n'
            f"    scaled = [v * {n + 1} for v in values]\n"
            f"    total = sum(scaled) + offset\n"
            f"    return math.sqrt(abs(total))\n\n\n"
        )
        n += 1
    head = "".join(parts)
    tail = "def compute_total(values, offset):\n    return sum(values) + offset\n\n\n"
    body = "def main(values, offset):\n\n    return result\n"
    text = head + tail + body
    line = text.count("\n") - 2  # the empty line of main()
    return text, line


def _percentile(values: Sequence[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, int(share * len(ordered) + 0.999999) - 1)]


async def _start_client(on_ready: Callable[[], None]) -> LanguageClient:
    """A client of a fresh `cato-lsp`, calling `on_ready` when the status says ready."""
    client = LanguageClient("cato-experience", "1")

    def on_status(params: Any) -> None:
        if getattr(params, "state", None) == "ready":
            on_ready()

    def ignore(params: Any) -> None:
        return None

    client.feature("cato/status")(on_status)
    for method in (types.WINDOW_SHOW_MESSAGE, types.WINDOW_LOG_MESSAGE):
        client.feature(method)(ignore)
    await client.start_io(sys.executable, "-m", "cato_lsp")
    return client


async def _initialize(client: LanguageClient, folder: str, options: dict[str, Any]) -> None:
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(
                text_document=types.TextDocumentClientCapabilities(
                    inline_completion=types.InlineCompletionClientCapabilities()
                )
            ),
            initialization_options=options,
            root_uri=Path(folder).as_uri(),
        )
    )
    client.initialized(types.InitializedParams())


def _open(client: LanguageClient, folder: str, size_bytes: int) -> tuple[str, int, str]:
    """Write and open a Python file of `size_bytes`: its URI, the line to type on, its text."""
    path = Path(folder) / "app.py"
    text, line = python_file(size_bytes)
    path.write_text(text, encoding="utf-8")
    uri = path.as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
        )
    )
    return uri, line, text


async def _suggest(client: LanguageClient, uri: str, line: int, column: int) -> bool:
    """Ask for an inline completion at the position; whether items came back."""
    result = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic
            ),
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=column),
        )
    )
    return bool(result is not None and getattr(result, "items", None))


async def measure(
    size_bytes: int, options: dict[str, Any], repeats: int, pause_s: float
) -> dict[str, Any]:
    ready = asyncio.Event()
    client = await _start_client(ready.set)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        await _initialize(client, folder, options)
        uri, line, text = _open(client, folder, size_bytes)

        async def ask(column: int) -> tuple[float, bool]:
            t0 = time.perf_counter()
            shown = await _suggest(client, uri, line, column)
            return (time.perf_counter() - t0) * 1000.0, shown

        opened = time.perf_counter()
        # The replicas start at initialize; the server says "ready" when they are up.
        await asyncio.wait_for(ready.wait(), 600)
        ready_ms = (time.perf_counter() - started) * 1000.0
        first_ms, shown = await ask(0)  # the first suggestion, once the status says ready
        open_to_first_ms = (time.perf_counter() - opened) * 1000.0
        waits: list[float] = []
        version = 1
        for round_index in range(repeats):
            typed = typed_line(round_index)
            for column, char in enumerate(typed):
                version += 1
                at = types.Position(line=line, character=column)
                client.text_document_did_change(
                    types.DidChangeTextDocumentParams(
                        text_document=types.VersionedTextDocumentIdentifier(
                            uri=uri, version=version
                        ),
                        content_changes=[
                            types.TextDocumentContentChangePartial(
                                range=types.Range(start=at, end=at), text=char
                            )
                        ],
                    )
                )
                elapsed, shown = await ask(column + 1)
                if shown:
                    waits.append(elapsed)
                await asyncio.sleep(pause_s)
            # take the typed line out again for the next round
            version += 1
            start = types.Position(line=line, character=0)
            end = types.Position(line=line, character=len(typed))
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                    content_changes=[
                        types.TextDocumentContentChangePartial(
                            range=types.Range(start=start, end=end), text=""
                        )
                    ],
                )
            )
        status = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="cato.status", arguments=[])
        )
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()  # type: ignore[no-untyped-call]
    server = status if isinstance(status, dict) else {}
    completions = server.get("completions", {})
    return {
        "file_kb": round(len(text.encode()) / 1024),
        "ready_after_initialize_ms": round(ready_ms),
        "first_suggestion_ms": round(first_ms) if shown else None,
        "open_to_first_suggestion_ms": round(open_to_first_ms) if shown else None,
        "suggestions": len(waits),
        "client_p50_ms": _round(statistics.median(waits) if waits else None),
        "client_p90_ms": _round(_percentile(waits, 0.9)),
        "server_suggest_ms": server.get("suggestMs"),
        "last_ttft_ms": _round(server.get("lastTtftMs")),
        "sla_attainment_complete": server.get("slaAttainment", {}).get("complete"),
        "context_tokens": completions.get("context_tokens"),
        "shed": completions.get("shed"),
        "cache_hits": completions.get("cache_hits"),
        "stopped_early": completions.get("stopped_early"),
    }


async def start_once(size_bytes: int, options: dict[str, Any]) -> dict[str, float | None]:
    """One fresh server: spawn it, initialize, open the file and ask for a suggestion at
    once (as a user who starts typing), timing each step until the first items."""
    marks: dict[str, float] = {}

    def on_ready() -> None:
        marks.setdefault("ready", time.perf_counter())

    spawned = time.perf_counter()
    client = await _start_client(on_ready)
    with tempfile.TemporaryDirectory() as folder:
        await _initialize(client, folder, options)
        initialized = time.perf_counter()
        uri, line, _ = _open(client, folder, size_bytes)
        opened = time.perf_counter()
        shown = await _suggest(client, uri, line, 0)
        answered = time.perf_counter()
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()  # type: ignore[no-untyped-call]
    ready = marks.get("ready")
    return {
        "initialize_ms": (initialized - spawned) * 1000.0,
        "ready_after_spawn_ms": None if ready is None else (ready - spawned) * 1000.0,
        "open_to_first_suggestion_ms": (answered - opened) * 1000.0 if shown else None,
        "spawn_to_first_suggestion_ms": (answered - spawned) * 1000.0 if shown else None,
    }


async def startup(size_bytes: int, options: dict[str, Any], runs: int) -> dict[str, Any]:
    """`runs` fresh servers one after the other: the median, least and most of each step."""
    results = [await start_once(size_bytes, options) for _ in range(runs)]
    summary: dict[str, Any] = {"file_kb": round(size_bytes / 1024), "runs": runs}
    summary["shown"] = sum(1 for r in results if r["open_to_first_suggestion_ms"] is not None)
    for key in results[0]:
        values = [v for r in results if (v := r[key]) is not None]
        summary[key] = {
            "p50": _round(statistics.median(values) if values else None),
            "min": _round(min(values) if values else None),
            "max": _round(max(values) if values else None),
        }
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cato_lsp.experience", description=__doc__)
    parser.add_argument("--size-kb", type=int, default=60, help="file size (default 60)")
    parser.add_argument("--repeats", type=int, default=2, help="lines typed (default 2)")
    parser.add_argument("--pause-ms", type=float, default=100.0, help="pause per keystroke")
    parser.add_argument(
        "--settings", default="{}", help="the server's settings as JSON, e.g. '{\"config\": ...}'"
    )
    parser.add_argument(
        "--startup-runs",
        type=int,
        default=0,
        metavar="N",
        help="instead: start a fresh server N times, ask for a suggestion as soon as the "
        "file is open, and report the medians of the start-up figures",
    )
    args = parser.parse_args(argv)
    try:
        options = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        parser.error(f"--settings: not JSON: {exc}")
    if not isinstance(options, dict):
        parser.error("--settings: expected a JSON object")
    if args.startup_runs < 0:
        parser.error("--startup-runs: expected N >= 0")
    if args.startup_runs:
        result = asyncio.run(startup(args.size_kb * 1024, options, args.startup_runs))
    else:
        result = asyncio.run(
            measure(args.size_kb * 1024, options, args.repeats, args.pause_ms / 1e3)
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
