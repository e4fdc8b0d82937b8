"""Training-split augmentation: shifts, rotations and elastic warps on image batches.

Three kinds of nuisance become augmentations (issue 3): a shifted image
(`RandomTranslation`), a rotated one (`RandomRotation`) and one written by a
different hand, a smooth deformation (`ElasticWarp`, Simard, Steinkraus &
Platt 2003). `build_augmentation` composes them from the config's
`augment.translation`, `augment.rotation` and `augment.elastic` sections
(plain dicts, so `data/` never imports `pipelines/`) into one `Augmentation`
layer that works on float batches `[batch, H, W, C]` whose batch size may be
unknown, eagerly and inside `tf.data.Dataset.map`.

Seeds. Keras' preprocessing layers draw their randomness from a
`keras.random.SeedGenerator`, a variable whose state is read and then advanced
on every call. Inside `Dataset.map(..., num_parallel_calls=AUTOTUNE)` several
batches run that read-and-advance at once, so which batch gets which draw (and
whether two batches get the same one) depends on thread timing: not
deterministic. `augment_dataset` therefore gives every batch its own stateless
seed from `tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`
(a fresh, reproducible sequence each epoch) and passes it to the layer as
`seed=`; every random draw inside derives from that seed by
`stateless_fold_in`. Called without `seed=` the layer falls back to its own
`SeedGenerator` (fine eagerly and in sequential maps).

Augmentation belongs to the training pipeline only, never to an exported model.
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from data.augment_settings import FILL_MODES, OPERATIONS, settings  # noqa: F401  (FILL_MODES: re-exported)
from data.scale_augment import random_scale

__all__ = [
    "ElasticWarp",
    "Augmentation",
    "build_augmentation",
    "augment_dataset",
    "gaussian_smoothing_matrix",
    "bilinear_sample",
    "preview_rows",
]



# ----------------------------------------------------------------------------- seeds


class _SeedStream(keras.random.SeedGenerator):
    """A stateless stand-in for `keras.random.SeedGenerator`.

    Keras' random ops accept a `SeedGenerator` and call its `next()` once per
    draw. This one holds no variable: draw k gets `stateless_fold_in(seed, k)`,
    so a given `seed` tensor always yields the same sequence of draws, eagerly
    or inside a traced `tf.data` function. (Passing the same plain seed to every
    draw instead would be wrong: `RandomTranslation` draws its x and y shifts
    with two calls on one seed argument, which would make them equal.)
    """

    def __init__(self, seed):  # noqa: D107 - deliberately no SeedGenerator state
        self._seed = tf.cast(seed, tf.int64)
        self._count = 0
        self.name = "seed_stream"
        self._initial_seed = None

    def next(self, ordered=True):
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._count)


def _as_seed_tensor(seed):
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise ValueError(f"seed must be an integer tensor of shape [2], got dtype {seed.dtype}")
    return tf.cast(seed, tf.int64)


# ----------------------------------------------------------------------------- elastic warp


def gaussian_smoothing_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The n x n matrix of a 1-D Gaussian filter, as `scipy.ndimage.gaussian_filter1d`
    applies it with its defaults (`mode="reflect"`, i.e. `d c b a | a b c d | d c b a`,
    and the kernel truncated at `int(truncate * sigma + 0.5)` pixels, normalised to sum 1).

    `M @ v` equals `gaussian_filter1d(v, sigma, truncate=truncate)` for a vector `v`
    of length n; any radius works, also one larger than n (the reflection repeats).
    """
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / float(sigma)) ** 2)
    weights /= weights.sum()
    m = np.zeros((n, n), dtype=np.float64)
    period = 2 * n
    for i in range(n):
        j = (i + offsets) % period  # scipy "reflect": symmetric about the edge of the last pixel
        j = np.where(j >= n, period - 1 - j, j)
        np.add.at(m[i], j, weights)
    return m


