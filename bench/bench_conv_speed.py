"""Speed of the shift-invariance layers, as ratios against Keras layers timed in the same run.

1. BlurPool2D (stride 2) against keras DepthwiseConv2D with the same kernel
   size and stride (forward + backward: gradients to the input and to every
   trainable weight). Goal (issue 5): ratio <= 1.2. Two alternative
   BlurPool implementations (tf.pad(REFLECT) then one k x k or two 1-D passes)
   are timed beside it, which is why the layer runs two 1-D passes that pad
   inside the convolution, correcting only the border outputs for reflect and
   circular padding (layers/common/_ops.py, _blur_axis).
2. SpatialSeparableConv2D (rank 1 and 2) against Conv2D at k = 3, 5, 7:
   time ratios and parameter counts.

    PYTHONPATH=. .venv/bin/python bench/bench_conv_speed.py [--batch 32 --size 32 --channels 32] [--onednn both]

TensorFlow has two CPU kernel sets: its own (Eigen, whose limits the GPU
kernels share) and oneDNN's, which it turns on by default only on CPUs with
AVX-512 VNNI/AMX. `--onednn both` (the default) runs the whole measurement
twice in one run, in two child processes with TF_ENABLE_ONEDNN_OPTS=0 and =1
(the variable is read when TensorFlow loads), and tables the ratios side by
side; `--onednn 0` or `1` measures in this process with that setting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__" and "--onednn" in sys.argv and sys.argv[sys.argv.index("--onednn") + 1] in ("0", "1"):
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = sys.argv[sys.argv.index("--onednn") + 1]  # before TensorFlow loads

from common import table  # noqa: E402  (puts the project root on sys.path)

import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from layers.common._ops import binomial_filter, centered_pads  # noqa: E402
from layers.shift.blurpool import BlurPool2D  # noqa: E402
from layers.shift.spatial_separable_conv import SpatialSeparableConv2D  # noqa: E402


def step_fn(call, weights):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = call(x)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x] + weights)

    return step


def time_all(fns: dict, x, reps: int) -> dict:
    """Median seconds per forward+backward step of each function, measured interleaved (fair under noise)."""
    for f in fns.values():
        f(x), f(x)  # trace and warm up
    times = {n: [] for n in fns}
    for _ in range(reps):
        for n, f in fns.items():
            t0 = time.perf_counter()
            [g.numpy() for g in f(x) if g is not None]
            times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(t)) for n, t in times.items()}


def naive_blurpool(k, two_passes):
    """The alternatives: tf.pad(REFLECT) (MirrorPad's own gradient), one k x k pass or two 1-D passes."""
    f = binomial_filter(k).astype("float32")
    before, after = centered_pads(k)

    def call(x):
        c = x.shape[-1]
        xp = tf.pad(x, [[0, 0], [before, after], [before, after], [0, 0]], mode="REFLECT")
        if not two_passes:
            kernel = np.tile(np.outer(f, f)[:, :, None, None], (1, 1, c, 1))
            return tf.nn.depthwise_conv2d(xp, kernel, (1, 2, 2, 1), "VALID")
        v = np.tile(f[:, None, None, None], (1, 1, c, 1))
        y = tf.nn.depthwise_conv2d(xp, v, (1, 1, 1, 1), "VALID")
        return tf.nn.depthwise_conv2d(y, v.reshape(1, k, c, 1), (1, 2, 2, 1), "VALID")

    return call


def both(args) -> None:
    """Measure in two children, oneDNN off then on; table each ratio side by side."""
    results = {}
    for flag in ("0", "1"):
        argv = [sys.executable, os.path.abspath(__file__), "--onednn", flag, "--json", "--batch", str(args.batch),
                "--size", str(args.size), "--channels", str(args.channels), "--reps", str(args.reps)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        results[flag] = json.loads(out.strip().splitlines()[-1])
    for name in ("blurpool", "separable"):
        rows = []
        for off, on in zip(results["0"][name], results["1"][name]):
            row = {"k": off["k"]}
            for key in off:
                if key != "k" and ("/" in key or "ratio" in key):
                    row[f"{key} (oneDNN off)"] = off[key]
                    row[f"{key} (on)"] = on[key]
            rows.append(row)
        what = ("BlurPool2D (stride 2) vs DepthwiseConv2D" if name == "blurpool"
                else f"SpatialSeparableConv2D vs Conv2D ({args.channels} filters, same)")
        print(table(rows, f"{what}, forward+backward, input {(args.batch, args.size, args.size, args.channels)}, "
                          "TensorFlow with oneDNN off and on"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--onednn", choices=("0", "1", "both"), default="both",
                        help="TensorFlow's kernel set: 0 (its own, as on GPUs), 1 (oneDNN), both (two children)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line at the end")
    args = parser.parse_args()
    if args.onednn == "both":
        return both(args)
    results = {}
    shape = (args.batch, args.size, args.size, args.channels)
    x = tf.random.stateless_normal(shape, seed=(0, 0))

    rows = []
    for k in (3, 5, 7):
        dw = keras.layers.DepthwiseConv2D(k, strides=2, padding="same", use_bias=False)
        dw.build(shape)
        fns = {"dw": step_fn(dw, dw.trainable_weights)}
        for padding in ("reflect", "zero", "circular"):
            fns[padding] = step_fn(BlurPool2D(k, 2, padding), [])
        fns["naive_2d"] = step_fn(naive_blurpool(k, False), [])
        fns["naive_2pass"] = step_fn(naive_blurpool(k, True), [])
        t = time_all(fns, x, args.reps)
        rows.append(
            {
                "k": k,
                "DepthwiseConv2D ms": 1e3 * t["dw"],
                "BlurPool2D reflect / DW": t["reflect"] / t["dw"],
                "zero / DW": t["zero"] / t["dw"],
                "circular / DW": t["circular"] / t["dw"],
                "tf.pad + k x k / DW": t["naive_2d"] / t["dw"],
                "tf.pad + 2 passes / DW": t["naive_2pass"] / t["dw"],
            }
        )
        print(rows[-1], flush=True)
    results["blurpool"] = rows
    print(table(rows, f"BlurPool2D (stride 2) vs DepthwiseConv2D, forward+backward, input {shape}"))

    rows = []
    for k in (3, 5, 7):
        conv = keras.layers.Conv2D(args.channels, k, padding="same")
        conv.build(shape)
        fns = {"conv": step_fn(conv, conv.trainable_weights)}
        params = {"conv": conv.count_params()}
        for rank in (1, 2):
            layer = SpatialSeparableConv2D(args.channels, k, rank=rank, padding="same")
            layer.build(shape)
            fns[rank] = step_fn(layer, layer.trainable_weights)
            params[rank] = layer.count_params()
        t = time_all(fns, x, args.reps)
        rows.append(
            {
                "k": k,
                "Conv2D ms": 1e3 * t["conv"],
                "Conv2D params": params["conv"],
                "rank 1 time ratio": t[1] / t["conv"],
                "rank 1 params": params[1],
                "rank 2 time ratio": t[2] / t["conv"],
                "rank 2 params": params[2],
            }
        )
        print(rows[-1], flush=True)
    results["separable"] = rows
    print(table(rows, f"SpatialSeparableConv2D vs Conv2D ({args.channels} filters, same), forward+backward, input {shape}"))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
