"""Benchmark plugins: one module per benchmark family, found by scanning this folder."""
