"""Strategy plugins: one module per strategy, found by scanning this folder."""
