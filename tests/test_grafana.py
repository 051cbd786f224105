"""The Grafana board queries only what the service exports: every metric and label in
``examples/grafana/cato.json`` is checked against a live ``/metrics`` of the app over an
emulator replica, after a task ran (labelled series appear with their first sample)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.config import User, hash_token, load_config
from orchestrator.emulator.process import launch_emulator
from orchestrator.executor import Orchestrator, ReplicaSpec
from orchestrator.runtime import task_defaults
from orchestrator.server import ServiceOptions, create_app, serve_app

BOARD = Path(__file__).resolve().parents[1] / "examples" / "grafana" / "cato.json"
MODEL = "tiny"
TOKEN = "grafana-test-token"

_METRIC = re.compile(r"\bcato_[a-z0-9_]+\b")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def board_queries() -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) of every target of the board."""
    board = json.loads(BOARD.read_text())
    return [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in board["panels"]
        for target in panel["targets"]
    ]


def wanted(expr: str, legend: str) -> tuple[set[str], set[str]]:
    """The metric (sample) names and the label names a query needs."""
    metrics = set(_METRIC.findall(expr))
    labels = {name.strip() for group in _BY.findall(expr) for name in group.split(",")}
    labels |= set(_MATCHER.findall(expr)) | set(_LEGEND.findall(legend))
    return metrics, labels - {""}


def test_the_queries_are_read_as_meant() -> None:
    metrics, labels = wanted(
        'sum by (kind, le) (rate(cato_sla_total{result="met"}[5m])) / cato_x', "{{model}}"
    )
    assert metrics == {"cato_sla_total", "cato_x"}
    assert labels == {"kind", "le", "result", "model"}
    assert len(board_queries()) >= 9


async def test_every_metric_and_label_the_board_queries_is_exported() -> None:
    with launch_emulator(model=MODEL, speed=5.0, max_num_seqs=16) as emulator:
        spec = ReplicaSpec(id=f"{MODEL}-0", url=emulator.url, model=MODEL, engine="emulated")
        orch = Orchestrator([spec], defaults=task_defaults(load_config(None)))
        users = [User(name="alice", token_sha256=hash_token(TOKEN))]
        runner = await serve_app(
            create_app(orch, ServiceOptions(models=[MODEL], users=users)), "127.0.0.1", 0
        )
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with aiohttp.ClientSession(headers=auth) as http:
                body = {"kind": "complete", "prompt": "def f(x):", "max_tokens": 4}
                async with http.post(url + "/v1/tasks", json=body) as r:
                    assert r.status == 200
                    await r.read()
                async with http.get(url + "/metrics") as r:
                    text = await r.text()
        finally:
            await runner.cleanup()
            await orch.close()
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    missing = []
    for title, expr, legend in board_queries():
        metrics, labels = wanted(expr, legend)
        assert metrics, f"{title}: no cato metric in {expr!r}"
        for metric in metrics - set(exported):
            missing.append(f"{title}: metric {metric}")
        have = set().union(*(exported.get(m, set()) for m in metrics))
        for label in labels - have:
            missing.append(f"{title}: label {label} on {sorted(metrics)}")
    assert not missing, missing
