"""A vLLM-compatible server that emulates one engine with ``engine_model`` (``cato emulate``).

Live runs, tests and benchmarks use it in place of a GPU: same HTTP API, same metrics,
the timing of the engine profile it is given, and deterministic code-like output.
"""
