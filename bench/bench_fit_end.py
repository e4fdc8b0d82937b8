"""The wait at the end of `model.fit` with tf.data's autotuning on for the training split, against off (what
`data.pipeline` does for every split), in one run: the default `make train` (or `--config`'s; evaluation and
export off) in turns, each way `--rounds` times, each in its own process.

    PYTHONPATH=. .venv/bin/python bench/bench_fit_end.py [--rounds 2] [--config CONFIG] [-- key=value ...]

Per run: the seconds `model.fit` took, and its last epoch's training images/s (the progress line). On
TensorFlow 2.21 deleting an iterator waits for tf.data's autotuning thread to end its current sleep, which
doubles from 10 ms to 60 s; training's one iterator (`pipelines.experiment.fit_batches`) is deleted as `fit`
returns, so a fit whose epochs take 55 s can end up to tens of seconds after its last epoch, in some runs and
not others. Reports each way's runs and the ratio of the median fits (on / off).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import table  # noqa: E402

from pipelines import cli  # noqa: E402

DEFAULT_CONFIG = os.path.join(ROOT, cli.DEFAULT_CONFIG)  # the jobs' default, from the repository root

CHILD = r"""
import sys, time
import keras
import data.pipeline as dp
if sys.argv[1] == "on":  # autotuning back on for the training split
    import tensorflow as tf
    for name in ("make_dataset", "make_stream_dataset"):
        def wrapped(*a, _orig=getattr(dp, name), **k):
            ds = _orig(*a, **k)
            if not k.get("training"):
                return ds
            options = tf.data.Options()
            options.autotune.enabled = True
            return ds.with_options(options)
        setattr(dp, name, wrapped)
fit = keras.Model.fit
def timed(self, *a, **k):
    t = time.monotonic(); out = fit(self, *a, **k); print(f"FIT {time.monotonic() - t:.1f}", flush=True); return out
keras.Model.fit = timed
from pipelines import train
sys.exit(train.main(sys.argv[2:]))
"""


def one_run(way: str, overrides: list[str], config: str = DEFAULT_CONFIG) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--config", config,
                f"tracking.uri=sqlite:///{tmp}/m.db", f"train.runs_root={tmp}/runs", "export.enabled=false",
                "evaluate.enabled=false", *overrides]
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        out = subprocess.run([sys.executable, "-c", CHILD, way, *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True).stdout
    fit = float(re.findall(r"^FIT ([\d.]+)$", out, re.M)[-1])
    rate = float(re.findall(r"done in \S+ \((\d+) images/s\)", out)[-1])
    return fit, rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the config trained (e.g. images.yaml, with "
                   "data.source=folder:... among the overrides)")
    p.add_argument("overrides", nargs="*", help="config overrides for every run")
    a = p.parse_args()
    runs = {"autotuning on (training)": [], "off (every split)": []}
    for _ in range(a.rounds):
        for way, key in (("on", "autotuning on (training)"), ("off", "off (every split)")):
            runs[key].append(one_run(way, a.overrides, a.config))
            print(key, runs[key][-1], flush=True)
    rows = [{"way": k, "fit s": " / ".join(f"{f:.1f}" for f, _ in v),
             "last epoch images/s": " / ".join(f"{r:.0f}" for _, r in v),
             "median fit s": statistics.median(f for f, _ in v)} for k, v in runs.items()]
    ratio = rows[0]["median fit s"] / rows[1]["median fit s"]
    title = f"model.fit of {os.path.basename(a.config)}, {a.rounds} runs each in turns; median on / off {ratio:.2f}"
    print(table(rows, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
