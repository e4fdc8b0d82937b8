"""`make tune`: a KerasTuner search tracked in MLflow (see pipelines/tune/job.py for the whole story).

    space.py       the search space: the builder's and the training job's, narrowed by the config
    trials.py      the MLflow record of a search and a trial's model and fit
    kt_private.py  everything that leans on KerasTuner's private API (checked against 1.4.8)
    job.py         the search directory, the search, best.yaml, the command line
"""

from pipelines.tune.job import TuneResult, main, run, search_directory  # noqa: F401
from pipelines.tune.kt_private import current_role, make_tuner  # noqa: F401
from pipelines.tune.space import declared_space, narrowed_space, training_search_space, trial_config  # noqa: F401
from pipelines.tune.trials import SearchModel, SearchRuns  # noqa: F401
