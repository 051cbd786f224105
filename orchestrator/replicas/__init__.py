"""Talking to and managing model replicas (vLLM or anything OpenAI-compatible)."""
