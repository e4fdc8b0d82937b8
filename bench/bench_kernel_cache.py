"""Eager inference of the basis convolutions with their dense kernel kept (BasisConv2D's cache) against rebuilt.

BasisConv2D (layers/common/conv.py) keeps the kernel it built at eager
inference and reuses it while the coefficients are unchanged (checked by
comparing them with a copy: one pass over J * C_in * filters values and a
device sync). This times a call with the kernel kept and a call that
rebuilds it (the cache emptied before each), interleaved, median of the
repeats, on the backend in use (KERAS_BACKEND), autograd off on PyTorch as
in Keras' predict. Printed: milliseconds per call and the ratio kept /
rebuilt (below 1: the cache saves time).

    PYTHONPATH=. .venv/bin/python bench/bench_kernel_cache.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import table  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from layers.group.group_conv import GroupConv2D  # noqa: E402
from layers.harmonic.harmonic_conv import HarmonicConv2D  # noqa: E402
from layers.scale.scale_conv import ScaleConv2D  # noqa: E402

CASES = [
    ("GroupConv2D(32, 5, C8)", lambda: GroupConv2D(32, 5, group_order=8), (28, 28, 8, 32)),
    ("HarmonicConv2D(32, 5)", lambda: HarmonicConv2D(32, 5), (28, 28, 2, 2, 32)),
    ("ScaleConv2D(32, 9, interscale 2)", lambda: ScaleConv2D(32, 9, interscale=2), (28, 28, 3, 32)),
]


def no_grad():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    rows = []
    for name, make, shape in CASES:
        layer = make()
        for batch in (1, 8):
            x = np.random.default_rng(0).standard_normal((batch, *shape)).astype("float32")
            kept, rebuilt = [], []
            with no_grad():
                keras.ops.convert_to_numpy(layer(x))
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    keras.ops.convert_to_numpy(layer(x))
                    kept.append(time.perf_counter() - t)
                    layer._kernel_cache.clear()
                    t = time.perf_counter()
                    keras.ops.convert_to_numpy(layer(x))
                    rebuilt.append(time.perf_counter() - t)
            k, r = float(np.median(kept)) * 1e3, float(np.median(rebuilt)) * 1e3
            rows.append({"layer": name, "batch": batch, "kept ms": k, "rebuilt ms": r, "kept / rebuilt": k / r})
    print(table(rows, f"Eager inference, {keras.backend.backend()}, median of {args.repeats}"))


if __name__ == "__main__":
    main()
