"""ResNet with basic blocks (He et al., CVPR 2016) for small and mid-sized images, anti-aliasing as config.

Per-stage lists drive it: `filters[i]` channels and `blocks_per_stage[i]`
basic blocks (two 3x3 convolutions and a shortcut) in stage i; every stage
after the first halves the size in its first block. ResNet-18 is
`blocks_per_stage: [2, 2, 2, 2]`, ResNet-34 `[3, 4, 6, 3]`, at
`filters: [64, 128, 256, 512]`. The stem is CIFAR's (one 3x3 conv, no
downsampling) for images of at most 64 px (`stem: auto`) and ImageNet's
(7x7 conv at stride 2, 3x3 max pool at stride 2) above. The head is global
average pooling, optional dropout and a dense layer to float32 logits.

Downsampling (`antialias`):

- `none`: strided convolutions (main branch's first 3x3, 1x1 shortcut) and
  the stem's strided conv and max pool, as in the paper;
- `blur`: Zhang (ICML 2019, antialiased-cnns' ResNet): the strided conv at
  stride 1, its batch norm and ReLU, then `BlurPool2D`; the shortcut blurs
  first, then its 1x1 conv (the same result: a 1x1 conv and batch norm
  commute with the blur); the stem's max pool becomes max at stride 1 +
  `BlurPool2D` (MaxBlurPool);
- `aps`: adaptive polyphase sampling (Chaman & Dokmanic, CVPR 2021). A
  downsampling block samples its input once, and both branches run at stride
  1 on that one sample: two separate samplings could keep different phases in
  the two branches and break the residual sum's invariance. With
  `padding: circular` the logits are then exactly invariant to circular
  shifts of the input (`tf.roll`), in inference (batch norm statistics fixed).

`padding: circular` pads every conv (and the stem's max pool) circularly
(`CircularPad2D` then a `valid` layer) and blurs circularly; `same` is Keras'
zero padding with reflect-padded blurs.
"""

from __future__ import annotations

import keras
from keras import layers

from layers.shift.circular_pad import CircularPad2D
from models.antialias import downsample
from models.baseline import _per_stage, apply_conv
from models.registry import register

ANTIALIAS = ("none", "blur", "aps")
PADDINGS = ("same", "circular")
STEMS = ("auto", "cifar", "imagenet")


def search_space(hp) -> dict:
    """KerasTuner search space of the resnet builder's params."""
    width = hp.Choice("width", [16, 32, 64])
    depth = hp.Choice("depth", [18, 34])
    antialias = hp.Choice("antialias", list(ANTIALIAS))
    padding = hp.Choice("padding", list(PADDINGS))
    # aps with circular padding is refused at image sizes that do not halve evenly (not exact there), which the
    # search space cannot see: drawn, it would fail its trial; under aps the search takes same unless
    # `tune.fixed: {padding: circular}` asks for circular
    fixed = any(type(h).__name__ == "Fixed" and h.name == "padding" for h in hp.space)
    return {
        "filters": [width, 2 * width, 4 * width, 8 * width],
        "blocks_per_stage": [2, 2, 2, 2] if depth == 18 else [3, 4, 6, 3],
        "antialias": antialias,
        "blur_size": hp.Choice("blur_size", [1, 3, 5]) if antialias == "aps" else hp.Choice("blur_size", [3, 5]),
        "padding": padding if antialias != "aps" or fixed else "same",
        "dropout": hp.Float("dropout", 0.0, 0.5, step=0.125),
    }


def _bn(x, name, momentum):
    return layers.BatchNormalization(momentum=momentum, epsilon=1e-5, name=name)(x)


def _conv(x, filters, kernel, strides, padding, name):
    return apply_conv(x, "standard", filters, kernel, strides=strides, padding=padding, name=name)


def _step(x, antialias, blur_size, padding, name):
    return downsample(x, method=antialias, blur_size=blur_size, strides=2,
                      padding="circular" if padding == "circular" else "reflect", name=name)


def _block(x, filters, stride, *, antialias, blur_size, padding, momentum, name):
    """A basic block: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus the shortcut, then ReLU."""
    project = stride != 1 or x.shape[-1] != filters
    if stride != 1 and antialias == "aps":
        x = _step(x, "aps", blur_size, padding, f"{name}_aps")  # one phase for both branches
        stride = 1
    shortcut = x
    if project:
        if stride != 1 and antialias == "blur":
            shortcut = _step(shortcut, "blur", blur_size, padding, f"{name}_short_blurpool")
        shortcut = _conv(shortcut, filters, 1, stride if antialias == "none" else 1, padding, f"{name}_short_conv")
        shortcut = _bn(shortcut, f"{name}_short_bn", momentum)
    y = _conv(x, filters, 3, stride if antialias == "none" else 1, padding, f"{name}_conv1")
    y = _bn(y, f"{name}_bn1", momentum)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    if stride != 1 and antialias == "blur":
        y = _step(y, "blur", blur_size, padding, f"{name}_blurpool")
    y = _conv(y, filters, 3, 1, padding, f"{name}_conv2")
    y = _bn(y, f"{name}_bn2", momentum)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


