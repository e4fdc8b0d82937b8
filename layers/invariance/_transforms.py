"""The image transforms of the any-model invariance layers, in keras.ops: quarter turns, mirrors, turns by any
angle about the image centre (one angle per batch through `ops.image.affine_transform`, or one per image with a
gradient with respect to the angle: `_turn_by`), the polar grid's reads, the group elements' transforms."""

from __future__ import annotations

import math

from keras import ops

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