def bilinear_sample(images, rows, cols, fill_value: float = 0.0):
    """Sample `images` [B, H, W, C] at real-valued pixel positions, bilinearly.

    `rows` and `cols` are [B, H', W'] (pixel coordinates, row 0 and column 0 at
    the top-left pixel's centre). Positions outside the image read `fill_value`
    (as `scipy.ndimage.map_coordinates(order=1, mode="grid-constant")`: a neighbour
    outside the image counts as `fill_value`, so edges fade into the fill). Every
    output is a convex combination of input pixels and `fill_value`, so the value
    range is kept. Returns [B, H', W', C].

    Hand-written rather than `keras.ops.image.map_coordinates`: that op (given
    batch and channel coordinates too) agrees to 1e-7 but, interpolating over all
    four axes, gathers 16 corners per pixel; measured 12x slower on 128x28x28x1
    batches (3.3k vs 39k images/s, TF 2.21 CPU).
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    h, w, c = shape[1], shape[2], shape[3]
    dtype = images.dtype
    rows = tf.cast(rows, dtype)
    cols = tf.cast(cols, dtype)
    r0 = tf.floor(rows)
    c0 = tf.floor(cols)
    wr = rows - r0
    wc = cols - c0
    r0 = tf.cast(r0, tf.int32)
    c0 = tf.cast(c0, tf.int32)
    flat = tf.reshape(images, [shape[0], h * w, c])
    out_shape = tf.shape(rows)
    fill = tf.cast(fill_value, dtype)
    out = None
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        ri = r0 + dr
        ci = c0 + dc
        valid = (ri >= 0) & (ri < h) & (ci >= 0) & (ci < w)
        idx = tf.clip_by_value(ri, 0, h - 1) * w + tf.clip_by_value(ci, 0, w - 1)
        idx = tf.reshape(idx, [out_shape[0], -1])
        vals = tf.gather(flat, idx, batch_dims=1)  # [B, H'W', C]
        vals = tf.reshape(vals, tf.concat([out_shape, [c]], 0))
        vals = tf.where(valid[..., None], vals, fill)
        weight = (wr if dr else 1.0 - wr) * (wc if dc else 1.0 - wc)
        term = weight[..., None] * vals
        out = term if out is None else out + term
    return out


@keras.saving.register_keras_serializable(package="invariant")
class ElasticWarp(keras.layers.Layer):
    """Random elastic distortion of image batches (Simard, Steinkraus & Platt 2003).

    For every image, two displacement fields (rows and columns) are drawn
    independently from U(-1, 1) per pixel, each smoothed by a Gaussian of
    standard deviation `sigma` pixels (normalised kernel, truncated at
    `truncate * sigma` pixels, reflecting boundary: exactly
    `scipy.ndimage.gaussian_filter(field, sigma)`), and scaled by `alpha`. The
    output pixel (i, j) is the input sampled bilinearly at
    (i + dy[i, j], j + dx[i, j]); positions outside the image read `fill_value`.
    Every image of a batch draws its own field, also when the batch size is
    unknown (`None`, as inside `tf.data`). With `training=False` the layer is
    the identity. The output is a convex combination of input pixels and
    `fill_value`, so inputs in [0, 1] stay in [0, 1] (up to float rounding).

    Keras' own `RandomElasticTransform` is not used: in Keras 3.15 with
    TensorFlow it gives a whole batch the first image's warp when the batch size
    is unknown, and its x and y fields are nearly equal.

    Paper: P. Y. Simard, D. Steinkraus, J. C. Platt, "Best practices for
    convolutional neural networks applied to visual document analysis",
    ICDAR 2003. Their MNIST setting is `alpha=34, sigma=4`.

    Args:
        alpha: displacement scale in pixels (>= 0); 0 makes the layer the identity.
        sigma: standard deviation of the Gaussian smoothing, pixels (> 0).
        truncate: the Gaussian kernel is cut at `int(truncate * sigma + 0.5)`
            pixels (scipy's default 4.0).
        fill_value: value read outside the image.
        seed: integer seed of the layer's own `SeedGenerator`, used when `call`
            gets no `seed=` tensor.

    Call arguments:
        inputs: float images `[batch, height, width, channels]` (static height and width).
        training: apply the warp (default True, as Keras' random preprocessing layers).
        seed: optional int tensor of shape [2]; when given, the field is a
            stateless function of it (used by `augment_dataset`).

    Input shape:
        4D tensor `(batch, height, width, channels)`.

    Output shape:
        Same as the input.

    Example:
        >>> warp = ElasticWarp(alpha=34.0, sigma=4.0, seed=0)
        >>> warp(np.zeros((2, 28, 28, 1), "float32")).shape
        TensorShape([2, 28, 28, 1])
    """

    def __init__(self, alpha=34.0, sigma=4.0, truncate=4.0, fill_value=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha < 0:
            raise ValueError(f"alpha must be a number >= 0, got alpha={alpha!r}")
        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or sigma <= 0:
            raise ValueError(f"sigma must be a number > 0, got sigma={sigma!r}")
        if not isinstance(truncate, (int, float)) or isinstance(truncate, bool) or truncate <= 0:
            raise ValueError(f"truncate must be a number > 0, got truncate={truncate!r}")
        if not isinstance(fill_value, (int, float)) or isinstance(fill_value, bool):
            raise ValueError(f"fill_value must be a number, got fill_value={fill_value!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an integer or None, got seed={seed!r}")
        self.alpha = float(alpha)
        self.sigma = float(sigma)
        self.truncate = float(truncate)
        self.fill_value = float(fill_value)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"ElasticWarp expects [batch, height, width, channels], got shape {input_shape}")
        h, w = input_shape[1], input_shape[2]
        if h is None or w is None:
            raise ValueError(f"ElasticWarp needs a static height and width, got shape {input_shape}")
        if self.sigma > max(h, w):  # the smoothed field is then one shift of the whole image; its kernel is huge
            raise ValueError(f"sigma={self.sigma:g} pixels is larger than the image ({h}x{w}): the warp would shift "
                             "the whole image; sigma smooths the field over a few pixels (Simard et al.: 4 on MNIST)")
        # The separable Gaussian filter with reflecting boundary as two small
        # matrices: smoothing a [H, W] field is A_h @ field @ A_w^T, one batched
        # matmul pair (faster here than a depthwise conv with padding, and exact
        # for any radius).
        self._smooth_h = gaussian_smoothing_matrix(h, self.sigma, self.truncate).astype("float32")
        self._smooth_w = gaussian_smoothing_matrix(w, self.sigma, self.truncate).astype("float32")
        self._hw = (int(h), int(w))

    def displacement(self, batch_size, seed=None):
        """Draw the displacement fields `[batch, H, W, 2]` (row shift, column shift), pixels."""
        if not self.built:
            raise ValueError("ElasticWarp.displacement needs a built layer (call it once, or build it)")
        h, w = self._hw
        if seed is None:
            seed = self.generator.next()
        seed = tf.random.experimental.stateless_fold_in(_as_seed_tensor(seed), 0x5EED)
        noise = tf.random.stateless_uniform(tf.stack([batch_size, 2, h, w]), seed=seed, minval=-1.0, maxval=1.0)
        noise = tf.reshape(noise, [-1, h, w])
        smooth = tf.matmul(tf.matmul(tf.constant(self._smooth_h), noise), tf.constant(self._smooth_w), transpose_b=True)
        smooth = tf.reshape(smooth, [-1, 2, h, w]) * self.alpha
        return tf.transpose(smooth, [0, 2, 3, 1])

    def warp(self, images, displacement):
        """Resample `images` [B, H, W, C] at (i + dy, j + dx) for `displacement` [B, H, W, 2]."""
        h, w = self._hw
        grid_r, grid_c = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
        rows = grid_r[None] + displacement[..., 0]
        cols = grid_c[None] + displacement[..., 1]
        return bilinear_sample(images, rows, cols, self.fill_value)

    def call(self, inputs, training=True, seed=None):
        if not training or self.alpha == 0.0:
            return inputs
        images = tf.convert_to_tensor(inputs)
        field = self.displacement(tf.shape(images)[0], seed)
        return tf.cast(self.warp(tf.cast(images, tf.float32), field), images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "sigma": self.sigma,
                "truncate": self.truncate,
                "fill_value": self.fill_value,
                "seed": self.seed,
            }
        )
        return config


# ----------------------------------------------------------------------------- the chain


def _section(name: str, value) -> dict:
    """A config section with its defaults filled and checked (data/augment_settings.py), as a dict."""
    return dataclasses.asdict(settings(name, value))


def _is_on(name: str, section: dict) -> bool:
    return settings(name, section).on


@contextlib.contextmanager
def _tensorflow_ops(layer):
    """Keras' image layers compute with `layer.backend`, the Keras backend by default. The chain runs
    in tf.data on TensorFlow tensors whatever the backend (JAX included), so their ops must be
    TensorFlow's; their own `__call__` switches the same way inside a tf.data graph."""
    backend = getattr(layer, "backend", None)
    if backend is None or not hasattr(backend, "set_backend"):
        yield
        return
    backend.set_backend("tensorflow")
    try:
        yield
    finally:
        backend.reset()


@keras.saving.register_keras_serializable(package="invariant")
class Augmentation(keras.layers.Layer):
    """The training augmentation chain: flips, then elastic warp, scale, rotation and translation.

    Each operation is applied to each image independently with its own
    probability; images are floats in [0, 1] and the output is clipped to
    [0, 1] (bilinear resampling is a convex combination, so the clip only
    removes float rounding). Rotation and translation are Keras'
    `RandomRotation` and `RandomTranslation` (bilinear, `fill_value=0`), the
    warp is `ElasticWarp`. Each resamples once, so a chain of all three blurs a
    little more than one composed transform would.

    Args:
        flip: dict `{horizontal, vertical, rotate90}` (booleans): exact mirrors (probability 1/2
            each) and quarter turns (k uniform in 0..3; square images only), applied first.
        translation: dict `{max, units: fraction|pixels, fill_mode, probability}`;
            shifts drawn uniformly from [-max, max] on each axis independently.
        rotation: dict `{max_degrees in [0, 180], fill_mode, probability}`;
            angles uniform in [-max_degrees, max_degrees], counter-clockwise positive.
        elastic: dict `{alpha, sigma, probability}` (see `ElasticWarp`).
        scale: dict `{min, max, probability}`: each image zoomed by its own
            factor uniform in [min, max] (data/scale_augment.py; anti-aliased
            when shrinking). Applied after the warp, before rotation.
        seed: integer seed of the layer's `SeedGenerator`, used when `call` gets
            no `seed=` tensor; also `augment_dataset`'s default seed.

    Call arguments:
        inputs: float images `[batch, H, W, C]`, batch size may be unknown.
        training: False makes the layer the identity.
        seed: optional int tensor of shape [2]: the whole batch's randomness is
            a stateless function of it (deterministic under parallel `map`).

    Input shape:
        4D tensor `(batch, height, width, channels)`.

    Output shape:
        Same as the input.

    Example:
        >>> aug = build_augmentation({"max": 0.1}, {"max_degrees": 30}, {"alpha": 34, "sigma": 4}, seed=0)
        >>> aug(np.zeros((4, 28, 28, 1), "float32"), training=True).shape
        TensorShape([4, 28, 28, 1])
    """

    def __init__(self, translation=None, rotation=None, elastic=None, seed=None, scale=None, flip=None, **kwargs):
        super().__init__(**kwargs)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an integer or None, got seed={seed!r}")
        self.translation = _section("translation", translation)
        self.rotation = _section("rotation", rotation)
        self.elastic = _section("elastic", elastic)
        self.scale = _section("scale", scale)
        self.flip = _section("flip", flip)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        # Sub-layers are made here, not in build: each holds a SeedGenerator
        # variable, and build may run inside a traced tf.data function, where
        # no variable may be created. They compute in float32 whatever the
        # global dtype policy (call works in float32; under a mixed policy
        # they would return bfloat16/float16 into its float32 arithmetic).
        self._rotation_layer = None
        self._elastic_layer = None
        self._translation_layer = None
        if _is_on("translation", self.translation):
            t = self.translation
            f = t["max"] if t["units"] == "fraction" else 0.0  # pixels: set in build, once H and W are known
            self._translation_layer = keras.layers.RandomTranslation(
                (-f, f), (-f, f), fill_mode=t["fill_mode"], interpolation="bilinear", fill_value=0.0, seed=seed,
                dtype="float32",
            )
        if _is_on("rotation", self.rotation):
            f = self.rotation["max_degrees"] / 360.0
            self._rotation_layer = keras.layers.RandomRotation(
                (-f, f), fill_mode=self.rotation["fill_mode"], interpolation="bilinear", fill_value=0.0, seed=seed,
                dtype="float32",
            )
        if _is_on("elastic", self.elastic):
            self._elastic_layer = ElasticWarp(self.elastic["alpha"], self.elastic["sigma"], seed=seed, dtype="float32")

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"Augmentation expects [batch, height, width, channels], got shape {input_shape}")
        t = self.translation
        if self._translation_layer is not None and t["units"] == "pixels":
            h, w = input_shape[1], input_shape[2]
            if h is None or w is None:
                raise ValueError(f"translation in pixels needs a static height and width, got {input_shape}")
            fh, fw = t["max"] / h, t["max"] / w
            if fh >= 1 or fw >= 1:
                raise ValueError(f"translation.max={t['max']} pixels is not smaller than the image ({h}x{w})")
            # RandomTranslation takes fractions of the side; its draws are
            # uniform(lower, upper) * side, so setting the bounds is all it needs.
            layer = self._translation_layer
            layer.height_factor, layer.width_factor = (-fh, fh), (-fw, fw)
            layer.height_lower, layer.height_upper = -fh, fh
            layer.width_lower, layer.width_upper = -fw, fw
        if self.flip["rotate90"] and input_shape[1] != input_shape[2]:
            raise ValueError(f"flip.rotate90 needs square images, got height x width {input_shape[1]}x{input_shape[2]}")
        if self._elastic_layer is not None:
            try:
                self._elastic_layer.build(input_shape)
            except ValueError as e:
                raise ValueError(f"elastic.{e}") from None

    @property
    def operations(self) -> list[str]:
        """The names of the operations that are on, in the order they apply."""
        ops = [("flip", _is_on("flip", self.flip) or None), ("elastic", self._elastic_layer), ("scale", _is_on("scale", self.scale) or None),
               ("rotation", self._rotation_layer), ("translation", self._translation_layer)]
        return [n for n, layer in ops if layer is not None]

    @staticmethod
    def _with_probability(p, transformed, images, seeds):
        if p >= 1.0:
            return transformed
        u = tf.random.stateless_uniform([tf.shape(images)[0]], seed=seeds.next())
        return tf.where((u < p)[:, None, None, None], transformed, images)

    def call(self, inputs, training=True, seed=None):
        if not training:
            return inputs
        images = tf.cast(inputs, tf.float32)
        seeds = _SeedStream(self.generator.next() if seed is None else _as_seed_tensor(seed))
        if _is_on("flip", self.flip):
            images = random_flips(images, seeds, **self.flip)
        if self._elastic_layer is not None:
            out = self._elastic_layer.call(images, training=True, seed=seeds.next())
            images = self._with_probability(self.elastic["probability"], out, images, seeds)
        if _is_on("scale", self.scale):
            s = self.scale
            images = random_scale(images, s["min"], s["max"], s["probability"], seed=seeds.next())
        for layer, section in ((self._rotation_layer, self.rotation), (self._translation_layer, self.translation)):
            if layer is None:
                continue
            with _tensorflow_ops(layer):
                t = layer.get_random_transformation(images, training=True, seed=seeds)
                out = layer.transform_images(images, t, training=True)
            images = self._with_probability(section["probability"], out, images, seeds)
        return tf.cast(tf.clip_by_value(images, 0.0, 1.0), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "translation": dict(self.translation),
                "rotation": dict(self.rotation),
                "elastic": dict(self.elastic),
                "seed": self.seed,
                "scale": dict(self.scale),
                "flip": dict(self.flip),
            }
        )
        return config


