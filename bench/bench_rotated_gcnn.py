"""Rotated MNIST: regular group CNNs (gcnn, C4 / C8 / C16) against hnet and a CNN, at ~35k and ~130k parameters.

The protocol of ../shared/data/README.md (x_train[:12000] and x_test, each
rotated once by a uniform angle), trained as bench_rotated_mnist.py trains
(Adam, cosine decay to 0 over the run, batch 32, lr 0.005, one seed): the
equivariant models on the rotated digits as they are, the CNN with rotation
augmentation (keras.layers.RandomRotation(1.0), training split only).
Prints per model: parameters, test error, training time, training
images/s (epochs x training images / fit time, first-epoch tracing
included) and the same after the first epoch (without it), and the ratios
against hnet measured in the same run (the machines are shared and noisy:
compare ratios).

The issue's full protocol is 30 epochs of 12k digits; measured on 2 CPU cores:
7 minutes for gcnn C4 at ~35k, 16 for C8, 31 for C16 and for hnet, 5 for the
CNN, 14 for C4 at ~130k, and about 1.4 hours each for C8 and C16 at ~130k;
--models runs a subset:

    PYTHONPATH=. .venv/bin/python bench/bench_rotated_gcnn.py --epochs 30 --results bench/results/rotated_gcnn_30.json

`--results FILE` keeps each finished model's row (keyed by the model and every
setting that changes its figures) and a rerun skips the models already there,
so the full protocol can be completed over several sittings, one model at a time.
An unfinished model is kept too, after every epoch (Keras' BackupAndRestore, in
FILE.partial/, ignored by git): a rerun resumes it from its last finished epoch,
so a model longer than one sitting (C16 at ~130k) is trained over several.

On another Keras backend (KERAS_BACKEND=jax or torch; TensorFlow is then not
needed) the models train on the arrays with Keras' own shuffling instead of
tf.data, the models with rotation augmentation are refused, and each row and
its key name the backend and device. The GPU rows of the README came from one
H200 with JAX (no TensorFlow there; MNIST_NPZ pointed at a copy of the file):

    KERAS_BACKEND=jax PYTHONPATH=. python bench/bench_rotated_gcnn.py --epochs 30 --models gcnn_c16_130k,hnet_o2_dense,hnet,gcnn_c8_130k --results bench/results/rotated_gcnn_30_h200_jax.json

A short check of the script (a subset, a few minutes per model):

    PYTHONPATH=. .venv/bin/python bench/bench_rotated_gcnn.py --epochs 2 --train-size 3000 --test-size 2000
    PYTHONPATH=. .venv/bin/python bench/bench_rotated_gcnn.py --models hnet,gcnn_c8_35k --epochs 1

Training speed alone, steady state, the models timed in turns so that a
shared machine's changing load falls on all alike (no data file needed):

    PYTHONPATH=. .venv/bin/python bench/bench_rotated_gcnn.py --speed-rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

from bench_rotated_mnist import CNN_PARAMS, dataset  # noqa: E402
from common import device_name, mnist_or_skip, rates_in_turns, rotated_mnist, table  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402

# name -> (registered model, builder params, rotation augmentation)
VARIANTS = {
    "hnet": ("hnet", {}, False),  # ~34k
    # orders {0, 1, 2}, dense readout, glorot_uniform radii: the best of bench_hnet_probe.py's short probes
    "hnet_o2_dense": ("hnet", {"max_order": 2, "filters": [6, 13, 26], "readout": "dense",
                               "radial_initializer": "glorot_uniform"}, False),  # ~33k, as wide as hnet
    "gcnn_c4_35k": ("gcnn", {"group_order": 4, "filters": [3, 7, 13]}, False),  # pixel basis, ~34k
    "gcnn_c8_35k": ("gcnn", {"group_order": 8, "filters": [4, 8, 16]}, False),  # the builder's default, ~36k
    "gcnn_c16_35k": ("gcnn", {"group_order": 16, "filters": [3, 6, 11]}, False),  # ~36k
    "gcnn_c4_130k": ("gcnn", {"group_order": 4, "filters": [6, 13, 26]}, False),  # ~130k
    "gcnn_c8_130k": ("gcnn", {"group_order": 8, "filters": [8, 16, 30]}, False),  # ~132k
    "gcnn_c16_130k": ("gcnn", {"group_order": 16, "filters": [5, 11, 22]}, False),  # ~134k
    "cnn_rot_aug": ("baseline_cnn", CNN_PARAMS, True),  # ~38k
    # The equivariant models trained with rotation augmentation too (angles between the group's own).
    "gcnn_c4_35k_aug": ("gcnn", {"group_order": 4, "filters": [3, 7, 13]}, True),
    "gcnn_c8_35k_aug": ("gcnn", {"group_order": 8, "filters": [4, 8, 16]}, True),
}


class EpochTimes(keras.callbacks.Callback):
    """Each epoch's seconds, and the training seconds so far; with `state_path`, both are kept in a file after
    every epoch (beside BackupAndRestore's checkpoint) so that a resumed run adds to them rather than restarting
    the clock. The epoch each sitting started at (its time includes tracing and compilation) is listed."""

    def __init__(self, state_path=None):
        super().__init__()
        self.state_path = state_path
        self.state = {"epoch times": [], "sitting starts": [], "fit s": 0.0}
        if state_path and os.path.exists(state_path):
            with open(state_path) as f:
                self.state = json.load(f)

    def on_train_begin(self, logs=None):
        self.fit_t0 = time.perf_counter()
        self.fit_s0 = self.state["fit s"]
        self.first = True

    def on_epoch_begin(self, epoch, logs=None):
        if self.first:  # `epoch` counts from where BackupAndRestore resumed, not from this file's length
            self.first = False
            lost = self.state["epoch times"][epoch:]  # timed, but killed before their weights were kept
            del self.state["epoch times"][epoch:]
            self.fit_s0 -= sum(lost)
            self.state["sitting starts"].append(epoch)
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.state["epoch times"].append(time.perf_counter() - self.t0)
        self.state["fit s"] = self.fit_s0 + time.perf_counter() - self.fit_t0
        if self.state_path:
            save_results(self.state_path, self.state)

    def on_train_end(self, logs=None):
        self.state["fit s"] = self.fit_s0 + time.perf_counter() - self.fit_t0

    @property
    def resumed_after(self) -> list:
        """The epochs later sittings resumed at (empty for a fit of one sitting)."""
        return [i for i in self.state["sitting starts"] if i > 0]


def resumable_fit_callbacks(backup_dir=None):
    """(the epoch clock, fit's callbacks): with `backup_dir`, Keras' BackupAndRestore before the clock, kept after
    fit (delete_checkpoint=False) so that a run killed during the evaluation loses no training."""
    clock = EpochTimes(os.path.join(backup_dir, "times.json") if backup_dir else None)
    if not backup_dir:
        return clock, [clock]
    return clock, [keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False), clock]


def run(name, model_name, params, augment, train, test, args, backup_dir=None):
    """bench_rotated_mnist's training (same optimiser, schedule and data), with per-epoch times.

    With `backup_dir`, Keras' BackupAndRestore keeps the weights and the optimiser's state (its step, so the
    cosine schedule continues) after every epoch, and a rerun resumes from the last finished epoch: a model
    that needs more hours than one sitting has is trained over several. A resumed run's later epochs draw
    their shuffles afresh (the data order is not that of an uninterrupted run); the row lists the epochs it
    resumed at."""
    keras.utils.set_random_seed(args.seed)
    model = models.build_model(model_name, (28, 28, 1), 10, **params)
    steps = args.epochs * int(np.ceil(len(train[0]) / args.batch_size))
    model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, steps)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    epochs, callbacks = resumable_fit_callbacks(backup_dir)
    if keras.backend.backend() == "tensorflow":
        data = dict(x=dataset(*train, args.batch_size, augment, args.seed))
    else:  # no tf.data: Keras shuffles the arrays each epoch (main() refuses augmented models here)
        data = dict(x=train[0], y=train[1], batch_size=args.batch_size, shuffle=True)
    model.fit(**data, epochs=args.epochs, verbose=args.verbose, callbacks=callbacks)
    _, acc = model.evaluate(test[0], test[1], batch_size=256, verbose=0)
    st = epochs.state
    # Without the first epoch of each sitting (tracing and compilation).
    later = [s for i, s in enumerate(st["epoch times"]) if i not in st["sitting starts"]]
    row = {
        "model": name,
        "params": model.count_params(),
        "test error %": 100.0 * (1.0 - acc),
        "train s": st["fit s"],
        "train img/s": args.epochs * len(train[0]) / st["fit s"],
        "img/s after epoch 1": len(later) * len(train[0]) / sum(later) if later else float("nan"),
    }
    if keras.backend.backend() != "tensorflow":
        row["backend, device"] = f"{keras.backend.backend()}, {device_name()}"
    if epochs.resumed_after:
        row["resumed after epochs"] = epochs.resumed_after
    return row


def interleaved_speed(names, args):
    """Steady-state training images/s of each model, measured in turns (model A, B, ..., A, B, ...) so that
    the load of a shared machine falls on all of them alike; the median of `args.speed_rounds` turns."""
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(0, 1, (args.batch_size * args.speed_steps, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, len(x))
    return rates_in_turns({n: VARIANTS[n][:2] for n in names}, x, y, args.batch_size, args.lr, args.speed_rounds,
                          args.seed)[0]


def result_key(name, args) -> str:
    """What a stored row must match to be reused: the model and every setting that changes its figures
    (the backend and device too, where they are not TensorFlow's: the keys of TensorFlow rows predate them)."""
    model, params, augment = VARIANTS[name]
    key = [name, model, params, augment, args.epochs, args.train_size, args.test_size, args.batch_size, args.lr,
           args.seed]
    if keras.backend.backend() != "tensorflow":
        key.append(f"{keras.backend.backend()}, {device_name()}")
    return json.dumps(key, sort_keys=True)


def backup_dir(results_path, key) -> str:
    """Where an unfinished model's checkpoint lives: beside the results file, one folder per result key (so that
    a run with other settings never resumes from it), ignored by git."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return os.path.join(results_path + ".partial", f"{json.loads(key)[0]}-{digest}")


def load_results(path) -> dict:
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def save_results(path, done: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(done, f, indent=1)  # rows keep their column order
    os.replace(tmp, path)  # a run killed mid-write keeps the previous file


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {', '.join(VARIANTS)} (hnet is the reference of the ratios)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-size", type=int, default=12000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2)
    p.add_argument("--results", default=None,
                   help="JSON file of finished models' rows: read to skip them, written after each model")
    p.add_argument("--speed-rounds", type=int, default=0,
                   help="only measure steady-state training images/s, models in turns, median of this many turns")
    p.add_argument("--speed-steps", type=int, default=10, help="training steps per model per turn (--speed-rounds)")
    args = p.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        p.error(f"--models: unknown {unknown or names}; choose from {', '.join(VARIANTS)}")

    if args.speed_rounds > 0:
        speed = interleaved_speed(names, args)
        ref = speed.get("hnet")
        rows = [{"model": n, "train img/s": v, **({"img/s / hnet": v / ref} if ref else {})} for n, v in speed.items()]
        print(table(rows, f"steady-state training images/s (batch {args.batch_size}, median of {args.speed_rounds} "
                          f"turns of {args.speed_steps} steps, models in turns)"))
        return

    if keras.backend.backend() != "tensorflow":
        augmented = [n for n in names if VARIANTS[n][2]]
        if augmented:
            p.error(f"--models: {augmented} train with tf.data rotation augmentation, which needs "
                    f"KERAS_BACKEND=tensorflow (this is {keras.backend.backend()})")
    mnist = mnist_or_skip()
    (xr, yr), (xt, yt) = rotated_mnist(mnist, n_train=args.train_size)
    scale = lambda a: a.astype("float32") / 255.0
    train = (scale(xr), yr)
    test = (scale(xt[: args.test_size]), yt[: args.test_size])
    print(f"epochs={args.epochs} train={len(train[0])} test={len(test[0])} batch={args.batch_size} lr={args.lr}")

    done = load_results(args.results)
    rows = []
    for name in names:
        model, params, augment = VARIANTS[name]
        key = result_key(name, args)
        if key in done:
            row = done[key]
            print(f"{name}: from {args.results} (measured {row.get('measured', '?')})", flush=True)
        else:
            backup = backup_dir(args.results, key) if args.results else None
            row = run(name, model, params, augment, train, test, args, backup)
            row["measured"] = time.strftime("%Y-%m-%d %H:%M")
            if args.results:
                done[key] = row
                save_results(args.results, done)
                shutil.rmtree(backup)  # the row is kept: its checkpoint is no longer needed
        rows.append(row)
        print(f"{name}: {row['params']} params, test error {row['test error %']:.2f}%, "
              f"{row['train img/s']:.0f} training images/s", flush=True)
    ref = next((r for r in rows if r["model"] == "hnet"), None)
    for r in rows:
        if ref is not None:
            r["error / hnet"] = r["test error %"] / max(ref["test error %"], 1e-9)
            r["img/s / hnet"] = r["train img/s"] / ref["train img/s"]
    print(table(rows, f"rotated MNIST, {args.epochs} epochs of {len(train[0])} rotated digits, "
                      f"{len(test[0])} rotated test digits"))


if __name__ == "__main__":
    main()
