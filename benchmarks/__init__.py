"""Benchmarks of uxbseg against seed-style references measured in the same run (not tests)."""
