"""The baseline CNN: stages of convolutions, each followed by a downsampling step.

Per-stage lists drive it (keras-hub style): `filters[i]`, `kernel_size[i]` and
`downsample[i]` describe stage i. The custom layers of the project are swapped
in through `conv`, `downsample` and `padding`, so variants are config, not new
builders.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
from keras import layers

from layers.common import validation as check
from layers.shift.blurpool import BlurPool2D
from layers.shift.circular_pad import CircularPad2D
from layers.shift.max_blurpool import MaxBlurPool2D
from layers.shift.polyphase import AdaptivePolyphaseSampling2D
from layers.shift.spatial_separable_conv import SpatialSeparableConv2D
from models.registry import register

CONV_KINDS = ("standard", "separable", "spatial_separable")
# Zhang's anti-aliasing rewrites: max -> blur, strided -> blur_strided, avg -> blur_avg.
DOWNSAMPLE_KINDS = ("max", "strided", "avg", "blur", "blur_strided", "blur_avg", "aps", "none")
PADDINGS = ("same", "circular")


def _whole(v) -> bool:
    """Whether `v` may stand for an integer: no bool, an integer or a number of whole value (Python's, NumPy's, a
    Decimal; a string is left to int())."""
    if isinstance(v, (bool, np.bool_)):
        return False
    return isinstance(v, numbers.Integral) or not isinstance(v, numbers.Number) or float(v).is_integer()


def _per_stage(value, n, name, cast=int):
    """`value` as one entry per stage: a list of `n` entries, or one value for every stage (also hnet.py's)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} must have one entry per stage ({n}), got {value!r}")
    if cast is int and not all(_whole(v) for v in values):  # 6.7 channels is no width: refused, not cut to 6
        raise ValueError(f"{name} must hold int values, got {value!r}")
    try:
        return [cast(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold {cast.__name__} values, got {value!r}") from None


def stages(filters, kernel_size) -> tuple[int, list[int], list[int]]:
    """(number of stages, filters per stage, kernel size per stage): `filters` a non-empty list names the
    stages, `kernel_size` one per stage or one for all (the builders' shared prologue)."""
    n = len(filters) if isinstance(filters, (list, tuple)) else 0
    if n < 1:
        raise ValueError(f"filters must name at least one stage, got {filters!r}")
    return n, _per_stage(filters, n, "filters"), _per_stage(kernel_size, n, "kernel_size")


def conv_layer(
    kind: str, filters: int, kernel_size: int, *, strides: int = 1, padding: str = "same", rank: int = 1, name=None
):
    """One convolution of the given kind (no bias: batch norm follows).

    `padding` is `same` or `valid`; `spatial_separable` also takes `circular`
    (`apply_conv` below makes any kind circular).
    """
    if kind == "spatial_separable":
        return SpatialSeparableConv2D(
            filters, kernel_size, rank=rank, strides=strides, padding=padding, use_bias=False, name=name
        )
    if kind == "standard":
        return layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=name)
    if kind == "separable":
        return layers.SeparableConv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=name)
    raise ValueError(f"conv must be one of {CONV_KINDS}, got {kind!r}")


def apply_conv(x, kind: str, filters: int, kernel_size: int, *, strides: int = 1, padding: str = "same", rank: int = 1, name=None):
    """Apply one convolution to `x`; `circular` padding = CircularPad2D, then a `valid` convolution. A standard
    1x1 convolution at a stride s > 1 sees every s-th pixel (a 1x1 max pool at stride s) and runs at stride 1:
    the same values and gradients, without oneDNN's strided 1x1 backward-weights, which corrupts memory or the
    gradients below 16 input channels (layers/common/_ops.py `conv2d` says more)."""
    if kind == "standard" and kernel_size == 1 and strides != 1:
        x = layers.MaxPooling2D(1, strides=strides, padding="valid", name=f"{name}_subsample")(x)
        strides, padding = 1, "valid" if padding == "circular" else padding
    if padding == "circular" and kind != "spatial_separable":
        before = (kernel_size - 1) // 2
        x = CircularPad2D(((before, kernel_size - 1 - before),) * 2, name=f"{name}_pad")(x)
        padding = "valid"
    return conv_layer(kind, filters, kernel_size, strides=strides, padding=padding, rank=rank, name=name)(x)


def downsample_layer(kind: str, *, padding: str, blur_size: int, name: str):
    """The layer that ends a stage of downsampling `kind` (None for `strided` and `none`)."""
    blur_padding = "circular" if padding == "circular" else "reflect"
    if kind == "max":
        return layers.MaxPooling2D(2, name=name)
    if kind == "avg":
        return layers.AveragePooling2D(2, name=name)
    if kind == "blur":
        return MaxBlurPool2D(blur_size, 2, padding=blur_padding, name=name)
    if kind in ("blur_strided", "blur_avg"):
        return BlurPool2D(blur_size, 2, padding=blur_padding, name=name)
    if kind == "aps":
        return AdaptivePolyphaseSampling2D(blur_size, padding=blur_padding, name=name)
    return None


def search_space(hp) -> dict:
    """KerasTuner search space of the baseline's builder params."""
    width = hp.Choice("width", [16, 32, 48, 64])
    downsample = hp.Choice("downsample", ["max", "strided", "blur", "blur_strided", "aps"])
    padding = hp.Choice("padding", list(PADDINGS))
    return {
        "filters": [width, 2 * width],
        "kernel_size": hp.Choice("kernel_size", [3, 5]),
        "downsample": downsample,
        "conv": hp.Choice("conv", list(CONV_KINDS)),
        "padding": padding,
        "blur_size": hp.Choice("blur_size", [3, 5]),
        # aps + circular padding is circular-shift invariant only with a global-average-pool head.
        "head": "gap" if (downsample == "aps" and padding == "circular") else hp.Choice("head", ["flatten", "gap"]),
        "dropout": hp.Float("dropout", 0.0, 0.5, step=0.125),
    }


@register("baseline_cnn", search_space=search_space)
def build(
    input_shape,
    num_classes,
    *,
    filters=(32, 64),
    kernel_size=3,
    convs_per_stage: int = 2,
    downsample="max",
    conv: str = "standard",
    conv_rank: int = 1,
    padding: str = "same",
    blur_size: int = 3,
    batch_norm: bool = True,
    head: str = "flatten",
    dense_units: int = 128,
    dropout: float = 0.25,
    name: str = "baseline_cnn",
) -> keras.Model:
    """Build the baseline CNN.

    Args:
        filters: channels per stage; its length is the number of stages.
        kernel_size: kernel size per stage (or one for all).
        convs_per_stage: convolutions in each stage.
        downsample: per stage (or one for all): `max` (2x2 max pool), `strided`
            (the stage's last conv at stride 2), `avg` (2x2 average pool),
            their anti-aliased rewrites after Zhang (ICML 2019) -- `blur` (max at
            stride 1 + BlurPool: MaxBlurPool2D), `blur_strided` (the last conv
            at stride 1 + its batch norm and ReLU + BlurPool2D), `blur_avg`
            (BlurPool2D) --, `aps` (convs at stride 1, then adaptive polyphase
            sampling, Chaman & Dokmanic CVPR 2021; needs even feature sizes) or
            `none`.
        conv: `standard` (Conv2D), `separable` (Keras' depthwise SeparableConv2D)
            or `spatial_separable` (SpatialSeparableConv2D: k x 1 then 1 x k).
        conv_rank: rank of `spatial_separable` convs (pairs summed).
        padding: `same` or `circular` (every conv wraps around; blur filters
            then pad circularly too, otherwise they reflect). With `aps` and
            `circular` the logits are exactly invariant to circular shifts of
            the input (`tf.roll`), which needs `head: gap` (a flatten head sees
            positions); batch norm (inference) and dropout (inactive) keep it.
        blur_size: binomial filter size (1-7) of the `blur*` and `aps` kinds
            (1: no blur; for `aps` plain APS).
        batch_norm: batch norm after each conv (momentum 0.9: with Keras' 0.99 the
            moving statistics lag far behind on small datasets of few steps per epoch).
        head: `flatten` (flatten + dense) or `gap` (global average pooling).
        dense_units: width of the dense layer of the `flatten` head (0: none).
        dropout: dropout before the classifier.
    Returns:
        A Keras model from float images in [0, 1] to class logits (float32).
    """
    n = len(filters) if isinstance(filters, (list, tuple)) else 0
    if n < 1:
        raise ValueError(f"filters must name at least one stage, got {filters!r}")
    filters = _per_stage(filters, n, "filters", int)
    kernel_sizes = _per_stage(kernel_size, n, "kernel_size", int)
    downsample = _per_stage(downsample, n, "downsample", str)
    for d in downsample:
        if d not in DOWNSAMPLE_KINDS:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_KINDS}, got {d!r}")
    if conv not in CONV_KINDS:
        raise ValueError(f"conv must be one of {CONV_KINDS}, got {conv!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if "aps" in downsample and padding == "circular" and head != "gap":
        raise ValueError(
            f"downsample 'aps' with padding 'circular' is meant to be circular-shift invariant, which needs "
            f"head 'gap' (a flatten head depends on positions); got head {head!r}"
        )
    if head not in ("flatten", "gap"):
        raise ValueError(f"head must be 'flatten' or 'gap', got {head!r}")
    convs_per_stage = check.integer(convs_per_stage, "convs_per_stage", low=1, what="an integer >= 1")
    batch_norm = check.boolean(batch_norm, "batch_norm")  # `maybe` or "false" was taken as true

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for s, (f, k, d) in enumerate(zip(filters, kernel_sizes, downsample)):
        for c in range(convs_per_stage):
            last = c == convs_per_stage - 1
            strides = 2 if (last and d == "strided") else 1
            x = apply_conv(x, conv, f, k, strides=strides, padding=padding, rank=conv_rank, name=f"stage{s}_conv{c}")
            if batch_norm:
                x = layers.BatchNormalization(momentum=0.9, name=f"stage{s}_bn{c}")(x)
            x = layers.Activation("relu", name=f"stage{s}_relu{c}")(x)
        pool = downsample_layer(d, padding=padding, blur_size=blur_size, name=f"stage{s}_pool")
        if pool is not None:
            x = pool(x)
    if head == "gap":
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
        if dense_units:
            x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits_f32")(x)
    return keras.Model(inputs, outputs, name=name)
