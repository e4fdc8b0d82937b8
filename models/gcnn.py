"""G-CNN: a regular group convolutional network on C_N or D_N, rotation- (and mirror-) invariant classifier.

After Cohen & Welling (ICML 2016) and the regular-representation C_N / D_N
models of Weiler & Cesa (NeurIPS 2019, e2cnn). A lifting convolution turns
the image into feature maps over the group's elements (N rotations, and
their mirrors for D_N); stages of group convolutions (each followed by batch
norm shared across the group and a ReLU) keep them; 2x2 pooling between
stages (average, max, or blurred average) halves the maps; the readout pools
over the group (max), averages over positions and ends in a dense layer to
the class logits (float32).

Two layouts (`block`):

- `plain` (the default): `convs_per_stage` convolutions per stage, the first
  of stage 0 the lifting convolution; the digits models.
- `residual`: the e2-WRN layout for real images: a lifting stem (convolution,
  batch norm, ReLU; `stem_pool` halves it once more), then in each stage
  `blocks_per_stage` basic blocks (two group convolutions with group batch
  norm; the shortcut is the identity, or a 1x1 group convolution with batch
  norm where the width changes), ReLU after the sum.

Default: C8, 5x5 filters on the band-limited harmonic basis (9 weights per
filter), 4-8-16 channels per orientation (32-64-128 maps, the real widths of
hnet's 8-16-32 complex two-order streams), two convolutions per stage,
28 -> 14 -> 7, about 36k parameters and about hnet's cost per image.

Widths are per group element: a stage of width w has w * |G| maps
(|G| = N for C_N, 2N for D_N). A group convolution has J * |G| * w_in * w_out
weights (J = k * k on the pixel basis) and costs |G|^2 * w_in * w_out * k^2
multiply-adds per pixel: at equal parameters, widths scale as 1 / sqrt(|G|)
(D4's w matches C4's w * sqrt(2) and a plain CNN's w * sqrt(8)), and the
group network costs about |G| times the plain one.

The logits are exactly invariant to 90-degree rotations of the input when N
is a multiple of 4, at any square size of the input shape (an odd side pools
in centred 3-wide windows, 40 -> 20 -> 10 -> 5 -> 3, also in a model built
for unknown sizes, where the windows are chosen when it runs), and for
D_N also to left-right and up-down flips and transposes; approximately
invariant to other rotations (N = 8, 16 add the 45 and 22.5 degree
rotations to the filters, exact on the filters, approximate on the pixel
grid). `restrict_to` at `restrict_stage` keeps only a subgroup's
equivariance from that stage on (D8 -> C8, D4 -> D1 for data with an
upright direction, or 'trivial'), layers/group/group_restriction.py.
Per-stage lists drive it, as in baseline.py and hnet.py.
"""

from __future__ import annotations

import keras
from keras import layers

from layers.group._groups import parse_group
from layers.group.group_batch_norm import GroupBatchNormalization
from layers.group.group_conv import GroupConv2D
from layers.group.group_pooling import GroupPooling
from layers.group.group_restriction import GroupRestriction
from layers.group.lifting_conv import LiftingConv2D
from layers.group.map_pooling import GroupMapPooling2D
from layers.shift.blurpool import BlurPool2D
from models.baseline import stages
from models.registry import register

POOLINGS = ("avg", "max", "blur")
BLOCKS = ("plain", "residual")


def search_space(hp) -> dict:
    """KerasTuner search space of the gcnn builder's params."""
    width = hp.Choice("width", [4, 6, 8])
    return {
        "filters": [width, 2 * width, 3 * width],
        "kernel_size": hp.Choice("kernel_size", [3, 5]),
        "group": hp.Choice("group", ["C4", "C8", "D4"]),
        "pooling": hp.Choice("pooling", list(POOLINGS)),
    }


