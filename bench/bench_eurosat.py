"""EuroSAT RGB: equivariant residual networks (gcnn D4, C8) against the same-size ResNet, one table per run.

    PYTHONPATH=. .venv/bin/python bench/bench_eurosat.py --data /tmp/eurosat [--regime low|full] [--epochs N]
    PYTHONPATH=. .venv/bin/python bench/bench_eurosat.py --speed-rounds 5 --models resnet,gcnn_d4_residual,...
    KERAS_BACKEND=jax PYTHONPATH=. python bench/bench_eurosat.py --data /tmp/eurosat --regime full --lr 0.003 \
        --models resnet_flips_rot90,gcnn_c8_residual,gcnn_d4_residual --budget-s 145 --epochs 300 --batch-size 128

The last is the GPU run of docs/results.md, on a machine without TensorFlow (JAX there): `--input arrays` is
then the default (Pillow decodes the tiles; the augmentation below in NumPy, in a Keras PyDataset, with whole-pixel
shifts), and `--budget-s` trains every model for the same time rather than the same epochs.

The EuroSAT protocol of ../shared/data/README.md (27,000 Sentinel-2 tiles,
64x64 RGB, 10 classes; `--data` or EUROSAT_DIR: a folder with `train/`,
`valid/`, `test/` class folders, as ../shared/data/extract_eurosat.py writes
them; skips with a message when absent): train on `train/` (the low-data
regime: in each class the files sorted by name and every 10th kept, 1,890
images), report top-1 accuracy on `test/` (4,050) after the last epoch (no
model selection on `valid/`, whose accuracy is listed beside it).

Every model of a table is trained in the same run the same way: Adam with
cosine decay (AdamW with `--weight-decay`), batch 32, small reflect-padded
shifts (10%, half of the batches' images) for all, in `--precision`'s dtype
policy (float32 by default); the symmetry augmentations per model as named:

- low data (~300k parameters each): `resnet` (basic blocks, CIFAR stem) with
  no symmetry augmentation; the same with flips + quarter turns (all 8
  elements of D4 drawn); the anti-aliased `resnet` (BlurPool) with flips +
  quarter turns; `gcnn` D4 residual (invariant to D4 by construction, no
  symmetry augmentation); `gcnn` C8 residual with left-right flips (it is
  rotation-invariant, not mirror-invariant); `gcnn` D8 residual (C8's
  45-degree turns and the mirrors built in, no symmetry augmentation);
  `gcnn` C16 residual at D8's widths and parameters, with left-right flips;
  D8 with two basic blocks per stage; D8 restricted to C8 in its last stage,
  with left-right flips; D8 with 5x5 filters. D8's variants (the last four,
  and D8 with turns as augmentation) run only when `--models` names them.
- issue 30's wrappers around the low-data resnet: `invariant: canonicalize
  D4` trained end to end, and `orbit D4` put around the trained flips +
  quarter turns resnet at test time (its training figures are that model's).
- full data (up to 2.5M parameters): the same five at about 1.2M-1.4M (the
  resnet at 32-64-128-256, gcnn D4 at 12-24-48-96).

Per model: parameters, test and valid accuracy, training images/s (of the
whole fit, data pipeline included) and inference images/s (batches of 256).
Rows are written to `--out` (JSON) after each model, so a killed run keeps
the finished ones and `--resume` skips them; an unfinished model keeps a checkpoint after every epoch
(`<out>.partial/`, Keras' BackupAndRestore: weights, optimiser step, epoch times), from which `--resume` goes on,
so a model longer than one sitting trains over several. Each trained model's weights are
kept beside it (`<out>.weights/<model>.weights.h5`) before it is evaluated:
a failed evaluation does not cost the training, and the orbit row wraps the
weights of `resnet_flips_rot90` trained in the same run (same epochs and
seed) instead of training that resnet again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import device_name, missing, rates_in_turns, table  # noqa: E402

FLIPS_ROT90 = {"horizontal": True, "vertical": True, "rotate90": True}
SHIFT = {"max": 0.1, "units": "fraction", "fill_mode": "reflect", "probability": 0.5}
HALF_STEP_TURNS = {"max_degrees": 22.5, "fill_mode": "reflect", "probability": 0.5}
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
        # D8: the 45-degree turns of C8 and the mirrors built in (no symmetry augmentation), 16 elements, so
        # fewer channels per element at the same parameters (297k)
        "gcnn_d8_residual": ("gcnn", dict(GCNN, group="D8", filters=[6, 12, 23, 46]), None),
        # the same D8 network with turns of up to half its 45-degree step as augmentation (half the batches'
        # tiles, reflected border): D8 is exact at multiples of 90 degrees and band-limited between them, the
        # augmentation covers the angles between its elements. Measured with seed 1: 93.06% test, below D8
        # without it (93.75%): the turns do not help (docs/results.md)
        "gcnn_d8_residual_turns": ("gcnn", dict(GCNN, group="D8", filters=[6, 12, 23, 46]), None, HALF_STEP_TURNS),
        # C16: turns by 22.5 degrees built in (exact at quarter turns, band-limited at its other turns as C8 is at
        # 45), mirrors as augmentation as for C8; 16 elements as D8, at D8's widths and parameters (297k) and about
        # its compute. Measured with seed 1: 92.77% test, below D8 (93.75%) (docs/results.md)
        "gcnn_c16_residual": ("gcnn", dict(GCNN, group="C16", filters=[6, 12, 23, 46]), {"horizontal": True}),
        # D8 twice as deep at about the same parameters (304k): two basic blocks per stage, narrower (the e2-WRN
        # layout is deeper than one block per stage), no symmetry augmentation as D8. Measured with seed 1: 92.69%
        # test, below D8 (93.75%): it learns more slowly (docs/results.md)
        "gcnn_d8_residual_deep": ("gcnn", dict(GCNN, group="D8", filters=[4, 8, 16, 31], blocks_per_stage=2), None),
        # D8 restricted to its rotations C8 at the last stage (e2cnn's restriction): each D8 field splits into two C8
        # fields there, so the last stage is wider at about the same parameters (303k); mirrors are exact up to it
        # and left-right flips augment the tiles, as for C8. Measured with seed 1: 93.43% test, below D8 (93.75%)
        # (docs/results.md)
        "gcnn_d8_c8_residual": ("gcnn", dict(GCNN, group="D8", filters=[6, 12, 23, 60], restrict_to="C8",
                                             restrict_stage=3), {"horizontal": True}),
        # D8 with 5x5 filters, as e2cnn's wide ResNets take for N = 8 (3x3 for N <= 4): a 3x3 filter band-limited
        # for 45-degree turns has 4 free weights per pair of elements, a 5x5 one 9; narrower at about the same
        # parameters (300k) and about D8's training speed. Measured with seed 1: 93.16% test, below D8 (93.75%)
        # (docs/results.md)
        "gcnn_d8_residual_k5": ("gcnn", dict(GCNN, group="D8", filters=[4, 9, 17, 30], kernel_size=5), None),
    },
    "full": models_at([32, 64, 128, 256], [12, 24, 48, 96], [16, 32, 64, 128]),
}
# variants of D8 run only when named in --models: each measured with seed 1 and found below plain D8
# (docs/results.md), about 50 min each on 2 CPU cores, so a default run of the low table trains the table of the
# issue (and D8) without them
VARIANTS = ("gcnn_d8_residual_turns", "gcnn_c16_residual", "gcnn_d8_residual_deep", "gcnn_d8_c8_residual",
            "gcnn_d8_residual_k5")


def has_tensorflow() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def decode(path: str, decoder: str) -> np.ndarray:
    """One tile as uint8 [64, 64, 3], decoded by TensorFlow (its default, libjpeg's fast integer IDCT, as the
    project's image pipeline decodes) or by Pillow (the accurate integer IDCT: on 507 EuroSAT test tiles equal to
    TensorFlow's `dct_method="INTEGER_ACCURATE"`, and 1.3 levels of 255 from its default on average, 19 at most)."""
    if decoder == "pil":
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    import tensorflow as tf

    return tf.io.decode_image(tf.io.read_file(path), channels=3).numpy()


def load_split(root: str, split: str, every: int = 1, decoder: str = "tf"):
    """uint8 [N, 64, 64, 3] and int labels of one split; `every` keeps every n-th file of each class (by name)."""
    folder = os.path.join(root, split)
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    xs, ys = [], []
    for i, c in enumerate(classes):
        files = sorted(os.listdir(os.path.join(folder, c)))[::every]
        for f in files:
            xs.append(decode(os.path.join(folder, c, f), decoder))
            ys.append(i)
    return np.stack(xs), np.asarray(ys, np.int64), classes


def eurosat_or_skip(path: str | None):
    """The EuroSAT folder given by --data or EUROSAT_DIR; none given: exit 0 with a message (`make bench`); a
    folder given that is not one: exit 2."""
    path = path or os.environ.get("EUROSAT_DIR")
    layout = "a folder with train/, valid/ and test/ class folders; ../shared/data/README.md says how to write it"
    if not path:
        print(f"SKIP: no EuroSAT folder given (give --data or EUROSAT_DIR: {layout})")
        raise SystemExit(0)
    if not all(os.path.isdir(os.path.join(path, s)) for s in ("train", "valid", "test")):
        missing(f"{path!r} is not a EuroSAT folder ({layout})")
    return path


def augment_arrays(x: np.ndarray, flips: dict | None, rng: np.random.Generator) -> np.ndarray:
    """The training augmentation of `train_dataset` in NumPy, for backends without TensorFlow (uint8 [N, H, W, C]
    in, a new array out): the flips and quarter turns named in `flips` (each mirror with probability 1/2, k quarter
    turns with k uniform in 0..3), then with probability SHIFT's a shift of up to its fraction of the side, in whole
    pixels (Keras' RandomTranslation in tf.data shifts by fractions of a pixel, bilinear), the border reflected."""
    x = x.copy()
    n, h, w = x.shape[:3]
    flips = flips or {}
    if flips.get("horizontal"):
        m = rng.random(n) < 0.5
        x[m] = x[m, :, ::-1]
    if flips.get("vertical"):
        m = rng.random(n) < 0.5
        x[m] = x[m, ::-1]
    if flips.get("rotate90"):
        k = rng.integers(0, 4, n)
        for turns in (1, 2, 3):
            x[k == turns] = np.rot90(x[k == turns], turns, axes=(1, 2))
    r = int(SHIFT["max"] * min(h, w))
    padded = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    dy, dx = rng.integers(-r, r + 1, (2, n))
    for i in np.flatnonzero(rng.random(n) < SHIFT["probability"]):
        x[i] = padded[i, r + dy[i]:r + dy[i] + h, r + dx[i]:r + dx[i] + w]
    return x


def array_batches(x, y, batch, flips, seed):
    """`train_dataset` for backends without TensorFlow: a Keras PyDataset of shuffled, augmented float batches."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=4)
            self.rng, self.epoch = np.random.default_rng(seed), 0
            self.order = self.rng.permutation(len(x))

        def __len__(self):
            return int(np.ceil(len(x) / batch))

        def __getitem__(self, i):
            idx = self.order[i * batch:(i + 1) * batch]
            rng = np.random.default_rng([seed, self.epoch, i])  # the workers' threads draw independently
            return augment_arrays(x[idx], flips, rng).astype("float32") / 255.0, y[idx]

        def on_epoch_end(self):
            self.order, self.epoch = self.rng.permutation(len(x)), self.epoch + 1

    return Batches()


def train_dataset(x, y, batch, flips, seed, rotation=None):
    import tensorflow as tf

    from data.augment import augment_dataset, build_augmentation

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b))
    aug = build_augmentation(translation=SHIFT, rotation=rotation, flip=flips, seed=seed)
    return augment_dataset(ds, aug).prefetch(tf.data.AUTOTUNE)


def run(name, spec, train, valid, test, args):
    import keras

    import models

    builder, params, flips, *turns = spec  # turns: an optional `rotation` augmentation section
    rotation = turns[0] if turns else None
    if rotation and args.input != "tf.data":
        raise SystemExit(f"{name}: its turns are augmented in tf.data only; run it with --input tf.data")
    keras.utils.set_random_seed(args.seed)
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(args.precision)  # the layers keep the policy they were built under
    try:
        model = models.build_model(builder, (64, 64, 3), 10, **params)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    per_epoch = int(np.ceil(len(train[0]) / args.batch_size))  # training steps
    lr = args.lr  # with a budget, a cosine per epoch over the epochs that fit (fit_within_budget)
    if not args.budget_s:
        lr = keras.optimizers.schedules.CosineDecay(args.lr, args.epochs * per_epoch)
    epochs = args.epochs
    # AdamW as pipelines/experiment.py builds it for `optimizer: adamw` (decay lr-scaled, on every weight)
    optimizer = keras.optimizers.AdamW(lr, weight_decay=args.weight_decay) if args.weight_decay else \
        keras.optimizers.Adam(lr)
    model.compile(optimizer,
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    weights = os.path.join(args.weights_dir, f"{name}.weights.h5")
    trained_as = os.path.join(args.weights_dir, f"{ORBIT_OF}.weights.h5") if name.endswith("_orbit_d4") else None
    reused, resumed = None, []
    if trained_as and os.path.exists(trained_as) and args.trained.get(ORBIT_OF) is not None:
        model.load_weights(trained_as)  # the same resnet, trained earlier in this run's table
        reused = args.trained[ORBIT_OF]
    else:
        if args.input == "tf.data":  # one iterator for the whole fit (pipelines/experiment.py fit_batches)
            from pipelines.experiment import fit_batches

            batches = fit_batches(train_dataset(*train, args.batch_size, flips, args.seed, rotation), per_epoch)
        else:
            batches = {"x": array_batches(*train, args.batch_size, flips, args.seed)}
        t0 = time.perf_counter()
        if args.budget_s:
            epochs = fit_within_budget(model, batches, args)
            fit_s = time.perf_counter() - t0
        else:
            from bench_rotated_gcnn import resumable_fit_callbacks  # each epoch's seconds, kept across sittings

            clock, callbacks = resumable_fit_callbacks(getattr(args, "backup", None))
            model.fit(**batches, epochs=args.epochs, verbose=args.verbose, callbacks=callbacks)
            fit_s, resumed = clock.state["fit s"], clock.resumed_after
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
    augment = ("flips" if flips else "shifts only") + (f", turns up to {rotation['max_degrees']} degrees"
                                                       if rotation else "")
    row = {"model": name, "params": model.count_params(), "test acc %": 100.0 * acc["test"],
           "valid acc %": 100.0 * acc["valid"], "epochs": reused["epochs"] if reused else epochs,
           "train img/s": reused["train img/s"] if reused else epochs * len(train[0]) / fit_s,
           "infer img/s": len(xt) / (time.perf_counter() - t1), "augment": augment}
    if reused:
        row["trained"] = f"the weights of {ORBIT_OF}, wrapped"
    elif resumed:
        row["resumed after epochs"] = resumed  # its later sittings drew their shuffles afresh
    if args.weight_decay or args.precision != "float32":
        row.update({"weight decay": args.weight_decay, "precision": args.precision})
    if args.budget_s or args.input != "tf.data" or keras.backend.backend() != "tensorflow":
        row.update({"budget s": args.budget_s, "input": args.input, "batch": args.batch_size, "lr": args.lr,
                    "backend, device": f"{keras.backend.backend()}, {device_name()}"})
    return row


def fit_within_budget(model, batches, args) -> int:
    """Train for as many epochs as fit in `args.budget_s` seconds of fitting (at most `args.epochs`, at least 2),
    the learning rate decayed per epoch on a cosine over that number, which the first two epochs (the compile,
    then one timed) decide; returns it. A fixed time for every model of a table, not a fixed number of epochs.
    `batches`: model.fit's data arguments (run's)."""
    import math

    import keras

    total = [args.epochs]
    schedule = keras.callbacks.LearningRateScheduler(
        lambda e, _: args.lr * 0.5 * (1 + math.cos(math.pi * min(e, total[0]) / total[0])))
    t0 = time.perf_counter()
    model.fit(**batches, epochs=1, callbacks=[schedule], verbose=args.verbose)
    t1 = time.perf_counter()
    model.fit(**batches, initial_epoch=1, epochs=2, callbacks=[schedule], verbose=args.verbose)
    t2 = time.perf_counter()
    total[0] = max(2, min(args.epochs, 2 + int((args.budget_s - (t2 - t0)) / (t2 - t1))))
    print(f"{total[0]} epochs fit in {args.budget_s:.0f} s (first {t1 - t0:.1f} s, then {t2 - t1:.1f} s each)",
          flush=True)
    model.fit(**batches, initial_epoch=2, epochs=total[0], callbacks=[schedule], verbose=args.verbose)
    return total[0]


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
    p.add_argument("--models", default=None,
                   help=f"comma-separated names of the table (default: all but D8's variants {', '.join(VARIANTS)})")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled decay (0: Adam)")
    p.add_argument("--precision", choices=["float32", "mixed_bfloat16", "mixed_float16"], default="float32",
                   help="Keras dtype policy of every model of the table")
    p.add_argument("--out", default=None, help="JSON rows (default bench/results/eurosat_<regime>_<seed>.json)")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --out and skip their models")
    p.add_argument("--verbose", type=int, default=2)
    p.add_argument("--input", choices=["tf.data", "arrays"], default=None,
                   help="tf.data (TensorFlow's decoder and augmentation), or arrays (Pillow's decoder, NumPy's "
                        "augmentation in a Keras PyDataset) for backends without TensorFlow; default: tf.data where "
                        "TensorFlow imports")
    p.add_argument("--budget-s", type=float, default=0,
                   help="train each model for as many epochs as fit in this many seconds (at most --epochs)")
    p.add_argument("--speed-rounds", type=int, default=0,
                   help="only time the models' training steps in turns (this many rounds; no data needed)")
    p.add_argument("--speed-steps", type=int, default=10)
    p.add_argument("--train-every", type=int, default=None,
                   help="keep every n-th training file of each class, by name (default: 10 in the low regime, 1 in "
                        "full); 1 for a folder already cut to the low regime's files, e.g. to send it to a GPU")
    a = p.parse_args()
    if a.train_every is not None and a.train_every < 1:
        p.error(f"--train-every must be at least 1 (got {a.train_every})")
    specs = TABLES[a.regime]
    names = a.models.split(",") if a.models else [n for n in specs if n not in VARIANTS]
    unknown = [n for n in names if n not in specs]
    if unknown:
        p.error(f"unknown models {unknown}; the {a.regime} table has {list(specs)}")
    root = None if a.speed_rounds else eurosat_or_skip(a.data)  # before TensorFlow's import: a mistyped folder
    a.input = a.input or ("tf.data" if has_tensorflow() else "arrays")  # is one line at once, not after seconds
    if a.speed_rounds:
        print(table(interleaved_speed(specs, names, a), f"training images/s in turns, {a.speed_rounds} rounds of "
                                                         f"{a.speed_steps} steps of {a.batch_size}"))
        return 0
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"eurosat_{a.regime}_seed{a.seed}.json")
    decoder = "tf" if a.input == "tf.data" else "pil"
    every = a.train_every or (10 if a.regime == "low" else 1)
    train = load_split(root, "train", every=every, decoder=decoder)[:2]
    valid, test = load_split(root, "valid", decoder=decoder)[:2], load_split(root, "test", decoder=decoder)[:2]
    print(f"EuroSAT {a.regime}: {len(train[0])} training, {len(valid[0])} valid, {len(test[0])} test images", flush=True)
    from bench_rotated_gcnn import backup_dir

    rows = json.load(open(out)) if a.resume and os.path.exists(out) else []
    a.weights_dir = os.path.splitext(out)[0] + ".weights"
    for name in names:
        if any(r["model"] == name for r in rows):
            continue
        # the orbit row may reuse the resnet's weights only if they were trained with these settings
        a.trained = {r["model"]: r for r in rows if r["epochs"] == a.epochs and "trained" not in r}
        # An unfinished model's checkpoint, one per setting that changes its figures: --resume goes on from its
        # last finished epoch (a model longer than one sitting), a run without --resume starts it afresh.
        a.backup = None if a.budget_s else backup_dir(out, json.dumps(
            [name, a.regime, a.epochs, a.batch_size, a.lr, a.seed, a.weight_decay, a.precision, every, a.input]))
        if a.backup and not a.resume:
            shutil.rmtree(a.backup, ignore_errors=True)
        rows.append(run(name, specs[name], train, valid, test, a))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as fh:
            json.dump(rows, fh, indent=1)
        if a.backup:
            shutil.rmtree(a.backup, ignore_errors=True)  # the row is kept: its checkpoint is no longer needed
        print(table(rows[-1:]), flush=True)
    length = f"{a.budget_s:.0f} s of fitting each (at most {a.epochs} epochs)" if a.budget_s else f"{a.epochs} epochs"
    print(table(rows, f"EuroSAT {a.regime} data, {length}, seed {a.seed}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
