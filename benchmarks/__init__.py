"""Latency benchmarking harness: real WebRTC calls driven from scenario files."""
