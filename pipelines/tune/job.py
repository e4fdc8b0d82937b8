"""`make tune`: a KerasTuner search over the experiment's builder and training, tracked in MLflow.

    python -m pipelines.tune --config pipelines/configs/default.yaml [key=value ...]

The search space is code: the builder's `search_space(hp)` beside it in
models/ (builder params) and `training_search_space(hp)` here (learning rate,
batch size, augmentation strengths). The config's `tune` section picks the
algorithm (`random`, `hyperband`, `bayesian`) and its budget, and narrows the
space by hyperparameter name (`tune.fixed`, `tune.choices`, `tune.ranges`).

Everything a search keeps lives in its directory (`tune.directory`, default
tuning/<name>):

    config.yaml       the resolved config of the search (a restart must match it)
    parent_run.json   the MLflow parent run every trial is nested under
    search/           KerasTuner's project: oracle.json, trial_<id>/...
    best.yaml         the best trial as a complete config: `make train CONFIG=<it>`

Starting the same command again continues a search that was killed: finished
trials are neither repeated nor logged again; the trial that was running is
run again (its unfinished MLflow run is deleted and replaced). A larger
`tune.max_trials` extends a finished search.

Distributed search (KerasTuner's own mechanism): with KERASTUNER_ORACLE_IP,
KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID set, the same command is the
chief (a tuner id containing `chief`: it serves the oracle, owns the parent
run and writes best.yaml) or a worker (runs trials). All of them need the same
config, a shared `tune.directory` and a tracking store they can all reach.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import yaml

from pipelines import experiment
from pipelines.cli import check_backend_options, config_parser, exit_job, interrupt_on_sigterm, run_main, train_command
from pipelines.config import Config, ConfigError, flatten, load_config
from pipelines.errors import UserError
from pipelines.tune.kt_private import current_role, make_tuner, serve_oracle, wait_for_chief
from pipelines.tune.space import best_config_dict, declared_space, narrowed_space, trial_config, training_search_space
from pipelines.tune.trials import SearchModel, SearchRuns, _write_json, backend, searched_values
from pipelines.typed import dump

# Keys a restarted search may change; any other difference from the saved config is an error.
RESUMABLE_CHANGES = ("tune.max_trials", "tune.overwrite", "tune.chief_timeout", "train.verbose")


# ----------------------------------------------------------------------------- the search directory


def search_directory(cfg: Config) -> str:
    return cfg.tune.directory or os.path.join("tuning", cfg.name)


def _differences(a: dict, b: dict) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if fa.get(k) != fb.get(k) and k not in RESUMABLE_CHANGES]


def _check_same_search(cfg: Config, directory: str):
    path = os.path.join(directory, "config.yaml")
    with open(path) as fh:
        saved = yaml.safe_load(fh)
    diff = _differences(saved, cfg.to_dict())
    if diff:
        raise UserError(
            f"{directory} holds a search of a different config ({path}); differing keys: {', '.join(diff)}. "
            "Run it with that config, set tune.overwrite=true to start afresh, or choose another tune.directory"
        )


def _prepare_directory(cfg: Config, directory: str):
    """Create, reopen (same config) or, with tune.overwrite, empty the search directory."""
    if cfg.tune.overwrite and os.path.isdir(directory):
        for entry in ("search", "config.yaml", SearchRuns.FILE, "best.yaml"):
            path = os.path.join(directory, entry)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "config.yaml")
    if os.path.isfile(path):
        _check_same_search(cfg, directory)
    with open(path + ".tmp", "w") as fh:
        fh.write(cfg.to_yaml())
    os.replace(path + ".tmp", path)


def _share_tuner_state(directory: str, tuner_id: str):
    """Let a search started alone be resumed as a chief and vice versa.

    KerasTuner reloads its oracle only when `<tuner_id>.json` exists; the
    tuner's own state is empty, so the file of either id serves both.
    """
    project = os.path.join(directory, "search")
    if os.path.isfile(os.path.join(project, "oracle.json")) and not os.path.isfile(os.path.join(project, f"{tuner_id}.json")):
        _write_json(os.path.join(project, f"{tuner_id}.json"), {})


# ----------------------------------------------------------------------------- the job


@dataclass
class TuneResult:
    role: str
    directory: str
    parent_run_id: str
    tracking_uri: str
    best_config_path: str | None = None
    best_trial_id: str | None = None
    best_score: float | None = None
    best_values: dict | None = None
    trials_completed: int = 0
    best_trial_number: int | None = None  # KerasTuner's console number of the best trial ("Trial 1 Complete")
    train_command: str | None = None  # what trains best.yaml, on the backend its trial ran on


def run(cfg: Config, callbacks=(), config_path: str | None = None) -> TuneResult:
    """Run (or continue, or join) the search of `cfg`; `callbacks` are extra Keras callbacks per trial."""
    import keras

    from pipelines import tracking

    check_backend_options(cfg, exports=False)
    role = current_role()
    hyperparameters = narrowed_space(cfg)
    trial_config_or_error(cfg, hyperparameters, "at its first values")
    directory = search_directory(cfg)

    splits = None
    if role != "chief":  # before the directory and the parent run: a bad source leaves neither behind
        print(f"Devices: {experiment.describe_devices()}")
        splits = experiment.load_data(cfg)
        print(f"Data: {splits.info.summary()}")
    hypermodel = SearchModel(cfg, splits)
    _check_every_choice(cfg, hyperparameters, hypermodel)  # before the directory and the parent run, too
    if role == "worker":  # after the chief, who creates the experiment
        wait_for_chief(directory, cfg.tune.chief_timeout)
        _check_same_search(cfg, directory)
        uri = tracking.setup(cfg.tracking.uri, cfg.experiment_name)
    else:
        uri = tracking.setup(cfg.tracking.uri, cfg.experiment_name)
        _prepare_directory(cfg, directory)
    runs = SearchRuns.join(directory) if role == "worker" else SearchRuns.open(cfg, directory, uri)

    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    with experiment.precision(cfg):
        try:
            if role != "worker":
                _share_tuner_state(directory, tuner_id)
            tuner = make_tuner(cfg, hypermodel, hyperparameters, directory, runs)
            if role == "chief":
                tuner.save()
                serve_oracle(tuner.oracle)
            else:
                with experiment.reading_splits_to_their_end():
                    tuner.search(epochs=cfg.tune.epochs, callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks],
                                 verbose=experiment.fit_verbosity(cfg))
            if role == "worker":
                print(f"Worker {tuner_id}: the chief ended the search")
                return TuneResult(role, directory, runs.parent_run_id, uri)
            result = _finish(cfg, tuner.oracle, runs, directory, uri, role, config_path)
        except KeyboardInterrupt:
            if role != "worker":
                runs.end("KILLED")
            raise
        except BaseException as exc:
            if role != "worker":
                runs.client.set_tag(runs.parent_run_id, "failure", f"{type(exc).__name__}: {exc}"[:4000])
                runs.end("FAILED")
            raise
    return result


def trial_config_or_error(cfg: Config, hp, where: str) -> None:
    try:
        trial_config(cfg, hp.copy())
    except ConfigError as e:
        raise ConfigError(f"tune: the search space {where} gives a bad config: {e}") from None


def _check_every_choice(cfg: Config, hyperparameters, hypermodel: SearchModel) -> None:
    """The search space at its first values and at each further value of each of `tune.choices` (the others at
    their first) gives a valid config and, where the data is loaded and the value is the model's, a model that
    builds (one value at a time: a bad combination of two still fails as a trial): a bad value is one
    error before anything is written, not a failed trial with a traceback in a search that ends with exit code 0
    (nor, at the first values, a search directory that refuses the corrected command as another config)."""
    import keras_tuner as kt
    from keras_tuner.engine.hyperparameters import Choice

    training = kt.HyperParameters()
    training_search_space(training)  # its names (batch size, augmentation) do not change the model: not built
    cases = [("at its first values", hyperparameters.copy(), True)]
    for h in hyperparameters.space:
        for value in h.values[1:] if isinstance(h, Choice) else ():
            hp = hyperparameters.copy()
            hp.values[h.name] = value
            cases.append((f"with tune.choices.{h.name}={value!r}", hp, h.name not in training.values))
    with experiment.precision(cfg):
        for where, hp, build in cases:
            trial_config_or_error(cfg, hp, where)
            if build and hypermodel.splits is not None:
                try:  # a bad tune.fixed or tune.choices value is the user's
                    hypermodel.build(hp.copy())
                except ValueError as e:
                    raise UserError(f"tune: model {cfg.model.name!r} does not build from the search space {where}: "
                                    f"{e}") from None
        if hypermodel.splits is not None:
            _check_own_choices(cfg, hyperparameters, hypermodel, training)


def _check_own_choices(cfg: Config, hyperparameters, hypermodel: SearchModel, training) -> None:
    """Each further value of a choice of the builder's own `search_space` that the config leaves open (not in
    tune.fixed, tune.choices or tune.ranges) builds for these images, the others at their first (a model built,
    not compiled): one that cannot, such as `downsample: aps` where a feature map turns odd, is one error that
    names the choices to keep, not failed trials with tracebacks in a search that still exits 0."""
    from keras_tuner.engine.hyperparameters import Choice

    bad, space = {}, declared_space(cfg.model.name).space  # bad: name -> {value: reason}
    for h in space:
        if not isinstance(h, Choice) or h.name in hyperparameters or h.name in training.values:
            continue
        for value in h.values[1:]:
            hp = hyperparameters.copy()
            hp.Fixed(h.name, value)
            try:
                experiment.build_model(hypermodel.trial_config(hp), hypermodel.splits.image_shape,
                                       hypermodel.splits.num_classes)
            except ValueError as e:
                bad.setdefault(h.name, {})[value] = str(e).splitlines()[0]
    if bad:
        fails = "; ".join(f"{n}={v!r}: {why}" for n, values in bad.items() for v, why in values.items())
        keep = " ".join(f"tune.choices.{h.name}=[{','.join(str(v) for v in h.values if v not in bad[h.name])}]"
                        for h in space if h.name in bad)
        shape = "x".join(str(d) for d in hypermodel.splits.image_shape)
        raise UserError(f"tune: model {cfg.model.name!r} does not build for these {shape} images at some values of "
                        f"its own search space ({fails}); leave them out: ARGS=\"{keep}\"")


def _finish(cfg: Config, oracle, runs: SearchRuns, directory: str, uri: str, role: str, config_path) -> TuneResult:
    """Write best.yaml from the oracle's best trial, record it on the parent run and end that run."""
    completed = [t for t in oracle.trials.values() if t.status == "COMPLETED"]
    if not completed:
        failed = [t for t in oracle.trials.values() if t.message]
        why = failed[-1].message.strip().splitlines()[-1] if failed else "none ran"
        raise RuntimeError(f"no trial of the search completed (last error: {why})")
    best = oracle.get_best_trials(1)[0]
    # KerasTuner's console says "Trial <n> Complete" with n counted from 1, where the id (the MLflow run's name)
    # is the count of trials before it, zero-padded (keras_tuner Oracle.create_trial, Display.on_trial_begin)
    number = int(best.trial_id) + 1 if str(best.trial_id).isdigit() else None
    shown = f"trial_{best.trial_id}" + (f" (KerasTuner's Trial {number})" if number is not None else "")
    best_path = os.path.join(directory, "best.yaml")
    trained_on = next((r.data.tags["backend"] for r in runs.trial_runs(best.trial_id) if "backend" in r.data.tags),
                      backend())
    command = train_command(best_path, trained_on)
    header = (
        f"# Best of {len(completed)} trials of `make tune CONFIG={config_path or cfg.name}` "
        f"({cfg.tune.algorithm}; {cfg.tune.objective} = {best.score:.4f} in {shown}),\n"
        f"# MLflow parent run {runs.parent_run_id}. Train it with its full budget"
        f"{'' if 'export.enabled=false' in command else ' and export it'}:\n"
        f"#   {command}\n"
    )
    with open(best_path + ".tmp", "w") as fh:
        fh.write(header + dump(best_config_dict(cfg, best.hyperparameters), sort_keys=False))
    os.replace(best_path + ".tmp", best_path)
    runs.record_best(best, cfg.tune.objective, len(completed), best_path)
    runs.end("FINISHED")
    return TuneResult(role, directory, runs.parent_run_id, uri, best_path, best.trial_id, float(best.score),
                      searched_values(best.hyperparameters), len(completed), number, command)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    return config_parser("make tune", __doc__.split("\n\n")[0], "tune.max_trials=20").parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    interrupt_on_sigterm()
    result = run(cfg, config_path=args.config)
    print()
    print(f"MLflow parent run: {result.parent_run_id}")
    print(f"Tracking store:    {result.tracking_uri}   (browse it with `make ui`)")
    print(f"Search directory:  {result.directory}")
    if result.best_config_path:
        number = f" (KerasTuner's Trial {result.best_trial_number})" if result.best_trial_number is not None else ""
        print(f"Best trial:        trial_{result.best_trial_id}{number}: {cfg.tune.objective} "
              f"{result.best_score:.4f} of {result.trials_completed} completed trials")
        print(f"Best values:       {result.best_values}")
        print(f"Best config:       {result.best_config_path}")
        print(f"Train it:          {result.train_command}")
    return 0


if __name__ == "__main__":
    exit_job(run_main(main, resumes="the search: finished trials are kept"))
