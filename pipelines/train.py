"""`make train`: config -> data -> model -> fit (tracked in MLflow) -> test -> evaluate -> export.

    python -m pipelines.train --config pipelines/configs/default.yaml [key=value ...]

A run lives in a run directory (pipelines/rundir.py: `train.run_dir`, default
runs/<name>-<time>) holding the resolved config, the MLflow run id, Keras'
backup of the last finished epoch and, once training ends, the trained model.
Running the same command again resumes an unfinished run whose process is
gone: training continues from the last finished epoch (each epoch is logged
once; data changed since the run started is named in a warning), and a run
that had finished training but died later (evaluation, export) redoes only
the steps that had not finished. Everything a user can get
wrong (config, data, a model that does not build for the data) is checked
before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass

from pipelines import distribute, experiment, precise_bn, rundir
from pipelines.cli import check_backend_options, config_parser, exit_job, interrupt_on_sigterm, run_main
from pipelines.config import Config, load_config
from pipelines.errors import UserError


class TrainingDivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite (a config's learning rate, usually): one `error:` line, exit 2."""


@dataclass
class TrainResult:
    run_id: str
    tracking_uri: str
    run_dir: str
    export_path: str | None
    test_accuracy: float
    test_loss: float
    not_published: str | None = None  # why the export guard kept this model from being published


# ----------------------------------------------------------------------------- the job


def model_line(model_cfg, params: int) -> str:
    """The line that names the model trained: its builder, the wrappers around it (the input pyramid, the
    invariance), its size."""
    inv, scales = model_cfg.params.get("invariant"), model_cfg.params.get("pyramid_scales")
    inv = {"group": inv} if isinstance(inv, str) else inv
    wrapped = f" on an input pyramid at scales {', '.join(f'{s:g}' for s in scales)}" if scales else ""
    wrapped += f" made {inv['group']}-invariant by {inv.get('method', 'orbit')}" if inv else ""
    return f"Model {model_cfg.name}{wrapped}: {params:,} parameters"


def run(cfg: Config, callbacks=()) -> TrainResult:
    """Train, test, evaluate, log and export the experiment `cfg`. `callbacks` are extra Keras callbacks."""
    import keras

    from pipelines import tracking

    check_backend_options(cfg, exports=True)  # first: before the data's load, which may be long
    # First: joining the other processes must come before any computation (pipelines/distribute.py).
    placement = distribute.setup(cfg.train.distribution, cfg.data.batch_size, cfg.train.heartbeat_timeout_s)
    if placement.multi_process and not cfg.train.run_dir:
        raise UserError("training across processes needs train.run_dir=<a folder every process shares> "
                        "(the same on every host), where the chief keeps the run and the checkpoints")
    print(f"Devices: {experiment.describe_devices()}; training on {placement.describe()}")
    keras.utils.set_random_seed(cfg.train.seed)
    lock = None
    try:
        # Every check a user's input can fail, in every process, before the first collective: a process that
        # stops here says why to the others, which stop with it (distribute.preflight) instead of waiting out
        # the heartbeat. Before the run directory and the MLflow run: a bad source or model leaves nothing behind.
        with distribute.preflight(placement, distribute.FIRST_STEP):
            # The chief opens the whole splits (it tests, evaluates and exports alone); another process its shard.
            shard = (1, 0) if placement.is_chief else (placement.num_processes, placement.process_id)
            splits = experiment.load_data(cfg, shard)
            weights_digest = experiment.check_model_builds(cfg, splits)
        distribute.check_same(placement, "initial-weights", weights_digest, "the model's initial weights")
        with distribute.preflight(placement, "run-dir"):
            if placement.is_chief:
                _check_publishable(cfg, splits)
                uri = tracking.setup(cfg.tracking.uri, cfg.experiment_name)
                run_dir, state, lock, orphans = rundir.open_run_dir(cfg)
            else:
                state = rundir.check_resumable(cfg, cfg.train.run_dir)  # stop with the chief on a wrong run dir
        with experiment.reading_splits_to_their_end():
            if not placement.is_chief:
                return _run_worker(cfg, splits, placement, callbacks, state)
            rundir.mark_orphans_killed(orphans)
            return _run_locked(cfg, splits, uri, run_dir, state, callbacks, placement)
    finally:
        if lock is not None:
            lock.release()


