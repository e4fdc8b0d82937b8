"""`make tune`: KerasTuner searches tracked in MLflow, resumed after a kill, and distributed.

Tiny budgets throughout: 200 synthetic images, one epoch per trial, a 4-wide
baseline CNN fixed through `tune.fixed`, batch sizes that divide the split
(no retracing on a partial batch). One tracking store serves every test of
the module (creating a sqlite store costs seconds).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import warnings

import keras
import mlflow
import pytest
import yaml

from pipelines import train as train_job
from pipelines import tune
from pipelines.cli import run_main
from pipelines.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIST_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    return root, f"sqlite:///{root}/mlflow.db"


@pytest.fixture
def lone(store, monkeypatch):
    """An in-process, non-distributed search; MLflow's local artifacts land in the tmp dir."""
    for k in DIST_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(store[0])
    return store


def write_config(store, name: str, **tune_overrides) -> str:
    root, uri = store
    data = {
        "name": name,
        "data": {"source": "synthetic", "synthetic": {"train_size": 200, "test_size": 50}, "batch_size": 60,
                 "cache_dir": str(root / "cache")},
        "model": {"name": "baseline_cnn", "params": {"dense_units": 16}},
        "train": {"epochs": 1, "verbose": "0", "runs_root": str(root / "runs")},
        "tracking": {"uri": uri, "register_model": False},
        "export": {"dir": str(root / "exports")},
        "evaluate": {"enabled": False},
        "tune": {
            "max_trials": 2,
            "epochs": 1,
            "directory": str(root / "tuning" / name),
            "fixed": {"width": 4, "conv": "standard", "kernel_size": 3, "padding": "same", "blur_size": 3,
                      "translation_pixels": 0, "rotation_degrees": 0, "elastic_alpha": 0},
            "choices": {"batch_size": [60, 90], "downsample": ["max", "strided"], "head": ["gap", "flatten"]},
            "ranges": {"learning_rate": {"min": 1e-3, "max": 1e-2, "sampling": "log"}},
            **tune_overrides,
        },
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def parent_and_trials(cfg):
    """The search's parent run and its active nested runs, by trial id."""
    client = mlflow.MlflowClient(cfg.tracking.uri)
    with open(os.path.join(tune.search_directory(cfg), "parent_run.json")) as fh:
        parent = client.get_run(json.load(fh)["run_id"])
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_trial = {}
    for r in nested:
        by_trial.setdefault(r.data.tags["trial_id"], []).append(r)
    return client, parent, by_trial


class InterruptSecondTrial(keras.callbacks.Callback):
    """Ctrl-C at the end of the second trial's training, after its epoch was logged."""

    trials = 0  # a class attribute: KerasTuner deep-copies callbacks for every trial

    def on_train_begin(self, logs=None):
        type(self).trials += 1

    def on_train_end(self, logs=None):
        if type(self).trials == 2:
            raise KeyboardInterrupt("test: the search is killed in its second trial")


@pytest.mark.slow
def test_killed_search_resumes_without_repeating_trials_and_its_best_config_trains(lone):
    path = write_config(lone, "resume")
    cfg = load_config(path)

    with pytest.raises(KeyboardInterrupt):
        tune.run(cfg, callbacks=[InterruptSecondTrial()])
    client, parent, by_trial = parent_and_trials(cfg)
    assert parent.info.status == "KILLED"
    assert sorted(by_trial) == ["0", "1"]
    first_run = by_trial["0"][0]
    assert first_run.info.status == "FINISHED"
    assert by_trial["1"][0].info.status == "KILLED"  # logged its epoch, then died

    result = tune.run(load_config(path), config_path=path)  # the same command again
    client, parent, by_trial = parent_and_trials(cfg)
    # KerasTuner's own record: two trials, both completed, none added by the restart.
    project = os.path.join(tune.search_directory(cfg), "search")
    assert sorted(d for d in os.listdir(project) if d.startswith("trial_")) == ["trial_0", "trial_1"]
    assert result.trials_completed == 2
    # MLflow: each trial exactly once; the finished one untouched, the killed one replaced by its rerun.
    assert {k: len(v) for k, v in by_trial.items()} == {"0": 1, "1": 1}
    assert by_trial["0"][0].info.run_id == first_run.info.run_id
    assert by_trial["1"][0].data.tags["attempt"] == "2"
    assert parent.info.status == "FINISHED"

    for trial_id, (run,) in by_trial.items():
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["width"] == "4" and params["model.params.filters"] == "[4, 8]"
        assert params["batch_size"] in ("60", "90") and params["downsample"] in ("max", "strided")
        assert 1e-3 <= float(params["learning_rate"]) <= 1e-2
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0]
        # scored on the final model, batch norms re-estimated (the per-epoch figure used the old statistics)
        assert run.data.metrics["score"] == pytest.approx(run.data.metrics["final_val_accuracy"])
        assert "final_val_loss" in run.data.metrics

    best_id = max(by_trial, key=lambda t: by_trial[t][0].data.metrics["score"])
    best_run = by_trial[best_id][0]
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best_run.data.metrics["score"])
    assert parent.data.metrics["trials_completed"] == 2
    assert parent.data.tags["best.batch_size"] == best_run.data.params["batch_size"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"best.yaml", "config.yaml"}

    # The best config is complete and ready: it loads, carries the best values, and trains and exports.
    best = load_config(result.best_config_path)
    assert result.best_config_path == os.path.join(tune.search_directory(cfg), "best.yaml")
    # one numbering: the MLflow run's name, and the number KerasTuner's console gave it ("Trial 1 Complete")
    assert result.best_trial_id == best_id and result.best_trial_number == int(best_id) + 1
    with open(result.best_config_path) as fh:
        assert f"in trial_{best_id} (KerasTuner's Trial {int(best_id) + 1})" in fh.readline()
    assert best.name == "resume_tuned" and best.tune == type(best.tune)()
    assert best.data.batch_size == int(best_run.data.params["batch_size"])
    assert best.model.params["downsample"] == best_run.data.params["downsample"]
    assert best.model.params["filters"] == [4, 8] and best.model.params["dense_units"] == 16
    assert best.train.learning_rate == pytest.approx(float(best_run.data.params["learning_rate"]))
    best.export.min_test_accuracy = 0.0  # a two-trial search of a tiny model may sit at chance: publish anyway
    trained = train_job.run(best)
    assert os.path.isfile(os.path.join(trained.export_path, "saved_model.pb"))
    assert client.get_run(trained.run_id).data.params["data.batch_size"] == best_run.data.params["batch_size"]


