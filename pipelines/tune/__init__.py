"""`make tune`: a KerasTuner search tracked in MLflow (see pipelines/tune/job.py for the whole story).

    space.py       the search space: the builder's and the training job's, narrowed by the config
    trials.py      the MLflow record of a search and a trial's model and fit
    kt_private.py  everything that leans on KerasTuner's private API (checked against 1.4.8)
    job.py         the search directory, the search, best.yaml, the command line

The names below are loaded on first use (PEP 562): importing KerasTuner and
TensorFlow takes seconds, and `python -m pipelines.tune --help` should not wait
for them.
"""

import importlib

_HOME = {
    **dict.fromkeys(("TuneResult", "main", "run", "search_directory"), "job"),
    **dict.fromkeys(("current_role", "make_tuner"), "kt_private"),
    **dict.fromkeys(("declared_space", "narrowed_space", "training_search_space", "trial_config"), "space"),
    **dict.fromkeys(("SearchModel", "SearchRuns"), "trials"),
}
__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f"pipelines.tune.{_HOME[name]}"), name)
    raise AttributeError(f"module 'pipelines.tune' has no attribute {name!r}")
