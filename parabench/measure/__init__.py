"""Measurements: memory, costs, correctness checks, timing, and the formulas they are held against."""
