"""Invariance metrics: pure functions of a classifier and a set of test images.

A classifier here is `predict(images) -> class ids`, images float32 in [0, 1]
`[N, H, W, C]`. Every metric draws its randomness from the `seed` it is given,
so two evaluations of the same model on the same images give the same figures.

- `rotation_curve`: accuracy with the inputs rotated by each angle about the
  image centre (counter-clockwise, bilinear, zero fill; multiples of 90 degrees
  on square images are the exact `np.rot90`, so a model exactly invariant to
  90-degree rotations scores exactly equal accuracy at 0, 90, 180 and 270).
- `shift_consistency`: Zhang (ICML 2019, "Making convolutional networks
  shift-invariant again"): each image is shifted twice by random offsets drawn
  uniformly from [-r, r] pixels on each axis, and the figure is the fraction
  of images whose two predicted classes agree. `mode="pad"` shifts by
  zero-padding and cropping (content leaves the frame), `mode="circular"`
  rolls the image (`np.roll` / `tf.roll`, nothing is lost).
- `scale_curve`: accuracy with the inputs rescaled about the centre on the
  same canvas by each factor (data/scale_augment.py's `rescale_batch`).
- `elastic_curve`: accuracy against the strength `alpha` of the elastic warp
  of `data.augment.ElasticWarp` (Simard et al. 2003), one fixed field per image.
- `mirror_accuracy`, `logit_changes`: accuracy on mirrored images, and how
  far a Keras model's logits move under a transform.

The layers' equivariance errors (every family, one protocol) are
models/equivariance.py's.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from models.image_transforms import disk_mask, rotate  # noqa: F401  (re-exported: the evaluation's transforms)

Predict = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------- transforms


def random_offsets(n: int, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Integer offsets `[n, 2]` (rows, columns), each uniform on [-max_shift, max_shift]."""
    return rng.integers(-max_shift, max_shift + 1, size=(n, 2))


def shift(images: np.ndarray, offsets: np.ndarray, mode: str = "pad") -> np.ndarray:
    """Shift each image `[N, H, W, C]` by its own `offsets[i] = (dy, dx)` pixels (down, right).

    `mode="pad"`: zero-pad and crop (pixels shifted out are lost, zeros come
    in); `mode="circular"`: wrap around, as `np.roll(image, (dy, dx), (0, 1))`.
    """
    images = np.asarray(images)
    n, h, w = images.shape[:3]
    offsets = np.asarray(offsets).reshape(n, 2)
    rows = np.arange(h)[None, :] - offsets[:, :1]  # source row of each output row
    cols = np.arange(w)[None, :] - offsets[:, 1:]
    if mode == "circular":
        return images[np.arange(n)[:, None, None], (rows % h)[:, :, None], (cols % w)[:, None, :]]
    if mode != "pad":
        raise ValueError(f"mode must be 'pad' or 'circular', got {mode!r}")
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    out = images[np.arange(n)[:, None, None], np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :]]
    return np.where(valid.reshape(valid.shape + (1,) * (images.ndim - 3)), out, np.zeros((), images.dtype))


def elastic_warp(images: np.ndarray, alpha: float, sigma: float, seed: int = 0, batch_size: int = 512) -> np.ndarray:
    """`data.augment.ElasticWarp(alpha, sigma)` applied with a fixed stateless seed per batch."""
    if alpha == 0:
        return np.asarray(images)
    import tensorflow as tf

    from data.augment import ElasticWarp

    layer = ElasticWarp(alpha=float(alpha), sigma=float(sigma))
    out = []
    for b, i in enumerate(range(0, len(images), batch_size)):
        x = tf.constant(np.asarray(images[i : i + batch_size], np.float32))
        out.append(np.asarray(layer(x, training=True, seed=tf.constant([seed, b], tf.int64))))
    return np.concatenate(out).astype(np.asarray(images).dtype, copy=False)


# ----------------------------------------------------------------------------- metrics


def accuracy(predict: Predict, images: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predict(images)) == np.asarray(labels)))


def rotation_angles(step: int) -> list[int]:
    return list(range(0, 360, int(step)))


def rotation_curve(predict: Predict, images, labels, angles: Sequence[float]) -> dict[float, float]:
    """Accuracy at each input rotation angle (degrees)."""
    return {a: accuracy(predict, rotate(images, a), labels) for a in angles}


def shift_consistency(predict: Predict, images, max_shift: int, seed: int = 0, mode: str = "pad") -> float:
    """Fraction of images whose predictions agree under two random shifts (Zhang 2019)."""
    rng = np.random.default_rng(seed)
    n = len(images)
    a = np.asarray(predict(shift(images, random_offsets(n, max_shift, rng), mode)))
    b = np.asarray(predict(shift(images, random_offsets(n, max_shift, rng), mode)))
    return float(np.mean(a == b))


def scale_curve(predict: Predict, images, labels, factors: Sequence[float]) -> dict[float, float]:
    """Accuracy at each input rescaling factor on the same canvas (< 1 shrinks into the centre,
    anti-aliased; > 1 enlarges and crops), the op of data/scale_augment.py."""
    from data.scale_augment import rescale_batch

    x = np.asarray(images, np.float32)
    return {f: accuracy(predict, np.clip(rescale_batch(x, float(f)), 0.0, 1.0), labels) for f in factors}


def elastic_curve(predict: Predict, images, labels, alphas: Sequence[float], sigma: float, seed: int = 0):
    """Accuracy at each elastic-warp strength alpha (pixels) for smoothing `sigma`."""
    return {a: accuracy(predict, elastic_warp(images, a, sigma, seed), labels) for a in alphas}


MIRRORS = {  # the mirrors of the evaluation, on [N, H, W, C] images
    "flip_lr": lambda x: x[:, :, ::-1],  # left-right
    "flip_ud": lambda x: x[:, ::-1],  # up-down
    "transpose": lambda x: np.swapaxes(x, 1, 2),  # about the main diagonal (square images only)
}


def mirror_accuracy(predict: Predict, images, labels) -> dict[str, float]:
    """Accuracy on mirrored copies of the images: left-right, up-down and (square images) transposed."""
    x = np.asarray(images)
    names = [n for n in MIRRORS if n != "transpose" or x.shape[1] == x.shape[2]]
    return {n: accuracy(predict, np.ascontiguousarray(MIRRORS[n](x)), labels) for n in names}


def logit_changes(logits, images, transforms: dict) -> dict[str, float]:
    """{name: mean over images of ||f(T x) - f(x)|| / ||f(x)||} for the logits f (`logits(images) -> [N, K]`, a
    Keras model's: pipelines/evaluation.py `keras_logits`) and each transform T of `transforms` (0: invariant);
    f(x) is computed once."""
    x = np.asarray(images, np.float32)
    a = np.asarray(logits(x), np.float64)
    norm = np.maximum(np.linalg.norm(a, axis=-1), 1e-12)
    return {name: float(np.mean(np.linalg.norm(np.asarray(logits(np.ascontiguousarray(t(x))), np.float64) - a, axis=-1)
                                / norm)) for name, t in transforms.items()}