def _pool(x, kind: str, blur_size: int, name: str):
    """Pooling of [B, H, W, |G|, C] maps at stride 2, per group element and channel: 2x2 windows along an even
    side, 3 wide along an odd one (centred on pixels 0, 2, ..., the last, the border one short); for unknown
    sizes `GroupMapPooling2D`, the same windows chosen when the model runs.

    Exactly equivariant to rot90 and flips at any size: the 2x2 windows of an
    even side, and the centred 3-wide ones of an odd side, are mapped onto
    each other by them (2x2 windows on an odd side leave its last pixel out:
    a flip then pools other pixels). `blur` is a binomial blur at stride 1
    (BlurPool2D, symmetric reflect padding) before the average: anti-aliased
    like Zhang's BlurPool, without a stride-2 subsampling grid that a
    rotation would move.
    """
    h, w, n, c = x.shape[1:]
    if h is None or w is None:  # unknown sizes: the windows are chosen when the model runs
        return GroupMapPooling2D("max" if kind == "max" else "avg", blur_size if kind == "blur" else 1, name=name)(x)
    x = layers.Reshape((h, w, n * c), name=f"{name}_flat")(x)
    if kind == "blur":
        x = BlurPool2D(blur_size, strides=1, padding="reflect", name=f"{name}_blur")(x)
    pool = layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D
    x = pool((2 + h % 2, 2 + w % 2), strides=2, padding="same", name=name)(x)  # "same": averages the pixels only
    return layers.Reshape(((h + 1) // 2, (w + 1) // 2, n, c), name=f"{name}_groups")(x)


def _group(group, group_order):
    """The group from `group` ('C8', 'D4', ...) or the older `group_order` (N of C_N); both must agree."""
    if group is None:
        n = 8 if group_order is None else group_order
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"group_order must be a positive integer (N of C_N), got {group_order!r}")
        return parse_group(f"C{n}")
    g = parse_group(group)
    if group_order is not None and group_order != g.rotations:
        raise ValueError(f"group_order {group_order!r} disagrees with group {g.name!r}; give one of them")
    return g


def _residual_block(x, f, k, group, basis, momentum, name):
    """Basic block on G: two group convolutions with group batch norm; identity or 1x1 projection shortcut."""
    def conv(t, width, size, suffix):
        return GroupConv2D(width, size, group=group, basis=basis, use_bias=False, name=f"{name}_{suffix}")(t)

    y = conv(x, f, k, "conv1")
    y = GroupBatchNormalization(momentum=momentum, activation="relu", name=f"{name}_bn1")(y)
    y = conv(y, f, k, "conv2")
    y = GroupBatchNormalization(momentum=momentum, name=f"{name}_bn2")(y)
    shortcut = x
    if x.shape[-1] != f:
        shortcut = conv(x, f, 1, "proj")
        shortcut = GroupBatchNormalization(momentum=momentum, name=f"{name}_proj_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


@register("gcnn", search_space=search_space)
def build(
    input_shape,
    num_classes,
    *,
    filters=(4, 8, 16),
    kernel_size=5,
    convs_per_stage=2,
    group: str | None = None,
    group_order: int | None = None,
    basis: str = "auto",
    block: str = "plain",
    blocks_per_stage=1,
    stem_pool: bool = False,
    pooling: str = "avg",
    blur_size: int = 3,
    restrict_to: str | None = None,
    restrict_stage: int | None = None,
    group_pool: str = "max",
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "gcnn",
) -> keras.Model:
    """Build a G-CNN on the cyclic group C_N or the dihedral group D_N.

    Args:
        filters: channels per group element per stage (the maps have |G|
            times as many); its length is the number of stages.
        kernel_size: odd filter size per stage (or one for all); the lifting
            convolution takes stage 0's.
        convs_per_stage: `plain` only: convolutions per stage (or one number
            for all; the first of stage 0 is the lifting convolution).
        group: 'C4', 'C8', 'C16' (rotations), 'D4', 'D8' (rotations and
            mirrors); None: C_N with N = `group_order` (8 if that is None too).
        group_order: N of C_N, the older spelling of `group` ('C<N>').
        basis: filter basis of the convolutions (`auto`: pixel filters when
            N divides 4, band-limited circular harmonics otherwise).
        block: `plain` or `residual` (basic blocks, e2-WRN layout).
        blocks_per_stage: `residual` only: basic blocks per stage (or one
            number for all).
        stem_pool: `residual` only: pool (as `pooling`) once after the stem.
        pooling: 2x2 pooling between stages: `avg`, `max` or `blur` (binomial
            blur of `blur_size` at stride 1, then 2x2 average).
        blur_size: odd binomial filter size of `blur` pooling.
        restrict_to: a subgroup ('C8' of D8, 'D1' of D4, 'trivial', ...) the
            network keeps from stage `restrict_stage` on; None: the whole group.
        restrict_stage: the stage (>= 1) where the restriction happens.
        group_pool: pooling over the group in the readout (`max`, `mean`).
        bn_momentum: momentum of the batch norms' moving statistics.
        dropout: dropout before the final dense layer.
    Returns:
        A Keras model from float images in [0, 1] to class logits (float32).
    """
    n, filters, kernel_sizes = stages(filters, kernel_size)
    g = _group(group, group_order)
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
    depth_name, depth = ("convs_per_stage", convs_per_stage) if block == "plain" else ("blocks_per_stage",
                                                                                        blocks_per_stage)
    depths = depth if isinstance(depth, (list, tuple)) else [depth] * n
    if len(depths) != n or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in depths):
        raise ValueError(f"{depth_name} must be an integer >= 1 or one per stage ({n}), got {depth!r}")
    if not isinstance(stem_pool, bool):
        raise ValueError(f"stem_pool must be true or false, got {stem_pool!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if not isinstance(blur_size, int) or isinstance(blur_size, bool) or blur_size < 1 or blur_size % 2 == 0:
        raise ValueError(f"blur_size must be an odd positive integer, got {blur_size!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    sub = None
    if restrict_to is not None:
        sub = parse_group(restrict_to)
        if not sub.is_subgroup_of(g):
            raise ValueError(f"restrict_to {restrict_to!r} is not a subgroup of {g.name!r}")
        if (not isinstance(restrict_stage, int) or isinstance(restrict_stage, bool)
                or not 1 <= restrict_stage < n):
            raise ValueError(f"restrict_stage must be a stage from 1 to {n - 1} with restrict_to, got {restrict_stage!r}")
    elif restrict_stage is not None:
        raise ValueError(f"restrict_stage {restrict_stage!r} needs restrict_to (the subgroup)")
    # basis, group_pool and bn_momentum are checked by the layers (ValueError echoing the value).

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    gname = g.name
    x = LiftingConv2D(filters[0], kernel_sizes[0], group=gname, basis=basis, use_bias=False,
                      name="stage0_gconv0" if block == "plain" else "stem_lift")(inputs)
    x = GroupBatchNormalization(momentum=bn_momentum, activation="relu",
                                name="stage0_gbn0" if block == "plain" else "stem_gbn")(x)
    if block == "residual" and stem_pool:
        x = _pool(x, pooling, blur_size, name="stem_pool")
    for s, (f, k, d) in enumerate(zip(filters, kernel_sizes, depths)):
        if s > 0:
            x = _pool(x, pooling, blur_size, name=f"stage{s}_pool")
        if sub is not None and s == restrict_stage:
            x = GroupRestriction(gname, sub.name, name=f"stage{s}_restrict")(x)
            gname = sub.name
        if block == "residual":
            for b in range(d):
                x = _residual_block(x, f, k, gname, basis, bn_momentum, name=f"stage{s}_block{b}")
            continue
        for c in range(1 if s == 0 else 0, d):
            x = GroupConv2D(f, k, group=gname, basis=basis, use_bias=False, name=f"stage{s}_gconv{c}")(x)
            x = GroupBatchNormalization(momentum=bn_momentum, activation="relu", name=f"stage{s}_gbn{c}")(x)
    x = GroupPooling(group_pool, name="group_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits_f32")(x)
    return keras.Model(inputs, outputs, name=name)
