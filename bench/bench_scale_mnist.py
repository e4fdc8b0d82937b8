"""MNIST-scale: scale-equivariant and scale-robust models against a CNN of similar size (issue 17).

Three tables, the same epochs for every model of a table:

1. `scale`: the MNIST-scale protocol of ../shared/data/README.md (each digit
   shrunk once by a factor uniform in [0.3, 1.0], bicubic, centred on the
   28x28 canvas; train x_train[:10000] seed 0, test x_test seed 1): the CNN
   (baseline_cnn 32-64-96, ~317k parameters), the CNN with scale augmentation
   (`random_scale`, factors uniform in [--aug-min, --aug-max] per image), the
   input pyramid on that CNN (`--pyramid-*`), without and with that
   augmentation, and `sesn` (~302k). Test
   error (%) and training images/s (whole fit, tracing included).
   SESN's paper: 1.68% (SESN) vs 2.56% for a same-size CNN on its MNIST-scale.
2. `curve`: trained on upright digits at scale 1 (no augmentation), tested on
   x_test rescaled by 0.5 ... 2 on the same canvas (`rescale_batch`: shrunk
   into the centre, anti-aliased, or enlarged and cropped): accuracy per
   factor. Goal: the pyramid or sesn keeps >= 90% at 0.5x where the CNN collapses.
3. `rotscale`: digits rotated uniformly in [0, 360) and shrunk by [0.3, 1.0]
   (train seed 0, test seed 1): hnet, the roto-scale hnet (`scales`), and the
   CNN with rotation and scale augmentation.

Ratios against the CNN are printed beside the figures (same run). On 2 CPU
cores the `scale` table takes about 40 minutes at 10 epochs, `curve` about
35, `rotscale` more (hnet's cost, three times for the roto-scale hnet); the
figures in the README come from the command printed at the end (its
arguments as given).

    PYTHONPATH=. .venv/bin/python bench/bench_scale_mnist.py --epochs 10
    PYTHONPATH=. .venv/bin/python bench/bench_scale_mnist.py --epochs 1 --train-size 2000 --test-size 1000   # smoke
    PYTHONPATH=. .venv/bin/python bench/bench_scale_mnist.py --write-npz .cache/mnist-scale.npz  # for make train
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import Timer, mnist_or_skip, rotate_images, table  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
from data.scale_augment import random_scale, rescale_batch  # noqa: E402

CNN = dict(filters=(32, 64, 96), convs_per_stage=2, dense_units=128)  # ~317k parameters
CURVE = (0.5, 0.63, 0.79, 1.0, 1.26, 1.59, 2.0)


def shrink_images(x: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The protocol's resampling: each uint8 digit shrunk by its factor (PIL bicubic, which
    widens its kernel when shrinking), pasted centred on a zero canvas of the same size."""
    from PIL import Image

    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    for i, (img, f) in enumerate(zip(x, factors)):
        nh, nw = max(1, round(h * f)), max(1, round(w * f))
        small = np.asarray(Image.fromarray(img[..., 0]).resize((nw, nh), Image.BICUBIC))
        top, left = (h - nh) // 2, (w - nw) // 2
        out[i, top : top + nh, left : left + nw, 0] = small
    return out


def mnist_scale(mnist, n_train, n_test, rotate=False):
    """(train, test) of the MNIST-scale protocol; `rotate` also turns each digit uniformly first."""
    xtr, ytr = mnist["x_train"][:n_train], mnist["y_train"][:n_train]
    xte, yte = mnist["x_test"][:n_test], mnist["y_test"][:n_test]
    if rotate:
        xtr = rotate_images(xtr, np.random.default_rng(10).uniform(0, 360, len(xtr)))
        xte = rotate_images(xte, np.random.default_rng(11).uniform(0, 360, len(xte)))
    xtr = shrink_images(xtr, np.random.default_rng(0).uniform(0.3, 1.0, len(xtr)))
    xte = shrink_images(xte, np.random.default_rng(1).uniform(0.3, 1.0, len(xte)))
    return (xtr, ytr), (xte, yte)


