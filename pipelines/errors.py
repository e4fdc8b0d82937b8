"""The error type of the jobs for mistakes a user can make (bad run id, missing file, ...)."""


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line, exit code 2."""
