"""The project's layers and builders on the current Keras backend: speed ratios against Keras references.

Run once per backend, on the same machine, and compare the ratios (absolute
times on a shared machine are noise; each ratio is measured interleaved with
its reference in the same run):

    KERAS_BACKEND=tensorflow PYTHONPATH=. .venv/bin/python bench/bench_backends.py
    KERAS_BACKEND=jax        PYTHONPATH=. .venv/bin/python bench/bench_backends.py

1. Forward + backward (gradients to the input and every weight, one compiled
   step: `tf.function` on TensorFlow, `jax.jit` on JAX) of
   - BlurPool2D (stride 2) vs DepthwiseConv2D (same k, stride 2), on each code
     path of layers/common/_ops.py: the TensorFlow fast path (hand-written gradients,
     TensorFlow only), the portable keras.ops path (its padding has a
     hand-written `keras.ops.custom_gradient`), and the portable path with the
     backend's own gradient of that padding (the alternative it was measured
     against);
   - HarmonicConv2D (orders 0, 1; C complex channels per order in and out)
     vs Conv2D with the same real channels (4C -> 4C), k = 5;
   - SpatialSeparableConv2D (rank 1 and 2) vs Conv2D (same filters), padding same.
2. Training images/s of `baseline_cnn` and `hnet` (Keras `fit` on random 28x28
   images, the backend's default compilation), after a warm-up fit.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import table  # noqa: E402  (puts the project root on sys.path)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import models  # noqa: E402
from layers.common import _ops  # noqa: E402
from layers.harmonic.harmonic_conv import HarmonicConv2D  # noqa: E402
from layers.shift.blurpool import BlurPool2D  # noqa: E402
from layers.shift.spatial_separable_conv import SpatialSeparableConv2D  # noqa: E402

BACKEND = keras.backend.backend()


def step_fn(call, variables):
    """A compiled x -> gradients of sum(call(x)^2) with respect to x and `variables`."""
    variables = list(variables)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = call(x)
                loss = tf.reduce_sum(tf.square(tf.cast(y, tf.float32)))
            return tape.gradient(loss, [x] + variables)

        return lambda x: [g.numpy() for g in step(x) if g is not None]
    if BACKEND == "jax":
        import jax

        def loss(x, values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                y = call(x)
            return ops.sum(ops.square(ops.cast(y, "float32")))

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        values = [v.value for v in variables]
        return lambda x: jax.block_until_ready(grad(x, values))
    raise SystemExit(f"bench_backends.py: no step function for the {BACKEND!r} backend")


def time_all(fns: dict, x, reps: int) -> dict:
    """Median seconds per step of each function, measured interleaved (fair under noise).

    `fns` maps names to functions of `x`, or to (function, its own input) pairs.
    """
    fns = {n: f if isinstance(f, tuple) else (f, x) for n, f in fns.items()}
    for f, a in fns.values():
        f(a), f(a)  # compile and warm up
    times = {n: [] for n in fns}
    for _ in range(reps):
        for n, (f, a) in fns.items():
            t0 = time.perf_counter()
            f(a)
            times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(t)) for n, t in times.items()}


def on_path(fast: bool, layer):
    """`layer` called with layers/common/_ops.py's TensorFlow fast path on or off (read while tracing)."""

    def call(x):
        with _ops.tf_fast_path(fast):
            return layer(x)

    return call


def blur_plain_autodiff(k: int, padding: str):
    """BlurPool2D(k, 2, padding)'s portable path with the backend's own gradient of its padding (no custom_gradient)."""
    f = _ops.binomial_filter(k).astype("float32")
    before, after = _ops.centered_pads(k)

    def call(x):
        for axis in (1, 2):
            x = _ops.depthwise_1d(_ops._pad_concat(x, axis, before, after, padding), f, axis, 2)
        return x

    return call


