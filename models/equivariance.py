"""One equivariance protocol for the equivariant layer families: their group actions and one error measure.

Each family declares, in one `Family` entry of `FAMILIES`, which layers it
owns (by class, never by attribute), the elements a layer promises (and which
of them are exact on the pixel grid), and how an element acts on the layer's
input and on its output. `equivariance_error(layer, x, element)` then
measures, for every family alike,

    || layer(g x) - g layer(x) || / || g layer(x) ||        (relative L2)

on a central disk of the output; `equivariance(model, images, angles)`
measures every owned layer of a model, each fed what it receives from the
images in the model. The evaluation (pipelines/evaluation.py: metrics
`equiv_err_<family>_<layer>_<element>` and `equiv_err_<family>_mean_<element>`),
`make compare`, the plots and the layer tests read these. A new family plugs
in with one more `Family` in `FAMILIES`.

The families:

- `harmonic` (HarmonicConv2D and its subclasses): rotation by any angle;
  the input (a real image, or complex streams of the layer's input orders) is
  rotated, stream m multiplied by e^{i m theta}; the output likewise with the
  layer's orders. The input is cut to its central disk (zero outside) so that
  zero padding and rotation agree about what lies beyond the frame. Exact at
  multiples of 90 degrees (elements `rot<angle>`).
- `group` (LiftingConv2D, GroupConv2D on C_N or D_N, layers/group/_groups.py):
  rotations by multiples of 360/N (`rot<angle>`: only those of the asked
  angles, plus the generator) and for D_N the mirror alone and after each of
  them (`flip`, `flip_rot90`, ...). Space is rotated (and mirrored), the
  group axis permuted by the element. Exact at quarter turns and mirrors.
- `scale` (ScaleLiftingConv2D, ScaleConv2D): enlarging the input by
  scale_step**t about the centre moves output scale s to s + t (`s<s>_s<s+t>`,
  t = 1); for a scale-to-scale layer the input's scales move too. Never exact
  (cubic resampling); the disk leaves out the convolution's zero padding.

Resampling: exact `np.rot90` at quarter turns of square maps, bilinear
otherwise (models/image_transforms.py); scale: cubic spline. NumPy in and
out, `keras.ops.convert_to_numpy` on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import keras
import numpy as np
from scipy import ndimage

from layers.group._groups import Group
from layers.group.group_conv import GroupConv2D
from layers.group.lifting_conv import LiftingConv2D
from layers.harmonic.harmonic_conv import HarmonicConv2D
from layers.scale.scale_conv import ScaleConv2D
from layers.scale.scale_lifting_conv import ScaleLiftingConv2D
from models.image_transforms import disk_mask, rotate


@dataclass(frozen=True)
class Element:
    """One group element as a family acts with it: `label` names it in metrics (`rot90`, `flip_rot90`, `s0_s1`)."""

    label: str
    value: object  # harmonic: degrees; group: the element's index; scale: (steps, source scale)
    exact: bool = False  # exact on the pixel grid (the error is float rounding)


@dataclass(frozen=True)
class Family:
    """An equivariant layer family's group action (module docstring)."""

    name: str
    layer_types: tuple
    elements: Callable  # (layer, angles) -> [Element]
    prepare: Callable  # (layer, x) -> x as measured (e.g. cut to its disk)
    act_input: Callable  # (layer, x, element) -> g x
    compare: Callable  # (layer, y, y_of_gx, element) -> (want, got): g layer(x) and layer(g x), aligned
    mask: Callable  # (layer, shape of want) -> boolean [H, W] disk where the relation is measured

    def owns(self, layer) -> bool:
        return isinstance(layer, self.layer_types)


def _disk(h, w, inset=1.0):
    return disk_mask(h, w, (min(h, w) - 1) / 2.0 - inset)


def _cut_to_disk(layer, x):
    h, w = x.shape[1:3]
    return x * _disk(h, w, 0.0).reshape((1, h, w) + (1,) * (x.ndim - 3))


# ----------------------------------------------------------------------------- harmonic


