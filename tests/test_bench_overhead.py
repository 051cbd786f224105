"""``cato bench overhead`` in a tiny configuration: the structure and sanity of what it
measures and prints (not its speed, which is for the benchmark itself)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.bench import overhead
from orchestrator.bench.overhead import Case, OverheadOptions, markdown, run_overhead
from orchestrator.bench.overhead_backend import frames
from orchestrator.replicas.relay import Relay


def test_a_tiny_run_measures_every_cell_and_reports_them(tmp_path: Path) -> None:
    options = OverheadOptions(
        routers=("cato", overhead.FLOOR, "vllm-router-pow2"),
        tokens=(4, 12),
        concurrency=(1, 3),
        rounds=2,
        requests=9,
        requests_serial=4,
        warmup=1,
        idle_s=0.2,
        profile=False,
    )
    lines: list[str] = []
    run = run_overhead(options, tmp_path, say=lines.append)

    routers = ["direct", *run.routers()]
    assert {"cato", overhead.FLOOR} <= set(routers) and not run.skipped.keys() & routers
    for name, why in run.skipped.items():
        assert name == "vllm-router-pow2" and "not installed" in why
    assert len(run.cells) == len(routers) * 4 * 2
    for cell in run.cells:
        assert cell.errors == 0, cell
        assert cell.requests == (4 if cell.concurrency == 1 else 9)
        assert cell.ttft_p50_ms > 0 and cell.wall_s > 0 and not math.isnan(cell.ttft_p99_ms)
        assert (cell.cpu_s is None) == (cell.router == "direct")
        assert cell.cpu_s is None or cell.cpu_s >= 0
    assert [c.round for c in run.cells[:: len(routers) * 4]] == [0, 1]
    # Interleaved: the second round starts with a different router.
    assert run.cells[0].router != run.cells[len(routers) * 4].router

    table = markdown(run)
    head, rule, *rows = table.splitlines()[: 2 + len(run.routers())]
    assert "CPU ms/req, 4 tok, conc 3" in head and "added TTFT p50, 12 tok, conc 1" in head
    assert rule.count("---") == head.count("|") - 1
    assert [r.split(" |")[0].removeprefix("| ").split()[0] for r in rows] == run.routers()
    assert "2 interleaved rounds" in table
    assert f"cato's CPU per request over {overhead.FLOOR}'s (same round)" in table
    saved = json.loads((tmp_path / "overhead.json").read_text())
    assert len(saved["cells"]) == len(run.cells)
    assert any("cato" in line for line in lines)


def test_the_backend_streams_as_vllm_frames_it() -> None:
    relay = Relay("backend")
    data = b"".join(frames(5, usage=True))
    item, error = relay.take(data)
    assert error is None and item is not None and item[1] == 5 and relay.done
    assert relay.usage is not None and relay.usage.completion_tokens == 5
    assert data.count(overhead.TOKEN_MARK) == 5


def test_own_time_takes_the_leaves_of_collapsed_stacks() -> None:
    shares = overhead.own_time("a (m.py:1);b (m.py:2) 3\na (m.py:1) 1\nnot a sample\n")
    assert shares[0] == ("b (m.py:2)", pytest.approx(0.75))
    assert sum(share for _, share in shares) == pytest.approx(1.0)
    stacks = (
        "Runner.run (asyncio/runners.py:118) 2\n"
        "x (orchestrator/server.py:1);y (aiohttp/web_protocol.py:9) 5\n"
        "x (orchestrator/server.py:1) 3\n"
    )
    assert overhead.own_time(stacks, key=overhead._package) == [
        ("aiohttp", 0.5),
        ("orchestrator", 0.3),
        ("event loop", 0.2),
    ]


def test_bad_arguments_are_refused_clearly() -> None:
    with pytest.raises(SystemExit, match="comma-separated integers"):
        overhead._ints("16,x", "tokens")
    with pytest.raises(SystemExit, match=">= 1"):
        overhead._ints("0", "concurrency")
    assert Case(16, 1).label == "16 tok, conc 1"


def test_pinning_without_taskset_pins_every_thread_of_the_tree() -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("pinning needs two cores")
    placement = overhead.Placement({cores[-1]}, set(cores[:-1]))
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(30,)).start()\n"
    code += "time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while len(overhead._threads(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        placement.pin_tree(proc.pid)
        threads = overhead._threads(proc.pid)
        assert len(threads) == 2
        assert all(os.sched_getaffinity(t) == {cores[-1]} for t in threads)
    finally:
        proc.kill()
        proc.wait()
    assert placement.prefix() in ([], ["taskset", "-c", str(cores[-1])])
