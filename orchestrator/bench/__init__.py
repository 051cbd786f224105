"""Benchmarks: real-code workloads, arrival processes, the paper's scenarios, reports."""