def test_runs_are_tagged_with_their_backend_and_a_search_resumed_on_another_says_so(lone, capsys, monkeypatch):
    """A search extended under another KERAS_BACKEND warns and tags its parent run `tensorflow, then jax`, each
    trial run keeps its own backend and devices, and the command that trains best.yaml names the backend."""
    from pipelines.tune import job, trials

    path = write_config(lone, "backends")
    assert run_main(tune.main, ["--config", path]) == 0
    assert "Train it:          make train CONFIG=" in capsys.readouterr().out
    cfg = load_config(path)
    _, parent, by_trial = parent_and_trials(cfg)
    assert parent.data.tags["backend"] == "tensorflow"
    for module in (job, trials):  # as if KERAS_BACKEND=jax were given to the same command
        monkeypatch.setattr(module, "backend", lambda: "jax")
    assert run_main(tune.main, ["--config", path, "tune.max_trials=3"]) == 0
    out = capsys.readouterr().out
    assert "Warning: this search started on Keras' tensorflow backend and goes on on jax" in out
    _, parent, by_trial = parent_and_trials(cfg)
    assert parent.data.tags["backend"] == "tensorflow, then jax"
    assert {t: r.data.tags["backend"] for t, (r,) in by_trial.items()} == {"0": "tensorflow", "1": "tensorflow",
                                                                            "2": "jax"}
    # the command that trains best.yaml names the backend its trial ran on
    best_path = os.path.join(tune.search_directory(cfg), "best.yaml")
    (best,) = by_trial[parent.data.tags["best.trial_id"]]
    command = ("KERAS_BACKEND=jax " if best.data.tags["backend"] == "jax" else "") + f"make train CONFIG={best_path}"
    assert f"Train it:          {command}\n" in out
    with open(best_path) as fh:
        assert f"full budget and export it:\n#   {command}\n" in fh.read()  # PyTorch's command turns the export off
    from pipelines.cli import train_command

    assert train_command("b.yaml", "torch") == \
        'KERAS_BACKEND=torch make train CONFIG=b.yaml ARGS="export.enabled=false"'  # PyTorch writes no SavedModel
    from pipelines.experiment import describe_devices

    assert all(r.data.tags["devices"] == describe_devices() for (r,) in by_trial.values())