def _rotate_streams(z: np.ndarray, degrees: float, orders) -> np.ndarray:
    """Rotate a harmonic map [B, H, W, M, 2, C] and multiply stream m by e^{i m theta}."""
    b, h, w = z.shape[:3]
    zr = rotate(z.reshape(b, h, w, -1), degrees)
    zr = zr.reshape(zr.shape[:3] + z.shape[3:])  # (np.rot90 swaps H and W of a non-square map)
    t = np.deg2rad(degrees)
    cos = np.cos(np.asarray(orders) * t)[:, None]  # [M, 1]
    sin = np.sin(np.asarray(orders) * t)[:, None]
    re, im = zr[..., 0, :], zr[..., 1, :]
    return np.stack([re * cos - im * sin, re * sin + im * cos], axis=-2)


def _harmonic_input(layer, x, e):
    if x.ndim == 4:
        return rotate(x, e.value)
    in_orders = layer.input_orders if layer.input_orders is not None else layer.orders
    return _rotate_streams(x, e.value, in_orders)


HARMONIC = Family(
    "harmonic", (HarmonicConv2D,),
    elements=lambda layer, angles: [Element(f"rot{float(a):g}", float(a), float(a) % 90 == 0) for a in angles],
    prepare=_cut_to_disk,
    act_input=_harmonic_input,
    compare=lambda layer, y, got, e: (_rotate_streams(y, e.value, layer.orders), got),
    mask=lambda layer, shape: _disk(shape[1], shape[2]),
)


# ----------------------------------------------------------------------------- group (C_N, D_N)


def layer_group(layer) -> Group:
    """The group of a group convolution."""
    return getattr(layer, "_group", None) or Group(int(layer.group_order))


