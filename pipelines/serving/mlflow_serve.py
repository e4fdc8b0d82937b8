"""The other way of serving: `mlflow models serve` on a run's MLflow model.

Training logs its Keras model once, as the MLflow model
(pipelines/serving/mlflow_pyfunc.py, logged as code, with the model file, its
class names and this project's `layers/` and `models/` as code paths). It
takes what the export takes, uint8 images `[N, H, W, C]`, and answers what it
answers, `probabilities`, `class_id` and `class_name`; its signature and an
input example are logged with it. MLflow serves it with

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db \\
        mlflow models serve -m models:/<name>/<version> --env-manager local -h 127.0.0.1 -p 5001

and answers `POST /invocations` with `{"inputs": <uint8 images as nested
lists>}` (or `{"instances": ...}`) as `{"predictions": {"probabilities":
[...], "class_id": [...], "class_name": [...]}}`. These helpers log such a
model, and run that command as a child process (the tests and
bench/bench_serve.py use them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PYFUNC_CODE = os.path.join(HERE, "mlflow_pyfunc.py")
PROJECT = os.path.dirname(os.path.dirname(HERE))
CODE_PATHS = [os.path.join(PROJECT, "layers"), os.path.join(PROJECT, "models")]  # what loading the model imports
KERAS_MODEL = "model.keras"  # its file name among the MLflow model's artifacts


def log_keras_model(model, keras_path: str, class_names, example: np.ndarray):
    """Log the Keras model saved at `keras_path` (`model`, in memory) as the active run's MLflow model `model`.

    `example` (uint8 images) becomes the logged input example (its first two
    images) and, with the model's answers to it, the signature. Returns
    MLflow's ModelInfo (`pipelines.artifacts.register_mlflow_model` registers it).
    """
    import mlflow
    from mlflow.models import infer_signature

    answer = _pyfunc_module().answer  # the pyfunc's own computation of the outputs
    example = np.asarray(example, np.uint8)[:2]
    names = [str(c) for c in class_names]
    with tempfile.TemporaryDirectory() as tmp:
        names_path = os.path.join(tmp, "class_names.json")
        with open(names_path, "w") as fh:
            json.dump(names, fh)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=PYFUNC_CODE,
            artifacts={"keras_model": keras_path, "class_names": names_path},
            code_paths=CODE_PATHS,
            signature=infer_signature(example, answer(model, names, example)),
            input_example=example,
            pip_requirements=[f"tensorflow-cpu=={_version('tensorflow')}", f"keras=={_version('keras')}",
                              f"mlflow=={_version('mlflow')}", f"numpy=={_version('numpy')}"],
        )


def _pyfunc_module():
    """pipelines/serving/mlflow_pyfunc.py as a module of its own (it is MLflow's model-from-code file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_invariant_mlflow_pyfunc", PYFUNC_CODE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def keras_model_path(local_model_dir: str) -> str:
    """The Keras model file inside a downloaded MLflow model of `log_keras_model`."""
    return os.path.join(local_model_dir, "artifacts", KERAS_MODEL)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in (dist, f"{dist}-cpu"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return ""


def log_inference_model(model, tracking_uri: str, artifact_dir: str, sample: np.ndarray,
                        class_names: list | None = None) -> str:
    """Log `model` as training does into `tracking_uri`, in a new experiment whose artifacts go to
    `artifact_dir`; return the model's URI. The process-wide tracking URI is restored afterwards."""
    import mlflow

    names = class_names if class_names is not None else [str(i) for i in range(int(model.output_shape[-1]))]
    prev = mlflow.get_tracking_uri()  # not $MLFLOW_TRACKING_URI: a URI set in code counts too
    mlflow.set_tracking_uri(tracking_uri)
    try:
        exp = mlflow.create_experiment(f"serve-{os.getpid()}-{time.time_ns()}", artifact_location=artifact_dir)
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=exp):
            path = os.path.join(tmp, KERAS_MODEL)
            model.save(path)
            return log_keras_model(model, path, names, sample).model_uri
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
