"""Inference cost of `canonicalize` C8 around the plain MNIST CNN, for canonicalizers of several sizes.

The issue's goal is at most 1.5x the plain CNN's inference cost. The
canonicalizer's default (8 channels per rotation, 5x5 filters, the input
average-pooled by 2) is sized for real-image backbones; around bench_invariant's
38k CNN on 28x28 digits its group convolutions cost more than the CNN itself.
This times the CNN and the wrapped CNN with each canonicalizer in turns
(`--rounds` rounds over 4,096 random digits, batches of 256, each batch one
call of the compiled inference function; the median of each; a shared
machine's load falls on all alike) and prints images/s and the cost against
the CNN. Not `model.predict`: on this machine (session 38) it timed every
canonicalized model at the same 3,150 images/s, the default canonicalizer and
one with a quarter of its channels alike, a floor that hid their differences;
a compiled call per batch gives each model its own figure.

    PYTHONPATH=. .venv/bin/python bench/bench_canonicalizer_cost.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_rotated_mnist import CNN_PARAMS  # noqa: E402
from common import table  # noqa: E402  (puts the project root on sys.path)

import numpy as np  # noqa: E402

import models  # noqa: E402

CANONICALIZERS = {  # name -> the `invariant` options beside group C8, method canonicalize
    "default: 8 ch, 5x5, /2": {},
    "8 ch, 3x3, /2": dict(kernel_size=3),
    "4 ch, 3x3, /2 (bench_invariant's)": dict(filters=4, kernel_size=3),
    "4 ch, 3x3, /2, continuous": dict(filters=4, kernel_size=3, relaxation="continuous"),
    "4 ch, 5x5, /2, continuous": dict(filters=4, kernel_size=5, relaxation="continuous"),
    "6 ch, 5x5, /2, continuous": dict(filters=6, kernel_size=5, relaxation="continuous"),
    "8 ch, 3x3, /4": dict(kernel_size=3, downscale=4),
    "4 ch, 3x3, /4": dict(filters=4, kernel_size=3, downscale=4),
    "8 ch, 3x3, /4, continuous": dict(kernel_size=3, downscale=4, relaxation="continuous"),
    "6 ch, 5x5, /4, continuous": dict(filters=6, kernel_size=5, downscale=4, relaxation="continuous"),
    "8 ch, 5x5, /4, continuous": dict(kernel_size=5, downscale=4, relaxation="continuous"),
    # network: polar, on the full-size digit (14 radii by 32 angles), 4 dilated 1D convolutions of 5 taps
    **{f"polar, {w} ch, 5 taps, /1, continuous": dict(network="polar", filters=w, kernel_size=5, downscale=1,
                                                      relaxation="continuous") for w in (32, 64, 128)},
}


def inference(model, x, batch_size: int = 256):
    """A function that runs `model` at inference over x, batch by batch, each batch one compiled call
    (TensorFlow: a tf.function; other backends: `model.predict`)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda: model.predict(x, batch_size=batch_size, verbose=0)
    import tensorflow as tf

    call = tf.function(lambda b: model(b, training=False))
    batches = [tf.constant(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]

    def run():
        for b in batches:
            call(b).numpy()

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    a = p.parse_args()
    built = {"plain CNN": models.build_model("baseline_cnn", (28, 28, 1), 10, **CNN_PARAMS)}
    for name, opts in CANONICALIZERS.items():
        inv = {"group": "C8", "method": "canonicalize", **opts}
        built[name] = models.build_model("baseline_cnn", (28, 28, 1), 10, **CNN_PARAMS, invariant=inv)
    x = np.random.default_rng(0).uniform(0, 1, (4096, 28, 28, 1)).astype("float32")
    runs = {n: inference(m, x) for n, m in built.items()}
    for run in runs.values():
        run()  # tracing
    rates: dict[str, list[float]] = {n: [] for n in built}
    for _ in range(a.rounds):
        for n, run in runs.items():
            t0 = time.perf_counter()
            run()
            rates[n].append(len(x) / (time.perf_counter() - t0))
    base = float(np.median(rates["plain CNN"]))
    rows = [{"model": n, "params": m.count_params(), "infer img/s": float(np.median(rates[n])),
             "cost vs CNN": base / float(np.median(rates[n]))} for n, m in built.items()]
    print(table(rows, f"canonicalize C8 around the {rows[0]['params']:,}-parameter CNN: inference, "
                      f"{a.rounds} rounds in turns"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
