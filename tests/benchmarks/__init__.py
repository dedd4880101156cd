"""Benchmarks: `make bench`. Not part of the test suite; no timing assertions."""
