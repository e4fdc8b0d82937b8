"""Augmentation throughput: images/s of each operation and the full chain, in one run, against
(a) the rate at which the baseline CNN consumes images in training and (b) scipy.ndimage doing
the same transforms on the same images.

Goal (issue 3): the full chain >= 3x the training consumption rate (the pipeline is never the
bottleneck) and faster than the scipy reference.

    PYTHONPATH=. .venv/bin/python bench/bench_augment_throughput.py [--batches 100] [--ref-images 512]

The augmentation runs as training uses it: `data.augment.augment_dataset` over a batched
tf.data dataset (parallel map, all cores). The scipy reference is the usual per-image loop in
one process. Uses the MNIST file when present, else the embedded synthetic digits (the shapes,
not the contents, set the speed).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import MNIST_NPZ, Timer, mnist_named_but_absent, table  # noqa: E402

OPS = {
    "translation": dict(translation={"max": 0.1}),
    "rotation": dict(rotation={"max_degrees": 180}),
    "elastic": dict(elastic={"alpha": 34.0, "sigma": 4.0}),
}
OPS["full chain"] = {k: v for op in OPS.values() for k, v in op.items()}


def load_images(n: int) -> np.ndarray:
    mnist_named_but_absent()
    if os.path.isfile(MNIST_NPZ):
        with np.load(MNIST_NPZ) as f:
            x, src = f["x_train"][:n, :, :, None], "MNIST"
    else:
        from data.synthetic import load

        (x, _), _ = load(max(n, 10), 10, 0, ".cache")
        src = "synthetic digits"
    print(f"images: {len(x)} from {src}")
    return x.astype("float32") / 255.0


# ----------------------------------------------------------------------------- scipy reference


def scipy_op(name: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 28x28 image, the same transforms as data.augment (bilinear, constant 0 fill)."""
    from scipy import ndimage

    if name == "translation":
        h, w = img.shape
        d = rng.uniform(-0.1, 0.1, 2) * (h, w)
        return ndimage.shift(img, d, order=1, mode="grid-constant", cval=0.0)
    if name == "rotation":
        return ndimage.rotate(img, rng.uniform(-180, 180), reshape=False, order=1, mode="grid-constant", cval=0.0)
    if name == "elastic":
        dy = 34.0 * ndimage.gaussian_filter(rng.uniform(-1, 1, img.shape), 4.0)
        dx = 34.0 * ndimage.gaussian_filter(rng.uniform(-1, 1, img.shape), 4.0)
        r, c = np.meshgrid(np.arange(img.shape[0]), np.arange(img.shape[1]), indexing="ij")
        return ndimage.map_coordinates(img, [r + dy, c + dx], order=1, mode="grid-constant", cval=0.0)
    for op in ("elastic", "rotation", "translation"):
        img = scipy_op(op, img, rng)
    return np.clip(img, 0.0, 1.0)


def scipy_rate(name: str, x: np.ndarray) -> float:
    rng = np.random.default_rng(0)
    scipy_op(name, x[0, ..., 0], rng)
    with Timer() as t:
        for img in x:
            scipy_op(name, img[..., 0], rng)
    return len(x) / t.seconds


# ----------------------------------------------------------------------------- ours


def tf_rate(name: str, x: np.ndarray, batches: int, batch_size: int) -> float:
    import tensorflow as tf

    from data.augment import augment_dataset, build_augmentation

    aug = build_augmentation(**OPS[name], seed=0)
    ds = tf.data.Dataset.from_tensor_slices(x[:batch_size]).batch(batch_size).cache().repeat()
    ds = augment_dataset(ds, aug).prefetch(tf.data.AUTOTUNE)
    it = iter(ds)
    for _ in range(3):  # trace and warm up
        next(it)
    with Timer() as t:
        for _ in range(batches):
            next(it)
    return batches * batch_size / t.seconds


def training_rate(x: np.ndarray, steps: int, batch_size: int) -> float:
    """Images/s the baseline CNN consumes in `fit` from a cached, prefetched dataset."""
    import keras
    import tensorflow as tf

    import models

    model = models.build_model("baseline_cnn", (28, 28, 1), 10)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # the model gives logits
    y = np.random.default_rng(0).integers(0, 10, len(x))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True).cache().repeat().prefetch(tf.data.AUTOTUNE)
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    with Timer() as t:
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / t.seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=100, help="augmented batches timed per operation")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=20, help="training steps timed")
    p.add_argument("--ref-images", type=int, default=512, help="images the scipy reference transforms per operation")
    args = p.parse_args(argv)

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, batches of {args.batch_size} 28x28x1")
    x = load_images(max(args.batch_size * 4, args.ref_images))
    train = training_rate(x, args.train_steps, args.batch_size)
    print(f"baseline CNN training consumes {train:.0f} images/s")
    rows = []
    for name in OPS:
        ours = tf_rate(name, x, args.batches, args.batch_size)
        ref = scipy_rate(name, x[: args.ref_images])
        rows.append(
            {
                "operation": name,
                "ours (images/s)": round(ours),
                "scipy (images/s)": round(ref),
                "ours / scipy": ours / ref,
                "ours / training": ours / train,
            }
        )
    print(table(rows, f"Augmentation throughput (training consumes {train:.0f} images/s)"))
    chain = rows[-1]
    ok_train = chain["ours / training"] >= 3.0
    ok_ref = chain["ours / scipy"] > 1.0
    print(f"full chain: {chain['ours / training']:.2f}x training ({'meets' if ok_train else 'MISSES'} the 3x goal), "
          f"{chain['ours / scipy']:.2f}x scipy ({'faster' if ok_ref else 'NOT faster'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