def _run_worker(cfg: Config, splits, placement, callbacks, state: dict) -> TrainResult:
    """A process other than the chief: its share of each step, nothing logged, writes only in its scratch folder
    (its checkpoints, and its final weights, which are the chief's: `final_weights.npz`)."""
    import numpy as np

    from pipelines import progress

    run_dir = cfg.train.run_dir
    scratch = distribute.scratch_dir(run_dir, placement)
    if not state.get("trained"):  # the chief skips the fit of a trained run too
        # Every process restarts from the same checkpoint: the chief's (its own may lag an epoch).
        chief_backup, own_backup = os.path.join(run_dir, "backup"), os.path.join(scratch, "backup")
        shutil.rmtree(own_backup, ignore_errors=True)
        if os.path.isdir(chief_backup):
            shutil.copytree(chief_backup, own_backup)
        augment = experiment.build_augmentation(cfg)
        shard = (placement.num_processes, placement.process_id)
        train_ds, val_ds, _ = experiment.make_datasets(cfg, splits, augment, shard)
        steps = experiment.steps_per_epoch(cfg, splits, placement.num_processes)
        with progress.StopOnSignal() as stop:  # a signal until the weights are saved: noted, raised after `leave`
            model = _fit(cfg, splits, train_ds, val_ds, steps, None, scratch, callbacks, placement, stop)
            weights = model.get_weights()  # the chief gathers the weights here: the same step in every process
            np.savez(os.path.join(scratch, "final_weights.npz"), **{f"w{i}": w for i, w in enumerate(weights)})
            shutil.rmtree(own_backup, ignore_errors=True)
    distribute.leave(placement)  # a barrier every process must reach
    progress.raise_if_signalled()
    print(f"Process {placement.process_id}: done (the chief, process 0, tests, logs and exports)")
    return TrainResult("", "", run_dir, None, float("nan"), float("nan"))


