"""EuroSAT RGB: equivariant residual networks (gcnn D4, C8) against the same-size ResNet, one table per run.

    PYTHONPATH=. .venv/bin/python bench/bench_eurosat.py --data /tmp/eurosat [--regime low|full] [--epochs N]
    PYTHONPATH=. .venv/bin/python bench/bench_eurosat.py --speed-rounds 5 --models resnet,gcnn_d4_residual,...

The EuroSAT protocol of ../shared/data/README.md (27,000 Sentinel-2 tiles,
64x64 RGB, 10 classes; `--data` or EUROSAT_DIR: a folder with `train/`,
`valid/`, `test/` class folders, as ../shared/data/extract_eurosat.py writes
them; skips with a message when absent): train on `train/` (the low-data
regime: in each class the files sorted by name and every 10th kept, 1,890
images), report top-1 accuracy on `test/` (4,050) after the last epoch (no
model selection on `valid/`, whose accuracy is listed beside it).

Every model of a table is trained in the same run the same way: Adam with
cosine decay, batch 32, small reflect-padded shifts (10%, half of the
batches' images) for all; the symmetry augmentations per model as named:

- low data (~300k parameters each): `resnet` (basic blocks, CIFAR stem) with
  no symmetry augmentation; the same with flips + quarter turns (all 8
  elements of D4 drawn); the anti-aliased `resnet` (BlurPool) with flips +
  quarter turns; `gcnn` D4 residual (invariant to D4 by construction, no
  symmetry augmentation); `gcnn` C8 residual with left-right flips (it is
  rotation-invariant, not mirror-invariant).
- issue 30's wrappers around the low-data resnet: `invariant: canonicalize
  D4` trained end to end, and `orbit D4` put around the trained flips +
  quarter turns resnet at test time (its training figures are that model's).
- full data (up to 2.5M parameters): the same five at about 1.2M-1.4M (the
  resnet at 32-64-128-256, gcnn D4 at 12-24-48-96).

Per model: parameters, test and valid accuracy, training images/s (of the
whole fit, data pipeline included) and inference images/s (batches of 256).
Rows are written to `--out` (JSON) after each model, so a killed run keeps
the finished ones and `--resume` skips them. Each trained model's weights are
kept beside it (`<out>.weights/<model>.weights.h5`) before it is evaluated:
a failed evaluation does not cost the training, and the orbit row wraps the
weights of `resnet_flips_rot90` trained in the same run (same epochs and
seed) instead of training that resnet again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import rates_in_turns, table  # noqa: E402

FLIPS_ROT90 = {"horizontal": True, "vertical": True, "rotate90": True}
SHIFT = {"max": 0.1, "units": "fraction", "fill_mode": "reflect", "probability": 0.5}
RESNET = dict(blocks_per_stage=[1, 1, 1, 1], stem="cifar", antialias="none")
GCNN = dict(block="residual", kernel_size=3, blocks_per_stage=1, stem_pool=True, pooling="blur")


def models_at(resnet_widths, d4_widths, c8_widths) -> dict:
    """name -> (builder, params, flip augmentation) of one table, at its widths."""
    resnet = dict(RESNET, filters=resnet_widths)
    return {
        "resnet": ("resnet", resnet, None),
        "resnet_flips_rot90": ("resnet", resnet, FLIPS_ROT90),
        "resnet_blur_flips_rot90": ("resnet", dict(resnet, antialias="blur"), FLIPS_ROT90),
        "gcnn_d4_residual": ("gcnn", dict(GCNN, group="D4", filters=d4_widths), None),
        "gcnn_c8_residual": ("gcnn", dict(GCNN, group="C8", filters=c8_widths), {"horizontal": True}),
    }


ORBIT_OF = "resnet_flips_rot90"  # the trained model the orbit row wraps

TABLES = {
    "low": {
        **models_at([16, 32, 64, 128], [6, 11, 22, 44], [8, 16, 32, 64]),
        # issue 30's wrappers around the same resnet: canonicalize D4 trained end to end (no symmetry
        # augmentation: the wrapped model is D4-invariant), and orbit D4 around the flips + rot90 resnet at test
        # time only (its row is the trained resnet_flips_rot90 wrapped, weights kept: 8 backbone passes)
        "resnet_canonicalize_d4": ("resnet", dict(RESNET, filters=[16, 32, 64, 128],
                                                  invariant={"group": "D4", "method": "canonicalize"}), None),
        "resnet_flips_rot90_orbit_d4": ("resnet", dict(RESNET, filters=[16, 32, 64, 128]), FLIPS_ROT90),
    },
    "full": models_at([32, 64, 128, 256], [12, 24, 48, 96], [16, 32, 64, 128]),
}


def load_split(root: str, split: str, every: int = 1):
    """uint8 [N, 64, 64, 3] and int labels of one split; `every` keeps every n-th file of each class (by name)."""
    import tensorflow as tf

    folder = os.path.join(root, split)
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    xs, ys = [], []
    for i, c in enumerate(classes):
        files = sorted(os.listdir(os.path.join(folder, c)))[::every]
        for f in files:
            xs.append(tf.io.decode_image(tf.io.read_file(os.path.join(folder, c, f)), channels=3).numpy())
            ys.append(i)
    return np.stack(xs), np.asarray(ys, np.int64), classes


def eurosat_or_skip(path: str | None):
    path = path or os.environ.get("EUROSAT_DIR")
    if not path or not all(os.path.isdir(os.path.join(path, s)) for s in ("train", "valid", "test")):
        print(f"SKIP: no EuroSAT folder at {path!r} (give --data or EUROSAT_DIR: a folder with train/, valid/ and "
              f"test/ class folders; ../shared/data/README.md says how to write it)")
        raise SystemExit(0)
    return path


def train_dataset(x, y, batch, flips, seed):
    import tensorflow as tf

    from data.augment import augment_dataset, build_augmentation

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b))
    aug = build_augmentation(translation=SHIFT, flip=flips, seed=seed)
    return augment_dataset(ds, aug).prefetch(tf.data.AUTOTUNE)


def run(name, spec, train, valid, test, args):
    import keras

    import models

    builder, params, flips = spec
    keras.utils.set_random_seed(args.seed)
    model = models.build_model(builder, (64, 64, 3), 10, **params)
    steps = args.epochs * int(np.ceil(len(train[0]) / args.batch_size))
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, steps)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    weights = os.path.join(args.weights_dir, f"{name}.weights.h5")
    trained_as = os.path.join(args.weights_dir, f"{ORBIT_OF}.weights.h5") if name.endswith("_orbit_d4") else None
    reused = None
    if trained_as and os.path.exists(trained_as) and args.trained.get(ORBIT_OF) is not None:
        model.load_weights(trained_as)  # the same resnet, trained earlier in this run's table
        reused = args.trained[ORBIT_OF]
    else:
        t0 = time.perf_counter()
        model.fit(train_dataset(*train, args.batch_size, flips, args.seed), epochs=args.epochs,
                  verbose=args.verbose)
        fit_s = time.perf_counter() - t0
        os.makedirs(args.weights_dir, exist_ok=True)
        model.save_weights(weights)
    if name.endswith("_orbit_d4"):  # wrapped after training, weights kept (models/invariant.py)
        model = models.invariant(model, "D4")
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    acc = {}
    for split, (x, y) in (("valid", valid), ("test", test)):
        _, acc[split] = model.evaluate(x.astype("float32") / 255.0, y, batch_size=256, verbose=0)
    xt = test[0][:1024].astype("float32") / 255.0
    model.predict(xt[:256], batch_size=256, verbose=0)
    t1 = time.perf_counter()
    model.predict(xt, batch_size=256, verbose=0)
    row = {"model": name, "params": model.count_params(), "test acc %": 100.0 * acc["test"],
           "valid acc %": 100.0 * acc["valid"], "epochs": args.epochs,
           "train img/s": reused["train img/s"] if reused else args.epochs * len(train[0]) / fit_s,
           "infer img/s": len(xt) / (time.perf_counter() - t1), "augment": "flips" if flips else "shifts only"}
    if reused:
        row["trained"] = f"the weights of {ORBIT_OF}, wrapped"
    return row


def interleaved_speed(specs, names, args) -> list[dict]:
    """Steady-state training images/s of each model on random 64x64 RGB batches, timed in turns (A, B, ..., A,
    B, ...) so that a shared machine's load falls on all alike: the median of `args.speed_rounds` turns of
    `args.speed_steps` steps each; the cost of equivariance at equal parameters, without the data pipeline."""
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(0, 1, (args.batch_size * args.speed_steps, 64, 64, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    rates, params = rates_in_turns({n: specs[n][:2] for n in names}, x, y, args.batch_size, args.lr,
                                   args.speed_rounds, args.seed)
    return [{"model": n, "params": params[n], "train img/s": rates[n], f"speed vs {names[0]}": rates[n] / rates[names[0]]}
            for n in names]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="EuroSAT folder (train/ valid/ test/); default $EUROSAT_DIR")
    p.add_argument("--regime", choices=sorted(TABLES), default="low")
    p.add_argument("--models", default=None, help="comma-separated names of the table (default: all)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON rows (default bench/results/eurosat_<regime>_<seed>.json)")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --out and skip their models")
    p.add_argument("--verbose", type=int, default=2)
    p.add_argument("--speed-rounds", type=int, default=0,
                   help="only time the models' training steps in turns (this many rounds; no data needed)")
    p.add_argument("--speed-steps", type=int, default=10)
    a = p.parse_args()
    specs = TABLES[a.regime]
    names = a.models.split(",") if a.models else list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        p.error(f"unknown models {unknown}; the {a.regime} table has {list(specs)}")
    if a.speed_rounds:
        print(table(interleaved_speed(specs, names, a), f"training images/s in turns, {a.speed_rounds} rounds of "
                                                         f"{a.speed_steps} steps of {a.batch_size}"))
        return 0
    root = eurosat_or_skip(a.data)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"eurosat_{a.regime}_seed{a.seed}.json")
    train = load_split(root, "train", every=10 if a.regime == "low" else 1)[:2]
    valid, test = load_split(root, "valid")[:2], load_split(root, "test")[:2]
    print(f"EuroSAT {a.regime}: {len(train[0])} training, {len(valid[0])} valid, {len(test[0])} test images", flush=True)
    rows = json.load(open(out)) if a.resume and os.path.exists(out) else []
    a.weights_dir = os.path.splitext(out)[0] + ".weights"
    for name in names:
        if any(r["model"] == name for r in rows):
            continue
        # the orbit row may reuse the resnet's weights only if they were trained with these settings
        a.trained = {r["model"]: r for r in rows if r["epochs"] == a.epochs and "trained" not in r}
        rows.append(run(name, specs[name], train, valid, test, a))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as fh:
            json.dump(rows, fh, indent=1)
        print(table(rows[-1:]), flush=True)
    print(table(rows, f"EuroSAT {a.regime} data, {a.epochs} epochs, seed {a.seed}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
