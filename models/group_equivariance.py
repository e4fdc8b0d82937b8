"""Equivariance error of the C_N and D_N group convolutions (LiftingConv2D, GroupConv2D), NumPy + SciPy.

For the evaluation (one figure per layer and angle, beside the harmonic
layers' rotation errors and the scale layers' scale errors) and for tests.

The relation measured (layers/lifting_conv.py, layers/group_conv.py):
rotating a layer's input by g = 360 s / N degrees (counter-clockwise) and,
for a group convolution, rolling the input's orientation axis by s, rotates
every output map by g and rolls the output's orientation axis by s:

    layer(R_g x)  ~  roll(R_g layer(x), s, axis=3)      (maps [B, H, W, N, C]).

The error is ||layer(R x) - roll(R layer(x))|| / ||roll(R layer(x))||
(relative L2) on the central disk of the output one pixel inside the
inscribed circle, the input first cut to its central disk (zero outside) so
that zero padding and rotation agree about what lies beyond the frame: the
same resampling (bilinear, zero fill; exact `np.rot90` at multiples of 90
degrees on square maps) and the same disks as the harmonic layers' figure
(pipelines/invariance.py `layer_equivariance_error`), so the two families'
figures compare. Exact (float rounding) at multiples of 90 degrees when N is
a multiple of 4; at the group's other angles (45 degrees for N = 8, 22.5 for
N = 16) it holds the pixel grid's interpolation error.

Mirrors (D_N layers, `mirror_equivariance_error`): the element g = R_a F
(mirror the columns, then rotate by a) acts on the maps' group axis by its
permutation (layers/_groups.py), layer(g x) ~ g layer(x); measured for the
mirror alone ('flip') and for the mirror after each promised rotation
('flip_rot90', ...): exact for D4 and for D8's quarter turns.

Only angles the construction promises are measured: multiples of 360 / N.
Between them no orientation shift exists for a group convolution's input
(its orientation axis cannot be rolled by a fraction), so there is nothing
to compare with; the invariance of the orientation-pooled maps at such
angles is what the evaluation's rotation curve measures, and the layers'
docstrings give the nearest-shift figures of single layers.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from layers._groups import Group
from models.image_transforms import disk_mask, rotate


def is_group_conv(layer) -> bool:
    """A C_N convolution with an orientation axis (LiftingConv2D, GroupConv2D) or a layer with their interface."""
    return all(hasattr(layer, a) for a in ("group_order", "stacked_kernel", "filters"))


def group_layers(model) -> list:
    """The model's group convolutions (top-level layers), in order."""
    return [layer for layer in getattr(model, "layers", []) if is_group_conv(layer)]


def promised_angles(group_order: int, angles: Sequence[float] = ()) -> list[float]:
    """The angles (degrees) at which a C_N layer is equivariant, of `angles`, plus the group's generator 360 / N.

    `angles` that are not multiples of 360 / N (within 1e-6 degrees) are left
    out; the generator is always included for N >= 2 (N = 1 has no rotation).
    """
    n = int(group_order)
    if n < 1:
        raise ValueError(f"group_order must be a positive integer, got {group_order!r}")
    step = 360.0 / n
    out = {step} if n >= 2 else set()
    for a in angles:
        s = float(a) / step
        if abs(s - round(s)) < 1e-6 / step:
            out.add(float(a))
    return sorted(out)


def layer_group(layer) -> Group:
    """The group of a group convolution (C_N for layers that only name `group_order`)."""
    return getattr(layer, "_group", None) or Group(int(layer.group_order))


def _transform(x: np.ndarray, group: Group, g: int) -> np.ndarray:
    """g on a map: mirror and rotate space; on [B, H, W, |G|, C] also permute the group axis."""
    out = np.flip(x, axis=2) if group.mirrored(g) else x
    out = rotate(out, group.degrees(g))
    return out[..., group.permutation(g), :] if out.ndim == 5 else out


def _element_errors(layer, inputs: np.ndarray, elements: dict) -> dict:
    """{key: relative L2 error of layer(g x) against g layer(x)} on the central disks, for {key: element g}."""
    x = np.asarray(inputs, np.float32)
    group = layer_group(layer)
    if x.ndim == 5 and x.shape[3] != group.order:
        raise ValueError(f"the input's orientation axis has {x.shape[3]} entries, the layer's group "
                         f"{group.name} has {group.order} elements")
    h, w = x.shape[1:3]
    x = x * disk_mask(h, w, (min(h, w) - 1) / 2.0).reshape((1, h, w) + (1,) * (x.ndim - 3))
    y = np.asarray(keras.ops.convert_to_numpy(layer(x)), np.float64)
    oh, ow = y.shape[1:3]
    out_mask = disk_mask(oh, ow, (min(oh, ow) - 1) / 2.0 - 1.0)
    errors = {}
    for key, g in elements.items():
        got = np.asarray(keras.ops.convert_to_numpy(layer(np.ascontiguousarray(_transform(x, group, g), np.float32))),
                         np.float64)
        want = _transform(y, group, g)
        diff = (got - want)[:, out_mask]
        ref = want[:, out_mask]
        errors[key] = float(np.sqrt(np.sum(diff**2) / max(np.sum(ref**2), 1e-30)))
    return errors


def group_equivariance_error(layer, inputs: np.ndarray, angles: Sequence[float]) -> dict[float, float]:
    """Relative L2 error of a C_N or D_N convolution's rotation equivariance at each promised angle.

    Args:
        layer: a LiftingConv2D or GroupConv2D (stride 1), built or not.
        inputs: what the layer receives: [B, H, W, C] (lifting) or [B, H, W, |G|, C].
        angles: degrees; those that are not multiples of 360 / N are left out.
    Returns:
        {angle: error} for each angle of `promised_angles(N, angles)`.
    """
    group = layer_group(layer)
    n = group.rotations
    return _element_errors(layer, inputs, {a: group.index(0, int(round(a * n / 360.0))) for a in
                                           promised_angles(n, angles)})


def mirror_equivariance_error(layer, inputs: np.ndarray, angles: Sequence[float]) -> dict[str, float]:
    """Relative L2 error of a D_N convolution's mirror equivariance: 'flip' (left-right), and the flip followed
    by each promised rotation ('flip_rot90', ...); {} for a C_N layer."""
    group = layer_group(layer)
    if not group.mirrors:
        return {}
    n = group.rotations
    elements = {"flip": group.index(1, 0)}
    for a in promised_angles(n, angles):
        g = group.index(1, int(round(a * n / 360.0)))
        elements[group.label(g).replace("+", "_")] = g
    return _element_errors(layer, inputs, elements)


def _layer_inputs(model, images):
    for layer in group_layers(model):
        feed = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, layer.input)
        yield layer, np.asarray(keras.ops.convert_to_numpy(feed(np.asarray(images, np.float32), training=False)))


def group_equivariance(model, images: np.ndarray, angles: Sequence[float]) -> dict[str, dict[float, float]]:
    """`group_equivariance_error` of every group convolution of a functional `model`, each fed
    what it receives from `images` in the model. Keys: layer name -> angle (degrees) -> error."""
    return {layer.name: group_equivariance_error(layer, x, angles) for layer, x in _layer_inputs(model, images)}


def mirror_equivariance(model, images: np.ndarray, angles: Sequence[float]) -> dict[str, dict[str, float]]:
    """`mirror_equivariance_error` of every D_N convolution of `model`: layer name -> element -> error."""
    return {layer.name: mirror_equivariance_error(layer, x, angles) for layer, x in _layer_inputs(model, images)
            if layer_group(layer).mirrors}
