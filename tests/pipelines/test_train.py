"""End to end: a tiny `make train` run, its MLflow record, its export, resume and errors."""

import json
import os

import keras
import mlflow
import numpy as np
import pytest

from pipelines.cli import run_main
from pipelines.config import config_from_dict, load_config
from pipelines.errors import UserError
from pipelines.export import HIGHEST_FILE, predict_savedmodel
from pipelines.train import main, model_line, run


def tiny_config(tmp_path, *overrides):
    return config_from_dict(
        {"name": "tiny"},
        [
            "data.synthetic.train_size=240",
            "data.synthetic.test_size=60",
            "data.batch_size=32",
            f"data.cache_dir={tmp_path / 'cache'}",
            "model.params.filters=[4]",
            "model.params.dense_units=8",
            "train.epochs=2",
            "train.verbose=0",
            f"train.runs_root={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"export.dir={tmp_path / 'exports'}",
            "export.min_test_accuracy=0",  # a 4-filter model after 2 epochs can sit at chance; the guard has its own tests
            "export.max_accuracy_drop=null",  # two of them can differ by more than its 5 points (test_faults tests it)
            "evaluate.enabled=false",
            "augment.translation.max=0",
            "augment.rotation.max_degrees=0",
            "augment.elastic.alpha=0",
            *overrides,
        ],
    )


