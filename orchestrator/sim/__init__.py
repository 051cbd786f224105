"""Discrete-event simulation of the orchestrator: the same policies on a virtual clock."""

from orchestrator.sim.clairvoyant import SIM_SCHEDULERS, ClairvoyantScheduler, make_sim_scheduler
from orchestrator.sim.config import ModelSpec, SimConfig, SimTask
from orchestrator.sim.results import ScaleEvent, SimResult
from orchestrator.sim.simulator import Simulator, simulate

__all__ = [
    "SIM_SCHEDULERS",
    "ClairvoyantScheduler",
    "ModelSpec",
    "ScaleEvent",
    "SimConfig",
    "SimResult",
    "SimTask",
    "Simulator",
    "make_sim_scheduler",
    "simulate",
]
