"""Benchmarks: `make bench`. Each prints its ratio to a baseline measured in the same run."""
