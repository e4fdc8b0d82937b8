"""`make ui`: the MLflow UI on the project's tracking store, sized for a small machine, stopped by one Ctrl-C.

    python -m pipelines.ui [--backend-store-uri URI] [--host 127.0.0.1] [--port 5000] [--workers 1]

`mlflow ui` as such starts 4 uvicorn workers and a job runner with 7 huey
consumers (17 processes, about 2.5 GB resident, measured with MLflow 3.17);
here one worker serves the UI and the job runner is off (it runs MLflow's
GenAI jobs: scorers, trace archival; set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true
to keep it). MLflow runs in a session and process group of its own (no
terminal: a `stty tostop` cannot stop it for writing to one). SIGINT, SIGTERM
or SIGHUP to this launcher (Ctrl-C, or `make ui` being stopped, which `exec`s
it) is passed to that whole group as SIGTERM, and whatever is left after a few
seconds is killed, so no server outlives the command. (A plain `mlflow ui`
under make: make's SIGTERM went to the recipe's shell alone, which died and
left MLflow running.) This module imports neither MLflow nor the frameworks.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRACE_S = 5.0  # after a stop signal, how long MLflow's processes get before SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make ui", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend-store-uri", default=None,
                   help="tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000; make ui UI_PORT=...)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    return p.parse_args(argv)


def store_uri(args: argparse.Namespace) -> str:
    return args.backend_store_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{os.path.join(PROJECT_ROOT, 'mlflow.db')}"


DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # what `mlflow server --backend-store-uri` takes, or a folder


def check_store(uri: str) -> None:
    """A `UserError` for a store `mlflow server` cannot open (it was a traceback), or a SQLite file in a folder
    that does not exist (MLflow made the folder and served an empty store: a misspelt MLFLOW_TRACKING_URI showed
    no runs without a word); a warning for a SQLite file not made yet (no run tracked there yet)."""
    from pipelines.errors import UserError

    scheme = uri.split(":", 1)[0].split("+", 1)[0] if "://" in uri else "file"
    if scheme not in (*DB_SCHEMES, "file"):
        raise UserError(f"tracking store {uri}: `make ui` serves {', '.join(DB_SCHEMES)} databases or a folder, "
                        f"not {scheme}:// (a tracking server's UI is that server's own page)")
    if scheme == "sqlite" and uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:" and not os.path.isfile(path):
            if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise UserError(f"tracking store {uri}: the folder {os.path.dirname(os.path.abspath(path))} does "
                                "not exist (check MLFLOW_TRACKING_URI or --backend-store-uri)")
            print(f"Warning: {path} does not exist yet: the UI starts an empty store (no run is tracked there yet)",
                  file=sys.stderr, flush=True)


def mlflow_command(args: argparse.Namespace) -> list[str]:
    uri = store_uri(args)
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]


def check_port(host: str, port: int) -> None:
    """A `UserError` now, not a traceback from a uvicorn worker later, when host:port is taken."""
    from pipelines.errors import UserError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); another `make ui`? "
                            f"choose another port: make ui UI_PORT={port + 1}") from None


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM to the group of `proc` (its leader), SIGKILL to what is left after `grace_s`; reaps `proc`."""
    signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader: a zombie still counts as a member of its group
        if proc.returncode is not None and not group_alive(proc.pid):
            return
        time.sleep(0.1)
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run `cmd` in a new session and process group until it ends or a stop signal arrives; the group never
    outlives it."""
    stop = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        while not stop and proc.poll() is None:
            time.sleep(0.2)
    finally:
        stop_group(proc)  # after a stop signal; or MLflow ended on its own: leave none of its processes
    if stop:
        print(f"\nmake ui: stopped ({signal.Signals(stop[0]).name})", file=sys.stderr)
        return 0
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode  # killed by a signal: 128 + it


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipelines.errors import UserError

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")
    check_port(args.host, args.port)
    check_store(store_uri(args))
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(f"MLflow UI: http://{args.host}:{args.port}  (Ctrl-C stops it)", file=sys.stderr, flush=True)
    return serve(mlflow_command(args), env)


if __name__ == "__main__":
    from pipelines.cli import run_main

    sys.exit(run_main(main))