def dataset(x, y, args, scale_aug=False, rotation_aug=False):
    x = x.astype("float32") / 255.0
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=args.seed).batch(args.batch_size)
    if rotation_aug:
        rot = keras.layers.RandomRotation(1.0, fill_mode="constant", seed=args.seed)
        ds = ds.map(lambda a, b: (rot(a, training=True), b))
    if scale_aug:
        ds = ds.enumerate().map(
            lambda i, ab: (random_scale(ab[0], args.aug_min, args.aug_max, 1.0,
                                        seed=tf.stack([i, tf.constant(args.seed, tf.int64)])), ab[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def train(name, params, x, y, args, **aug):
    keras.utils.set_random_seed(args.seed)
    model = models.build_model(name, (28, 28, 1), 10, **params)
    steps = args.epochs * int(np.ceil(len(x) / args.batch_size))
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, steps)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    with Timer() as t:
        model.fit(dataset(x, y, args, **aug), epochs=args.epochs, verbose=args.verbose)
    return model, len(x) * args.epochs / t.seconds, model.count_params()


def accuracy(model, x, y, batch=256):
    x = np.asarray(x, "float32")
    if x.max() > 1.5:
        x = x / 255.0
    logits = model.predict(x, batch_size=batch, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def pyramid(args):
    return {"pyramid_scales": args.pyramid_scales, "pyramid_pool": args.pyramid_pool,
            "pyramid_bandlimit": args.pyramid_bandlimit}


def selected(runs, args):
    """The runs whose label is in --only (all without it)."""
    only = [o.strip() for o in args.only.split(",")] if args.only else None
    return [r for r in runs if only is None or r[0] in only]


def table_scale(mnist, args):
    (xtr, ytr), (xte, yte) = mnist_scale(mnist, args.train_size, args.test_size)
    runs = [("CNN", "baseline_cnn", CNN, {}), ("CNN + scale aug", "baseline_cnn", CNN, {"scale_aug": True}),
            ("pyramid", "baseline_cnn", {**CNN, **pyramid(args)}, {}),
            ("pyramid + scale aug", "baseline_cnn", {**CNN, **pyramid(args)}, {"scale_aug": True}),
            ("sesn", "sesn", {}, {})]
    rows, ref = [], None
    for label, name, params, aug in selected(runs, args):
        model, ips, n = train(name, params, xtr, ytr, args, **aug)
        err = 100 * (1 - accuracy(model, xte, yte))
        ref = (err, ips) if label == "CNN" else ref
        nan = float("nan")
        rows.append({"model": label, "params": n, "test error %": err,
                     "error / CNN": err / max(ref[0], 1e-9) if ref else nan,
                     "train images/s": ips, "speed / CNN": ips / ref[1] if ref else nan})
        print(rows[-1], flush=True)
    return table(rows, f"MNIST-scale ({len(xtr)} train, {len(xte)} test digits, {args.epochs} epochs)")


def table_curve(mnist, args):
    xtr, ytr = mnist["x_train"][: args.train_size], mnist["y_train"][: args.train_size]
    xte, yte = mnist["x_test"][: args.test_size].astype("float32") / 255.0, mnist["y_test"][: args.test_size]
    rows = []
    for label, name, params in [("CNN", "baseline_cnn", CNN),
                                ("pyramid", "baseline_cnn", {**CNN, **pyramid(args)}),
                                ("sesn", "sesn", {})]:
        if not selected([(label,)], args):
            continue
        model, _, _ = train(name, params, xtr, ytr, args)
        row = {"model": label}
        for f in CURVE:
            row[f"x{f}"] = 100 * accuracy(model, rescale_batch(xte, f), yte)
        rows.append(row)
        print(row, flush=True)
        if args.branches and label == "pyramid":
            rows += branch_rows(model, xte, yte, args.pyramid_scales)
    return table(rows, f"Trained at scale 1 ({len(xtr)} digits, {args.epochs} epochs), accuracy % across the scale curve")


def branch_rows(model, x, y, scales):
    """Accuracy across the curve of each pyramid branch alone: the shared backbone on exactly what
    that branch feeds it (its rescaling, and with --pyramid-bandlimit its low-pass)."""
    backbone = next(l for l in model.layers if isinstance(l, keras.Model))
    names = {l.name for l in model.layers}
    taps = {i: keras.Model(model.input, model.get_layer(f"pyramid_rescale{i}").output)
            for i in range(len(scales)) if f"pyramid_rescale{i}" in names}
    rows = [{"model": f"pyramid, branch {s:g}x alone"} for s in scales]
    for f in CURVE:
        xf = rescale_batch(x, f)  # once per factor, for every branch
        for i, row in enumerate(rows):
            row[f"x{f}"] = 100 * accuracy(backbone, taps[i].predict(xf, batch_size=256, verbose=0) if i in taps else xf, y)
    for row in rows:
        print(row, flush=True)
    return rows


def table_rotscale(mnist, args):
    (xtr, ytr), (xte, yte) = mnist_scale(mnist, args.train_size, args.test_size, rotate=True)
    runs = [("hnet", "hnet", {}, {}), ("roto-scale hnet", "hnet", {"scales": args.hnet_scales}, {}),
            ("CNN + rotation + scale aug", "baseline_cnn", CNN, {"scale_aug": True, "rotation_aug": True})]
    rows = []
    for label, name, params, aug in selected(runs, args):
        model, ips, n = train(name, params, xtr, ytr, args, **aug)
        rows.append({"model": label, "params": n, "test error %": 100 * (1 - accuracy(model, xte, yte)),
                     "train images/s": ips})
        print(rows[-1], flush=True)
    return table(rows, f"Rotated and scaled digits ({len(xtr)} train, {len(xte)} test, {args.epochs} epochs)")


def write_npz(mnist, path):
    """The protocol's three splits as an npz for the training job (uint8 [N, 28, 28], labels int64)."""
    x, y = mnist["x_train"], mnist["y_train"]
    splits = {"train": (x[:10000], y[:10000], 0), "val": (x[10000:12000], y[10000:12000], 2),
              "test": (mnist["x_test"], mnist["y_test"], 1)}
    arrays = {}
    for key, (xs, ys, seed) in splits.items():
        arrays[f"x_{key}"] = shrink_images(xs, np.random.default_rng(seed).uniform(0.3, 1.0, len(xs)))[..., 0]
        arrays[f"y_{key}"] = ys
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tables", default="scale,curve,rotscale", help="comma-separated: scale, curve, rotscale")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--aug-min", type=float, default=0.6)
    p.add_argument("--aug-max", type=float, default=1.6)
    p.add_argument("--pyramid-scales", type=lambda s: [float(v) for v in s.split(",")], default=[2.0, 1.0, 0.5])
    p.add_argument("--pyramid-pool", choices=["mean", "max", "confident"], default="mean")
    p.add_argument("--pyramid-bandlimit", action="store_true",
                   help="pass every pyramid branch through the most enlarging one's resolution (models/pyramid.py)")
    p.add_argument("--branches", action="store_true",
                   help="curve table: also the accuracy of each pyramid branch alone (the shared backbone on its input)")
    p.add_argument("--only", default="", help="comma-separated model labels to run (default: all), e.g. 'CNN,sesn'")
    p.add_argument("--hnet-scales", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 3])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=0)
    p.add_argument("--write-npz", metavar="PATH", help="only write the MNIST-scale splits (train, validation, "
                   "test of the protocol) to PATH for `data.source=npz:PATH`, and exit")
    args = p.parse_args(argv)
    mnist = mnist_or_skip()
    if args.write_npz:
        write_npz(mnist, args.write_npz)
        return
    out = []
    for t in args.tables.split(","):
        out.append({"scale": table_scale, "curve": table_curve, "rotscale": table_rotscale}[t.strip()](mnist, args))
        print(out[-1], flush=True)
    print("\n".join(out))
    print("command: PYTHONPATH=. .venv/bin/python bench/bench_scale_mnist.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
