"""`python -m pipelines.tune`: the `make tune` command line (arguments read before KerasTuner loads)."""

import sys

from pipelines.cli import config_parser, exit_job, run_main

DESCRIPTION = "`make tune`: a KerasTuner search over the experiment's builder and training, tracked in MLflow."


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config_parser("make tune", DESCRIPTION, "tune.max_trials=20").parse_args(argv)  # --help and usage: fast
    from pipelines.tune.job import main as job_main

    return job_main(argv)


exit_job(run_main(main, resumes="the search: finished trials are kept"))