def _run_locked(cfg: Config, splits, uri: str, run_dir: str, state: dict, callbacks, placement) -> TrainResult:
    import keras
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines import artifacts, progress

    print(f"Data: {splits.info.summary()}")
    small = experiment.small_test_split(splits)
    if small:
        print(f"Warning: {small}")
    augment = experiment.build_augmentation(cfg)
    shard = (placement.num_processes, placement.process_id)
    train_ds, val_ds, _ = experiment.make_datasets(cfg, splits, augment, shard)
    test_ds = experiment.make_datasets(cfg, splits)[2]  # the chief tests alone, on the whole split
    steps = experiment.steps_per_epoch(cfg, splits, placement.num_processes)

    run_id = state.get("mlflow_run_id")
    resumed = run_id is not None
    try:
        active = mlflow.start_run(run_id=run_id, run_name=None if resumed else os.path.basename(run_dir))
    except MlflowException:
        if not resumed:
            raise
        raise UserError(
            f"train.run_dir={run_dir} continues MLflow run {run_id}, which the tracking store {uri} does not "
            "hold (or it was deleted); resume with the store it started in, or choose a new run_dir"
        ) from None
    run_id = active.info.run_id
    data = {"data_key": hashlib.sha256(splits.content_key.encode()).hexdigest(),
            "data_counts": splits.info.total_counts, "backend": keras.backend.backend()}
    if resumed and state.get("backend", data["backend"]) != data["backend"]:
        print(f"Warning: this run started on Keras' {state['backend']} backend and goes on on {data['backend']}: "
              "its speed and last digits mix the two (KERAS_BACKEND chooses)")
        mlflow.set_tag("backend", f"{state['backend']}, then {data['backend']}")
    if resumed and state.get("data_key", data["data_key"]) != data["data_key"]:  # e.g. an unreadable file removed
        print(f"Warning: the data changed since this run started (images per split then {state.get('data_counts')}, "
              f"now {data['data_counts']}): training goes on from the last finished epoch on the data as it is now; "
              "the run's logged data parameters are those of its start")
    state = rundir.write_state(run_dir, mlflow_run_id=run_id, status="running", **({} if resumed else data))
    print(f"MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {uri}; run dir {run_dir}")

    try:
        if not resumed:
            mlflow.log_params({k: ("" if v is None else v) for k, v in cfg.flat().items()})
            mlflow.log_params(splits.info.params())  # counts, classes, shape, resolved cache, bad images skipped
            mlflow.log_dict(splits.info.to_dict(), "data.json")  # and the skipped files' names
            artifacts.log_dataset(cfg, splits)
            mlflow.set_tags({"run_dir": os.path.abspath(run_dir), "devices": experiment.describe_devices(),
                             "backend": data["backend"],
                             **({"warning.small_test_split": small} if small else {})})
            mlflow.log_artifact(os.path.join(run_dir, rundir.CONFIG))
            if augment is not None:
                with distribute.local():  # the chief alone: its random state's variable must not be placed across processes
                    artifacts.log_augmentation_preview(cfg, splits, run_dir)

        model_path = os.path.join(run_dir, "model.keras")
        if state.get("trained") and os.path.isfile(model_path):
            distribute.leave(placement)
            print(f"Training had finished; loading {model_path}")
            model = experiment.load_keras_model(model_path)
            experiment.compile_model(model, cfg, steps)
        else:
            # A signal until the model is saved is noted, then raised here: the same command resumes from it
            with progress.StopOnSignal() as stop:
                model = _fit(cfg, splits, train_ds, val_ds, steps, run_id, run_dir, callbacks, placement, stop)
                if placement.kind == "data_parallel":  # the weights back on this process's devices alone
                    weights = model.get_weights()
                    distribute.leave(placement)
                    with experiment.precision(cfg):
                        model = experiment.build_model(cfg, splits.image_shape, splits.num_classes)
                    model.set_weights(weights)
                    experiment.compile_model(model, cfg, steps)
                # One process only: each process of several holds its own shard, and would get statistics of its own.
                if placement.num_processes == 1 and \
                        (n := precise_bn.recalibrate_batch_norm(model, train_ds, cfg.train.precise_bn_batches)):
                    with experiment.reading_splits_to_their_end():  # the last epoch's figure used the old statistics
                        val = model.evaluate(val_ds, verbose=0, return_dict=True)
                    mlflow.log_metrics({f"final_val_{k}": float(v) for k, v in val.items()})
                    again = f"; an epoch has only {steps}, so they were repeated" if steps < n else ""
                    print(f"Batch norms' moving statistics re-estimated for the final weights on {n} training "
                          f"batches (train.precise_bn_batches{again}): validation accuracy {val['accuracy']:.4f}")
                model.save(model_path)
                state = rundir.write_state(run_dir, trained=True)
                shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)  # kept until now (_fit)
            progress.raise_if_signalled()

        # Each step after training records itself in state.json, so that a run resumed after a
        # crash in a later step neither logs its test metrics, model or evaluation twice nor exports again.
        if "test_accuracy" in state:
            test_loss, test_acc = state["test_loss"], state["test_accuracy"]
        else:
            test_loss, test_acc = model.evaluate(test_ds, verbose=0)
            mlflow.log_metrics({"test_loss": float(test_loss), "test_accuracy": float(test_acc)})
            state = rundir.write_state(run_dir, test_loss=float(test_loss), test_accuracy=float(test_acc))
        print(f"Test accuracy {test_acc:.4f}, test loss {test_loss:.4f}")
        if not state.get("model_logged"):
            artifacts.log_figures(run_id, model, splits, test_ds, run_dir)
            # With export on, the model is registered once published (below), so that the registry holds only
            # models the export guard let through; with it off, every trained model, as it is logged.
            info = artifacts.log_mlflow_model(model, cfg, splits, splits.test.arrays(max_images=2)[0], model_path,
                                              register=not cfg.export.enabled)
            state = rundir.write_state(run_dir, model_logged=True, model_uri=info.model_uri)

        if cfg.evaluate.enabled and not state.get("evaluated"):
            _evaluate_invariance(model, cfg, splits, run_dir)
            state = rundir.write_state(run_dir, evaluated=True)

        export_path, refused = state.get("export_path"), None
        if cfg.export.enabled and not export_path:
            export_path, refused = _export(model, cfg, splits, float(test_acc), run_dir)
            state = rundir.read_state(run_dir)
        # "model_uri" absent: a run logged before this rule, registered then
        if export_path and state.get("model_uri") and not state.get("registered"):
            artifacts.register_mlflow_model(cfg, splits, state["model_uri"], os.path.basename(export_path))
            state = rundir.write_state(run_dir, registered=True)

        mlflow.end_run(status="FINISHED")
        rundir.write_state(run_dir, status="finished")
    except BaseException as exc:
        from data.streaming import name_read_error

        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        named = interrupted = None
        try:  # it may read every file: minutes, during which Ctrl-C must still end the run
            named = name_read_error(exc, splits)
        except KeyboardInterrupt as e:
            interrupted, status = e, "KILLED"
        try:
            mlflow.set_tag("failure", f"{type(exc).__name__}: {named or exc}"[:4000])
        finally:
            mlflow.end_run(status=status)
        if interrupted is not None:
            raise interrupted
        if named is not None:
            named.args = (f"{named} (found while this run read its data; data.check_images=full finds them before "
                          "a run starts; once they are fixed, the same command resumes from the last finished "
                          "epoch)",)
            raise named from None
        if isinstance(exc, UserError) and rundir.read_state(run_dir).get("trained"):
            exc.args = (f"{exc} (the trained model is kept in {run_dir}; the same command retries "
                        "only the steps that did not finish)",)
        raise

    return TrainResult(run_id, uri, run_dir, export_path, float(test_acc), float(test_loss), refused)