def _steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_end_to_end_run_is_tracked_exported_and_verified(tmp_path):
    cfg = tiny_config(tmp_path)
    result = run(cfg)
    client = mlflow.MlflowClient(result.tracking_uri)
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["train.epochs"] == "2"
    assert r.data.params["model.name"] == "baseline_cnn"
    assert r.data.params["data.source"] == "synthetic"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert _steps(client, result.run_id, key) == [0, 1], key
    assert 0.0 <= r.data.metrics["test_accuracy"] <= 1.0
    assert r.data.metrics["test_accuracy"] == pytest.approx(result.test_accuracy)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "training_curves.png", "confusion_matrix.png"} <= artifacts
    versions = client.search_model_versions("name='tiny'")
    assert len(versions) == 1 and versions[0].run_id == result.run_id

    # The resolved config saved with the run is the config that ran.
    saved = client.download_artifacts(result.run_id, "config.yaml", str(tmp_path))
    assert config_from_dict(__import__("yaml").safe_load(open(saved))) == cfg

    # The SavedModel is version 1 in TF Serving's layout and agrees with the trained model.
    assert result.export_path == str(tmp_path / "exports" / "tiny" / "1")
    assert os.path.isfile(os.path.join(result.export_path, "saved_model.pb"))
    assert os.path.isfile(os.path.join(result.export_path, "assets.extra", "experiment.yaml"))
    model = keras.saving.load_model(os.path.join(result.run_dir, "model.keras"))
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    served = predict_savedmodel(result.export_path, images)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(model(images.astype("float32") / 255.0, training=False)))
    np.testing.assert_allclose(served["probabilities"], probs, atol=1e-5)
    np.testing.assert_array_equal(served["class_id"], probs.argmax(-1))

    # One model, one contract: the registered MLflow model takes what the export takes (uint8 images)
    # and answers what it answers, class names included.
    pyfunc = mlflow.pyfunc.load_model("models:/tiny/1")
    assert str(pyfunc.metadata.get_input_schema().inputs[0].type) == "uint8"
    answer = pyfunc.predict(images)
    np.testing.assert_allclose(answer["probabilities"], served["probabilities"], atol=1e-6)
    np.testing.assert_array_equal(answer["class_id"], served["class_id"])
    assert list(answer["class_name"]) == [str(c) for c in served["class_id"]]  # the digits' class names
    local = mlflow.artifacts.download_artifacts("models:/tiny/1", dst_path=str(tmp_path / "mlflow-model"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert example.dtype == np.uint8 and example.shape[1:] == (28, 28, 1)
    with pytest.raises(Exception, match="uint8|float"):  # the schema refuses another dtype
        pyfunc.predict(images.astype("float32") / 255.0)
    # The Keras model is stored once: in the MLflow model (no keras_model/ artifact beside it, no SavedModel
    # copy in it), from which `make evaluate` loads it.
    assert "keras_model" not in artifacts
    stored = [os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs]
    assert [f for f in stored if f.endswith(".keras")] == ["artifacts/model.keras"]
    assert not [f for f in stored if f.endswith("saved_model.pb") or "variables" in f]
    # The version is tagged with what a client needs to know; the data is the run's dataset input.
    tags = client.get_model_version("tiny", "1").tags
    assert json.loads(tags["class_names"]) == [str(d) for d in range(10)]
    assert tags["input_shape"] == "[28, 28, 1]" and tags["data.source"] == "synthetic"
    (data_input,) = r.inputs.dataset_inputs
    assert data_input.dataset.name == "synthetic" and len(data_input.dataset.digest) == 16
    input_tags = {t.key: t.value for t in data_input.tags}
    counts = json.loads(input_tags["counts"])
    assert counts["train"] + counts["validation"] == 240 and counts["test"] == 60

    # A finished run directory is not trained over again.
    with pytest.raises(UserError, match="holds a finished run"):
        run(tiny_config(tmp_path, f"train.run_dir={result.run_dir}"))


class _CrashAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("simulated crash after epoch 1")


class _CountEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.mark.slow
def test_killed_run_resumes_from_last_finished_epoch(tmp_path, capsys):
    run_dir = str(tmp_path / "runs" / "resumable")
    cfg = tiny_config(tmp_path, "train.epochs=3", f"train.run_dir={run_dir}")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, callbacks=[_CrashAfterFirstEpoch()])
    client = mlflow.MlflowClient(cfg.tracking.uri)
    (crashed,) = client.search_runs(client.get_experiment_by_name("tiny").experiment_id)
    assert crashed.info.status == "FAILED"
    assert "simulated crash" in crashed.data.tags["failure"]
    assert _steps(client, crashed.info.run_id, "loss") == [0]
    assert not os.path.exists(tmp_path / "exports" / "tiny")  # nothing half-published
    assert crashed.data.tags["backend"] == "tensorflow"
    state_path = os.path.join(run_dir, "state.json")
    with open(state_path) as fh:
        state = json.load(fh)
    assert state["backend"] == "tensorflow"
    with open(state_path, "w") as fh:  # as if it had started under KERAS_BACKEND=jax
        json.dump({**state, "backend": "jax"}, fh)

    counter = _CountEpochs()
    result = run(cfg, callbacks=[counter])
    out = capsys.readouterr().out
    assert "Warning: this run started on Keras' jax backend and goes on on tensorflow" in out, out
    assert client.get_run(result.run_id).data.tags["backend"] == "jax, then tensorflow"
    assert result.run_id == crashed.info.run_id
    assert counter.epochs == [1, 2]  # continued after the finished epoch
    for key in ("loss", "val_accuracy"):
        assert _steps(client, result.run_id, key) == [0, 1, 2], key
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert result.export_path.endswith(os.path.join("tiny", "1"))


class _SwallowedSignal(keras.callbacks.Callback):
    """Ctrl-C whose KeyboardInterrupt is swallowed where it lands, as Keras does on JAX and PyTorch: in the
    second step of the second epoch, or as the training ends."""

    def __init__(self, at_end: bool = False):
        super().__init__()
        self.at_end, self.steps = at_end, []

    def _signal(self):
        import signal

        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass

    def on_train_batch_begin(self, batch, logs=None):
        self.steps.append(batch)
        if not self.at_end and self.epoch == 1 and batch == 1:
            self._signal()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_end(self, logs=None):
        if self.at_end:
            self._signal()


@pytest.mark.parametrize("at_end", [False, True])
def test_ctrl_c_stops_training_where_it_lands_and_the_same_command_resumes(tmp_path, at_end, sigint_as_in_a_terminal):
    run_dir = str(tmp_path / "runs" / "stopped")
    cfg = tiny_config(tmp_path, "train.epochs=3", f"train.run_dir={run_dir}")
    stop = _SwallowedSignal(at_end)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[stop])
    client = mlflow.MlflowClient(cfg.tracking.uri)
    (stopped,) = client.search_runs(client.get_experiment_by_name("tiny").experiment_id)
    assert stopped.info.status == "KILLED"
    if not at_end:  # ended with the step it came in (step 1 of epoch 1), not at the end of the training
        assert stop.steps.count(0) == 2 and stop.steps[-2:] == [0, 1]
        assert _steps(client, stopped.info.run_id, "loss") == [0]
    else:  # it came as the training ended: the trained model is saved first
        assert os.path.isfile(os.path.join(run_dir, "model.keras"))
        assert _steps(client, stopped.info.run_id, "loss") == [0, 1, 2]

    counter = _CountEpochs()
    result = run(cfg, callbacks=[counter])
    assert result.run_id == stopped.info.run_id and client.get_run(result.run_id).info.status == "FINISHED"
    assert counter.epochs == ([] if at_end else [1, 2])  # trained no epoch twice
    assert _steps(client, result.run_id, "loss") == [0, 1, 2]