def random_flips(images, seeds, horizontal=False, vertical=False, rotate90=False):
    """Each image of `images` [N, H, W, C] mirrored left-right / top-bottom with probability 1/2 each
    and turned by k quarter turns (k uniform in 0..3), drawn from `seeds` (a `_SeedStream`)."""
    n = tf.shape(images)[0]

    def coin():
        return (tf.random.stateless_uniform([n], seed=seeds.next()) < 0.5)[:, None, None, None]

    if horizontal:
        images = tf.where(coin(), tf.reverse(images, [2]), images)
    if vertical:
        images = tf.where(coin(), tf.reverse(images, [1]), images)
    if rotate90:
        k = tf.random.stateless_uniform([n], seed=seeds.next(), maxval=4, dtype=tf.int32)
        turns = tf.stack([tf.image.rot90(images, i) for i in range(4)])  # [4, N, H, W, C]
        images = tf.gather_nd(turns, tf.stack([k, tf.range(n)], axis=1))
    return images


def build_augmentation(translation: dict | None = None, rotation: dict | None = None, elastic: dict | None = None,
                       seed: int = 0, scale: dict | None = None, flip: dict | None = None):
    """The augmentation chain of a config's `augment` section, or None when every operation is off.

    An operation is off when its size (`translation.max`, `rotation.max_degrees`,
    `elastic.alpha`, `scale.min` = `scale.max` = 1) or its probability is 0. The
    sections are plain dicts with the keys of data/augment_settings.py; apply
    the result with `augment_dataset`.
    """
    sections = {"translation": translation, "rotation": rotation, "elastic": elastic, "scale": scale, "flip": flip}
    filled = {k: _section(k, v) for k, v in sections.items()}
    if not any(_is_on(k, v) for k, v in filled.items()):
        return None
    return Augmentation(filled["translation"], filled["rotation"], filled["elastic"], seed=int(seed),
                        scale=filled["scale"], flip=filled["flip"])


