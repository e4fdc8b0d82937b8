"""Scale-equivariance error of the scale layers (ScaleLiftingConv2D, ScaleConv2D), NumPy + SciPy.

For the evaluation (one figure per layer and scale, beside the harmonic
layers' rotation errors) and for the layers' tests and docstrings.

The relation measured: enlarging a layer's input by a = scale_step**steps
about the image centre moves output scale s to scale s + steps,

    layer(T_a x)[..., s + steps, :]  ~  T_a(layer(x)[..., s, :]),

with T_a a cubic-spline enlargement on the same canvas (zero outside). The
error is the relative L2 norm of the difference on the central disk where
neither the zero padding of the convolution nor the frame of the canvas
enters (radius (min(H, W) - 1) / 2 - (kernel_size - 1) / 2 - 1). For a
scale-to-scale layer the input's scales are shifted too (in'[s + steps] =
T_a in[s]), and only the output scales whose inputs all exist are measured
(s + steps + interscale - 1 < num_scales). The error holds the layer's
discretisation AND the cubic resampling's own error, so smooth inputs give
the layer's figure; digits give larger ones.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from scipy import ndimage

from models.image_transforms import disk_mask


def enlarge(images: np.ndarray, factor: float, order: int = 3) -> np.ndarray:
    """Enlarge `[N, H, W, ...]` by `factor` about the centre on the same canvas (spline of `order`, zero fill)."""
    x = np.asarray(images, np.float64)
    n, h, w = x.shape[:3]
    flat = x.reshape(n, h, w, -1)
    out = np.empty_like(flat)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    matrix = np.array([1.0 / factor, 1.0 / factor])
    offset = np.array([cy - cy / factor, cx - cx / factor])
    for i in range(n):
        for c in range(flat.shape[-1]):
            out[i, :, :, c] = ndimage.affine_transform(flat[i, :, :, c], matrix, offset=offset, order=order,
                                                       mode="grid-constant", cval=0.0)
    return out.reshape(x.shape)


def is_scale_layer(layer) -> bool:
    """A scale-equivariant convolution (ScaleLiftingConv2D, ScaleConv2D) or a layer with their interface."""
    return all(hasattr(layer, a) for a in ("num_scales", "scale_step", "kernel_size", "basis"))


def scale_equivariance_error(layer, inputs: np.ndarray, steps: int = 1) -> dict[int, float]:
    """Relative L2 error of `layer`'s scale equivariance for an enlargement by scale_step**steps.

    Args:
        layer: a built-or-not ScaleLiftingConv2D or ScaleConv2D (stride 1, 'same').
        inputs: what the layer receives: [B, H, W, C] (lifting) or [B, H, W, S, C].
        steps: how many scale steps the enlargement spans (>= 1).
    Returns:
        {s: error} for each source output scale s (the target is s + steps).
    """
    if not isinstance(steps, int) or steps < 1 or steps >= layer.num_scales:
        raise ValueError(f"steps must be an integer from 1 to num_scales - 1 ({layer.num_scales - 1}), got {steps!r}")
    x = np.asarray(inputs, np.float32)
    a = float(layer.scale_step) ** steps
    y = np.asarray(keras.ops.convert_to_numpy(layer(x)), np.float64)
    xt = enlarge(x, a)
    if x.ndim == 5:  # shift the input's scales up by `steps`; scales below read T(in[0]) (never measured)
        xt = np.concatenate([np.repeat(xt[:, :, :, :1], steps, axis=3), xt[:, :, :, : layer.num_scales - steps]], axis=3)
    got = np.asarray(keras.ops.convert_to_numpy(layer(xt.astype(np.float32))), np.float64)
    want = enlarge(y, a)
    h, w = y.shape[1:3]
    mask = disk_mask(h, w, (min(h, w) - 1) / 2.0 - (layer.kernel_size - 1) / 2.0 - 1.0)
    last = layer.num_scales - steps - (getattr(layer, "interscale", 1) - 1 if x.ndim == 5 else 0)
    errors = {}
    for s in range(max(last, 0)):
        d = (got[:, :, :, s + steps] - want[:, :, :, s])[:, mask]
        ref = want[:, :, :, s][:, mask]
        errors[s] = float(np.sqrt(np.sum(d**2) / max(np.sum(ref**2), 1e-30)))
    return errors


def scale_layers(model) -> list:
    """The model's scale convolutions (top-level layers), in order."""
    return [layer for layer in getattr(model, "layers", []) if is_scale_layer(layer)]


def scale_equivariance(model, images: np.ndarray, steps: Sequence[int] = (1,)) -> dict[str, dict[str, float]]:
    """`scale_equivariance_error` of every scale convolution of a functional `model`, each fed
    what it receives from `images` in the model. Keys: layer name -> "s<from>_s<to>" -> error."""
    import keras

    out = {}
    for layer in scale_layers(model):
        feed = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, layer.input)
        x = np.asarray(keras.ops.convert_to_numpy(feed(np.asarray(images, np.float32), training=False)))
        errs = {}
        for t in steps:
            if 1 <= t < layer.num_scales:
                for s, e in scale_equivariance_error(layer, x, t).items():
                    errs[f"s{s}_s{s + t}"] = e
        out[layer.name] = errs
    return out