def layer_ratios(args) -> list[str]:
    shape = (args.batch, args.size, args.size, args.channels)
    x = ops.convert_to_tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"))
    out = []

    rows = []
    for k in (3, 5):
        dw = keras.layers.DepthwiseConv2D(k, strides=2, padding="same", use_bias=False)
        dw.build(shape)
        fns = {"dw": step_fn(dw, dw.trainable_weights)}
        for padding in ("reflect", "circular"):
            layer = BlurPool2D(k, 2, padding)
            if BACKEND == "tensorflow":
                fns[f"{padding} tf_fast"] = step_fn(on_path(True, layer), [])
            fns[f"{padding} portable"] = step_fn(on_path(False, layer), [])
            fns[f"{padding} plain autodiff"] = step_fn(blur_plain_autodiff(k, padding), [])
        t = time_all(fns, x, args.reps)
        row = {"k": k, "DepthwiseConv2D ms": 1e3 * t["dw"]}
        row.update({f"{n} / DW": v / t["dw"] for n, v in t.items() if n != "dw"})
        rows.append(row)
        print(row, flush=True)
    out.append(table(rows, f"[{BACKEND}] BlurPool2D (stride 2) / DepthwiseConv2D, forward+backward, input {shape}"))

    rows = []
    c = args.channels // 4
    hshape = (args.batch, args.size, args.size, 2, 2, c)
    xh = ops.convert_to_tensor(np.random.default_rng(1).standard_normal(hshape).astype("float32"))
    conv = keras.layers.Conv2D(4 * c, 5, padding="same", use_bias=False)
    conv.build(shape[:3] + (4 * c,))
    harmonic = HarmonicConv2D(c, 5)
    harmonic.build(hshape)
    t = time_all({"conv": (step_fn(conv, conv.trainable_weights), ops.reshape(xh, shape[:3] + (4 * c,))),
                  "h": (step_fn(harmonic, harmonic.trainable_weights), xh)}, None, args.reps)
    ratio = t["h"] / t["conv"]
    rows.append({"channels": f"{4 * c} -> {4 * c}", "Conv2D ms": 1e3 * t["conv"], "HarmonicConv2D / Conv2D": ratio})
    print(rows[-1], flush=True)
    out.append(table(rows, f"[{BACKEND}] HarmonicConv2D (orders 0,1, {c} complex channels per order) / Conv2D, k = 5"))

    rows = []
    for k in (3, 5):
        conv = keras.layers.Conv2D(args.channels, k, padding="same")
        conv.build(shape)
        fns = {"conv": step_fn(conv, conv.trainable_weights)}
        for rank in (1, 2):
            layer = SpatialSeparableConv2D(args.channels, k, rank=rank, padding="same")
            layer.build(shape)
            if BACKEND == "tensorflow":
                fns[f"rank {rank} tf_fast"] = step_fn(on_path(True, layer), layer.trainable_weights)
            if BACKEND != "tensorflow" or rank == 1 or args.slow_grouped:
                # On TensorFlow the portable rank-2 path's grouped convolution (keras.ops.conv compiles it with
                # XLA) was measured about 200x a Conv2D on CPU: hence _tf_fast.grouped_conv2d; --slow-grouped times it.
                fns[f"rank {rank} portable"] = step_fn(on_path(False, layer), layer.trainable_weights)
        t = time_all(fns, x, args.reps)
        row = {"k": k, "Conv2D ms": 1e3 * t["conv"]}
        row.update({f"{n} / Conv2D": v / t["conv"] for n, v in t.items() if n != "conv"})
        rows.append(row)
        print(row, flush=True)
    out.append(table(rows, f"[{BACKEND}] SpatialSeparableConv2D / Conv2D ({args.channels} filters, same), input {shape}"))
    return out


def training_rates(args) -> str:
    rng = np.random.default_rng(2)
    n = args.train_images - args.train_images % args.train_batch
    x = rng.uniform(0, 1, (n, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, n)
    rows = []
    for name in ("baseline_cnn", "hnet"):
        keras.utils.set_random_seed(0)
        model = models.build_model(name, (28, 28, 1), 10)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        t0 = time.perf_counter()
        model.fit(x[: 2 * args.train_batch], y[: 2 * args.train_batch], batch_size=args.train_batch, epochs=1, verbose=0)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=args.train_batch, epochs=1, verbose=0)
        seconds = time.perf_counter() - t0
        rows.append({"model": name, "images/s": n / seconds, "first fit (compile) s": warm,
                     "jit_compile": str(model.jit_compile)})
        print(rows[-1], flush=True)
    return table(rows, f"[{BACKEND}] training images/s, Keras fit, batch {args.train_batch}, {n} random 28x28 images")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--train-images", type=int, default=2048)
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--slow-grouped", action="store_true",
                        help="on TensorFlow, also time the portable rank-2 SpatialSeparableConv2D (very slow there)")
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    print(f"Keras {keras.__version__}, backend {BACKEND}", flush=True)
    tables = [] if args.skip_layers else layer_ratios(args)
    if not args.skip_training:
        tables.append(training_rates(args))
    print("".join(tables))


if __name__ == "__main__":
    main()
