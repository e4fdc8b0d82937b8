"""G-CNN: a regular group convolutional network on C_N, rotation-invariant classifier.

After Cohen & Welling (ICML 2016) and the regular-representation C_N models
of Weiler & Cesa (NeurIPS 2019, e2cnn). A lifting convolution turns the
image into feature maps over N orientations; stages of group convolutions
(each followed by batch norm shared across orientations and a ReLU) keep
them; 2x2 pooling between stages (average, max, or blurred average) halves
the maps; the readout pools over orientations (max), averages over positions
and ends in a dense layer to the class logits (float32).

Default: C8, 5x5 filters on the band-limited harmonic basis (9 weights per
filter), 4-8-16 channels per orientation (32-64-128 maps, the real widths of
hnet's 8-16-32 complex two-order streams), two convolutions per stage,
28 -> 14 -> 7, about 36k parameters and about hnet's cost per image.

The logits are exactly invariant to 90-degree rotations of the input when N
is a multiple of 4 and every pooled size is even (28 -> 14 -> 7 is), and
approximately invariant to other rotations (N = 8, 16 add the 45 and 22.5
degree rotations to the filters, exact on the filters, approximate on the
pixel grid). Per-stage lists drive it, as in baseline.py and hnet.py.
"""

from __future__ import annotations

import keras
from keras import layers

from layers.blurpool import BlurPool2D
from layers.group_batch_norm import GroupBatchNormalization
from layers.group_conv import GroupConv2D
from layers.group_pooling import GroupPooling
from layers.lifting_conv import LiftingConv2D
from models.baseline import _per_stage
from models.registry import register

POOLINGS = ("avg", "max", "blur")


def search_space(hp) -> dict:
    """KerasTuner search space of the gcnn builder's params."""
    width = hp.Choice("width", [4, 6, 8])
    return {
        "filters": [width, 2 * width, 3 * width],
        "kernel_size": hp.Choice("kernel_size", [3, 5]),
        "group_order": hp.Choice("group_order", [4, 8]),
        "pooling": hp.Choice("pooling", list(POOLINGS)),
    }


def _pool(x, kind: str, blur_size: int, name: str):
    """2x2 pooling of [B, H, W, N, C] maps at stride 2, per orientation and channel.

    Exactly equivariant to rot90 on even sizes: the 2x2 windows of an even
    map are mapped onto each other by the rotation. `blur` is a binomial blur
    at stride 1 (BlurPool2D, symmetric reflect padding) before the average:
    anti-aliased like Zhang's BlurPool, without a stride-2 subsampling grid
    that a rotation would move.
    """
    h, w, n, c = x.shape[1:]
    if h is None or w is None:  # unknown sizes: 3-D pooling (in float32: TF's CPU has no float16 Pool3D)
        if kind == "blur":
            raise ValueError(f"pooling 'blur' needs static image sizes, got input shape {tuple(x.shape)}")
        pool = layers.MaxPooling3D if kind == "max" else layers.AveragePooling3D
        return pool((2, 2, 1), dtype="float32", name=name)(x)
    x = layers.Reshape((h, w, n * c), name=f"{name}_flat")(x)
    if kind == "blur":
        x = BlurPool2D(blur_size, strides=1, padding="reflect", name=f"{name}_blur")(x)
    pool = layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D
    x = pool(2, name=name)(x)
    return layers.Reshape((h // 2, w // 2, n, c), name=f"{name}_groups")(x)


@register("gcnn", search_space=search_space)
def build(
    input_shape,
    num_classes,
    *,
    filters=(4, 8, 16),
    kernel_size=5,
    convs_per_stage: int = 2,
    group_order: int = 8,
    basis: str = "auto",
    pooling: str = "avg",
    blur_size: int = 3,
    group_pool: str = "max",
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "gcnn",
) -> keras.Model:
    """Build a G-CNN on the cyclic group C_N.

    Args:
        filters: channels per orientation per stage (the maps have N times
            as many); its length is the number of stages.
        kernel_size: odd filter size per stage (or one for all).
        convs_per_stage: convolutions in each stage (the first of stage 0 is
            the lifting convolution).
        group_order: N, the rotations of C_N (4: exact rot90 filters on the
            pixel basis; 8, 16: band-limited circular-harmonic filters).
        basis: filter basis of the convolutions (`auto`, `pixel`, `harmonic`).
        pooling: 2x2 pooling between stages: `avg`, `max` or `blur` (binomial
            blur of `blur_size` at stride 1, then 2x2 average).
        blur_size: odd binomial filter size of `blur` pooling.
        group_pool: pooling over orientations in the readout (`max`, `mean`).
        bn_momentum: momentum of the batch norms' moving statistics.
        dropout: dropout before the final dense layer.
    Returns:
        A Keras model from float images in [0, 1] to class logits (float32).
    """
    n = len(filters) if isinstance(filters, (list, tuple)) else 0
    if n < 1:
        raise ValueError(f"filters must name at least one stage, got {filters!r}")
    filters = _per_stage(filters, n, "filters")
    kernel_sizes = _per_stage(kernel_size, n, "kernel_size")
    if not isinstance(convs_per_stage, int) or isinstance(convs_per_stage, bool) or convs_per_stage < 1:
        raise ValueError(f"convs_per_stage must be an integer >= 1, got {convs_per_stage!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if not isinstance(blur_size, int) or isinstance(blur_size, bool) or blur_size < 1 or blur_size % 2 == 0:
        raise ValueError(f"blur_size must be an odd positive integer, got {blur_size!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    # group_order, basis, group_pool and bn_momentum are checked by the layers (ValueError echoing the value).

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for s, (f, k) in enumerate(zip(filters, kernel_sizes)):
        if s > 0:
            x = _pool(x, pooling, blur_size, name=f"stage{s}_pool")
        for c in range(convs_per_stage):
            conv = LiftingConv2D if (s == 0 and c == 0) else GroupConv2D
            x = conv(f, k, group_order=group_order, basis=basis, use_bias=False, name=f"stage{s}_gconv{c}")(x)
            x = GroupBatchNormalization(momentum=bn_momentum, activation="relu", name=f"stage{s}_gbn{c}")(x)
    x = GroupPooling(group_pool, name="group_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits_f32")(x)
    return keras.Model(inputs, outputs, name=name)
