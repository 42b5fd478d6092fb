"""Helpers shared by the tests and the benchmarks (tiny real models, a bounded load harness); not public API."""
