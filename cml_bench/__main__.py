import sys

from cml_bench.cli import main

sys.exit(main())
