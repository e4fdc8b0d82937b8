"""Shared helpers of the benchmarks: the reference MNIST file and the rotated-MNIST protocol.

The MNIST file lives beside the project (`../shared/data/mnist-partial.npz`);
the project never depends on it, and a benchmark that needs it exits 0 with a
message when it is absent there (`make bench` on a machine without it). Override
the location with MNIST_NPZ; a file named there that is absent is an error (exit 2).
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


def missing(what: str) -> None:
    """A data file or folder the user named that is not there: one error line and exit code 2, not a skip that
    reads as a pass."""
    print(f"error: {what}", file=sys.stderr)
    sys.exit(2)


def mnist_named_but_absent() -> None:
    """Exit 2 when MNIST_NPZ names a file that is not there (the default location may be absent: a skip)."""
    if "MNIST_NPZ" in os.environ and not os.path.isfile(MNIST_NPZ):
        missing(f"MNIST_NPZ={MNIST_NPZ} is not a file (the reference MNIST file: ../shared/data/README.md)")


def mnist_or_skip(path: str = MNIST_NPZ) -> dict[str, np.ndarray]:
    """Load the reference MNIST arrays (uint8, [N, 28, 28, 1]); exit 0 with a message when the default file is
    absent, 2 when the file MNIST_NPZ names is."""
    if not os.path.isfile(path):
        mnist_named_but_absent()
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


def rotated_mnist(mnist: dict[str, np.ndarray], n_train: int = 12000, angles: bool = False):
    """The protocol of ../shared/data/README.md: x_train[:12000] and x_test, each rotated
    once by an angle uniform in [0, 360) (seed 0 for train, seed 1 for test). With `angles`, each split
    also carries its angles in degrees: (x, y, angles)."""
    xtr, ytr = mnist["x_train"][:n_train], mnist["y_train"][:n_train]
    xte, yte = mnist["x_test"], mnist["y_test"]
    a_tr = np.random.default_rng(0).uniform(0, 360, len(xtr))
    a_te = np.random.default_rng(1).uniform(0, 360, len(xte))
    if angles:
        return (rotate_images(xtr, a_tr), ytr, a_tr), (rotate_images(xte, a_te), yte, a_te)
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


def rates_in_turns(specs: dict, x, y, batch_size: int, lr: float, rounds: int, seed: int = 0):
    """Steady-state training images/s of each model, measured in turns (model A, B, ..., A, B, ...) so that a
    shared machine's load falls on all of them alike: `specs` maps a name to (registry builder, params); each
    model is built for x's image shape with y.max() + 1 classes, compiled (Adam at `lr`), traced on two
    batches, then timed for one epoch on (x, y) `rounds` times. Returns ({name: median images/s},
    {name: parameters})."""
    import time

    import keras

    import models

    fitted = {}
    for name, (builder, params) in specs.items():
        keras.utils.set_random_seed(seed)
        m = models.build_model(builder, x.shape[1:], int(y.max()) + 1, **params)
        m.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(x[: 2 * batch_size], y[: 2 * batch_size], batch_size=batch_size, verbose=0)  # trace
        fitted[name] = m
    rates = {name: [] for name in fitted}
    for _ in range(rounds):
        for name, m in fitted.items():
            t0 = time.perf_counter()
            m.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
            rates[name].append(len(x) / (time.perf_counter() - t0))
    return ({name: float(np.median(r)) for name, r in rates.items()},
            {name: m.count_params() for name, m in fitted.items()})


def device_name() -> str:
    """The accelerator the backend trains on (its kind, e.g. 'NVIDIA H200'), else 'cpu'."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        d = jax.devices()[0]
        return d.device_kind if d.platform != "cpu" else "cpu"
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return "cpu"