def _fit(cfg: Config, splits, train_ds, val_ds, steps: int, run_id: str | None, out_dir: str, callbacks, placement,
         stop):
    """Build, compile and fit the model under `placement`; the MLflow epoch log only where `run_id` is given; `stop`
    (a StopOnSignal the caller holds open) last among the callbacks. The backup stays for the caller to remove
    once what it resumes from is saved."""
    import keras
    import numpy as np

    from pipelines import tracking
    from pipelines.progress import BackupAndRestore

    # The same draws as the model checked (and compared across processes) in `run`, whatever ran between;
    # seeded outside the strategy's scope (inside MirroredStrategy's, the draws differed from one device's).
    keras.utils.set_random_seed(cfg.train.seed)
    with experiment.precision(cfg), placement.scope():
        model = experiment.build_model(cfg, splits.image_shape, splits.num_classes)
        with open(os.path.join(out_dir, "initial_weights.sha256"), "w") as fh:
            fh.write(experiment.weights_digest(model) + "\n")
        experiment.compile_model(model, cfg, steps)
        if placement.is_chief:
            print(model_line(cfg.model, model.count_params()))
        fit_callbacks = [
            *([tracking.MLflowEpochLogger(run_id)] if run_id else []),
            BackupAndRestore(os.path.join(out_dir, "backup"), delete_checkpoint=False),  # written whole or not at all
            keras.callbacks.TerminateOnNaN(),
            *callbacks,
        ]
        verbose = experiment.fit_verbosity(cfg) if placement.is_chief else 0
        if verbose == 2:  # a log, not a terminal: a line at least every 30 s, not only at each epoch's end
            from pipelines.progress import ProgressLog

            images = steps * cfg.data.batch_size if placement.num_processes > 1 else splits.train.count
            fit_callbacks.append(ProgressLog(steps, cfg.train.epochs, cfg.data.batch_size, images=images))
        history = model.fit(**experiment.fit_batches(train_ds, steps), validation_data=val_ds, epochs=cfg.train.epochs,
                            callbacks=[*fit_callbacks, stop], verbose=verbose, shuffle=False)
    losses = history.history.get("loss", [])
    if losses and not all(np.isfinite(losses)):
        raise TrainingDivergedError(f"loss became {losses[-1]} in epoch {len(losses)}; training stopped "
                                    f"(train.learning_rate={cfg.train.learning_rate:g} too high?)")
    return model


