"""`Canonicalize`: images turned back to their canonical pose by a small C_N or D_N group CNN, or a polar
network over the angle (learned canonicalization; its methods, relaxations and options: models/invariant.py)."""

from __future__ import annotations

import math

import keras
from keras import ops

from layers.invariance._options import POLAR_ANGLES, check_invariant
from layers.invariance._transforms import (
    _add_angles,
    _apply,
    _circle,
    _element_transform,
    _polar_table,
    _turn_by,
    _turn_by_op,
)


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
        # It turns images by TensorFlow's image transform, which has no XLA kernel: a model holding it is not
        # compiled by XLA there (Keras then runs jit_compile=True/"auto" as False); JAX's compiles.
        self.supports_jit = keras.backend.backend() != "tensorflow"
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
                                              dtype="float32", name=f"polar{d}") for d in range(depth)]
            self.score = keras.layers.Conv1D(1, 1, dtype="float32", name="polar_score")
            return
        # float32 whatever the policy: the pose is the small scores' argmax or angle, which float16's rounding
        # moves between an image and its turned copy (a 3% logit change under quarter turns, continuous)
        self.lift = LiftingConv2D(self.filters, k, group=group, dtype="float32", name="lift")
        self.conv = GroupConv2D(self.filters, k, group=group, dtype="float32", name="conv")
        self.score = GroupConv2D(1, k, group=group, dtype="float32", name="score")

    def build(self, input_shape):
        if input_shape[1] is None or input_shape[1] != input_shape[2]:
            raise ValueError(f"canonicalization needs square images of known size, got {input_shape}")
        if input_shape[1] % self.downscale:
            raise ValueError(f"canonicalization: the image side {input_shape[1]} is not a multiple of "
                             f"downscale={self.downscale} (the pooling must tile the image to stay exact)")
        side = input_shape[1] // self.downscale
        if side < 2:  # one pixel has no orientation: every element would score the same, the identity always wins
            fits = max((d for d in range(1, input_shape[1] // 2 + 1) if input_shape[1] % d == 0), default=None)
            raise ValueError(f"canonicalization: downscale={self.downscale} leaves the canonicalizer a {side}x{side} "
                             f"image of the {input_shape[1]}x{input_shape[1]} input; it needs at least 2x2 ("
                             + (f"the largest downscale that fits: {fits})" if fits else "a larger image)"))
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
        x = ops.cast(x, "float32")
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