def test_one_training_iterator_serves_every_epoch(tmp_path, monkeypatch):
    # experiment.fit_batches: the training batches repeated, `steps` an epoch, so that no epoch's iterator is
    # deleted mid-fit (TF 2.21's autotuning made that wait up to 60 s). Default augmentation on, 3 epochs.
    import tensorflow as tf
    from tensorflow.python.data.ops import iterator_ops

    made, real_init = [], iterator_ops.OwnedIterator.__init__

    def counting(self, dataset=None, **kwargs):
        if dataset is not None:
            made.append(int(dataset.cardinality()))
        real_init(self, dataset=dataset, **kwargs)

    monkeypatch.setattr(iterator_ops.OwnedIterator, "__init__", counting)
    cfg = tiny_config(tmp_path, "train.epochs=3")
    cfg.augment = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "pipelines", "configs",
                                           "default.yaml")).augment  # `make train`'s augmentation, not tiny's none
    assert cfg.augment.translation.max > 0 and cfg.augment.elastic.alpha > 0
    result = run(cfg)
    assert made.count(int(tf.data.INFINITE_CARDINALITY)) == 1  # the training batches: one pass per epoch, repeated
    assert _steps(mlflow.MlflowClient(result.tracking_uri), result.run_id, "loss") == [0, 1, 2]


def test_a_run_started_before_a_key_was_added_resumes_after_the_upgrade(tmp_path):
    """A config key added since a run started (here train.precise_bn_batches, at its default) changed the resolved
    config's text, and the unfinished run was refused as "a different config"; a changed value still is."""
    from pipelines import rundir

    cfg = tiny_config(tmp_path)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    rundir.write_state(str(run_dir), mlflow_run_id="x")
    old_text = "".join(line for line in cfg.to_yaml().splitlines(keepends=True) if "precise_bn_batches" not in line)
    assert old_text != cfg.to_yaml()
    (run_dir / rundir.CONFIG).write_text(old_text)
    assert rundir.check_resumable(cfg, str(run_dir)) == {"mlflow_run_id": "x"}
    (run_dir / rundir.CONFIG).write_text(old_text.replace("learning_rate: 0.001", "learning_rate: 0.5"))
    with pytest.raises(UserError, match="different config"):
        rundir.check_resumable(cfg, str(run_dir))


def test_resume_refuses_a_different_config(tmp_path):
    run_dir = str(tmp_path / "runs" / "r")
    with pytest.raises(RuntimeError):
        run(tiny_config(tmp_path, f"train.run_dir={run_dir}"), callbacks=[_CrashAfterFirstEpoch()])
    with pytest.raises(UserError, match="different config"):
        run(tiny_config(tmp_path, f"train.run_dir={run_dir}", "train.learning_rate=0.5"))
    # the same config, but its MLflow run is gone from the store: a clear error, not MLflow's traceback
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (crashed,) = client.search_runs(client.get_experiment_by_name("tiny").experiment_id)
    client.delete_run(crashed.info.run_id)
    with pytest.raises(UserError, match=f"continues MLflow run {crashed.info.run_id}, which the tracking store"):
        run(tiny_config(tmp_path, f"train.run_dir={run_dir}"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "pipelines/configs/nope.yaml"], "does not exist"),
        (["train.epochs=-2"], "train.epochs: must be at least 1 (got -2)"),
        (["model.name=nope"], "model.name: unknown model"),
        (["data.source=npz:/no/such/file.npz"], "npz:/no/such/file.npz: no such file"),
    ],
)
def test_cli_user_errors_exit_2_with_one_message(tmp_path, capsys, args, message):
    args = args + [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"train.runs_root={tmp_path / 'runs'}"] \
        if args[0] != "--config" else args
    assert run_main(main, args) == 2
    text = capsys.readouterr().err
    err = text.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert "Traceback" not in text
    assert not (tmp_path / "runs").exists()  # nothing written