def _check_publishable(cfg: Config, splits) -> None:
    """Before training: a model that could not be a compatible new version of its name is one error line."""
    from pipelines.export import signature_conflict

    if cfg.export.enabled and not cfg.export.allow_new_signature:
        why = signature_conflict(cfg.export.dir, cfg.export_name, splits.image_shape, splits.class_names)
        if why:
            raise UserError(why)


def _export(model, cfg: Config, splits, test_acc: float, run_dir: str) -> tuple[str | None, str | None]:
    """Publish the next version unless the export guard refuses; return (path, why not published). The path is
    in the run's state as soon as the version is published, so that a resume never publishes it twice."""
    import mlflow

    from pipelines.export import SIGNATURE_FILE, export_model, publish_refusal, served_accuracy, signature_of

    why = publish_refusal(cfg.export, test_acc, splits.num_classes)  # the floors first: no pass over the test split
    if why is None and cfg.export.max_accuracy_drop is not None:  # the served version, on this model's test images
        served = served_accuracy(cfg.export.dir, cfg.export_name, splits.test.elements().batch(256).as_numpy_iterator(),
                                 splits.image_shape, splits.class_names)
        if served:
            mlflow.log_metric("served_version_test_accuracy", served[1])
            print(f"Version {served[0]}, published before, on the same test images: accuracy {served[1]:.4f}")
        why = publish_refusal(cfg.export, test_acc, splits.num_classes, served)
    if why:
        mlflow.set_tag("export_refused", why)
        print(f"Not published: {why}")
        return None, why
    report: dict = {}
    path = export_model(
        model, cfg.export.dir, cfg.export_name,
        check_images=splits.test.arrays(cfg.evaluate.max_images, cfg.evaluate.seed)[0],  # at most evaluate.max_images
        tolerance=cfg.export.tolerance, rtol=cfg.export.rtol, report=report, class_names=splits.class_names,
        resize=cfg.data.resize, plain=cfg.export.plain,
        extra_assets={"experiment.yaml": cfg.to_yaml(),
                      SIGNATURE_FILE: json.dumps(signature_of(splits.image_shape, splits.class_names)),
                      "labels.txt": "".join(f"{c}\n" for c in splits.class_names),
                      "metrics.json": json.dumps({"test_accuracy": test_acc, "data.source": cfg.data.source,
                                                  "mlflow_run_id": mlflow.active_run().info.run_id})},
    )
    rundir.write_state(run_dir, export_path=path)
    mlflow.set_tag("export_path", os.path.abspath(path))
    mlflow.log_metrics({"export_max_abs_diff": report["max_abs_diff"],
                        "export_class_agreement": report["class_agreement"]})
    print(f"Exported and verified SavedModel: {path} (reloaded vs in-memory: max |dp| "
          f"{report['max_abs_diff']:.2e}, classes agree on {100 * report['class_agreement']:.2f}%)")
    return path, None


def _evaluate_invariance(model, cfg: Config, splits, run_dir: str):
    """The invariance evaluation of pipelines/evaluation.py, logged to the active run."""
    from pipelines.evaluation import evaluate_in_training

    evaluate_in_training(model, cfg, splits, run_dir)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    return config_parser("make train", __doc__.split("\n\n")[0], "train.epochs=3").parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    processes, process_id = distribute.process_env()
    if processes > 1 and os.environ.get(distribute.ENV_SUPERVISED) != "1":
        return distribute.supervise(sys.argv[1:] if argv is None else list(argv), cfg, process_id)
    interrupt_on_sigterm()
    result = run(cfg)
    if not result.run_id:  # a process other than the chief
        return 0
    print()
    print(f"MLflow run id:   {result.run_id}")
    print(f"Tracking store:  {result.tracking_uri}   (browse it with `make ui`)")
    print(f"Run directory:   {result.run_dir}")
    if result.export_path:
        print(f"SavedModel:      {os.path.abspath(result.export_path)}")
    elif result.not_published:
        print(f"SavedModel:      not published: {result.not_published}")
    elif not cfg.export.enabled:
        print("SavedModel:      none (export.enabled=false; the model is in the MLflow run)")
    print(f"Test accuracy:   {result.test_accuracy:.4f}")
    return 0


if __name__ == "__main__":
    exit_job(run_main(main, resumes="from the last finished epoch"))
