"""Benchmark: the baseline CNN on real MNIST through the project's training job.

    .venv/bin/python bench/bench_baseline_mnist.py [--epochs 10]

Trains `baseline_cnn` with `pipelines.train.run` (the code behind `make train`)
on `npz:../shared/data/mnist-partial.npz` (22,699 training digits, the 10,000
test digits), goal: at least 99.0% test accuracy in at most 10 epochs. Prints
the test accuracy and training images per second, and, as the reference
measured in the same run, the images per second of a bare `model.fit` on
in-memory NumPy arrays with the same model and batch size (the ratio shows what
the tf.data pipeline and tracking cost). Exits 0 with a message when the MNIST
file is absent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from common import MNIST_NPZ, mnist_or_skip, table

import keras


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    mnist = mnist_or_skip()

    from models import build_model
    from pipelines.config import config_from_dict
    from pipelines.train import run

    tmp = tempfile.mkdtemp(prefix="bench-baseline-")
    cfg = config_from_dict(
        {"name": "bench_baseline_mnist"},
        [
            f"data.source=npz:{MNIST_NPZ}",
            f"data.batch_size={args.batch_size}",
            f"train.epochs={args.epochs}",
            "train.verbose=2",
            f"train.runs_root={tmp}/runs",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            f"export.dir={tmp}/exports",
            "evaluate.enabled=false",
        ],
    )
    timer = _EpochTimer()
    result = run(cfg, callbacks=[timer])
    n_train = int(round(len(mnist["x_train"]) * (1 - cfg.data.validation_fraction)))
    # Epoch 1 includes tracing; the rate is over the later epochs.
    steady = timer.seconds[1:] or timer.seconds
    job_rate = n_train / (sum(steady) / len(steady))

    # Reference in the same run: bare model.fit on NumPy arrays, same model, 2 epochs.
    x = mnist["x_train"][:n_train].astype("float32") / 255.0
    y = mnist["y_train"][:n_train]
    model = build_model("baseline_cnn", x.shape[1:], 10)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    ref = _EpochTimer()
    model.fit(x, y, batch_size=args.batch_size, epochs=2, verbose=0, callbacks=[ref])
    ref_rate = n_train / ref.seconds[-1]

    rows = [{
        "test accuracy": f"{100 * result.test_accuracy:.2f}%",
        "epochs": args.epochs,
        "train images/s (make train job)": round(job_rate),
        "train images/s (bare fit, reference)": round(ref_rate),
        "ratio": round(job_rate / ref_rate, 2),
        "goal >= 99.0%": "met" if result.test_accuracy >= 0.99 else "NOT met",
    }]
    print(table(rows, "baseline_cnn on MNIST (npz:../shared/data/mnist-partial.npz)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
