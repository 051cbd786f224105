"""Discrete-event simulation of the orchestrator: the same policies on a virtual clock."""

from orchestrator.sim.config import ModelSpec, SimConfig, SimTask
from orchestrator.sim.oracle import SIM_SCHEDULERS, OracleScheduler, make_sim_scheduler
from orchestrator.sim.results import ScaleEvent, SimResult
from orchestrator.sim.simulator import Simulator, simulate

__all__ = [
    "SIM_SCHEDULERS",
    "ModelSpec",
    "OracleScheduler",
    "ScaleEvent",
    "SimConfig",
    "SimResult",
    "SimTask",
    "Simulator",
    "make_sim_scheduler",
    "simulate",
]
