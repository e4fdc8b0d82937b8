"""What every job's `main` shares: user errors end in one clear message and exit code 2."""

from __future__ import annotations

import os
import sys



def user_errors() -> tuple[type[BaseException], ...]:
    from data.sources import DataSourceError
    from pipelines.config import ConfigError

    from pipelines.errors import UserError

    return (ConfigError, DataSourceError, UserError)


def run_main(main, argv=None) -> int:
    """Call `main(argv)`; print a user error as `error: ...` on stderr and return 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        code = main(argv)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
