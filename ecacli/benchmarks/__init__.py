"""Benchmarks run side by side in one process; ratios, not timed assertions."""
