"""Inference speed of gcnn against its stock-layer conversion (`models.to_plain`), as ratios in the same run.

The gcnn builder's default (C8, 4-8-16 channels, 5x5 filters, 28x28x1 input),
its weights as built (speed does not depend on their values), and three forms
of the same network:

- `gcnn`: the model itself (group layers: each call rebuilds the stacked
  kernel from the basis coefficients, reshapes, adds the bias, and
  normalises in a separate layer);
- `plain`: `to_plain(model)`: one stock Conv2D per group convolution, the
  batch norm and ReLU folded into it;
- `plain, batch norm kept`: `to_plain(model, fold_batch_norm=False)`.

Each is timed as Keras predicts (`predict_on_batch`, the backend's compiled
predict step) and, on TensorFlow, as its exported SavedModel answers
(`model.export`, `serve`: what a server runs). Batches of 256 random images,
the forms timed in turns (median of `--reps` batches each; a shared machine's
load falls on all alike); images/s and the ratio against `gcnn`. The outputs
are checked equal first (max |difference| printed).

    PYTHONPATH=. .venv/bin/python bench/bench_plain.py [--batch 256 --reps 30] [--pooling avg]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import table  # noqa: E402  (puts the project root on sys.path)

import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402


def time_in_turns(fns: dict, x, reps: int) -> dict:
    """Median seconds per batch of each function, the functions called in turns."""
    for f in fns.values():
        f(x), f(x)  # trace, compile, warm up
    times = {n: [] for n in fns}
    for _ in range(reps):
        for n, f in fns.items():
            t0 = time.perf_counter()
            f(x)
            times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(t)) for n, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--pooling", default="avg", help="the gcnn builder's pooling (avg, max, blur)")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = models.build_model("gcnn", (28, 28, 1), 10, pooling=args.pooling)
    forms = {"gcnn": model, "plain": models.to_plain(model),
             "plain, batch norm kept": models.to_plain(model, fold_batch_norm=False)}
    x = np.random.default_rng(0).uniform(0, 1, (args.batch, 28, 28, 1)).astype("float32")
    reference = model.predict_on_batch(x)
    for name, m in forms.items():
        diff = np.abs(m.predict_on_batch(x) - reference).max()
        print(f"{name}: {len(m.layers)} layers, max |output - gcnn's| {diff:.2e} "
              f"(max |gcnn's output| {np.abs(reference).max():.3g})")

    fns = {f"{n} (Keras predict)": m.predict_on_batch for n, m in forms.items()}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tmp = tempfile.TemporaryDirectory(prefix="bench_plain_")
        loaded = []  # held: a loaded SavedModel's variables live as long as the object
        for n, m in forms.items():
            path = os.path.join(tmp.name, n.replace(" ", "_").replace(",", ""))
            m.export(path, verbose=False)
            loaded.append(tf.saved_model.load(path))
            fns[f"{n} (SavedModel)"] = lambda a, saved=loaded[-1]: saved.serve(tf.constant(a)).numpy()
    seconds = time_in_turns(fns, x, args.reps)
    rows = []
    for n, s in seconds.items():
        base = seconds[n.replace(n.split(" (")[0], "gcnn")]
        rows.append({"model (path)": n, "images/s": args.batch / s, "ms / batch": 1000 * s, "speed vs gcnn": base / s})
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")
    print(table(rows, f"Inference, gcnn default (pooling {args.pooling}), batch {args.batch} of 28x28x1, "
                      f"{keras.backend.backend()} (TF_ENABLE_ONEDNN_OPTS={onednn}), median of {args.reps} batches"))


if __name__ == "__main__":
    main()
