"""Benchmarks and the comparison report."""
