"""Where a training step of the H-Net spends its time, and what XLA does to it.

Two measurements on models.build_model("hnet", (28, 28, 1), 10), batch 64:

* the whole training step (Model.train_on_batch: forward, backward, Adam),
  compiled without and with `jit_compile=True` (the config's `train.xla`),
  interleaved, median of several repeats; printed as images/s and the ratio
  XLA / plain;
* each layer's forward + backward alone (gradients of its weights and its
  input, on the shapes it sees inside the network), printed as its share of
  the sum over layers, and the convolutions' arithmetic rate (GFLOP/s, dense
  multiply-adds of the block filter counted as 2 FLOPs, backward as twice the
  forward).

    PYTHONPATH=. .venv/bin/python bench/bench_hnet_step.py
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import table  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402


def compiled(jit):
    keras.utils.set_random_seed(0)
    model = models.build_model("hnet", (28, 28, 1), 10)
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def step_seconds(model, x, y, iters):
    model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(iters):
        model.train_on_batch(x, y)
    return (time.perf_counter() - t0) / iters


def layer_seconds(model, x, iters, repeats):
    """{layer: seconds} of each layer's forward + backward on its own input."""
    inner = model.layers[1:]
    outs = keras.Model(model.inputs, [layer.output for layer in inner])(x, training=True)
    out = {}
    prev = tf.constant(x)
    for layer, o in zip(inner, outs):
        weights = layer.trainable_weights

        @tf.function
        def step(xin, layer=layer, weights=weights):
            with tf.GradientTape() as tape:
                tape.watch(xin)
                y = layer(xin, training=True)
                loss = tf.reduce_sum(y * tf.stop_gradient(y))
            return tape.gradient(loss, weights + [xin])

        step(prev)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iters):
                g = step(prev)
            g[-1].numpy()
            times.append((time.perf_counter() - t0) / iters)
        out[layer] = (tuple(prev.shape), float(np.median(times)))
        prev = tf.constant(o)
    return out


def conv_flops(layer, in_shape):
    """Forward FLOPs of the layer's one convolution (dense block filter)."""
    k = layer.dense_kernel().shape
    b, h, w = in_shape[:3]
    return 2.0 * b * h * w * k[0] * k[1] * k[2] * k[3] / (layer.strides**2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, args.batch)

    plain, xla = compiled(False), compiled(True)
    tp, tx = [], []
    for _ in range(args.repeats):
        tp.append(step_seconds(plain, x, y, args.iters))
        tx.append(step_seconds(xla, x, y, args.iters))
    tp, tx = float(np.median(tp)), float(np.median(tx))
    print(table(
        [
            {"train step": "plain (train.xla: false)", "ms": 1e3 * tp, "img/s": args.batch / tp, "ratio": 1.0},
            {"train step": "jit_compile=True (train.xla: true)", "ms": 1e3 * tx, "img/s": args.batch / tx,
             "ratio": tx / tp},
        ],
        f"H-Net training step, batch {args.batch} (ratio: time / plain)",
    ))

    per_layer = layer_seconds(plain, x, args.iters, args.repeats)
    total = sum(t for _, t in per_layer.values())
    rows, groups = [], {}
    for layer, (shape, t) in per_layer.items():
        kind = type(layer).__name__
        groups[kind] = groups.get(kind, 0.0) + t
        row = {"layer": layer.name, "input": "x".join(str(s) for s in shape[1:]), "ms": 1e3 * t, "share": t / total}
        row["GFLOP/s"] = 3 * conv_flops(layer, shape) / t / 1e9 if kind == "HarmonicConv2D" else ""
        rows.append(row)
    print(table(rows, "forward + backward of each layer alone (share of the sum over layers)"))
    print(table(
        [{"layer type": k, "ms": 1e3 * v, "share": v / total} for k, v in sorted(groups.items(), key=lambda kv: -kv[1])],
        "by layer type",
    ))


if __name__ == "__main__":
    main()
