"""The baseline CNN: stages of convolutions, each followed by a downsampling step.

Per-stage lists drive it (keras-hub style): `filters[i]`, `kernel_sizes[i]` and
`downsample[i]` describe stage i. The custom layers of the project are swapped
in through `conv`, `downsample` and `padding`, so variants are config, not new
builders.
"""

from __future__ import annotations

import keras
from keras import layers

from models.registry import register

CONV_KINDS = ("standard", "separable")
DOWNSAMPLE_KINDS = ("max", "strided", "none")
PADDINGS = ("same",)


def _per_stage(value, n, name, cast):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} must have one entry per stage ({n}), got {value!r}")
    return [cast(v) for v in values]


def conv_layer(kind: str, filters: int, kernel_size: int, *, strides: int = 1, padding: str = "same", name=None):
    """One convolution of the given kind (no bias: batch norm follows)."""
    if kind == "standard":
        return layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=name)
    if kind == "separable":
        return layers.SeparableConv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=name)
    raise ValueError(f"conv must be one of {CONV_KINDS}, got {kind!r}")


def search_space(hp) -> dict:
    """KerasTuner search space of the baseline's builder params."""
    width = hp.Choice("width", [16, 32, 48, 64])
    return {
        "filters": [width, 2 * width],
        "kernel_sizes": hp.Choice("kernel_size", [3, 5]),
        "downsample": hp.Choice("downsample", list(DOWNSAMPLE_KINDS[:2])),
        "conv": hp.Choice("conv", list(CONV_KINDS)),
        "dropout": hp.Float("dropout", 0.0, 0.5, step=0.125),
    }


@register("baseline_cnn", search_space=search_space)
def build(
    input_shape,
    num_classes,
    *,
    filters=(32, 64),
    kernel_sizes=3,
    convs_per_stage: int = 2,
    downsample="max",
    conv: str = "standard",
    padding: str = "same",
    batch_norm: bool = True,
    head: str = "flatten",
    dense_units: int = 128,
    dropout: float = 0.25,
    name: str = "baseline_cnn",
) -> keras.Model:
    """Build the baseline CNN.

    Args:
        filters: channels per stage; its length is the number of stages.
        kernel_sizes: kernel size per stage (or one for all).
        convs_per_stage: convolutions in each stage.
        downsample: per stage (or one for all): `max` (2x2 max pool), `strided`
            (the stage's last conv at stride 2) or `none`.
        conv: `standard` (Conv2D) or `separable` (Keras' depthwise SeparableConv2D).
        padding: `same`.
        batch_norm: batch norm after each conv.
        head: `flatten` (flatten + dense) or `gap` (global average pooling).
        dense_units: width of the dense layer of the `flatten` head (0: none).
        dropout: dropout before the classifier.
    Returns:
        A Keras model from float images in [0, 1] to class logits (float32).
    """
    n = len(filters)
    if n < 1:
        raise ValueError(f"filters must name at least one stage, got {filters!r}")
    filters = _per_stage(filters, n, "filters", int)
    kernel_sizes = _per_stage(kernel_sizes, n, "kernel_sizes", int)
    downsample = _per_stage(downsample, n, "downsample", str)
    for d in downsample:
        if d not in DOWNSAMPLE_KINDS:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_KINDS}, got {d!r}")
    if conv not in CONV_KINDS:
        raise ValueError(f"conv must be one of {CONV_KINDS}, got {conv!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if head not in ("flatten", "gap"):
        raise ValueError(f"head must be 'flatten' or 'gap', got {head!r}")
    if convs_per_stage < 1:
        raise ValueError(f"convs_per_stage must be at least 1, got {convs_per_stage!r}")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for s, (f, k, d) in enumerate(zip(filters, kernel_sizes, downsample)):
        for c in range(convs_per_stage):
            last = c == convs_per_stage - 1
            strides = 2 if (last and d == "strided") else 1
            x = conv_layer(conv, f, k, strides=strides, padding=padding, name=f"stage{s}_conv{c}")(x)
            if batch_norm:
                x = layers.BatchNormalization(name=f"stage{s}_bn{c}")(x)
            x = layers.Activation("relu", name=f"stage{s}_relu{c}")(x)
        if d == "max":
            x = layers.MaxPooling2D(2, name=f"stage{s}_pool")(x)
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
