import sys

from cml_bench.cli import main

if __name__ == "__main__":  # not when a spawned worker process (sweep --workers N) re-imports it
    sys.exit(main())