class RecordStartingStep(keras.callbacks.Callback):
    """The optimizer's step count as each execution of a trial starts to train."""

    steps = []  # a class attribute: KerasTuner deep-copies callbacks for every trial

    def on_train_begin(self, logs=None):
        type(self).steps.append(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))


def test_hyperband_continues_a_promoted_trial_with_its_optimizer_state_and_step(lone):
    """A promoted trial was loaded into an unbuilt optimizer: its moments and step were skipped, so the trial went
    on at step 0, the top of its learning-rate schedule."""
    cfg = load_config(write_config(lone, "hyperband", algorithm="hyperband", epochs=2, hyperband_factor=2))
    RecordStartingStep.steps = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tune.run(cfg, callbacks=[RecordStartingStep()])
    assert not [w for w in caught if "Skipping variable loading for optimizer" in str(w.message)]
    # the best values are the search space's, without Hyperband's bookkeeping (tuner/epochs, tuner/round, ...)
    _, parent, by_trial = parent_and_trials(cfg)
    assert "batch_size" in result.best_values and not [k for k in result.best_values if k.startswith("tuner/")]
    assert "best.batch_size" in parent.data.tags and not [k for k in parent.data.tags if k.startswith("best.tuner/")]
    assert any("tuner/epochs" in r.data.params for runs in by_trial.values() for r in runs)  # kept per trial
    # new trials start at step 0; the promoted one at the end of its first epoch: 180 training images (200 less
    # the validation split) in batches of 60 or 90, one of the choices (before the fix: 0 too)
    assert 0 in RecordStartingStep.steps and max(RecordStartingStep.steps) in (180 // 60, 180 // 90)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_record_every_trial_once(store):
    root, _ = store
    path = write_config(store, "dist", max_trials=3)
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=str(_free_port()))
    procs = {}
    for tuner_id in ("chief", "worker0", "worker1"):
        log = open(root / f"{tuner_id}.log", "w")
        procs[tuner_id] = subprocess.Popen(
            [sys.executable, "-m", "pipelines.tune", "--config", path, "tune.chief_timeout=300"],
            # the chief, which trains nothing, on another backend than the workers: the runs name the workers'
            env={**env, "KERASTUNER_TUNER_ID": tuner_id,
                 "KERAS_BACKEND": "jax" if tuner_id == "chief" else "tensorflow"},
            cwd=root, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        codes = {k: p.wait(timeout=480) for k, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    logs = {k: (root / f"{k}.log").read_text()[-3000:] for k in procs}
    assert codes == {"chief": 0, "worker0": 0, "worker1": 0}, logs

    cfg = load_config(path)
    client, parent, by_trial = parent_and_trials(cfg)
    assert parent.info.status == "FINISHED" and parent.data.tags["backend"] == "tensorflow"
    assert "Train it:          make train CONFIG=" in logs["chief"] and "Warning" not in logs["chief"]
    assert {k: len(v) for k, v in by_trial.items()} == {"0": 1, "1": 1, "2": 1}
    for (run,) in by_trial.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["tuner_id"] in ("worker0", "worker1")  # the chief only serves the oracle
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0]
    assert parent.data.metrics["trials_completed"] == 3
    best = load_config(os.path.join(tune.search_directory(cfg), "best.yaml"))
    assert best.model.params["filters"] == [4, 8]


def test_narrowed_space_reaches_every_algorithm(lone, tmp_path):
    cfg = load_config(write_config(lone, "space"))
    model = tune.SearchModel(cfg, splits=None)  # declares the space, builds nothing
    for algorithm, oracle_class in [("random", "RandomSearchOracle"), ("hyperband", "HyperbandOracle"),
                                    ("bayesian", "BayesianOptimizationOracle")]:
        cfg.tune.algorithm = algorithm
        tuner = tune.make_tuner(cfg, model, tune.narrowed_space(cfg), str(tmp_path / algorithm), runs=None)
        assert type(tuner.oracle).__name__ == oracle_class
        space = {h.name: h for h in tuner.oracle.get_space().space}
        assert type(space["width"]).__name__ == "Fixed" and space["width"].value == 4
        assert space["batch_size"].values == [60, 90]
        lr = space["learning_rate"]
        assert (lr.min_value, lr.max_value, lr.sampling) == (1e-3, 1e-2, "log")
        # Names the config leaves alone keep the space declared beside the builder and in the job.
        assert space["dropout"].max_value == 0.5
        if algorithm == "hyperband":
            assert tuner.oracle.max_epochs == cfg.tune.epochs
        else:
            assert tuner.oracle.max_trials == cfg.tune.max_trials


@pytest.mark.parametrize(
    "tune_section, message",
    [
        ({"fixed": {"widht": 8}}, r"tune\.fixed\.widht: unknown hyperparameter; .*'width'"),
        ({"choices": {"batch_size": ["big"]}}, r"tune\.choices\.batch_size: must be of type int, .*\(got 'big'\)"),
        ({"fixed": {}, "ranges": {"conv": {"min": 1, "max": 2}}}, r"tune\.ranges\.conv: conv takes str values"),
        ({"fixed": {}, "ranges": {"width": {"min": 4, "max": 8.5}}}, r"tune\.ranges\.width: width takes integers"),
        ({"ranges": {"dropout": {"min": 0.5, "max": 0.1}}}, r"tune\.ranges\.dropout: needs numbers min < max"),
        ({"algorithm": "grid"}, r"tune\.algorithm: must be one of"),
        ({"fixed": {"width": 4}, "choices": {"width": [4]}}, r"tune\.choices\.width: is already set in tune\.fixed"),
        ({"choices": {"batch_size": [0, 60]}}, r"tune: the search space .* data\.batch_size: must be at least 1"),
    ],
)
def test_user_errors_exit_2_with_one_line_naming_the_key(lone, capsys, tune_section, message):
    path = write_config(lone, "errors", **tune_section)
    assert run_main(tune.main, ["--config", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_restart_with_a_different_config_is_refused(lone, capsys):
    root, _ = lone
    path = write_config(lone, "changed")
    directory = root / "tuning" / "changed"
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(load_config(path, ["tune.epochs=2", "tune.max_trials=5"]).to_yaml())
    assert run_main(tune.main, ["--config", path]) == 2
    err = capsys.readouterr().err
    # max_trials may grow on a restart; epochs may not.
    assert "differing keys: tune.epochs." in err and "tune.overwrite=true" in err


def test_a_missing_dataset_leaves_no_search_and_no_parent_run(lone, capsys):
    root, uri = lone
    path = write_config(lone, "nodata")
    assert run_main(tune.main, ["--config", path, "data.source=npz:/no/such/file.npz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such file" in err and "Traceback" not in err
    assert not (root / "tuning" / "nodata").exists()
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("nodata")
    assert experiment is None or not client.search_runs([experiment.experiment_id])


@pytest.mark.parametrize("downsample, named", [(["bogus"], "at its first values"),
                                               (["max", "bogus"], "with tune.choices.downsample='bogus'")])
def test_a_choice_that_does_not_build_is_one_line_and_leaves_no_search_and_no_parent_run(lone, capsys, downsample,
                                                                                         named):
    """Each value of `tune.choices` is built before anything is written: a bad first value left a search directory
    that refused the corrected command as another config, a bad later one a failed trial in a search that exited 0."""
    root, uri = lone
    name = f"badchoice{len(downsample)}"
    path = write_config(lone, name, choices={"batch_size": [60, 90], "downsample": downsample, "head": ["gap"]})
    assert run_main(tune.main, ["--config", path]) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: tune: model 'baseline_cnn' does not build from the search space {named}: ")
    assert "bogus" in line
    assert not (root / "tuning" / name).exists()
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is None or not client.search_runs([experiment.experiment_id])


def test_a_value_of_the_model_s_own_space_that_cannot_build_here_is_one_line_whose_advice_runs(lone, capsys):
    """baseline_cnn's own space offers `downsample: aps`, which needs even maps: on 30x30 images the second stage's
    are 15x15. Left open by the config, it was drawn into trials that failed with tracebacks in a search that
    exited 0; now the search refuses before anything is written and names the choices to keep."""
    root, uri = lone
    path = write_config(lone, "ownspace", choices={"batch_size": [60]}, max_trials=1)
    assert run_main(tune.main, ["--config", path, "data.image_size=[30,30]"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: tune: model 'baseline_cnn' does not build for these 30x30x1 images")
    assert "downsample='aps': AdaptivePolyphaseSampling2D needs an even height" in line
    assert not (root / "tuning" / "ownspace").exists()
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("ownspace")
    assert experiment is None or not mlflow.MlflowClient(uri).search_runs([experiment.experiment_id])
    (advice,) = re.findall(r'ARGS="([^"]*)"$', line)
    assert advice == "tune.choices.downsample=[max,strided,blur,blur_strided]"
    assert run_main(tune.main, ["--config", path, "data.image_size=[30,30]", *advice.split()]) == 0
    best = yaml.safe_load(open(root / "tuning" / "ownspace" / "best.yaml"))
    assert best["model"]["params"]["downsample"] in ("max", "strided", "blur", "blur_strided")


def test_xla_on_pytorch_is_refused_before_the_data_and_leaves_no_search(lone, capsys, monkeypatch):
    """torch.compile of Keras' step recompiled layer by layer to TorchDynamo's limit: 10x slower trials."""
    from pipelines import experiment

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    monkeypatch.setattr(experiment, "load_data", lambda *a, **k: pytest.fail("the data was loaded"))
    root, _ = lone
    path = write_config(lone, "torchxla")
    assert run_main(tune.main, ["--config", path, "train.xla=true"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: train.xla: on PyTorch Keras (3.15) compiles the train step with torch.compile")
    assert not (root / "tuning" / "torchxla").exists()


def test_the_check_builds_a_model_for_each_value_of_the_model_s_choices_only(lone):
    """batch_size=90 (a training value) cannot change the model: its config is checked, no model is built."""
    from pipelines.tune import job

    cfg = load_config(write_config(lone, "builds"))
    built = []

    class Counting:
        splits = object()  # as if the data were loaded

        def build(self, hp):
            built.append((hp.values["downsample"], hp.values["head"], hp.values["batch_size"]))

    job._check_every_choice(cfg, tune.narrowed_space(cfg), Counting())
    assert built == [("max", "gap", 60), ("strided", "gap", 60), ("max", "flatten", 60)]


def test_a_damaged_shard_ends_the_search_at_once_with_one_line_naming_it(lone, capsys):
    import numpy as np

    from data.tfrecord import convert

    root, _ = lone
    rng = np.random.default_rng(0)
    npz, dest = root / "noise.npz", root / "noise_shards"
    np.savez(npz, x_train=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8), y_train=np.arange(200) % 10,
             x_test=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), y_test=np.arange(50) % 10)
    convert(f"npz:{npz}", str(dest), shard_size=60, progress=False)
    shard = dest / "train-00001-of-00003.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 40] = bytes(40)
    shard.write_bytes(bytes(data))
    path = write_config(lone, "damaged", max_trials=3)
    assert run_main(tune.main, ["--config", path, f"data.source=tfrecord:{dest}"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{shard} (corrupted record at byte" in lines[0] and "found in a trial" in lines[0]
    cfg = load_config(path)
    _, parent, by_trial = parent_and_trials(cfg)
    assert parent.info.status == "FAILED" and len(by_trial) == 1  # no other trial ran on the same data


def test_the_photo_config_searches_no_rotations_or_warps():
    """images.yaml is for photos, whose labels may change under rotations and warps: its search keeps them off."""
    from pipelines.tune.space import narrowed_space, trial_config

    cfg = load_config(os.path.join(ROOT, "pipelines", "configs", "images.yaml"), ["data.source=folder:/nowhere"])
    fixed = {h.name: h.value for h in narrowed_space(cfg).space}
    assert fixed == {"rotation_degrees": 0.0, "elastic_alpha": 0.0}
    trial = trial_config(cfg, narrowed_space(cfg).copy())
    assert trial.augment.rotation.max_degrees == 0.0 and trial.augment.elastic.alpha == 0.0


@pytest.mark.parametrize("objective", ["val_accuracy", "loss"])
def test_a_trial_is_scored_on_its_final_model_with_batch_norms_re_estimated(lone, monkeypatch, objective):
    """A validation objective scores the model `make train` of the trial's config would publish: the final weights,
    batch norms re-estimated, then the validation split (not the best epoch under Keras' moving statistics)."""
    import keras_tuner as kt

    from pipelines import experiment, precise_bn
    from pipelines.tune.trials import SearchModel

    cfg = load_config(write_config(lone, f"final_{objective}", objective=objective, epochs=2))
    calls = []
    recalibrate = precise_bn.recalibrate_batch_norm
    monkeypatch.setattr(precise_bn, "recalibrate_batch_norm",
                        lambda model, ds, batches: calls.append(batches) or recalibrate(model, ds, batches))
    splits = experiment.load_data(cfg)
    search = SearchModel(cfg, splits)
    search.checkpoint = str(lone[0] / f"final_{objective}" / "checkpoint.weights.h5")  # as the tuner sets it
    hp = kt.HyperParameters()
    model = search.build(hp)
    result = search.fit(hp, model, verbose=0)
    if objective == "loss":
        assert calls == [] and isinstance(result, keras.callbacks.History)  # KerasTuner's own best epoch
        return
    # The trial's checkpoint, from which Hyperband continues a promoted trial, is the model scored.
    kept = search.build(hp)
    kept.load_weights(search.checkpoint)
    for a, b in zip(kept.get_weights(), model.get_weights()):
        assert (a == b).all()
    assert calls == [cfg.train.precise_bn_batches]  # the default, 50 batches
    _, val_ds, _ = experiment.make_datasets(cfg, splits, None)
    final = model.evaluate(val_ds, verbose=0, return_dict=True)
    assert result["val_accuracy"] == pytest.approx(final["accuracy"])
    assert result["val_loss"] == pytest.approx(final["loss"], rel=1e-5)


def test_a_signal_in_a_trial_stops_the_search_at_the_end_of_its_step_and_the_trial_is_killed(
        lone, sigint_as_in_a_terminal):
    """Ctrl-C or SIGTERM in a trial stops its training at the end of the step under way, on every backend (on
    JAX Keras swallowed the interrupt and the search went on), and the trial's run is KILLED."""
    import signal

    cfg = load_config(write_config(lone, "signalled", max_trials=1, epochs=3))
    steps = []

    class SignalAtStep2(keras.callbacks.Callback):  # before StopOnSignal in the list, as any user callback
        def on_train_batch_begin(self, batch, logs=None):
            steps.append(batch)
            if len(steps) == 2:
                try:  # swallowed where it is raised, as Keras does on JAX
                    signal.raise_signal(signal.SIGINT)
                except KeyboardInterrupt:
                    pass

    with pytest.raises(KeyboardInterrupt):
        tune.run(cfg, callbacks=[SignalAtStep2()])
    assert len(steps) == 2  # stopped at the end of the step the signal came in, not at the end of the search
    _, parent, by_trial = parent_and_trials(cfg)
    assert parent.info.status == "KILLED" and [r.info.status for r in by_trial["0"]] == ["KILLED"]