def test_an_unusable_tracking_store_is_one_error_and_leaves_nothing(tmp_path, capsys):
    args = ["tracking.uri=bogus://store", f"train.runs_root={tmp_path / 'runs'}",
            "data.synthetic.train_size=40", "data.synthetic.test_size=20", f"data.cache_dir={tmp_path / 'cache'}"]
    assert run_main(main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: tracking store bogus://store")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_resume_after_a_crash_past_training_repeats_no_step(tmp_path, monkeypatch):
    import pipelines.train as train
    from pipelines import artifacts

    run_dir = str(tmp_path / "runs" / "late-crash")
    cfg = tiny_config(tmp_path, f"train.run_dir={run_dir}", "evaluate.enabled=true")

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in the evaluation")

    monkeypatch.setattr(train, "_evaluate_invariance", crash)
    with pytest.raises(RuntimeError, match="simulated crash in the evaluation"):
        run(cfg)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    assert client.search_model_versions("name='tiny'") == []  # registered once published, not before
    monkeypatch.setattr(train, "_evaluate_invariance", lambda *args, **kwargs: None)

    def crash_registering(*args, **kwargs):  # the version is published, then the registry fails
        raise RuntimeError("simulated crash in the registry")

    monkeypatch.setattr(artifacts, "register_mlflow_model", crash_registering)
    with pytest.raises(RuntimeError, match="simulated crash in the registry"):
        run(cfg)
    monkeypatch.undo()
    counter = _CountEpochs()
    result = run(cfg, callbacks=[counter])

    assert counter.epochs == []  # training had finished: not trained again
    assert sorted(set(os.listdir(tmp_path / "exports" / "tiny")) - {HIGHEST_FILE}) == ["1"]  # not exported twice
    assert len(client.get_metric_history(result.run_id, "test_accuracy")) == 1
    (version,) = client.search_model_versions("name='tiny'")  # registered once, after the export
    assert version.tags["export_version"] == "1" and version.run_id == result.run_id
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert result.export_path.endswith(os.path.join("tiny", "1"))


@pytest.mark.slow
def test_progress_is_one_line_per_epoch_when_stdout_is_not_a_terminal(tmp_path, capfd):
    """`train.verbose: auto`: a log file or CI output gets no progress-bar control codes."""
    from pipelines import experiment

    run(tiny_config(tmp_path, "train.verbose=auto", "train.epochs=3"))
    out = capfd.readouterr().out
    assert "\b" not in out and "\r" not in out and "\x1b" not in out
    epoch_lines = [line for line in out.splitlines() if "val_loss" in line]
    assert len(epoch_lines) == 3, out

    class Terminal:
        def isatty(self):
            return True

    import sys

    real = sys.stdout
    sys.stdout = Terminal()
    try:
        assert experiment.fit_verbosity(tiny_config(tmp_path, "train.verbose=auto")) == 1  # the bar
    finally:
        sys.stdout = real


def test_export_plain_true_publishes_the_model_in_stock_layers(tmp_path):
    """`export.plain: true` (models.to_plain): the published SavedModel holds dense Conv2D kernels, not the group
    convolutions' basis coefficients (a LiftingConv2D's kernel is [J, C_in, filters]), and answers as training's."""
    import tensorflow as tf

    base = tiny_config(tmp_path, "export.plain=true", "train.epochs=1").to_dict()
    base["model"] = {"name": "gcnn", "params": {"filters": [2, 3], "group": "C4", "kernel_size": 3}}
    cfg = config_from_dict(base, [])
    result = run(cfg)
    stored = tf.train.list_variables(os.path.join(result.export_path, "variables", "variables"))
    shapes = [tuple(shape) for name, shape in stored if name.startswith("loaded/variables/")]
    assert (3, 3, 1, 2 * 4) in shapes and (3, 3, 2 * 4, 2 * 4) in shapes, shapes  # dense kernels, |G| = 4
    assert not any(len(s) == 3 for s in shapes), shapes  # no [J, C_in, filters] basis coefficients
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    assert predict_savedmodel(result.export_path, x)["probabilities"].shape == (4, 10)


def test_the_model_line_names_the_invariance_wrapper_around_the_builder():
    from pipelines.config import ModelConfig

    assert model_line(ModelConfig("resnet", {}), 26108) == "Model resnet: 26,108 parameters"
    assert (model_line(ModelConfig("resnet", {"invariant": {"group": "D4", "method": "canonicalize"}}), 5)
            == "Model resnet made D4-invariant by canonicalize: 5 parameters")
    assert model_line(ModelConfig("keras_app:MobileNetV2", {"invariant": "C4"}), 5) == (
        "Model keras_app:MobileNetV2 made C4-invariant by orbit: 5 parameters")
    assert model_line(ModelConfig("baseline_cnn", {"pyramid_scales": [1.0, 0.5]}), 5) == (
        "Model baseline_cnn on an input pyramid at scales 1, 0.5: 5 parameters")


@pytest.mark.parametrize("export, published, line", [
    ("export.enabled=false", None, "SavedModel:      none (export.enabled=false; the model is in the MLflow run)"),
    ("export.enabled=true", "exports/x/3", f"SavedModel:      {os.path.abspath('exports/x/3')}")])
def test_the_summary_names_the_savedmodel_or_says_there_is_none(monkeypatch, capsys, export, published, line):
    """A run trained with export.enabled=false (as PyTorch's must be) ended its summary without a word of it."""
    from pipelines import train

    result = train.TrainResult("0" * 32, "sqlite:///m.db", "runs/x", published, 0.5, 1.0)
    monkeypatch.setattr(train, "run", lambda cfg: result)
    assert run_main(main, [export]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [line, "Test accuracy:   0.5000"]
