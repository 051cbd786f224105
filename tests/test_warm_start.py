"""The embedded engine's start: what counts toward a replica's cold start, how soon the
manager sees a replica ready, and that the first ready replica is enough to serve."""

from __future__ import annotations

import argparse

from orchestrator.emulator import cli as emulate_cli
from orchestrator.emulator.server import EmulatorConfig
from orchestrator.engine_model import load_profile


def _config(argv: list[str]) -> EmulatorConfig:
    parser = argparse.ArgumentParser()
    emulate_cli.configure(parser)
    return emulate_cli.config_from_args(parser.parse_args(argv))


def test_the_emulated_cold_start_counts_from_process_start() -> None:
    config = _config(["--profile", "tiny@cpu"])
    assert config.cold_start_s == load_profile("tiny@cpu").cold_start_s == 3.0
    # 1.25 s of imports before serving: 1.75 s are left, not another 3 s.
    assert emulate_cli.from_process_start(config, 10.0, 11.25).cold_start_s == 1.75
    # Imports slower than the whole cold start: ready as soon as it listens.
    assert emulate_cli.from_process_start(config, 10.0, 14.0).cold_start_s == 0.0
    # Everything else is kept.
    left = emulate_cli.from_process_start(config, 10.0, 11.0)
    assert (left.profile, left.models, left.speed) == (config.profile, config.models, 1.0)
