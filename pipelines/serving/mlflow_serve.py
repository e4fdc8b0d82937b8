"""The other way of serving: `mlflow models serve` on the MLflow-logged inference model.

Training logs `pipelines.export.inference_model(model)` (float32 raw pixels
[0, 255], [N, H, W, C] -> probabilities) with `mlflow.keras.log_model`; MLflow
serves it with

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db \\
        mlflow models serve -m models:/<name>/<version> --env-manager local -h 127.0.0.1 -p 5001

and answers `POST /invocations` with `{"instances": ...}` or `{"inputs": ...}`.
These helpers log such a model into a given tracking store and run that
command as a child process (the tests and bench/bench_serve.py use them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np


def log_inference_model(model, tracking_uri: str, artifact_dir: str, sample: np.ndarray) -> str:
    """Log `inference_model(model)` with a signature from `sample` (uint8 images); return its URI.

    The process-wide tracking URI is restored afterwards.
    """
    import mlflow
    from mlflow.models import infer_signature

    from pipelines.export import inference_model

    infer = inference_model(model)
    x = sample.astype("float32")
    prev = mlflow.get_tracking_uri()  # not $MLFLOW_TRACKING_URI: a URI set in code counts too
    mlflow.set_tracking_uri(tracking_uri)
    try:
        exp = mlflow.create_experiment(f"serve-{os.getpid()}-{time.time_ns()}", artifact_location=artifact_dir)
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.keras.log_model(
                infer, name="model", signature=infer_signature(x, infer.predict(x, verbose=0))
            )
        return info.model_uri
    finally:
        mlflow.set_tracking_uri(prev)


def start_mlflow_serve(model_uri: str, port: int, tracking_uri: str, log_path: str) -> subprocess.Popen:
    """Start `mlflow models serve --env-manager local` on 127.0.0.1:`port` in its own process group."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    # mlflow runs `uvicorn` from PATH: the one beside this interpreter
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
    ]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_http(url: str, proc: subprocess.Popen | None, timeout_s: float, log_path: str | None = None) -> None:
    """Wait until GET `url` answers 200; raise (with the log's tail) if `proc` exits or time runs out."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}:\n{_tail(log_path)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g} s:\n{_tail(log_path)}")


def stop_process(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the process group this module started (the server and its uvicorn child), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
        except ProcessLookupError:
            pass
    else:  # the leader is gone; its group may still hold the uvicorn child
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _tail(path: str | None, n: int = 3000) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        return f.read()[-n:].decode(errors="replace")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
