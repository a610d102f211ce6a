"""Upstream packages as they are: run-time patches for CPU machines, and known deviations."""