@register("resnet", search_space=search_space)
def build(
    input_shape,
    num_classes,
    *,
    filters=(64, 128, 256, 512),
    blocks_per_stage=2,
    stem: str = "auto",
    antialias: str = "none",
    blur_size: int = 3,
    padding: str = "same",
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "resnet",
) -> keras.Model:
    """Build a basic-block ResNet.

    Args:
        filters: channels per stage; its length is the number of stages.
        blocks_per_stage: basic blocks per stage, a list, or one number for
            all (2: with 4 stages ResNet-18); [3, 4, 6, 3] is ResNet-34.
        stem: `cifar` (3x3 conv), `imagenet` (7x7 conv at stride 2 + 3x3 max
            pool at stride 2) or `auto` (cifar up to 64 px, imagenet above).
        antialias: `none`, `blur` (Zhang's BlurPool) or `aps` (adaptive
            polyphase sampling; an odd size is zero-padded to even, except
            with `padding: circular`, where it is refused: it would not be
            exact).
        blur_size: binomial filter size (1-7) of `blur` and `aps` (1: no blur).
        padding: `same` or `circular` (every conv and pool wraps around; with
            `aps` the logits are exactly invariant to circular shifts).
        bn_momentum: momentum of the batch norms' moving statistics.
        dropout: dropout before the classifier.
    Returns:
        A Keras model from float images in [0, 1] to class logits (float32).
    """
    n = len(filters) if isinstance(filters, (list, tuple)) else 0
    if n < 1:
        raise ValueError(f"filters must name at least one stage, got {filters!r}")
    filters = _per_stage(filters, n, "filters", int)
    blocks = _per_stage(blocks_per_stage, n, "blocks_per_stage", int)
    if min(filters) < 1 or min(blocks) < 1:
        raise ValueError(f"filters and blocks_per_stage must be positive, got {filters!r} and {blocks_per_stage!r}")
    if antialias not in ANTIALIAS:
        raise ValueError(f"antialias must be one of {ANTIALIAS}, got {antialias!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if not isinstance(blur_size, int) or isinstance(blur_size, bool) or not 1 <= blur_size <= 7:
        raise ValueError(f"blur_size must be an integer from 1 to 7, got {blur_size!r}")
    input_shape = tuple(input_shape)
    if stem == "auto":
        stem = "cifar" if max(d for d in input_shape[:2] if d is not None) <= 64 else "imagenet"
    if antialias == "aps" and padding == "circular":  # exact only where every step halves an even size
        halvings = n - 1 + (2 if stem == "imagenet" else 0)
        # a side 2^k m (m odd) halves evenly k times, then is odd: exact if k covers every step, or if m = 1 (a
        # 1-pixel map is shift invariant from there on)
        if any(d is not None and d % 2**halvings and d & (d - 1) for d in input_shape[:2]):
            raise ValueError(f"antialias: aps with padding: circular is exactly invariant to circular shifts only "
                             f"where every downsampling halves an even size: this layout ({stem} stem, {n} stages) "
                             f"halves {halvings} times, so each image side must be a multiple of {2**halvings} or a "
                             f"power of 2 (got {input_shape[0]}x{input_shape[1]}; padding: same takes any size, not "
                             f"exactly)")

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if stem == "cifar":
        x = _conv(x, filters[0], 3, 1, padding, "stem_conv")
        x = _bn(x, "stem_bn", bn_momentum)
        x = layers.Activation("relu", name="stem_relu")(x)
    else:
        strided = antialias == "none"
        x = _conv(x, filters[0], 7, 2 if strided else 1, padding, "stem_conv")
        x = _bn(x, "stem_bn", bn_momentum)
        x = layers.Activation("relu", name="stem_relu")(x)
        if not strided:
            x = _step(x, antialias, blur_size, padding, f"stem_{antialias}")
        if padding == "circular":
            x = CircularPad2D(1, name="stem_pool_pad")(x)
        x = layers.MaxPooling2D(3, strides=2 if strided else 1, padding="valid" if padding == "circular" else "same",
                                name="stem_pool")(x)
        if not strided:
            x = _step(x, antialias, blur_size, padding, f"stem_pool_{antialias}")
    for s, (f, b) in enumerate(zip(filters, blocks)):
        for i in range(b):
            stride = 2 if (s > 0 and i == 0) else 1
            x = _block(x, f, stride, antialias=antialias, blur_size=blur_size, padding=padding,
                       momentum=bn_momentum, name=f"stage{s}_block{i}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(float(dropout), name="dropout")(x)
    x = layers.Dense(int(num_classes), name="logits")(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits_f32")(x)
    return keras.Model(inputs, outputs, name=name)
