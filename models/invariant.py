"""Any model made rotation- and mirror-invariant by orbit averaging, weights kept.

`invariant(model, group="C4")` runs the backbone on every transformed copy of
the input, all copies in ONE backbone call (stacked along the batch), and
averages the logits over the copies (frame / group averaging, Puny et al.,
"Frame Averaging for Invariant and Equivariant Network Design", ICLR 2022).
Transforming the input by a group element permutes the copies, so the mean
is unchanged:

- `C4` (rotations by 90 degrees) and `D4` (those and their mirror images):
  the copies are exact pixel permutations (`rot90`, left-right flip) of
  square images, so the wrapped model is exactly invariant (up to float
  rounding in the backbone's batched call).
- `C8` and `D8` add the rotations by odd multiples of 45 degrees, resampled
  bilinearly about the image centre (corners filled with zeros). The copies
  of a square image are then exactly permuted by 90-degree rotations (and, for
  D8, mirrors): the model is exactly C4 (D4) invariant; under a 45-degree
  rotation it is only as invariant as the resampling allows (two
  interpolations, the input's and the copy's, against one).

Logits, not probabilities, are averaged: the wrapped model stays a logits
model (training's `from_logits` loss and the export's softmax are unchanged),
and the mean of logits is the log of the normalised geometric mean of the
copies' probabilities, which keeps a copy that is confidently right from
being averaged away by uncertain ones. Either is exactly invariant.

The cost is |G| backbone passes (4 or 8) in one batched call. Any registered
builder takes it through `model.params.invariant: {group: C4}`
(models/registry.py `build_model`), `keras_app:<Name>` backbones included.
Learned canonicalization (one pass plus a small equivariant network) is not
built yet.
"""

from __future__ import annotations

import math

import keras
from keras import ops

GROUPS = {"C4": (4, False), "C8": (8, False), "D4": (4, True), "D8": (8, True)}
METHODS = ("orbit",)


def check_invariant(spec) -> dict:
    """The validated `{group, method}` of `model.params.invariant` (a dict, or a group name)."""
    if isinstance(spec, str):
        spec = {"group": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"invariant: must be a group name or {{group, method}} (got {spec!r})")
    unknown = sorted(set(spec) - {"group", "method"})
    if unknown:
        raise ValueError(f"invariant: unknown key(s) {unknown}; it takes group and method")
    group, method = spec.get("group"), spec.get("method", "orbit")
    if group not in GROUPS:
        raise ValueError(f"invariant.group: must be one of {list(GROUPS)} (got {group!r})")
    if method not in METHODS:
        raise ValueError(f"invariant.method: must be one of {list(METHODS)} (got {method!r})")
    return {"group": group, "method": method}


def _rot90(x, k: int):
    """`np.rot90(image, k)` (counter-clockwise) of every image of x [B, H, W, C]."""
    for _ in range(k % 4):
        x = ops.flip(ops.transpose(x, (0, 2, 1, 3)), axis=1)
    return x


def _rotate(x, degrees: float):
    """x [B, H, W, C] rotated counter-clockwise by `degrees` about the image centre (bilinear, zeros outside)."""
    h, w = x.shape[1], x.shape[2]
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    # output pixel (x, y) reads input (c x - s y + a2, s x + c y + b2): the inverse rotation about the centre,
    # so that the picture turns counter-clockwise as np.rot90 does (rows grow downwards)
    a2 = cx - c * cx + s * cy
    b2 = cy - s * cx - c * cy
    transform = ops.convert_to_tensor([[c, -s, a2, s, c, b2, 0.0, 0.0]], dtype="float32")
    transform = ops.tile(transform, (ops.shape(x)[0], 1))
    return ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="constant")


@keras.saving.register_keras_serializable(package="invariant")
class GroupOrbit(keras.layers.Layer):
    """[B, H, W, C] -> [|G| B, H, W, C]: the transformed copies of each image, stacked copy-major.

    Copy g = (k, m): rotation by k * 360/N degrees (k < N), then, for a dihedral
    group, a left-right mirror when m = 1; copy index k + N * m.
    """

    def __init__(self, group: str = "C4", **kwargs):
        super().__init__(**kwargs)
        check_invariant({"group": group})
        self.group = group
        self.order, self.mirrors = GROUPS[group]

    @property
    def size(self) -> int:
        return self.order * (2 if self.mirrors else 1)

    def build(self, input_shape):
        if input_shape[1] is None or input_shape[1] != input_shape[2]:
            raise ValueError(f"{self.group} orbit averaging needs square images of known size, got {input_shape}")

    def call(self, x):
        copies = []
        for k in range(self.order):
            deg = k * 360.0 / self.order
            copies.append(_rot90(x, int(deg // 90)) if deg % 90 == 0 else _rotate(x, deg))
        if self.mirrors:
            copies += [ops.flip(c, axis=2) for c in copies]
        return ops.concatenate(copies, axis=0)

    def compute_output_shape(self, input_shape):
        b = None if input_shape[0] is None else input_shape[0] * self.size
        return (b, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "group": self.group}


@keras.saving.register_keras_serializable(package="invariant")
class OrbitMean(keras.layers.Layer):
    """[|G| B, K] -> [B, K]: the mean over the copies of each image (copy-major, as `GroupOrbit` stacks)."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, z):
        z = ops.reshape(z, (self.size, -1, z.shape[-1]))
        return ops.mean(ops.cast(z, "float32"), axis=0)

    def compute_output_shape(self, input_shape):
        b = None if input_shape[0] is None else input_shape[0] // self.size
        return (b, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def invariant(model: keras.Model, group: str = "C4", method: str = "orbit", name: str | None = None) -> keras.Model:
    """`model` (images -> logits [B, K]) made invariant to `group` by orbit averaging; its weights are kept.

    Returns a functional model with the backbone's input and output shapes
    (float32 logits); the backbone is called once per batch, on the |G|
    stacked copies.
    """
    check_invariant({"group": group, "method": method})
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    orbit = GroupOrbit(group, name=f"orbit_{group.lower()}")
    z = model(orbit(inputs))
    y = OrbitMean(orbit.size, dtype="float32", name="orbit_mean")(z)
    return keras.Model(inputs, y, name=name or f"{model.name}_{group.lower()}_invariant")