def augment_dataset(ds: tf.data.Dataset, aug, seed: int | None = None, num_parallel_calls=tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Map `aug` over a *batched* dataset of `images` or `(images, labels, ...)` tuples.

    Images must be float in [0, 1]. Every batch gets its own stateless seed from
    `tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`, so the
    result is the same for the same seed however many batches run in parallel,
    and each epoch (each new iteration over the dataset) draws new transforms.
    `seed` defaults to `aug.seed`. `aug=None` returns `ds` unchanged.
    """
    if aug is None:
        return ds
    if seed is None:
        seed = aug.seed if aug.seed is not None else 0
    spec = ds.element_spec[0] if isinstance(ds.element_spec, (tuple, list)) else ds.element_spec
    if not aug.built:
        aug.build(tuple(spec.shape))
    seeds = tf.data.Dataset.random(seed=int(seed), rerandomize_each_iteration=True).batch(2, drop_remainder=True)

    # `aug.call`, not `aug(...)`: the chain is TensorFlow ops on tf.data tensors, and Layer.__call__
    # would convert them to the Keras backend's arrays (JAX's cannot hold a symbolic tf.Tensor).
    def apply(element, s):
        if isinstance(element, (tuple, list)):
            return (aug.call(element[0], training=True, seed=s), *element[1:])
        return aug.call(element, training=True, seed=s)

    return tf.data.Dataset.zip((ds, seeds)).map(apply, num_parallel_calls=num_parallel_calls, deterministic=True)


# ----------------------------------------------------------------------------- preview


def preview_rows(images, translation=None, rotation=None, elastic=None, seed: int = 0, n: int = 8, scale=None,
                 flip=None) -> list[tuple[str, np.ndarray]]:
    """The rows of the preview grid as (label, float images [n, H, W, C] in [0, 1]).

    The original images, then one row per operation that is on (applied with
    probability 1 so the row shows the operation; flips are drawn per image as
    in training, the identity among them), then the full chain as configured
    (with its probabilities). `images` are uint8 or float in [0, 1].

    `seed` is the training seed (`train.seed`): the full-chain row shows the
    transforms that training draws for the first `n` positions of its first
    batch, since both go through `augment_dataset` with that seed.
    """
    x = np.asarray(images)[:n]
    if x.ndim == 3:
        x = x[..., None]
    x = x.astype("float32") / 255.0 if np.issubdtype(x.dtype, np.integer) else x.astype("float32")
    given = {"translation": translation, "rotation": rotation, "elastic": elastic, "scale": scale, "flip": flip}
    sections = {k: _section(k, v) for k, v in given.items()}
    off = {"translation": {"max": 0.0}, "rotation": {"max_degrees": 0.0}, "elastic": {"alpha": 0.0},
           "scale": {"min": 1.0, "max": 1.0}, "flip": {}}
    rows = [("original", x)]
    for name in ("flip", "translation", "rotation", "elastic", "scale"):
        if not _is_on(name, sections[name]):
            continue
        only = {k: ((v if k == "flip" else dict(v, probability=1.0)) if k == name else off[k]) for k, v in sections.items()}
        aug = build_augmentation(**only, seed=seed)
        first = next(iter(augment_dataset(tf.data.Dataset.from_tensors(x), aug, seed=seed + 1)))
        rows.append((_describe(name, sections[name]), np.asarray(first)))
    chain = build_augmentation(**sections, seed=seed)
    if chain is None:
        rows.append(("full chain (all off)", x))
    else:
        # The draws of the first training batch: `augment_dataset` with the same seed.
        first = next(iter(augment_dataset(tf.data.Dataset.from_tensors(x), chain, seed=seed)))
        rows.append(("full chain", np.asarray(first)))
    return rows


def _describe(name: str, s: dict) -> str:
    if name == "translation":
        unit = "px" if s["units"] == "pixels" else "of side"
        return f"translation\n±{s['max']:g} {unit}"
    if name == "rotation":
        return f"rotation\n±{s['max_degrees']:g}°"
    if name == "scale":
        return f"scale\n×{s['min']:g}–{s['max']:g}"
    if name == "flip":
        return "flip\n" + ",\n".join(k for k in ("horizontal", "vertical", "rotate90") if s[k])  # one per line
    return f"elastic\nα={s['alpha']:g}, σ={s['sigma']:g}"