def promised_angles(group_order: int, angles: Sequence[float] = ()) -> list[float]:
    """The angles (degrees) at which a C_N / D_N layer is equivariant, of `angles`, plus the generator 360 / N.

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


def _group_elements(layer, angles):
    g = layer_group(layer)
    n = g.rotations
    rotations = [g.index(0, int(round(a * n / 360.0))) for a in promised_angles(n, angles)]
    out = [Element(f"rot{a:g}", i, g.exact(i)) for a, i in zip(promised_angles(n, angles), rotations)]
    if g.mirrors:
        for i in [g.index(1, 0)] + [g.mul(i, g.index(1, 0)) for i in rotations]:
            out.append(Element(g.label(i).replace("+", "_"), i, g.exact(i)))
    return list({e.label: e for e in out}.values())


def _group_act(layer, x, e):
    g = layer_group(layer)
    out = np.flip(x, axis=2) if g.mirrored(e.value) else x
    out = rotate(out, g.degrees(e.value))
    return out[..., g.permutation(e.value), :] if out.ndim == 5 else out


def _group_prepare(layer, x):
    g = layer_group(layer)
    if x.ndim == 5 and x.shape[3] != g.order:
        raise ValueError(f"the input's orientation axis has {x.shape[3]} entries, the layer's group "
                         f"{g.name} has {g.order} elements")
    return _cut_to_disk(layer, x)


GROUP = Family(
    "group", (LiftingConv2D, GroupConv2D),
    elements=_group_elements,
    prepare=_group_prepare,
    act_input=_group_act,
    compare=lambda layer, y, got, e: (_group_act(layer, y, e), got),
    mask=lambda layer, shape: _disk(shape[1], shape[2]),
)


# ----------------------------------------------------------------------------- scale


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


def _scale_elements(layer, angles=(), steps: Sequence[int] = (1,), lifting: bool | None = None):
    lifting = isinstance(layer, ScaleLiftingConv2D) if lifting is None else lifting
    out = []
    for t in steps:
        if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t < layer.num_scales:
            raise ValueError(f"steps must be integers from 1 to num_scales - 1 ({layer.num_scales - 1}), got {t!r}")
        last = layer.num_scales - t - (0 if lifting else getattr(layer, "interscale", 1) - 1)
        out += [Element(f"s{s}_s{s + t}", (t, s)) for s in range(max(last, 0))]
    return out


def _scale_input(layer, x, e):
    t = e.value[0]
    xt = enlarge(x, float(layer.scale_step) ** t)
    if x.ndim == 5:  # shift the input's scales up by t; scales below read T(in[0]) (never measured)
        xt = np.concatenate([np.repeat(xt[:, :, :, :1], t, axis=3), xt[:, :, :, : layer.num_scales - t]], axis=3)
    return xt


def _scale_compare(layer, y, got, e):
    t, s = e.value
    return enlarge(y[:, :, :, s], float(layer.scale_step) ** t), got[:, :, :, s + t]


SCALE = Family(
    "scale", (ScaleLiftingConv2D, ScaleConv2D),
    elements=_scale_elements,
    prepare=lambda layer, x: x,
    act_input=_scale_input,
    compare=_scale_compare,
    mask=lambda layer, shape: _disk(shape[1], shape[2], (layer.kernel_size - 1) / 2.0 + 1.0),
)

FAMILIES: list[Family] = [HARMONIC, GROUP, SCALE]


# ----------------------------------------------------------------------------- the measure


def family_of(layer) -> Family | None:
    """The family that owns `layer`, or None."""
    return next((f for f in FAMILIES if f.owns(layer)), None)


def _numpy(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t), np.float64)


def equivariance_errors(layer, inputs: np.ndarray, elements: Sequence[Element]) -> dict[str, float]:
    """{element label: relative L2 error} of `layer` at each of `elements`, the layer's output on `inputs`
    computed once. `inputs` is what the layer receives (images, or maps in its family's layout). An element
    whose disk holds no pixel of the output (group and harmonic maps of 4x4 or less; the scale family's disk is
    inset further), or only zeros on the input and on its transformed copy alike (a layer whose input is zero
    there: dead units, a dark centre), is left out: not measured, where an error of 0 would read as exact (and
    pull the model's mean down)."""
    fam = family_of(layer)
    if fam is None:
        raise ValueError(f"{layer.name} ({type(layer).__name__}) belongs to no equivariant family "
                         f"({', '.join(f.name for f in FAMILIES)})")
    x = fam.prepare(layer, np.asarray(inputs, np.float32))
    y = _numpy(layer(np.ascontiguousarray(x, np.float32)))
    errors = {}
    for e in elements:
        got = _numpy(layer(np.ascontiguousarray(fam.act_input(layer, x, e), np.float32)))
        want, got = fam.compare(layer, y, got, e)
        m = fam.mask(layer, want.shape)
        if not m.any():
            continue
        diff, ref = (got - want)[:, m], want[:, m]
        energy, wrong, scale = np.sum(ref**2), np.sum(diff**2), np.sum(want**2)
        if energy <= 1e-12 * scale:  # zeros (to rounding) in the disk where the layer's output is wanted
            if wrong <= 1e-12 * max(scale, np.sum(got**2)):
                continue  # and there too on the transformed input: nothing to measure
            energy = np.sum(got[:, m] ** 2)  # but not there: measured against what came (an error of 1 or more)
        errors[e.label] = float(np.sqrt(wrong / energy))
    return errors


def equivariance_error(layer, inputs: np.ndarray, element: Element) -> float:
    """The relative L2 error of `layer`'s equivariance at one `element` (module docstring); NaN where the output
    is too small to measure."""
    return equivariance_errors(layer, inputs, [element]).get(element.label, float("nan"))


def elements(layer, angles: Sequence[float] = (), **options) -> list[Element]:
    """The elements `layer` promises among `angles` (its family's rule; scale: `steps`)."""
    fam = family_of(layer)
    return [] if fam is None else fam.elements(layer, angles, **options)


def equivariant_layers(model) -> list:
    """The model's layers (top level) that an equivariant family owns, in order."""
    return [layer for layer in getattr(model, "layers", []) if family_of(layer) is not None]


def equivariance(model, images: np.ndarray, angles: Sequence[float]) -> dict[str, dict[str, dict[str, float]]]:
    """{family: {layer name: {element label: error}}} of every owned layer of a functional `model`, each fed
    what it receives from `images` in the model, at the elements it promises among `angles`."""
    out: dict = {}
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    for layer in equivariant_layers(model):
        promised = elements(layer, angles)
        if not promised:  # e.g. a layer restricted to the trivial group: nothing to measure
            continue
        feed = keras.Model(inputs, layer.input)
        x = _numpy(feed(np.asarray(images, np.float32), training=False)).astype(np.float32)
        out.setdefault(family_of(layer).name, {})[layer.name] = equivariance_errors(layer, x, promised)
    return out
