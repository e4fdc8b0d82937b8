"""The job tests' MLflow stores: a fresh SQLite store is a copy of one migrated once per test process.

Most tests here run a job against its own `sqlite:///<tmp_path>/mlflow.db`, and MLflow builds each new
store by running its ~60 Alembic migrations: 1.5 s of CPU per store on an idle core (a profile of
tests/pipelines/test_train.py), more than the tiny training of many of these tests. Here the first new
store of a test process is migrated by MLflow itself, as a template, and every later new store is given a
copy of that template's pages (sqlite3's backup API) instead: the same tables, indexes and Alembic
revision, as `_verify_schema` checks when the store opens. Stores in other processes (the jobs that tests
launch as commands) are built by MLflow as usual, as is any store that is not a new SQLite file.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sqlite3
import tempfile

import mlflow.store.db.utils as _db_utils
import pytest

_migrate = _db_utils._initialize_tables
_template: str | None = None


def _initialize_from_template(engine):
    global _template
    path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not path or path == ":memory:" or not _db_utils._is_empty_database(engine):
        return _migrate(engine)
    if _template is None:
        folder = tempfile.mkdtemp(prefix="mlflow-template-")
        atexit.register(shutil.rmtree, folder, True)
        template = os.path.join(folder, "mlflow.db")
        made = _db_utils.create_sqlalchemy_engine_with_retry(f"sqlite:///{template}")
        try:
            _migrate(made)
        finally:
            made.dispose()
        _template = template
    engine.dispose()  # no pooled connection holds the empty file while its pages are replaced
    src, dst = sqlite3.connect(_template), sqlite3.connect(path)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


_db_utils._initialize_tables = _initialize_from_template


@pytest.fixture
def sigint_as_in_a_terminal():
    """Python's own SIGINT handler (KeyboardInterrupt), as in a terminal: xdist's workers ignore SIGINT."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
