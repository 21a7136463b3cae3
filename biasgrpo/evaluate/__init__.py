"""Evaluate policies on bias benchmarks and write reports."""
