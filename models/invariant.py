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

The cost is |G| backbone passes (4 or 8) in one batched call.

`method="canonicalize"` (Kaba, Mondal, Zhang, Bengio & Ravanbakhsh, "Equivariance
with Learned Canonicalization Functions", ICML 2023; Mondal et al., NeurIPS 2023)
costs one backbone pass plus a small network: `Canonicalize`, a C_N or D_N
group CNN of this project's layers (lifting and group convolutions, exactly
equivariant at multiples of 90 degrees and at mirrors) on the input
average-pooled by `downscale` (2: a quarter of the pixels), scores the
group's elements (N rotations, and their mirror images for D_N) for the
input; the input is transformed back by the inverse of the best-scoring one,
and the unchanged backbone sees that canonical pose. Transforming the input
by g moves the best score from h to g h (layers/group/_groups.py), so the
canonical pose, and the answer, do not change: exactly for C4 and D4 (and for
the quarter turns and mirrors of C8 and D8; at 45 degrees as far as
resampling and the group convolutions' band limit allow). Three ways to train
it (`relaxation`), the first two with the same inference (the best element, one
backbone pass):

- `straight_through` (the default): the forward pass uses the best
  orientation and the gradient reaches the scoring network through its
  softmax p (a straight-through estimator). One backbone pass per image.
- `marginal`: the backbone sees all |G| transformed-back copies of each
  training image (one batched call, as `orbit`), and the loss is the
  cross-entropy of the exact marginal sum_g p(g | x) q(y | copy g)
  (`CanonicalMarginal`): the scoring network gets the exact gradient of
  the likelihood, and learns to put its mass on the poses the backbone
  classifies best. |G| backbone passes per training image (training costs
  about as much as `orbit`'s). On rotated MNIST (C8, 30 epochs, two seeds)
  it made 3.15% test errors against 3.90-4.03% straight-through, at about 4x
  the training time (docs/results.md).

- `continuous` (C4 and C8): no discrete choice. The pose is the angle of the
  scores' first Fourier coefficient along the rotations (`Canonicalize.pose`,
  which turns with the image), and the input is turned back by that angle,
  in training and at inference alike, with a differentiable bilinear
  resampling (`_turn_by`): the backbone sees digits brought upright to any
  angle, not only to the nearest of the N turns, and the scoring network
  gets the exact gradient of the loss through the angle. One backbone pass
  per image. Exactly invariant to quarter turns (to the float rounding of
  the angle); mirrors are not angles, so D4 and D8 train one of the other two.

`pose_weight` (with `continuous`) adds a self-supervised pose-consistency
loss, `pose_weight * mean(1 - cos(pose(x turned by a) - pose(x) - a))` for
an angle a drawn per image: the scoring network is exactly equivariant only
at quarter turns, and this trains it to turn its angle with the image at
every angle, so that every turned copy of an image reaches the same
canonical pose (one more pass of the small network per training image).
Trained on upright digits and tested turned by every 15 degrees (C8, two
seeds), it made the accuracy curve flat to 0.34-0.38 points, against 6.5
without it; on rotated MNIST, 2.51-3.05% test errors with 5x5 filters
(1.61x the small CNN's inference), and 2.15-2.19% with `downscale: 4`, 6
channels and 5x5 filters (about 1.44x; docs/results.md).

`pose_jitter: J` (degrees, with `continuous`) turns each training image back
by its angle minus d, d uniform in [-J, J] and drawn per image: the backbone
trains on canonical poses spread as a class's test digits spread around its
pose (the writers' slant, the pose's own error), where it otherwise errs 2.5-3x
more. Training only: inference and its invariance are unchanged, and so is
the cost. On rotated MNIST (the quarter-size 6-channel 5x5 canonicalizer
with the pose loss) J = 30 made 1.99% / 1.86% / 2.10% test errors against
2.19% / 2.15% / 2.07% without it (seeds 0 / 1 / 2): 0.15 points fewer on
the mean, on two seeds of three, so not established; 15 and 45 did not
help on seed 0 (docs/results.md). Off by default.

`network: polar` (with `continuous`) replaces the group CNN by a scoring
network on a polar resampling of the (pooled) input about its centre:
POLAR_ANGLES = 32 angles by the radii 1 pixel apart (bilinear reads, the radii
as channels), 1D convolutions over the angle (dilated 1, 2, 4, ... until
they see the whole circle: 4 of them with 5 taps, 5 with 3; `filters`
channels, `kernel_size` taps, circularly padded, ReLU) and a 1x1 one to a
logit per angle. Turning the input about its centre rolls the grid
along the angle, so the convolutions are equivariant to every turn by 11.25
degrees up to the bilinear reads (exactly at quarter turns), where the group
CNN is exact only at quarter turns and band-limited at 45 degrees; and they
see the whole digit at full resolution. On rotated MNIST (32 or 64
channels, 5 taps, `downscale: 1`, the pose loss and `pose_jitter: 30`) its
pose followed a turned digit to 0.6-0.76 degrees (median; the group CNN's
2.7) and agreed more within a class. Test errors: 1.92% / 1.89% with 32
channels (seeds 0 / 1, 1.35x the CNN's inference), 1.88% / 1.81% / 1.72%
with 64 (seeds 0 / 1 / 2, 1.51x), against the group CNN's 1.99% / 1.86% /
2.10% (1.41x): 0.18 points fewer on the mean (docs/results.md).

`prior_weight` adds the prior of Mondal et al., `prior_weight * -log
p(identity)`, which keeps upright training images upright (for a backbone
trained on upright images). `canonicalize` takes C4, C8, D4 and D8.

Any registered builder takes both through `model.params.invariant: {group:
C4, method: orbit | canonicalize, filters, kernel_size, prior_weight, downscale,
relaxation, pose_weight, pose_jitter, network}` (models/registry.py `build_model`), `keras_app:<Name>` backbones
included.
"""

from __future__ import annotations

import math

import keras
from keras import ops

GROUPS = {"C4": (4, False), "C8": (8, False), "D4": (4, True), "D8": (8, True)}
METHODS = ("orbit", "canonicalize")
RELAXATIONS = ("straight_through", "marginal", "continuous")  # how `canonicalize` trains (the module docstring)
NETWORKS = ("group", "polar")  # the canonicalizer's scoring network (the module docstring)
CANONICALIZER = {"filters": 8, "kernel_size": 5, "prior_weight": 0.0, "downscale": 2,
                 "relaxation": "straight_through", "pose_weight": 0.0, "pose_jitter": 0.0,
                 "network": "group"}  # `canonicalize`'s options
POLAR_ANGLES = 32  # the polar canonicalizer's angles: steps of 11.25 degrees, a quarter of C8's 45


def check_invariant(spec) -> dict:
    """The validated `{group, method, ...}` of `model.params.invariant` (a dict, or a group name), defaults filled."""
    if isinstance(spec, str):
        spec = {"group": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"invariant: must be a group name or {{group, method}} (got {spec!r})")
    group, method = spec.get("group"), spec.get("method", "orbit")
    if method not in METHODS:
        raise ValueError(f"invariant.method: must be one of {list(METHODS)} (got {method!r})")
    options = CANONICALIZER if method == "canonicalize" else {}
    unknown = sorted(set(spec) - {"group", "method", *options})
    if unknown:
        raise ValueError(f"invariant: unknown key(s) {unknown}; with method {method} it takes "
                         f"{['group', 'method', *options]}")
    if group not in GROUPS:
        raise ValueError(f"invariant.group: must be one of {list(GROUPS)} (got {group!r})")
    out = {"group": group, "method": method, **options, **{k: spec[k] for k in options if k in spec}}
    if method == "canonicalize":
        for k in ("filters", "kernel_size", "downscale"):
            if not isinstance(out[k], int) or isinstance(out[k], bool) or out[k] < 1:
                raise ValueError(f"invariant.{k}: must be a positive integer (got {out[k]!r})")
        if out["kernel_size"] % 2 == 0:
            raise ValueError(f"invariant.kernel_size: must be odd (got {out['kernel_size']})")
        for k in ("prior_weight", "pose_weight"):
            w = out[k]
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w < math.inf:
                raise ValueError(f"invariant.{k}: must be a number >= 0 (got {w!r})")
        if out["relaxation"] not in RELAXATIONS:
            raise ValueError(f"invariant.relaxation: must be one of {list(RELAXATIONS)} (got {out['relaxation']!r})")
        if out["pose_weight"] and out["relaxation"] != "continuous":
            raise ValueError("invariant.pose_weight: the pose-consistency loss needs relaxation: continuous "
                             f"(a differentiable angle; got {out['relaxation']})")
        j = out["pose_jitter"]
        if not isinstance(j, (int, float)) or isinstance(j, bool) or not 0 <= j <= 180:
            raise ValueError(f"invariant.pose_jitter: must be a number of degrees from 0 to 180 (got {j!r})")
        if j and out["relaxation"] != "continuous":
            raise ValueError("invariant.pose_jitter: jitters the continuous angle and needs relaxation: continuous "
                             f"(got {out['relaxation']})")
        if out["network"] not in NETWORKS:
            raise ValueError(f"invariant.network: must be one of {list(NETWORKS)} (got {out['network']!r})")
        if out["network"] == "polar" and out["relaxation"] != "continuous":
            raise ValueError("invariant.network: polar scores angles, not the group's elements, and needs "
                             f"relaxation: continuous (got {out['relaxation']})")
        if out["relaxation"] == "continuous" and GROUPS[group][1]:
            raise ValueError(f"invariant.relaxation: continuous turns by any angle and takes the rotation groups "
                             f"C4 and C8 (a mirror is not an angle; got {group}: train it straight_through or "
                             f"marginal)")
    return out


def _rot90(x, k: int):
    """`np.rot90(image, k)` (counter-clockwise) of every image of x [B, H, W, C]."""
    for _ in range(k % 4):
        x = ops.flip(ops.transpose(x, (0, 2, 1, 3)), axis=1)
    return x


def _rotation_transform(degrees: float, h: int, w: int) -> list[float]:
    """The `affine_transform` row that turns an h x w image counter-clockwise by `degrees` about its centre.

    Output pixel (x, y) reads input (c x - s y + a2, s x + c y + b2): the inverse rotation, so that the
    picture turns as np.rot90 does (rows grow downwards). At multiples of 90 degrees c and s are exactly
    0 or +-1, so the bilinear read lands on pixel centres and the turn is exact.
    """
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    if degrees % 90 == 0:
        c, s = float(round(c)), float(round(s))
    return _rotation_row(c, s, h, w, 0.0)


def _circle(n: int):
    """cos and sin of the n angles 360 r / n (n a multiple of 4), exactly periodic under quarter turns: the
    first quadrant's values, then (c, s) -> (-s, c) per quarter (and exactly 0 and 1 at the quarters)."""
    quarter = [_rotation_transform(r * 360.0 / n, 1, 1) for r in range(n // 4)]
    c, s = [row[0] for row in quarter], [row[3] for row in quarter]
    for _ in range(3):
        c, s = c + [-v for v in s[-(n // 4):]], s + c[-(n // 4):]
    return c, s


def _polar_table(side: int, radii: int, angles: int):
    """The bilinear reads of a polar grid on a side x side image: for each angle 360 j / angles (counter-clockwise,
    rows growing downwards, as `_rotation_transform`) and radius (i + 1/2) pixels from the centre, the 4 flat
    pixel indices and their weights, [angles, radii, 4] each (weight 0 outside the image)."""
    import numpy as np

    cos, sin = _circle(angles)
    centre = (side - 1) / 2.0
    index, weight = np.zeros((angles, radii, 4), "int32"), np.zeros((angles, radii, 4), "float32")
    for j in range(angles):
        for i in range(radii):
            col, row = centre + (i + 0.5) * cos[j], centre - (i + 0.5) * sin[j]
            c0, r0 = math.floor(col), math.floor(row)
            fc, fr = col - c0, row - r0
            for t, (dr, dc, w) in enumerate(((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                                             (1, 0, fr * (1 - fc)), (1, 1, fr * fc))):
                if 0 <= r0 + dr < side and 0 <= c0 + dc < side:
                    index[j, i, t], weight[j, i, t] = (r0 + dr) * side + c0 + dc, w
    return index, weight


def _rotation_row(c, s, h: int, w: int, zero):
    """The 8 `affine_transform` entries of the turn with cosine c and sine s about an h x w image's centre
    (numbers, or tensors [B] with `zero` a tensor of zeros like them)."""
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    return [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, zero, zero]


def _rotate(x, degrees: float):
    """x [B, H, W, C] rotated counter-clockwise by `degrees` about the image centre (bilinear, zeros outside)."""
    transform = ops.convert_to_tensor([_rotation_transform(degrees, x.shape[1], x.shape[2])], dtype="float32")
    transform = ops.tile(transform, (ops.shape(x)[0], 1))
    return ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="constant")


def _add_angles(cos_a, sin_a, cos_b, sin_b):
    """cos and sin of a + b, from those of a and b."""
    return cos_a * cos_b - sin_a * sin_b, sin_a * cos_b + cos_a * sin_b


def _turn_by(x, cos, sin):
    """Each image of x [B, H, W, C] turned counter-clockwise about its centre by its own angle, given as
    cos, sin [B] (bilinear, zeros outside; `_rotation_transform`'s reading rule).

    Hand-written gathers rather than `ops.image.affine_transform`: the latter has no gradient with respect to
    the transform on TensorFlow (ImageProjectiveTransformV3), and the continuous canonicalizer learns its
    angle through this resampling.
    """
    b, (h, w, c) = ops.shape(x)[0], x.shape[1:]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy = ops.reshape(ops.repeat(ops.arange(h, dtype="float32") - cy, w), (1, h * w))
    xx = ops.reshape(ops.tile(ops.arange(w, dtype="float32") - cx, (h,)), (1, h * w))
    cos, sin = ops.cast(cos, "float32")[:, None], ops.cast(sin, "float32")[:, None]
    read_x, read_y = cx + cos * xx - sin * yy, cy + sin * xx + cos * yy  # [B, H W]
    x0, y0 = ops.floor(read_x), ops.floor(read_y)
    fx, fy = read_x - x0, read_y - y0
    flat = ops.concatenate([ops.reshape(ops.cast(x, "float32"), (-1, c)), ops.zeros((1, c))], axis=0)
    zero_row = b * (h * w)
    base = ops.arange(b)[:, None] * (h * w)
    out = 0.0
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)),
                           (1, 1, fy * fx)):
        xi, yi = ops.cast(x0, "int32") + dx, ops.cast(y0, "int32") + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index = ops.where(inside, base + yi * w + xi, zero_row)
        out = out + ops.take(flat, ops.reshape(index, (-1,)), axis=0) * ops.reshape(weight, (-1, 1))
    return ops.cast(ops.reshape(out, (b, h, w, c)), x.dtype)


def _turn_by_op(x, cos, sin):
    """`_turn_by` through `ops.image.affine_transform` (the same reading rule, one transform row per image):
    the same images to float rounding, without a gradient with respect to the angle on TensorFlow, and faster:
    the CNN of bench/bench_canonicalizer_cost.py wrapped with a continuous canonicalizer went from 1.51x to
    1.38x the CNN's inference time with it."""
    c, s = ops.cast(cos, "float32"), ops.cast(sin, "float32")
    rows = ops.stack(_rotation_row(c, s, x.shape[1], x.shape[2], ops.zeros_like(c)), axis=1)
    out = ops.image.affine_transform(ops.cast(x, "float32"), rows, interpolation="bilinear", fill_mode="constant")
    return ops.cast(out, x.dtype)


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


def _turn(x, steps: int, order: int):
    """x turned counter-clockwise by `steps` * 360/order degrees (exact for multiples of 90)."""
    deg = (steps % order) * 360.0 / order
    return _rot90(x, int(deg // 90)) if deg % 90 == 0 else _rotate(x, deg)


def _apply(x, group, g: int):
    """x [B, H, W, C] transformed by element g = R_r F^m of `group` (layers/group/_groups.py): the columns mirrored
    when m = 1, then turned by r steps (exact for quarter turns and mirrors)."""
    m, r = group.element(g)
    return _turn(ops.flip(x, axis=2) if m else x, r, group.rotations)


def _element_transform(group, g: int, h: int, w: int) -> list[float]:
    """The `affine_transform` row of element g: the rotation's row, its read column mirrored when m = 1."""
    m, r = group.element(g)
    row = _rotation_transform(r * 360.0 / group.rotations, h, w)
    if m:  # out(p) = x(F R^-1 p): read the mirrored column of the rotation's read point
        row[0], row[1], row[2] = -row[0], -row[1], (w - 1) - row[2]
    return row


@keras.saving.register_keras_serializable(package="invariant")
class Canonicalize(keras.layers.Layer):
    """Images turned back to their canonical pose by a small C_N or D_N group CNN (module docstring).

    Call: x [B, H, W, C] (square) -> the canonical images, same shape.
    With `relaxation="marginal"` it returns (images, element logits [B, |G|])
    for `CanonicalMarginal`, and in training the images are every
    transformed-back copy, stacked copy-major ([|G| B, H, W, C]).
    `orientation(x)` returns the predicted element of each image (0..|G|-1,
    index m N + r for R_r F^m; 0..N-1 for C_N).
    """

    def __init__(self, group: str = "C4", filters: int = 8, kernel_size: int = 5, prior_weight: float = 0.0,
                 downscale: int = 2, relaxation: str = "straight_through", pose_weight: float = 0.0, seed=None,
                 pose_jitter: float = 0.0, network: str = "group", **kwargs):
        super().__init__(**kwargs)
        opts = check_invariant({"group": group, "method": "canonicalize", "filters": filters,
                                "kernel_size": kernel_size, "prior_weight": prior_weight, "downscale": downscale,
                                "relaxation": relaxation, "pose_weight": pose_weight, "pose_jitter": pose_jitter,
                                "network": network})
        self.pose_weight, self.seed = float(opts["pose_weight"]), seed
        self._angles = keras.random.SeedGenerator(seed) if self.pose_weight else None
        self.pose_jitter = float(opts["pose_jitter"])
        self._jitter = keras.random.SeedGenerator(None if seed is None else seed + 1) if self.pose_jitter else None
        self.group, self.filters, self.kernel_size = group, opts["filters"], opts["kernel_size"]
        self.prior_weight, self.downscale = float(opts["prior_weight"]), opts["downscale"]
        self.relaxation, self.network = opts["relaxation"], opts["network"]
        from layers.group._groups import parse_group
        from layers.group.group_conv import GroupConv2D
        from layers.group.lifting_conv import LiftingConv2D

        self._group = parse_group(group)
        self.order = self._group.order  # |G|: the elements scored
        k = self.kernel_size
        if self.network == "polar":  # 1D convolutions over the angle, dilated 1, 2, 4, ... (module docstring)
            depth = 1
            while 1 + (k - 1) * (2 ** depth - 1) < POLAR_ANGLES:  # until they see the whole circle
                depth += 1
            self.polar = [keras.layers.Conv1D(self.filters, k, dilation_rate=2 ** d, activation="relu",
                                              name=f"polar{d}") for d in range(depth)]
            self.score = keras.layers.Conv1D(1, 1, name="polar_score")
            return
        self.lift = LiftingConv2D(self.filters, k, group=group, name="lift")
        self.conv = GroupConv2D(self.filters, k, group=group, name="conv")
        self.score = GroupConv2D(1, k, group=group, name="score")

    def build(self, input_shape):
        if input_shape[1] is None or input_shape[1] != input_shape[2]:
            raise ValueError(f"canonicalization needs square images of known size, got {input_shape}")
        if input_shape[1] % self.downscale:
            raise ValueError(f"canonicalization: the image side {input_shape[1]} is not a multiple of "
                             f"downscale={self.downscale} (the pooling must tile the image to stay exact)")
        side = input_shape[1] // self.downscale
        shape = (input_shape[0], side, side, input_shape[3])
        if self.network == "polar":
            self._polar_read = _polar_table(side, side // 2, POLAR_ANGLES)
            width = (side // 2) * input_shape[3]  # the radii's channels
            for d, conv in enumerate(self.polar):
                conv.build((None, POLAR_ANGLES + (self.kernel_size - 1) * 2 ** d, width))
                width = self.filters
            self.score.build((None, POLAR_ANGLES, width))
            return
        self.lift.build(shape)
        inner = (*shape[:3], self.order, self.filters)
        self.conv.build(inner)
        self.score.build(inner)

    def scores(self, x):
        """Element logits [B, |G|]: transforming x by g permutes them as g permutes a group axis (turning by s
        steps of C_N rolls them by s); with `network: polar`, angle logits [B, POLAR_ANGLES] (`_polar_scores`).
        Computed on x average-pooled by `downscale` (non-overlapping blocks
        that tile the image: they commute with quarter turns and mirrors)."""
        if self.downscale > 1:
            x = ops.average_pool(x, self.downscale, self.downscale, padding="valid")
        if self.network == "polar":
            return self._polar_scores(x)
        h = ops.relu(self.lift(x))
        h = ops.relu(self.conv(h))
        return ops.mean(ops.cast(self.score(h), "float32"), axis=(1, 2, 4))

    def _polar_scores(self, x):
        """Angle logits [B, POLAR_ANGLES]: x read on a polar grid about its centre (bilinear; the radii, 1 pixel
        apart, as channels), then 1D convolutions over the angle, circularly padded. Turning x by a multiple of
        360 / POLAR_ANGLES degrees rolls the grid, and so the logits, along the angle: exactly at quarter turns
        (the grid's reads are then the same pixels' turned), as far as the bilinear reads allow between."""
        index, weight = self._polar_read
        b, side, c = ops.shape(x)[0], x.shape[1], x.shape[3]
        radii = side // 2
        flat = ops.reshape(ops.cast(x, "float32"), (b, side * side, c))
        read = ops.reshape(ops.take(flat, ops.convert_to_tensor(index), axis=1), (b, POLAR_ANGLES, radii, 4, c))
        h = ops.sum(read * ops.convert_to_tensor(weight)[None, :, :, :, None], axis=3)
        h = ops.reshape(h, (b, POLAR_ANGLES, radii * c))
        for d, conv in enumerate(self.polar):
            pad = (self.kernel_size - 1) // 2 * 2 ** d
            h = conv(ops.concatenate([h[:, -pad:], h, h[:, :pad]], axis=1) if pad else h)
        return ops.cast(self.score(h)[..., 0], "float32")

    def pose(self, logits):
        """The continuous pose (`relaxation="continuous"`, C_N): cos, sin [B] of the angle of the scores'
        first Fourier coefficient along the rotations, v = sum_r s_r exp(2 pi i r / N) (N: the group's rotations,
        or the polar network's POLAR_ANGLES). Turning x by s steps
        rolls the scores by s and multiplies v by exp(2 pi i s / N): the angle turns with the image (exactly at
        quarter turns). v / sqrt(|v|^2 + eps) keeps the gradient bounded where |v| is near 0."""
        cos, sin = _circle(self.order if self.network == "group" else POLAR_ANGLES)
        re = ops.sum(logits * ops.convert_to_tensor(cos), axis=-1)
        im = ops.sum(logits * ops.convert_to_tensor(sin), axis=-1)
        norm = ops.sqrt(re * re + im * im + 1e-12)
        return re / norm, im / norm

    def orientation(self, x):
        logits = self.scores(x)
        if self.relaxation != "continuous":
            return ops.argmax(logits, axis=-1)
        cos, sin = self.pose(logits)  # the nearest element to the continuous angle
        steps = ops.round(ops.arctan2(sin, cos) * (self.order / (2.0 * math.pi)))
        return ops.cast(ops.mod(steps, self.order), "int32")

    def _canonical(self, x, logits):
        """x turned back by the inverse of its best-scoring element: one resampling per image."""
        group, side = self._group, x.shape[1]
        table = ops.convert_to_tensor([_element_transform(group, group.inv(g), side, side)
                                       for g in range(self.order)], dtype="float32")
        transform = ops.take(table, ops.argmax(logits, axis=-1), axis=0)
        out = ops.image.affine_transform(ops.cast(x, "float32"), transform, interpolation="bilinear",
                                         fill_mode="constant")
        return ops.cast(out, x.dtype)

    def pose_inconsistency(self, x, cos, sin, a):
        """The pose-consistency loss: x turned by the angle a [B] (radians) should have the pose (cos, sin) of x
        plus a. 1 - cos(pose(turned) - pose(x) - a), averaged; 0 where the canonicalizer is equivariant at a."""
        ca, sa = ops.cos(a), ops.sin(a)
        c2, s2 = self.pose(self.scores(_turn_by(x, ca, sa)))
        want_cos, want_sin = _add_angles(cos, sin, ca, sa)
        return ops.mean(1.0 - (c2 * want_cos + s2 * want_sin))

    def _turned_back(self, x) -> list:
        """x transformed back by the inverse of each element g = 0..|G|-1: the candidate canonical images."""
        return [_apply(x, self._group, self._group.inv(g)) for g in range(self.order)]

    def call(self, x, training=False):
        logits = self.scores(x)
        if training and self.prior_weight > 0:
            p0 = ops.softmax(logits, axis=-1)[:, 0]
            self.add_loss(self.prior_weight * ops.mean(-ops.log(p0 + 1e-7)))
        if self.relaxation == "continuous":  # turned back by its angle, differentiably, in training and inference
            cos, sin = self.pose(logits)
            if not training:  # no gradient needed: the resampling op, faster than `_turn_by`'s gathers
                return _turn_by_op(x, cos, -sin)
            if self.pose_weight > 0:
                a = keras.random.uniform(ops.shape(x)[:1], 0.0, 2.0 * math.pi, seed=self._angles)
                self.add_loss(self.pose_weight * self.pose_inconsistency(x, cos, sin, a))
            if self.pose_jitter > 0:  # turned back by theta - d, d uniform in +-pose_jitter (module docstring)
                j = math.radians(self.pose_jitter)
                d = keras.random.uniform(ops.shape(x)[:1], -j, j, seed=self._jitter)
                cos, sin = _add_angles(cos, sin, ops.cos(d), -ops.sin(d))
            return _turn_by(x, cos, -sin)
        if self.relaxation == "marginal":
            if not training:
                return self._canonical(x, logits), logits
            return ops.concatenate(self._turned_back(x), axis=0), logits
        if not training:
            return self._canonical(x, logits)
        p = ops.softmax(logits, axis=-1)
        hard = ops.one_hot(ops.argmax(logits, axis=-1), self.order, dtype="float32")
        w = hard + p - ops.stop_gradient(p)  # straight-through: the forward pass is the hard choice
        copies = ops.stack(self._turned_back(x), axis=1)  # [B, |G|, H, W, C]
        w = ops.cast(w, copies.dtype)[:, :, None, None, None]
        return ops.sum(w * copies, axis=1)

    def compute_output_shape(self, input_shape):
        if self.relaxation == "marginal":
            return tuple(input_shape), (input_shape[0], self.order)
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "group": self.group, "filters": self.filters,
                "kernel_size": self.kernel_size, "prior_weight": self.prior_weight, "downscale": self.downscale,
                "relaxation": self.relaxation, "pose_weight": self.pose_weight, "seed": self.seed,
                "pose_jitter": self.pose_jitter, "network": self.network}


@keras.saving.register_keras_serializable(package="invariant")
class CanonicalMarginal(keras.layers.Layer):
    """The output of a `canonicalize` model trained with `relaxation="marginal"` (module docstring).

    Call: [backbone logits, element logits [B, |G|]] -> logits [B, K]. In
    training the backbone saw the |G| transformed-back copies of each image
    ([|G| B, K], copy-major) and the output is log sum_g p(g | x) q(y | copy g):
    the log-probabilities of the exact marginal over the elements (so that
    a cross-entropy from logits is -log of the marginal likelihood). At
    inference the backbone saw the one canonical image and its logits pass through.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, inputs, training=False):
        logits, scores = inputs
        logits = ops.cast(logits, "float32")
        if not training:
            return logits
        log_q = ops.log_softmax(ops.reshape(logits, (self.size, -1, logits.shape[-1])), axis=-1)  # [|G|, B, K]
        log_p = ops.transpose(ops.log_softmax(ops.cast(scores, "float32"), axis=-1))[:, :, None]  # [|G|, B, 1]
        return ops.logsumexp(log_q + log_p, axis=0)

    def compute_output_shape(self, input_shape):
        return (input_shape[1][0], input_shape[0][-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def invariant(model: keras.Model, group: str = "C4", method: str = "orbit", name: str | None = None,
              **options) -> keras.Model:
    """`model` (images -> logits [B, K]) made invariant to `group`; its weights are kept.

    `method`: `orbit` (the backbone called once per batch on the |G| stacked
    copies, logits averaged) or `canonicalize` (one pass on the canonical pose
    that a `Canonicalize` network picks; `options`: filters, kernel_size,
    prior_weight, downscale, relaxation, pose_weight, pose_jitter, network). Returns a functional model with the
    backbone's input and output shapes (float32 logits).
    """
    opts = check_invariant({"group": group, "method": method, **options})
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    if method == "canonicalize":
        canon = Canonicalize(group, opts["filters"], opts["kernel_size"], opts["prior_weight"], opts["downscale"],
                             opts["relaxation"], opts["pose_weight"], pose_jitter=opts["pose_jitter"],
                             network=opts["network"], name=f"canonicalize_{group.lower()}")
        if opts["relaxation"] == "marginal":
            images, scores = canon(inputs)
            y = CanonicalMarginal(canon.order, dtype="float32", name="canonical_marginal")([model(images), scores])
        else:
            y = keras.layers.Activation("linear", dtype="float32", name="canonical_f32")(model(canon(inputs)))
    else:
        orbit = GroupOrbit(group, name=f"orbit_{group.lower()}")
        y = OrbitMean(orbit.size, dtype="float32", name="orbit_mean")(model(orbit(inputs)))
    return keras.Model(inputs, y, name=name or f"{model.name}_{group.lower()}_{method}")


def canonicalizer(model: keras.Model) -> Canonicalize | None:
    """The `Canonicalize` layer of `model` (searched through nested models), or None."""
    for layer in model.layers:
        if isinstance(layer, Canonicalize):
            return layer
        if isinstance(layer, keras.Model):
            found = canonicalizer(layer)
            if found is not None:
                return found
    return None


def orientation_accuracy(model: keras.Model, images, batch_size: int = 256) -> float | None:
    """How often the canonicalizer of `model` names the turn (and mirror) of a transformed test image.

    Every image of `images` (float [N, H, W, C], upright as the data comes) is
    transformed by each of the group's elements g (k steps of 360/N degrees,
    after a mirror for D_N's second half); the figure is the fraction of
    transformed images whose predicted element is g, i.e. that are turned
    back to the data's own upright pose. None when the model has no
    canonicalizer.
    """
    canon = canonicalizer(model)
    if canon is None:
        return None
    hits, total = 0, 0
    x = ops.convert_to_tensor(images, dtype="float32")
    for k in range(canon.order):
        turned = _apply(x, canon._group, k)
        for i in range(0, int(x.shape[0]), batch_size):
            pred = ops.convert_to_numpy(canon.orientation(turned[i : i + batch_size]))
            hits += int((pred == k).sum())
            total += len(pred)
    return hits / max(total, 1)
