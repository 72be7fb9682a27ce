"""Platform benchmarks: scripts run by hand, not tests (pytest collects ``tests/`` only).

Run them from the repository root as modules, e.g. ``python -m benches.bench_prs_buffer --labels ...``;
the tests import what they share with them (``benches.reference_prs``, the plain PRS the buffer is
checked against) as an ordinary package. Not installed with cml_bench.
"""
