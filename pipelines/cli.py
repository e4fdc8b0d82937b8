"""What every job's `main` shares: user errors end in one clear message and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

DEFAULT_CONFIG = "pipelines/configs/default.yaml"


def config_parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """The arguments every config-driven job takes: --config and dotted key=value overrides."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML")
    p.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, e.g. {example}")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM a KeyboardInterrupt, so that a job killed politely records itself as KILLED."""
    signal.signal(signal.SIGTERM, _interrupt)



def user_errors() -> tuple[type[BaseException], ...]:
    from data.sources import DataSourceError
    from pipelines.config import ConfigError

    from pipelines.errors import UserError

    return (ConfigError, DataSourceError, UserError)


def run_main(main, argv=None) -> int:
    """Call `main(argv)`; print a user error as `error: ...` on stderr and return 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's Python-side warnings (retracing notices when several models
    # predict in one job) are noise for a user; errors still show.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        code = main(argv)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
