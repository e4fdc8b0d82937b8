"""Shared helpers of the benchmarks: the reference MNIST file and the rotated-MNIST protocol.

The MNIST file lives beside the project (`../shared/data/mnist-partial.npz`);
the project never depends on it, and a benchmark that needs it exits 0 with a
message when it is absent. Override the location with MNIST_NPZ.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MNIST_NPZ = os.environ.get("MNIST_NPZ", os.path.join(ROOT, "..", "shared", "data", "mnist-partial.npz"))


def mnist_or_skip(path: str = MNIST_NPZ) -> dict[str, np.ndarray]:
    """Load the reference MNIST arrays (uint8, [N, 28, 28, 1]) or exit 0 with a message."""
    if not os.path.isfile(path):
        print(f"SKIP: {path} is absent (set MNIST_NPZ to the reference MNIST file to run this benchmark)")
        sys.exit(0)
    with np.load(path) as f:
        return {k: (f[k][..., None] if k.startswith("x") else f[k].astype("int64")) for k in f.files}


def rotate_images(x: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Rotate each image by its angle (degrees, counter-clockwise), bilinear, corners filled with 0."""
    from scipy import ndimage

    out = np.empty_like(x)
    for i, (img, a) in enumerate(zip(x, angles_deg)):
        r = ndimage.rotate(img.astype("float32"), a, axes=(1, 0), reshape=False, order=1, mode="constant", cval=0.0)
        out[i] = np.clip(np.rint(r), 0, 255).astype(x.dtype)
    return out


def rotated_mnist(mnist: dict[str, np.ndarray], n_train: int = 12000):
    """The protocol of ../shared/data/README.md: x_train[:12000] and x_test, each rotated
    once by an angle uniform in [0, 360) (seed 0 for train, seed 1 for test)."""
    xtr, ytr = mnist["x_train"][:n_train], mnist["y_train"][:n_train]
    xte, yte = mnist["x_test"], mnist["y_test"]
    a_tr = np.random.default_rng(0).uniform(0, 360, len(xtr))
    a_te = np.random.default_rng(1).uniform(0, 360, len(xte))
    return (rotate_images(xtr, a_tr), ytr), (rotate_images(xte, a_te), yte)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def table(rows: list[dict], title: str = "") -> str:
    """A Markdown table of `rows` (dicts; a key some rows lack is an empty cell in those), ready for the README."""
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = [f"| {' | '.join(keys)} |", f"|{'---|' * len(keys)}"]
    lines += [f"| {' | '.join(fmt(r[k]) if k in r else '' for k in keys)} |" for r in rows]
    return (f"\n{title}\n" if title else "\n") + "\n".join(lines) + "\n"
