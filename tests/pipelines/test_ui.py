"""`make ui` (pipelines/ui.py): one small MLflow server that answers, and that one SIGTERM stops, all of it."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSWER_S = 90  # a slow, shared machine: MLflow imports for seconds in each of its two processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent, process group, command line) of every process, from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        out[int(entry)] = (int(fields[1]), int(fields[2]), cmdline)
    return out


def group(pgid: int) -> dict[int, str]:
    return {pid: cmdline for pid, (_, g, cmdline) in processes().items() if g == pgid}


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


def test_the_ui_answers_with_few_processes_and_sigterm_stops_them_all(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "pipelines.ui", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
           "--port", str(port)]
    log_path = tmp_path / "ui.log"
    with open(log_path, "w") as log:  # cwd tmp_path: anything MLflow writes beside it stays out of the tree
        launcher = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    pgid = None
    try:
        start = time.monotonic()
        while not answers(f"http://127.0.0.1:{port}/"):
            assert launcher.poll() is None, f"the launcher exited {launcher.returncode}: {log_path.read_text()[-3000:]}"
            assert time.monotonic() - start < ANSWER_S, f"no answer in {ANSWER_S} s: {log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        children = [pid for pid, (ppid, _, _) in processes().items() if ppid == launcher.pid]
        assert len(children) == 1, children  # `mlflow server`
        pgid = os.getpgid(children[0])
        assert pgid == children[0] != os.getpgid(launcher.pid)  # which leads a process group of its own
        members = group(pgid)
        # `mlflow server` and one uvicorn worker: no worker pool, no job runner with its huey consumers
        assert len(members) <= 2, members

        stopped = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=10) == 0, log_path.read_text()[-3000:]
        assert time.monotonic() - stopped < 10
        deadline = time.monotonic() + 2  # a SIGKILLed straggler is gone within moments
        while group(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group(pgid) == {}, f"left running after SIGTERM: {group(pgid)} (were {members})"
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
        assert not answers(f"http://127.0.0.1:{port}/")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_port_in_use_is_one_error_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "pipelines.ui", "--backend-store-uri", f"sqlite:///{tmp_path}/x.db",
                              "--port", str(port)], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}"), lines
    assert not (tmp_path / "x.db").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_ui_execs_the_launcher():
    """`exec`: make's child is the launcher, which gets make's SIGTERM (a recipe shell would die, leaving MLflow)."""
    out = subprocess.run(["make", "-n", "ui", "UI_PORT=5999"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    recipe = [line for line in out.stdout.splitlines() if "pipelines.ui" in line]
    assert len(recipe) == 1 and recipe[0].startswith("exec ") and "--port 5999" in recipe[0], out.stdout


def test_a_store_the_ui_cannot_serve_is_one_error_and_a_new_sqlite_file_a_warning(tmp_path, capsys):
    """`bogus://x` was MLflow's traceback; a SQLite file in a folder that does not exist (a misspelt
    MLFLOW_TRACKING_URI) made the folder and served an empty store without a word."""
    from pipelines import ui
    from pipelines.cli import run_main

    for uri, message in ((f"bogus://{tmp_path}/x", "not bogus://"),
                         (f"sqlite:///{tmp_path}/no/such/folder/mlflow.db", "/no/such/folder does not exist")):
        assert run_main(ui.main, ["--backend-store-uri", uri, "--port", str(free_port())]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "no").exists()
    ui.check_store(f"sqlite:///{tmp_path}/mlflow.db")  # a new file in a folder that exists: a warning only
    assert "does not exist yet: the UI starts an empty store" in capsys.readouterr().err
    (tmp_path / "mlflow.db").touch()
    ui.check_store(f"sqlite:///{tmp_path}/mlflow.db")
    ui.check_store(str(tmp_path / "mlruns"))  # a file store: a folder
    ui.check_store("postgresql+psycopg2://u@h/db")
    assert capsys.readouterr().err == ""
