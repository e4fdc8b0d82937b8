"""Epoch time with a new tf.data iterator per epoch (Keras' way for a finite dataset) against one iterator for the
whole fit (`pipelines.experiment.fit_batches`, what `make train` and `make tune` do), in one run; and the time of
`model.evaluate` passes with tf.data's autotuning on against off (`data.pipeline.without_autotuning`, what the
evaluation splits use).

    PYTHONPATH=. .venv/bin/python bench/bench_epoch_iterators.py [--epochs 6] [--step-s 0.1] [--rounds 2]
    PYTHONPATH=. .venv/bin/python bench/bench_epoch_iterators.py --passes-of <image folder> [--rounds 3]

The second only times passes over the folder's validation split (`make_stream_dataset`, 32 a batch, after one
pass that fills the cache) with autotuning on and off, in turns: what autotuning off costs an evaluation pass.

The training batches are the project's: 1,890 random 64x64 RGB images (EuroSAT's low-data size), shuffled,
batched by 32 and augmented by `data.augment` (the reflect-padded shifts of bench_eurosat.py), prefetched with
tf.data's autotuning on (the default). The model is trivial and each step is padded to `--step-s` seconds by
a callback that sleeps, so that an epoch lasts as long as a real model's (60 steps of 0.1 s: about 6 s; D8's
epochs on 2 CPU cores last about 44 s) while the CPU stays idle: what is measured is the time between the
steps, not compute. On TensorFlow 2.21 deleting an epoch's iterator can wait for tf.data's autotuning thread
to end its current sleep, which doubles from 10 ms to 60 s; it happens in some epochs and not others, so the
two ways alternate over `--rounds` rounds and every epoch's time is listed. Reports each way's median and
longest epoch and the ratio of their total times (per epoch / one iterator). The evaluation passes: 640 random
8x8 images in batches of 32 (mapped, prefetched), each step padded to `--eval-step-s` seconds (20 steps of 0.15 s:
about 3 s a call), `--epochs` calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import table  # noqa: E402


def trivial_model(shape):
    import keras

    model = keras.Sequential([keras.Input(shape), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def with_autotuning(ds):
    """ds with tf.data's autotuning on again (options set later win): the evaluation splits as they were."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = True
    return ds.with_options(options)


def epoch_times(way: str, epochs: int, step_s: float, seed: int) -> list[float]:
    import keras

    from bench_eurosat import train_dataset
    from pipelines.experiment import fit_batches

    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 256, (1890, 64, 64, 3), dtype=np.uint8), rng.integers(0, 10, 1890)
    ds, steps = train_dataset(x, y, 32, None, seed), -(-len(x) // 32)
    model, times = trivial_model((64, 64, 3)), []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            time.sleep(step_s)

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    data = fit_batches(ds, steps) if way == "one iterator" else {"x": ds}
    model.fit(**data, epochs=epochs, verbose=0, callbacks=[Clock()])
    return times


def evaluate_times(autotune: bool, calls: int, step_s: float, seed: int) -> list[float]:
    import keras

    from data.pipeline import make_dataset

    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 256, (640, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 640)
    ds = make_dataset(x, y, 32)  # autotuning off (the evaluation splits' way)
    ds, model = with_autotuning(ds) if autotune else ds, trivial_model((8, 8, 3))

    class Pad(keras.callbacks.Callback):
        def on_test_batch_end(self, batch, logs=None):
            time.sleep(step_s)

    times = []
    for _ in range(calls):
        t = time.perf_counter()
        model.evaluate(ds, verbose=0, callbacks=[Pad()])
        times.append(time.perf_counter() - t)
    return times


def pass_rates(folder: str, rounds: int) -> list[dict]:
    from data.pipeline import make_stream_dataset
    from data.streaming import open_source

    splits = open_source(f"folder:{folder}")
    print(splits.info.summary(), flush=True)
    rates = {"autotuning on": [], "off (without_autotuning)": []}

    def rate(on: bool) -> float:
        ds = make_stream_dataset(splits.validation, 32)  # autotuning off (the evaluation splits' way)
        ds = with_autotuning(ds) if on else ds
        t, n = time.perf_counter(), sum(int(b[0].shape[0]) for b in ds)
        return n / (time.perf_counter() - t)

    rate(False)  # fills the cache
    for _ in range(rounds):
        for w in rates:
            rates[w].append(rate(w == "autotuning on"))
    return [{"validation passes": w, "passes": len(r), "images/s min": min(r), "images/s max": max(r)}
            for w, r in rates.items()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--step-s", type=float, default=0.1, help="seconds each training step is padded to")
    p.add_argument("--eval-step-s", type=float, default=0.15, help="seconds each evaluation step is padded to")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--passes-of", default=None, help="an image folder: only time passes over its validation split")
    a = p.parse_args()
    if a.passes_of:
        print(table(pass_rates(a.passes_of, a.rounds), f"passes over {a.passes_of}'s validation split, in turns"))
        return 0
    ways = ("per epoch", "one iterator")
    times = {w: [] for w in ways}
    for r in range(a.rounds):
        for w in ways:
            t = epoch_times(w, a.epochs, a.step_s, seed=r)
            print(f"round {r}, {w}: " + " ".join(f"{s:.1f}" for s in t) + " s", flush=True)
            times[w] += t
    rows = [{"iterators": w, "epochs": len(times[w]), "median epoch s": float(np.median(times[w])),
             "longest epoch s": max(times[w]), "total s": sum(times[w])} for w in ways]
    rows[0]["total vs one iterator"] = rows[0]["total s"] / rows[1]["total s"]
    print(table(rows, f"{a.epochs} epochs of 60 steps padded to {a.step_s} s, {a.rounds} rounds in turns"))
    ways = {"autotuning on": True, "off (without_autotuning)": False}
    times = {w: [] for w in ways}
    for r in range(a.rounds):
        for w, on in ways.items():
            t = evaluate_times(on, a.epochs, a.eval_step_s, seed=r)
            print(f"round {r}, evaluate, {w}: " + " ".join(f"{s:.1f}" for s in t) + " s", flush=True)
            times[w] += t
    rows = [{"evaluation datasets": w, "calls": len(t), "median call s": float(np.median(t)), "longest call s": max(t),
             "total s": sum(t)} for w, t in times.items()]
    rows[0]["total vs off"] = rows[0]["total s"] / rows[1]["total s"]
    print(table(rows, f"model.evaluate: {a.epochs} calls of 20 steps padded to {a.eval_step_s} s, {a.rounds} rounds"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
