"""The service's history: the ring buffer on a hand-driven clock, then ``/v1/status/history``
of a real app over an emulator replica, sampled by the app's own loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api import SLA, ReplicaInfo, Status, TaskEvent, Usage
from orchestrator.config import User, hash_token, load_config
from orchestrator.emulator.process import RunningEmulator, launch_emulator
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.history import OTHERS, History, UserUsage
from orchestrator.metrics import Recorder, TaskRecord
from orchestrator.runtime import task_defaults
from orchestrator.server import SERVICE, ServiceOptions, create_app, serve_app

MODEL = "tiny"
TOKEN = "alice-history-token"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _record(task: str, kind: str, arrival: float, ttft_s: float, e2e_s: float) -> TaskRecord:
    return TaskRecord(task, kind, "ttft", 500.0, arrival, arrival + ttft_s, arrival + e2e_s)


def _status(queued: int = 0) -> Status:
    return Status(
        replicas=[
            ReplicaInfo(id="a0", model="a", url="", state="ready", in_flight=2),
            ReplicaInfo(id="a1", model="a", url="", state="pending"),
            ReplicaInfo(id="b0", model="b", url="", state="ready", in_flight=1),
        ],
        queued=queued,
        in_flight=3,
    )


def test_a_sample_holds_what_ended_in_its_interval() -> None:
    clock = Clock()
    rec = Recorder(window_s=60.0)
    usage = UserUsage()
    scale: list[tuple[float, str, int, int, str]] = []
    h = History(
        lambda: _status(queued=4), rec, usage=usage, scale_events=scale, interval_s=5.0,
        clock=clock, wall=lambda: 1000.0 + clock.t,
        targets={"complete": SLA(metric="ttft", target_ms=500.0)},
    )  # fmt: skip
    rec.record(_record("old", "complete", 90.0, 0.1, 0.5))  # ended before the history began
    clock.t = 105.0
    rec.record(_record("t1", "complete", 101.0, 0.2, 1.0))  # met (ttft 200 <= 500)
    rec.record(_record("t2", "complete", 101.0, 0.9, 1.5))  # missed (ttft 900)
    rec.record(_record("t3", "summarize", 100.5, 0.3, 3.0))
    usage.observe(
        "alice",
        TaskEvent(type="done", task_id="t1", usage=Usage(prompt_tokens=7, completion_tokens=3)),
    )
    scale.append((103.0, "a", 1, 2, "3/4 calls (75%) violated their slack"))  # fmt: skip
    s = h.sample()
    assert s.t == 1105.0
    complete = dict(zip(("requests", "sla_met"), s.kinds["complete"][:2], strict=True))
    assert complete == {"requests": 2, "sla_met": 1}
    assert s.kinds["complete"][4] == pytest.approx(550.0)  # P50 TTFT of 200 and 900 ms
    assert s.kinds["summarize"][0] == 1
    assert s.goodput == pytest.approx(2 / 5.0)  # t1 and t3 met, over 5 s
    assert s.queued == 4 and s.in_flight == 3
    assert s.replicas == {("a", "ready"): 1, ("a", "pending"): 1, ("b", "ready"): 1}
    assert s.users == {"alice": (1, 10)}
    [event] = h.scale_events
    assert event.t == pytest.approx(1103.0) and event.reason.startswith("3/4 calls")

    clock.t = 110.0  # a quiet interval: no kinds, no users, the same scale event once
    quiet = h.sample()
    assert quiet.kinds == {} and quiet.users == {} and quiet.goodput == 0.0
    assert len(h.scale_events) == 1

    doc = json.loads(json.dumps(h.to_json()))
    assert doc["targets"] == {"complete": {"metric": "ttft", "target_ms": 500.0}}
    assert [x["t"] for x in doc["samples"]] == [1105.0, 1110.0]
    assert doc["samples"][0]["replicas"] == {"a": {"ready": 1, "pending": 1}, "b": {"ready": 1}}
    assert doc["samples"][0]["kinds"]["complete"]["sla_met"] == 1
    assert doc["users"] == {"alice": {"requests": 1, "tokens": 10}}
    assert [x["t"] for x in h.to_json(since=1105.0)["samples"]] == [1110.0]
    assert h.to_json(since=1105.0)["scale_events"] == []


def test_the_buffer_is_bounded_and_old_scale_events_leave() -> None:
    clock = Clock()
    scale: list[tuple[float, str, int, int, str]] = []
    h = History(
        _status, Recorder(window_s=60.0), scale_events=scale, interval_s=1.0, capacity=10,
        clock=clock, wall=clock,
    )  # fmt: skip
    scale.append((100.5, "a", 1, 2, "up"))
    for _ in range(25):
        clock.t += 1.0
        h.sample()
    assert len(h.samples) == 10
    assert [s.t for s in h.samples] == [float(t) for t in range(116, 126)]
    assert not h.scale_events  # 100.5 is older than the 10 s the buffer spans


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than the recorder's window"):
        History(_status, Recorder(window_s=1.0), interval_s=5.0)
    with pytest.raises(ValueError, match="capacity"):
        History(_status, Recorder(), capacity=0)
    with pytest.raises(ValueError, match="interval_s"):
        History(_status, Recorder(), interval_s=0)


def test_user_names_past_the_cap_count_together() -> None:
    usage = UserUsage(max_users=3)
    for name in ("a", "b", "c", "d", "a", None):
        usage.observe(name, None)
    assert usage.totals == {"a": (2, 0), "b": (1, 0), OTHERS: (3, 0)}


async def test_the_loop_samples_without_readers() -> None:
    clock = Clock()
    h = History(_status, Recorder(window_s=60.0), interval_s=0.02, clock=clock)
    async with h.running():
        await asyncio.sleep(0.3)
    n = len(h.samples)
    assert n >= 3
    await asyncio.sleep(0.1)
    assert len(h.samples) == n  # stopped with the context


# --------------------------------------------------------------------------- served


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with launch_emulator(model=MODEL, speed=5.0, max_num_seqs=64) as one:
        yield one


@pytest.fixture
async def served(emulator: RunningEmulator) -> AsyncIterator[str]:
    spec = ReplicaSpec(id=f"{MODEL}-0", url=emulator.url, model=MODEL, engine="emulated")
    orch = Orchestrator([spec], defaults=task_defaults(load_config(None)))
    options = ServiceOptions(
        models=[MODEL], users=[User(name="alice", token_sha256=hash_token(TOKEN))]
    )
    app = create_app(orch, options, history_interval_s=0.1)
    runner = await serve_app(app, "127.0.0.1", 0)
    assert app[SERVICE].history.interval_s == 0.1
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await orch.close()


async def _get(http: aiohttp.ClientSession, url: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers) as r:
        text = await r.text()
        return r.status, json.loads(text) if r.content_type == "application/json" else text


async def test_history_is_served_with_the_status_auth(served: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        assert (await _get(http, served + "/v1/status/history", None))[0] == 401
        assert (await _get(http, served + "/v1/status/history", "wrong"))[0] == 401
        body = {"kind": "complete", "prompt": "def f(x):", "max_tokens": 8}
        for _ in range(3):
            async with http.post(served + "/v1/tasks", json=body, headers=auth) as r:
                assert r.status == 200
                await r.read()
        doc: dict[str, Any] = {}
        for _ in range(50):  # the loop samples every 0.1 s
            status, doc = await _get(http, served + "/v1/status/history", TOKEN)
            assert status == 200
            if sum(s["kinds"].get("complete", {}).get("requests", 0) for s in doc["samples"]) == 3:
                break
            await asyncio.sleep(0.1)
        samples = doc["samples"]
        assert sum(s["kinds"].get("complete", {}).get("requests", 0) for s in samples) == 3
        assert all(s["replicas"] == {MODEL: {"ready": 1}} for s in samples)
        assert doc["targets"]["complete"]["metric"] == "ttft"
        assert doc["users"]["alice"]["requests"] == 3 and doc["users"]["alice"]["tokens"] > 0
        assert sum(s["users"].get("alice", {}).get("requests", 0) for s in samples) == 3
        last = samples[-1]["t"]
        _, newer = await _get(http, served + f"/v1/status/history?since={last}", TOKEN)
        assert all(s["t"] > last for s in newer["samples"])
        status, err = await _get(http, served + "/v1/status/history?since=soon", TOKEN)
        assert status == 400 and "since" in err["error"]["message"]
        async with http.get(served + "/metrics", headers=auth) as r:
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    [req] = [s for s in families["cato_user_requests"].samples if s.name.endswith("_total")]
    assert req.labels == {"user": "alice"} and req.value == 3
    tokens = {
        s.labels["type"]: s.value
        for s in families["cato_user_tokens"].samples
        if s.name.endswith("_total")
    }
    assert tokens["prompt"] > 0 and tokens["completion"] > 0
