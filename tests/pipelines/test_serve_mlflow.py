"""The other way of serving: `mlflow models serve --env-manager local` takes and answers what `make serve` does.

Slow (two server start-ups, one of them MLflow's); kept to one test.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import requests

from models.registry import build_model
from pipelines.export import export_model
from pipelines.serve import Server
from pipelines.serving.mlflow_serve import free_port, log_inference_model, start_mlflow_serve, stop_process, wait_http


@pytest.mark.slow
def test_mlflow_served_model_gives_the_same_predictions(tmp_path):
    keras.utils.set_random_seed(3)
    model = build_model("baseline_cnn", (28, 28, 1), 10, filters=[4, 8], dense_units=8)
    x = np.random.default_rng(3).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    names = [f"class-{i}" for i in range(10)]
    export_model(model, str(tmp_path / "exports"), "tiny", class_names=names)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    uri = log_inference_model(model, tracking, str(tmp_path / "artifacts"), x, class_names=names)

    port, log = free_port(), str(tmp_path / "mlflow-serve.log")
    proc = start_mlflow_serve(uri, port, tracking, log)
    try:
        with Server(str(tmp_path / "exports"), port=0) as ours:
            r = requests.post(f"{ours.url}/v1/models/tiny:predict", json={"instances": x.tolist()}, timeout=30)
            assert r.status_code == 200, r.text
            expected = np.array([p["probabilities"] for p in r.json()["predictions"]])
            expected_names = [p["class_name"] for p in r.json()["predictions"]]

        wait_http(f"http://127.0.0.1:{port}/ping", proc, 300, log)
        for body in ({"instances": x.tolist()}, {"inputs": x.tolist()}):
            r = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]  # the uint8 images as sent to `make serve`, the same outputs
            assert np.array(got["probabilities"]).shape == (4, 10)
            np.testing.assert_allclose(got["probabilities"], expected, atol=1e-6)
            assert got["class_name"] == expected_names and got["class_id"] == [names.index(n) for n in expected_names]
        assert not np.allclose(expected, expected[:1])  # different images, different answers
    finally:
        stop_process(proc)
