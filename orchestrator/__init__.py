"""CATO orchestrator: SLA-tagged task graphs scheduled over vLLM replicas by slack."""

__version__ = "0.1.0"
