"""cml_bench: a continual multi-label learning benchmark."""
