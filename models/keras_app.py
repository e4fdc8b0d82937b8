"""`model.name: keras_app:<Name>`: a keras.applications backbone with a fresh classification head.

`keras_app:ResNet50`, `keras_app:MobileNetV2`, `keras_app:EfficientNetB0`,
`keras_app:VGG16`, `keras_app:DenseNet121`, ... (any function of
`keras.applications` that takes `include_top`, `weights` and `input_shape`).
The model takes float images in [0, 1] like the project's other builders,
repeats gray images to 3 channels, pads images smaller than 32 px (MNIST's 28)
with black borders up to the applications' minimum of 32, scales them to
[0, 255] and applies the application's own `preprocess_input` inside the model
(so the exported model takes raw images), runs the backbone
(`include_top=False`), optionally anti-aliased by `models.antialias.antialias`,
then global average pooling, optional dropout and a dense layer to float32
logits for `num_classes`.

`weights` is the one place where `models/` reads a file: a local weights file
for the backbone (a `.weights.h5` of the same application built with
`include_top=False`), given by path; `imagenet` downloads Keras' weights (needs
network access once; then cached in ~/.keras); None (default) starts from
random weights. The rewrite to an anti-aliased backbone happens after the
weights are loaded, so they survive it.
"""

from __future__ import annotations

import inspect
import os

import keras
from keras import layers

PREFIX = "keras_app:"
ANTIALIAS = ("none", "blur", "aps")
MIN_SIDE = 32  # keras.applications refuse smaller inputs (a few, like InceptionV3, need more: their own error says)


def _application(app: str):
    fn = getattr(keras.applications, app, None) if app and not app.startswith("_") else None
    if fn is None or not callable(fn) or inspect.ismodule(fn):
        names = sorted(n for n in dir(keras.applications) if n[:1].isupper())
        raise ValueError(f"unknown keras.applications model {app!r}; available: {', '.join(names)}")
    params = inspect.signature(fn).parameters
    if not {"include_top", "weights", "input_shape"} <= set(params):
        raise ValueError(f"keras.applications.{app} is not an image backbone (no include_top/weights/input_shape)")
    return fn


def _preprocess(app_fn):
    """The application's `preprocess_input` (its module's), applied to images in [0, 255]."""
    module = app_fn.__module__.rsplit(".", 1)[-1]
    public = getattr(keras.applications, module, None)
    return getattr(public, "preprocess_input", None)


def builder_for(name: str):
    """The builder of `keras_app:<Name>`, `build` with the application fixed (models.registry.get_spec
    wraps it in a spec; this module does not import the registry, which imports it)."""
    app = name[len(PREFIX):]
    _application(app)

    def build_keras_app(input_shape, num_classes, *, weights=None, antialias="none", blur_size=3, dropout=0.0,
                        trainable_backbone=True, name=None):
        return build(app, input_shape, num_classes, weights=weights, antialias=antialias, blur_size=blur_size,
                     dropout=dropout, trainable_backbone=trainable_backbone, name=name)

    return build_keras_app


def build(app: str, input_shape, num_classes: int, *, weights=None, antialias: str = "none", blur_size: int = 3,
          dropout: float = 0.0, trainable_backbone: bool = True, name: str | None = None) -> keras.Model:
    """Build `keras.applications.<app>` (no top) + global average pooling + a dense classifier.

    Args:
        app: the application's name in `keras.applications`, e.g. `ResNet50`.
        weights: None (random), `imagenet`, or the path of a local weights file
            for the backbone (the one file `models/` reads).
        antialias: `none`, `blur` (Zhang's BlurPool rewrites) or `aps`
            (adaptive polyphase sampling), applied to the backbone after its
            weights are loaded (`models.antialias.antialias`).
        blur_size: the binomial filter size (1-7) of the rewrite.
        dropout: dropout before the classifier.
        trainable_backbone: False freezes the backbone (fine-tune the head only).
    Returns:
        A Keras model from float images in [0, 1] to class logits (float32).
    """
    if not isinstance(trainable_backbone, bool):  # bool("false") is True: the backbone would train
        raise ValueError(f"trainable_backbone must be true or false, got {trainable_backbone!r}")
    fn = _application(app)
    if antialias not in ANTIALIAS:
        raise ValueError(f"antialias must be one of {ANTIALIAS}, got {antialias!r}")
    if not isinstance(blur_size, int) or isinstance(blur_size, bool) or not 1 <= blur_size <= 7:
        raise ValueError(f"blur_size must be an integer from 1 to 7, got {blur_size!r}")
    if weights is not None and weights != "imagenet":
        if not isinstance(weights, str) or not os.path.isfile(weights):
            raise ValueError(f"weights must be None, 'imagenet' or the path of a local weights file, got {weights!r}")
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise ValueError(f"keras_app:{app} takes [H, W, 1] or [H, W, 3] images, got input shape {input_shape}")
    h, w, c = input_shape

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if c == 1:
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    if h < MIN_SIDE or w < MIN_SIDE:  # e.g. MNIST's 28 px: black borders up to the applications' minimum
        dh, dw = max(MIN_SIDE - h, 0), max(MIN_SIDE - w, 0)
        x = layers.ZeroPadding2D(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), name="pad_to_min")(x)
        h, w = h + dh, w + dw
    x = layers.Rescaling(255.0, name="to_255")(x)
    preprocess = _preprocess(fn)
    if preprocess is not None:
        x = preprocess(x)
    backbone = fn(include_top=False, weights=weights, input_shape=(h, w, 3))
    if antialias != "none":
        from models.antialias import antialias as rewrite

        backbone = rewrite(backbone, antialias, blur_size)
    backbone.trainable = trainable_backbone
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(float(dropout), name="dropout")(x)
    x = layers.Dense(int(num_classes), name="logits")(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits_f32")(x)
    return keras.Model(inputs, outputs, name=name or f"keras_app_{app}")
