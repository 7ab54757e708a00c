"""Helpers for tests that need more than one process (a multi-host JAX world on 127.0.0.1)."""
