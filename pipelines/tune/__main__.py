"""`python -m pipelines.tune`: the `make tune` command line."""

import sys

from pipelines.cli import run_main
from pipelines.tune.job import main

sys.exit(run_main(main))
