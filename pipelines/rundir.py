"""A training run's directory: its resolved config, its state, and a lock.

    runs/<name>-<time>/
        config.yaml     the resolved config the run trains
        state.json      MLflow run id, status, and each finished step (trained, test metrics, ...)
        lock            held (flock) by the process that trains the run
        backup/         Keras' BackupAndRestore of the last finished epoch
        model.keras     the trained model, once training ends

Resuming. `make train` with an explicit `train.run_dir` reopens that folder.
Without one, it looks under `train.runs_root` for an unfinished run of the
same experiment whose resolved config is identical and whose process is gone
(its lock is free), and resumes it: rerunning a killed command continues where
it stopped. The lock is an advisory `flock`, which the kernel releases when the
process dies however it dies (`kill -9` included), so "lock free" means "no
process is training this run". A second training started on a locked run is
refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time

from pipelines.config import Config
from pipelines.errors import UserError

# An MLflow run id, or its first 6 or more digits (reports and `make compare` show 8): `make evaluate`, `make compare`
RUN_ID_START = re.compile(r"[0-9a-f]{6,32}")
STATE = "state.json"
CONFIG = "config.yaml"
LOCK = "lock"


def read_state(run_dir: str) -> dict:
    path = os.path.join(run_dir, STATE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def write_state(run_dir: str, **updates) -> dict:
    """Merge `updates` into state.json atomically; return the new state."""
    state = read_state(run_dir)
    state.update(updates)
    tmp = os.path.join(run_dir, STATE + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(state, fh, indent=2)
    os.replace(tmp, os.path.join(run_dir, STATE))
    return state


class RunLock:
    """An exclusive, non-blocking flock on `<run_dir>/lock`; released on close or process death."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK)
        self._fh = None

    def try_acquire(self) -> bool:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def is_locked(run_dir: str) -> bool:
    """True when a live process holds the run's lock."""
    if not os.path.isfile(os.path.join(run_dir, LOCK)):
        return False
    probe = RunLock(run_dir)
    if probe.try_acquire():
        probe.release()
        return False
    return True


def orphaned_runs(runs_root: str, name: str) -> list[str]:
    """Run directories of experiment `name` under `runs_root` left unfinished by a process that is gone."""
    if not os.path.isdir(runs_root):
        return []
    out = []
    for d in sorted(os.listdir(runs_root)):
        path = os.path.join(runs_root, d)
        if not (d.startswith(f"{name}-") and os.path.isdir(path)):
            continue
        state = read_state(path)
        if state.get("status") == "running" and not is_locked(path):
            out.append(path)
    return out


def _same_config(run_dir: str, resolved: str) -> bool:
    """The run in `run_dir` was started with the config `resolved` (YAML): the same text, or the same once both are
    read by this version (a run started before a key was added, its default unchanged since, resumes after an
    upgrade instead of being refused as another config)."""
    try:
        with open(os.path.join(run_dir, CONFIG)) as fh:
            text = fh.read()
    except OSError:
        return False
    if text == resolved:
        return True
    old = _reread(text)
    return old is not None and old == _reread(resolved)


def _reread(text: str) -> dict | None:
    import yaml

    from pipelines.config import ConfigError, config_from_dict
    from pipelines.typed import UniqueKeyLoader

    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        return config_from_dict(data, check_model=False).to_dict() if isinstance(data, dict) else None
    except (yaml.YAMLError, ConfigError):
        return None


def check_resumable(cfg: Config, run_dir: str) -> dict:
    """The state of `run_dir` if `cfg` may train in it (new, or unfinished with the same config), else `UserError`.

    Read-only: every process of a distributed run checks it, so all of them stop
    together on a wrong run directory instead of the others waiting for the chief.
    """
    state = read_state(run_dir)
    if state:
        if state.get("status") == "finished":
            raise UserError(
                f"train.run_dir={run_dir} holds a finished run (MLflow run {state.get('mlflow_run_id')}); "
                "choose a new run_dir or leave it unset"
            )
        if not _same_config(run_dir, cfg.to_yaml()):
            raise UserError(
                f"train.run_dir={run_dir} holds an unfinished run of a different config "
                f"({os.path.join(run_dir, CONFIG)}); resume it with that config or choose a new run_dir"
            )
    return state


def open_run_dir(cfg: Config) -> tuple[str, dict, RunLock, list[str]]:
    """Create, reopen or find the run directory of `cfg` and lock it.

    Returns (run_dir, state, lock, orphans): `orphans` are other unfinished run
    directories of this experiment whose process is gone (the caller marks
    their MLflow runs KILLED). Raises `UserError` for a finished run, a run of
    another config, or a run another process is training.
    """
    resolved = cfg.to_yaml()
    orphans = [] if cfg.train.run_dir else orphaned_runs(cfg.train.runs_root, cfg.name)
    resumable = [d for d in orphans if _same_config(d, resolved)]
    if cfg.train.run_dir:
        run_dir = cfg.train.run_dir
    elif resumable:
        run_dir = resumable[-1]  # the newest
        print(f"Resuming the unfinished run in {run_dir} (same config, its process is gone)")
    else:
        run_dir = os.path.join(cfg.train.runs_root, f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(run_dir, exist_ok=True)
    lock = RunLock(run_dir)
    if not lock.try_acquire():
        raise UserError(f"{run_dir} is being trained by another process (it holds {lock.path}); wait for it or stop it")
    try:
        state = check_resumable(cfg, run_dir)
        config_path = os.path.join(run_dir, CONFIG)
        if not state:
            with open(config_path, "w") as fh:
                fh.write(resolved)
    except BaseException:
        lock.release()
        raise
    return run_dir, state, lock, [d for d in orphans if d != run_dir]


def mark_orphans_killed(orphans: list[str]) -> None:
    """End the MLflow runs of orphaned run directories as KILLED (they can still be resumed by run_dir)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    for d in orphans:
        run_id = read_state(d).get("mlflow_run_id")
        if not run_id:
            continue
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "failure", "its process was gone when a later `make train` found it")
                client.set_terminated(run_id, status="KILLED")
                print(f"Marked MLflow run {run_id} ({d}) KILLED: its process is gone; "
                      f"resume it with train.run_dir={d}")
        except MlflowException:
            continue
