"""Fixtures shared by the whole suite.

``serve`` runs aiohttp apps (stand-in replicas) on 127.0.0.1 for the test's length.
``start_emulator`` launches real emulator processes (``python -m orchestrator.emulator``)
on free 127.0.0.1 ports and stops them when the test ends. Modules that want one
emulator for many tests can call ``orchestrator.emulator.process.launch_emulator``
from a module-scoped fixture of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import settings

from orchestrator.emulator.process import RunningEmulator, StartEmulator, launch_emulator

# Shared 2-core machines are noisy: a slow example is not a failure.
settings.register_profile("cato", deadline=None)
settings.load_profile("cato")


@pytest.fixture
def start_emulator() -> Iterator[StartEmulator]:
    """A factory of emulator processes (``launch_emulator``'s arguments), all stopped at
    teardown; annotate the parameter with ``orchestrator.emulator.process.StartEmulator``."""
    started: list[RunningEmulator] = []

    def start(**kwargs: Any) -> RunningEmulator:
        emulator = launch_emulator(**kwargs)
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """Start aiohttp apps on 127.0.0.1 (random port); return their base URLs."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()
