"""`KERAS_BACKEND=jax make train`: train with augmentation, evaluate, export through Keras' export
(jax2tf) into the same exports/<name>/<version> layout, then reload and serve it under TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_a_jax_trained_model_exports_and_serves_under_tensorflow(tmp_path):
    args = [
        "--config", os.path.join(ROOT, "pipelines", "configs", "default.yaml"),
        "name=jaxrun", "data.synthetic.train_size=240", "data.synthetic.test_size=60", "data.batch_size=32",
        f"data.cache_dir={tmp_path / 'cache'}", "model.params.filters=[4]", "model.params.dense_units=8",
        "train.epochs=1", "train.verbose=0", f"train.runs_root={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"export.dir={tmp_path / 'exports'}",
        "evaluate.max_images=40", "evaluate.rotation_step=90", "evaluate.elastic_alphas=[0]",
        "augment.rotation.max_degrees=30",  # the tf.data augmentation feeds the JAX model too
        "export.min_test_accuracy=0",  # a 4-filter model after 1 epoch can sit near chance: the guard has its own tests
    ]
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-m", "pipelines.train", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Exported and verified SavedModel" in out.stdout  # the reload matched the in-memory JAX model
    assert "unsaved custom gradients" not in out.stderr  # TensorFlow's warning about jax2tf's gradients: noise
    assert "interrupted" not in out.stderr and "Stopping" not in out.stderr
    export = tmp_path / "exports" / "jaxrun" / "1"
    assert (export / "saved_model.pb").is_file()
    from pipelines.serving.savedmodel import _read_proto, jax2tf_platforms

    platforms = jax2tf_platforms(_read_proto(str(export)))  # lowered for a GPU too, not only for this CPU
    assert platforms and all(p == ["CPU", "CUDA"] for p in platforms), platforms

    import keras

    from data import synthetic
    from pipelines.export import predict_savedmodel
    from pipelines.experiment import load_keras_model
    from pipelines.serve import Server

    (_, _), (x, _) = synthetic.load(240, 60, seed=0, cache_dir=str(tmp_path / "cache"))
    served = predict_savedmodel(str(export), x)
    (run_dir,) = (tmp_path / "runs").iterdir()
    model = load_keras_model(str(run_dir / "model.keras"))  # saved under JAX, loaded under TensorFlow
    assert keras.backend.backend() == "tensorflow"
    logits = np.asarray(model.predict(x.astype("float32") / 255.0, verbose=0))
    np.testing.assert_allclose(served["probabilities"], keras.ops.softmax(logits).numpy(), atol=1e-4)
    assert (served["class_id"] == np.argmax(logits, -1)).all()

    server = Server(str(tmp_path / "exports"), port=0, poll_s=0.2).start()
    try:
        r = requests.post(f"{server.url}/v1/models/jaxrun:predict", json={"instances": x[:3].tolist()}, timeout=60)
        assert r.status_code == 200, r.text
        assert server.manager.resolve("jaxrun")[0].bucketed  # compiled per batch size: run at padded sizes
        assert [p["class_id"] for p in r.json()["predictions"]] == served["class_id"][:3].tolist()  # 3 rows run as 4
        # the class names too: the export's own `class_name` output, on JAX as on TensorFlow
        assert [p["class_name"] for p in r.json()["predictions"]] == [str(i) for i in served["class_id"][:3]]
        assert [c.decode() for c in served["class_name"]] == [str(i) for i in served["class_id"]]
    finally:
        server.stop()
