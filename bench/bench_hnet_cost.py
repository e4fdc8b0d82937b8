"""Cost of HarmonicConv2D against keras Conv2D with the same real channel counts.

A harmonic layer with orders {0, 1} maps M_in*2*C_in real channels to
M_out*2*C_out (4*C_in -> 4*C_out); the reference is a Conv2D of 4*C_in ->
4*C_out channels, same kernel size and input size. Both are timed
forward + backward (gradients of all weights and the input) inside one
tf.function, interleaved, median of several repeats; the ratio is printed
(goal in the issue: <= 1.3). The harmonic layer's extra work is building
its block filter (one constant matmul) and the reshapes.

    PYTHONPATH=. .venv/bin/python bench/bench_hnet_cost.py
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

from layers.harmonic.harmonic_conv import HarmonicConv2D  # noqa: E402


def step_fn(layer, x):
    layer(x)  # build
    weights = layer.trainable_weights

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(loss, weights + [x])

    return step


def timed(step, x, iters):
    step(x)
    t0 = time.perf_counter()
    for _ in range(iters):
        out = step(x)
    _ = [o.numpy() for o in out[:1]]
    return (time.perf_counter() - t0) / iters


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--kernel", type=int, default=5)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for c_in, c_out in ((8, 8), (16, 16), (32, 32)):
        xh = tf.constant(rng.standard_normal((args.batch, args.size, args.size, 2, 2, c_in)).astype("float32"))
        xc = tf.reshape(xh, (args.batch, args.size, args.size, 4 * c_in))
        h = step_fn(HarmonicConv2D(c_out, args.kernel), xh)
        c = step_fn(keras.layers.Conv2D(4 * c_out, args.kernel, padding="same", use_bias=False), xc)
        th, tc = [], []
        for _ in range(args.repeats):
            th.append(timed(h, xh, args.iters))
            tc.append(timed(c, xc, args.iters))
        th, tc = float(np.median(th)), float(np.median(tc))
        rows.append({
            "channels (real)": f"{4 * c_in}->{4 * c_out}",
            "input": f"{args.batch}x{args.size}x{args.size}",
            "kernel": args.kernel,
            "HarmonicConv2D ms": 1e3 * th,
            "Conv2D ms": 1e3 * tc,
            "ratio": th / tc,
        })
    print(table(rows, "forward + backward, HarmonicConv2D (orders {0,1}) vs Conv2D (goal: ratio <= 1.3)"))


if __name__ == "__main__":
    main()
