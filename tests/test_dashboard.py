"""``/dashboard``: the page and its bundled charting library come from the package, with
a strict CSP, without auth (the data behind it keeps the status auth)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from orchestrator.config import User, hash_token, load_config
from orchestrator.dashboard import asset
from orchestrator.executor import Orchestrator
from orchestrator.runtime import task_defaults
from orchestrator.server import ServiceOptions, create_app, serve_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    orch = Orchestrator([], defaults=task_defaults(load_config(None)))
    users = [User(name="alice", token_sha256=hash_token("dashboard-token"))]
    runner = await serve_app(create_app(orch, ServiceOptions(users=users)), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await orch.close()


async def test_the_page_and_every_file_it_loads_are_served(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/dashboard", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/dashboard/"
        async with http.get(url + "/dashboard/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            page = await r.text()
        files = re.findall(r'(?:src|href)="(static/[^"]+)"', page)
        assert {"static/uPlot.iife.min.js", "static/dashboard.js"} <= set(files)
        for f in files:
            async with http.get(url + "/dashboard/" + f) as r:
                assert r.status == 200, f
                assert await r.read() == asset(f.removeprefix("static/"))
        for bad in ("nope.js", "..%2F__init__.py", "uPlot.LICENSE"):
            async with http.get(url + "/dashboard/static/" + bad) as r:
                assert r.status == 404, bad
        async with http.get(url + "/v1/status/history") as r:
            assert r.status == 401  # the page is public; the data is not


def test_the_bundled_library_is_the_pinned_build() -> None:
    pinned = re.search(r'UPLOT_VERSION="([^"]+)"', (ROOT / "scripts/build-dashboard").read_text())
    assert pinned is not None
    assert asset("uPlot.VERSION").decode().strip() == pinned.group(1)
    library = asset("uPlot.iife.min.js")
    assert b"uPlot" in library and len(library) < 100_000  # small enough to commit
    assert b"/v1/status/history" in asset("dashboard.js")
