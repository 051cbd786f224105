"""Fixtures shared by the whole suite.

``start_emulator`` launches real emulator processes (``python -m orchestrator.emulator``)
on free 127.0.0.1 ports and stops them when the test ends. Modules that want one
emulator for many tests can call ``orchestrator.emulator.process.launch_emulator``
from a module-scoped fixture of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
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
