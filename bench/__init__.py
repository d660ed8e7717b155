"""Benchmarks: each module prints numbers with ratios against a baseline measured in the same run."""
