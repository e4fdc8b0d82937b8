"""Epoch time with a new tf.data iterator per epoch (Keras' way for a finite dataset) against one iterator for the
whole fit (`pipelines.experiment.fit_batches`, what `make train` and `make tune` do), in one run.

    PYTHONPATH=. .venv/bin/python bench/bench_epoch_iterators.py [--epochs 6] [--step-s 0.1] [--rounds 2]

The training batches are the project's: 1,890 random 64x64 RGB images (EuroSAT's low-data size), shuffled,
batched by 32 and augmented by `data.augment` (the reflect-padded shifts of bench_eurosat.py), prefetched with
tf.data's autotuning on (the default). The model is trivial and each step is padded to `--step-s` seconds by
a callback that sleeps, so that an epoch lasts as long as a real model's (60 steps of 0.1 s: about 6 s; D8's
epochs on 2 CPU cores last about 44 s) while the CPU stays idle: what is measured is the time between the
steps, not compute. On TensorFlow 2.21 deleting an epoch's iterator can wait for tf.data's autotuning thread
to end its current sleep, which doubles from 10 ms to 60 s; it happens in some epochs and not others, so the
two ways alternate over `--rounds` rounds and every epoch's time is listed. Reports each way's median and
longest epoch and the ratio of their total times (per epoch / one iterator).
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


def epoch_times(way: str, epochs: int, step_s: float, seed: int) -> list[float]:
    import keras

    from bench_eurosat import train_dataset
    from pipelines.experiment import fit_batches

    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 256, (1890, 64, 64, 3), dtype=np.uint8), rng.integers(0, 10, 1890)
    ds, steps = train_dataset(x, y, 32, None, seed), -(-len(x) // 32)
    model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    times = []

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--step-s", type=float, default=0.1, help="seconds each training step is padded to")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
