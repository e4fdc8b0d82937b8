"""Scale augmentation and deterministic rescaling of image batches (TensorFlow ops).

- `random_scale(images, min_factor, max_factor, probability, seed, training)`:
  every image of a batch draws its OWN factor, uniform in [min_factor,
  max_factor], applied with `probability` (else factor 1); works eagerly and
  inside `tf.data.Dataset.map` with an unknown batch size. This is the op
  behind the config's `augment.scale: {min, max, probability}`.
- `rescale_batch(images, factor)`: one fixed factor for the whole batch, for
  the evaluation's scale curve (NumPy in, NumPy out; tensors in, tensors out).
- `RandomScale`: `random_scale` as a Keras layer with `call(x, training, seed)`,
  for an augmentation chain of layers.

What a factor does, on the same canvas: the content is rescaled about the
image centre; factor < 1 shrinks it into the centre (zero border) through a
triangle filter widened by 1 / factor (anti-aliased, like
`tf.image.resize(antialias=True)`), factor > 1 enlarges it bilinearly and
crops; factor 1 is the identity, exactly. It is separable: per image one
[H, H] and one [W, W] resampling matrix, built in the graph from the factors,
applied by two batched matrix products. The same matrices as the model-side
`layers.scale.canvas_rescale.canvas_resample_matrix` (the pyramid), tested equal.

Keras' `RandomZoom` is not used: it has no anti-aliasing when zooming out,
and (like `RandomElasticTransform`) draws per batch rather than per image
when the batch size is unknown.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

__all__ = ["random_scale", "rescale_batch", "scale_matrices", "RandomScale"]


def _check_factors(min_factor, max_factor, probability):
    for name, v in (("min_factor", min_factor), ("max_factor", max_factor)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if min_factor > max_factor:
        raise ValueError(f"min_factor must not exceed max_factor, got min_factor={min_factor!r} max_factor={max_factor!r}")
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be a number in [0, 1], got {probability!r}")


def scale_matrices(factors, size, min_factor: float, antialias: bool = True):
    """Per-image resampling matrices [B, size, size] (float32) for the factors [B].

    `min_factor` (a Python float, at most min(factors)) bounds the kernel's
    width so the tap count is static. Row p of image b: the triangle kernel,
    widened by 1 / factor when shrinking, centred on u = c + (p - c) / factor,
    normalised over all integer positions, then cut to the canvas.
    """
    factors = tf.cast(tf.reshape(factors, [-1]), tf.float32)
    n = tf.cast(size, tf.float32)
    c = (n - 1.0) / 2.0
    p = tf.range(size, dtype=tf.float32)
    u = c + (p[None, :] - c) / factors[:, None]  # [B, n]
    s = tf.minimum(factors, 1.0) if antialias else tf.ones_like(factors)
    s = s[:, None, None]
    k = int(math.ceil(1.0 / min(float(min_factor), 1.0))) + 1 if antialias else 2
    offsets = tf.range(-k, k + 1, dtype=tf.float32)
    taps = tf.floor(u)[..., None] + offsets  # [B, n, 2k+1]
    norm = tf.reduce_sum(tf.nn.relu(1.0 - s * tf.abs(taps - u[..., None])), axis=-1, keepdims=True)  # [B, n, 1]
    j = tf.range(size, dtype=tf.float32)
    w = tf.nn.relu(1.0 - s * tf.abs(j[None, None, :] - u[..., None]))  # [B, n, n]
    return w / norm


def _rescale(images, factors, min_factor: float):
    """Rescale each image b of [B, H, W, C] by factors[b] about its centre (float32 math, input dtype kept)."""
    images = tf.convert_to_tensor(images)
    dtype = images.dtype
    x = tf.cast(images, tf.float32)
    shape = tf.shape(x)
    rows = scale_matrices(factors, shape[1], min_factor)
    cols = scale_matrices(factors, shape[2], min_factor)
    x = tf.einsum("bph,bhwc->bpwc", rows, x)
    x = tf.einsum("bqw,bpwc->bpqc", cols, x)
    if dtype.is_integer:
        x = tf.round(x)
    x = tf.cast(x, dtype)
    x.set_shape(images.shape)
    return x


def random_scale(images, min_factor: float, max_factor: float, probability: float = 1.0, seed=None,
                 training: bool = True):
    """Rescale every image of a batch by its own random factor, on the same canvas.

    Args:
        images: [batch, H, W, C] float tensor (batch may be unknown; H, W, C too).
        min_factor, max_factor: the factor is uniform in [min_factor, max_factor]
            (< 1 zooms out, anti-aliased; > 1 zooms in and crops).
        probability: chance that an image is rescaled at all (else factor 1, unchanged).
        seed: None (TensorFlow's global random state), a
            `keras.random.SeedGenerator`, an int, or an int tensor of shape
            [2]: a stateless seed (the same seed, the same factors; an
            augmentation chain passes a fresh one per batch).
        training: False returns `images` itself (no op).
    Returns:
        The rescaled batch, shape and dtype of `images`. The identity (the
        input object itself) when `training` is False, `probability` is 0 or
        min_factor == max_factor == 1.
    """
    _check_factors(min_factor, max_factor, probability)
    if not training or probability == 0 or (min_factor == 1 and max_factor == 1):
        return images
    images = tf.convert_to_tensor(images)
    batch = tf.shape(images)[0]
    if seed is None:
        draw = tf.random.uniform([batch])
        keep = tf.random.uniform([batch])
    elif isinstance(seed, keras.random.SeedGenerator):
        draw = tf.convert_to_tensor(keras.random.uniform([batch], seed=seed))
        keep = tf.convert_to_tensor(keras.random.uniform([batch], seed=seed))
    else:
        seed = tf.convert_to_tensor(seed)
        if seed.shape.rank == 0:
            seed = tf.stack([seed, tf.zeros_like(seed)])
        seed = tf.cast(seed, tf.int64)
        draw = tf.random.stateless_uniform([batch], tf.random.experimental.stateless_fold_in(seed, 1))
        keep = tf.random.stateless_uniform([batch], tf.random.experimental.stateless_fold_in(seed, 2))
    factors = min_factor + (max_factor - min_factor) * draw
    factors = tf.where(keep < probability, factors, tf.ones_like(factors))
    return _rescale(images, factors, min(min_factor, 1.0))


def rescale_batch(images, factor: float):
    """Rescale every image of `images` [N, H, W, C] by the same `factor` about its centre.

    For the evaluation's scale curve: factor < 1 shrinks the digits into the
    centre of the same canvas (anti-aliased), factor > 1 enlarges and crops,
    1 returns the input unchanged. A NumPy array gives a NumPy array (same
    dtype), a tensor a tensor. The same result as the model-side
    `CanvasRescale2D(factor)` (float rounding).
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a positive number, got {factor!r}")
    if factor == 1:
        return images
    as_numpy = isinstance(images, np.ndarray)
    x = tf.convert_to_tensor(images)
    factors = tf.fill(tf.shape(x)[:1], tf.constant(float(factor), tf.float32))
    out = _rescale(x, factors, min(float(factor), 1.0))
    return out.numpy() if as_numpy else out


@keras.saving.register_keras_serializable(package="invariant")
class RandomScale(keras.layers.Layer):
    """`random_scale` as a preprocessing layer: each image of the batch its own zoom factor.

    Args:
        min_factor, max_factor: the factor is uniform in [min_factor, max_factor].
        probability: chance that an image is rescaled.
        seed: integer seed of the layer's own `keras.random.SeedGenerator`, used
            when `call` gets no `seed=` tensor (as `ElasticWarp`: fine eagerly and
            in sequential maps; parallel maps should pass `seed=`).

    Call arguments:
        inputs: [batch, H, W, C]; training: False makes the layer the identity;
        seed: optional int tensor of shape [2] (stateless, per batch).

    Example:
        >>> RandomScale(0.3, 1.0)(np.zeros((4, 28, 28, 1), "float32")).shape
        TensorShape([4, 28, 28, 1])
    """

    def __init__(self, min_factor=0.5, max_factor=1.5, probability=1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        _check_factors(min_factor, max_factor, probability)
        self.min_factor = float(min_factor)
        self.max_factor = float(max_factor)
        self.probability = float(probability)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=True, seed=None):
        if seed is None:
            seed = self.seed_generator
        return random_scale(inputs, self.min_factor, self.max_factor, self.probability, seed=seed, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"min_factor": self.min_factor, "max_factor": self.max_factor,
                       "probability": self.probability, "seed": self.seed})
        return config
