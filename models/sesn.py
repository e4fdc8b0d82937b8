"""SESN: the scale-equivariant steerable network of Sosnovik, Szmaja & Smeulders (ICLR 2020) for MNIST-scale.

Three stages, per-stage lists as in baseline.py: a lifting scale-equivariant
convolution (images -> one map per scale), then scale-to-scale convolutions,
each followed by batch norm (statistics shared by the scales) and ReLU, 2x2
max pooling between stages (28 -> 14 -> 7); then max over the scales
(`ScalePooling`, the invariant read-out), 4x4 max pooling, a dense layer
(batch norm, ReLU, dropout) and the classifier. The paper's MNIST model has
32-63-95 channels (about 495k parameters with 49 basis functions); the
default here (25 basis functions, max_order 4) has about 302k. The scale
layers are exactly equivariant for odd integer ratios of their scales (the
defaults: scale 0 and 2, ratio 3) under nearest-neighbour enlargement and
approximately otherwise (figures in `layers/scale/scale_lifting_conv.py`); the
stack as a whole is approximately scale-invariant.
"""

from __future__ import annotations

import keras
from keras import layers

from layers.scale.scale_conv import ScaleConv2D
from layers.scale.scale_lifting_conv import ScaleLiftingConv2D
from layers.scale.scale_pooling import ScalePooling
from models.baseline import _per_stage, stages
from models.registry import register


def search_space(hp) -> dict:
    """KerasTuner search space of the sesn builder's params."""
    width = hp.Choice("width", [16, 32, 48])
    return {
        "filters": [width, 2 * width, 3 * width],
        "kernel_size": hp.Choice("kernel_size", [7, 9]),
        "num_scales": hp.Choice("num_scales", [2, 3, 4]),
        "max_order": hp.Choice("max_order", [2, 3, 4]),
        "interscale": hp.Choice("interscale", [1, 2]),
        "dropout": hp.Float("dropout", 0.0, 0.7, step=0.1),
    }


def _pool_spatial(x, size: int, name: str):
    """Max pooling over H and W of a [batch, H, W, S, C] map ('same': ceil sizes)."""
    h, w, s, c = x.shape[1:]
    x = layers.Reshape((h, w, s * c), name=f"{name}_flat")(x)
    x = layers.MaxPooling2D(size, padding="same", name=name)(x)
    return layers.Reshape((x.shape[1], x.shape[2], s, c), name=f"{name}_unflat")(x)


@register("sesn", search_space=search_space)
def build(
    input_shape,
    num_classes,
    *,
    filters=(32, 63, 95),
    kernel_size=9,
    num_scales: int = 3,
    scale_step: float = 3**0.5,
    sigma: float = 0.8,
    max_order: int = 4,
    interscale=1,
    final_pool: int = 4,
    dense_units: int = 256,
    dropout: float = 0.5,
    bn_momentum: float = 0.9,
    name: str = "sesn",
) -> keras.Model:
    """Build a SESN classifier.

    Args:
        filters: channels per scale per stage; its length is the number of stages.
        kernel_size: odd kernel size per stage (or one for all), as baseline_cnn and hnet.
        num_scales: scales of every layer: sigma * scale_step**s, s < num_scales.
        scale_step: ratio between neighbouring scales (default sqrt(3): scales
            0.8, 1.39, 2.4 px, scale 2 exactly 3x scale 0).
        sigma: the smallest basis scale, pixels.
        max_order: highest Hermite order per axis ((max_order + 1)^2 basis functions).
        interscale: neighbouring scales each scale-to-scale convolution mixes,
            per stage after the first (or one for all); 1 = SESN's scalar form.
        final_pool: max pooling size after the scale pooling (SESN: 4).
        dense_units: width of the dense layer (0: none).
        dropout: dropout before the classifier.
        bn_momentum: momentum of the batch norms' moving statistics.
    Returns:
        A Keras model from float images in [0, 1] to class logits (float32).
    """
    n, filters, kernel_sizes = stages(filters, kernel_size)
    interscales = _per_stage(interscale, max(n - 1, 1), "interscale")
    if not isinstance(final_pool, int) or isinstance(final_pool, bool) or final_pool < 1:
        raise ValueError(f"final_pool must be a positive integer, got {final_pool!r}")
    if not isinstance(dense_units, int) or isinstance(dense_units, bool) or dense_units < 0:
        raise ValueError(f"dense_units must be a non-negative integer, got {dense_units!r}")
    scale = dict(num_scales=num_scales, scale_step=scale_step, sigma=sigma, max_order=max_order)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for s, (f, k) in enumerate(zip(filters, kernel_sizes)):
        if s == 0:
            x = ScaleLiftingConv2D(f, k, use_bias=False, name="stage0_lift", **scale)(x)
        else:
            x = ScaleConv2D(f, k, interscale=interscales[s - 1], use_bias=False, name=f"stage{s}_sconv", **scale)(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"stage{s}_bn")(x)
        x = layers.Activation("relu", name=f"stage{s}_relu")(x)
        if s < n - 1:
            x = _pool_spatial(x, 2, name=f"stage{s}_pool")
    x = ScalePooling("max", name="scale_pool")(x)
    if final_pool > 1:
        x = layers.MaxPooling2D(final_pool, padding="same", name="final_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    if dense_units:
        x = layers.Dense(dense_units, use_bias=False, name="dense")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name="dense_bn")(x)
        x = layers.Activation("relu", name="dense_relu")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits_f32")(x)
    return keras.Model(inputs, outputs, name=name)
