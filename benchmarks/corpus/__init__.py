"""Parley's standard latency corpus: a spec in git, audio synthesized reproducibly by `python -m benchmarks.corpus`."""
