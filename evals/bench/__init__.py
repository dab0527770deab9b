"""Benchmarks of the index and the service at scale: latency and recall figures, with the machine and settings."""
