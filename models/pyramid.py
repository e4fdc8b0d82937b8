"""Input pyramid: one shared backbone applied to several rescalings of the input, its logits pooled across scales.

Any registered builder takes it through `model.params.pyramid_scales`
(models/registry.py `build_model`): e.g. `pyramid_scales: [1.0, 2.0]` builds
the backbone once and applies it to the image and to its copy enlarged 2x
about the centre of the same canvas (`layers.scale.canvas_rescale.CanvasRescale2D`:
bilinear, cropped; factors < 1 shrink into the centre, anti-aliased). The
backbone's weights are shared, so the parameter count is the backbone's; the
cost is up to len(scales) times the backbone's, since every branch runs on
the full canvas (measured on MNIST-scale: [1, 2] trains at 441 images/s
against the CNN's 611, in separate runs on 2 CPU cores).

Two options decide how well it reads objects at sizes training never showed
(measured in bench/bench_scale_mnist.py, README "Scale"):

- `pyramid_bandlimit: true` passes every branch through the resolution of the
  most enlarging one: with F = max(scales) > 1, branch f sees the input
  shrunk by f / F and then enlarged by F (net factor f, content low-passed to
  f / F of the canvas' resolution). An object at 1/F of the training size,
  enlarged by the F branch, then looks like a training object seen by the 1x
  branch: the same size AND the same blur (exactly so when the small object
  was made by this resampler, as in the benchmark; approximately for objects
  that are small in the world). Without it the backbone has only seen sharp
  objects, and a shrunk-then-enlarged one is blurred: trained at scale 1
  (10k digits, 10 epochs, `bench_scale_mnist.py --branches`), the 2x branch
  alone reads 94.7% of half-size digits without it and 98.06% with it,
  exactly the 1x branch's own 98.06% on full-size digits.
- `pyramid_pool`: `mean` of the logits (the default), `max`, or `confident`:
  trained on the mean, but at inference each image takes the logits of the
  branch most sure of its answer (the lowest predictive entropy), so a branch
  that sees the object at an unreadable size cannot outvote the one that sees
  it at the trained size: in the same runs the 1x branch alone reads 33% of
  half-size digits, and the mean pyramid keeps 80.9% (93.9% bandlimited)
  where the 2x branch alone reads 94.7%; bandlimited and `confident`, the
  pyramid keeps 97.3% (98.8% at 1x, against 99.0% bandlimited with `mean`).

Shrinking branches (factors < 1) help objects larger than in training and
hurt small ones: trained at scale 1 for 10 epochs on 10k digits (no
bandlimit, mean), [1, 2] kept 80.9% at 0.5x against 73.1% for [2, 1, 0.5]
(CNN 60.8%). In published comparisons (Altstidl et al., "Just a Matter of
Scale? Reevaluating Scale Equivariance in Convolutional Neural Networks",
2022) this simple form generalises to unseen scales better than SESN, DISCO
or SI-ConvNet.

The rescaling commutes with 90-degree rotations of square images, so a
backbone exactly invariant to them (hnet) stays so.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from layers.scale.canvas_rescale import CanvasRescale2D
from layers.scale.confident_pooling import ConfidentPooling

POOLS = ("mean", "max", "confident")
DEFAULT_POOL = "mean"


def check_pyramid(scales, pool=None, bandlimit=None) -> list[float]:
    """The validated factors as floats (pool, bandlimit None: the defaults); ValueError naming the key and echoing the value."""
    try:
        values = list(scales)
    except TypeError:
        raise ValueError(f"pyramid_scales must be a list of positive numbers, got {scales!r}") from None
    if (not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0)
                          for v in values) or len(set(values)) != len(values)):
        raise ValueError(f"pyramid_scales must be a non-empty list of distinct positive numbers, got {scales!r}")
    if pool is not None and pool not in POOLS:
        raise ValueError(f"pyramid_pool must be one of {POOLS}, got {pool!r}")
    if bandlimit is not None and not isinstance(bandlimit, bool):
        raise ValueError(f"pyramid_bandlimit must be true or false, got {bandlimit!r}")
    if bandlimit and not any(v > 1 for v in values):
        raise ValueError(f"pyramid_bandlimit limits the branches to the resolution of the most enlarging one, "
                         f"so it needs a factor > 1 in pyramid_scales, got {scales!r}")
    return [float(v) for v in values]


def pyramid(backbone: keras.Model, scales, pool: str | None = None, bandlimit: bool | None = None,
            name: str | None = None) -> keras.Model:
    """Wrap `backbone` (images -> logits) into an input pyramid over `scales`.

    Args:
        backbone: a Keras model with one image input of known height and width.
        scales: rescaling factors of the input (1.0: the image itself).
        pool: `mean` (None: the default), `max` or `confident` (module docstring).
        bandlimit: pass every branch through the most enlarging branch's
            resolution (module docstring; None: False). Needs a factor > 1.
        name: the model's name (default: backbone name + "_pyramid").
    Returns:
        A Keras model with the backbone's input and output shapes; its
        outputs are float32.
    """
    scales = check_pyramid(scales, pool, bandlimit)
    top = max(scales)
    sides = [d for d in backbone.input_shape[1:3] if d is not None]
    if sides:  # a branch that sees under 2 pixels of the image, or shrinks it to under 2, sees nothing
        side = min(sides)
        # bandlimited, a branch also passes through the resolution v / top of the most enlarging one's
        useless = [v for v in scales if v * side < 2 or side / v < 2 or (bandlimit and v / top * side < 2)]
        if useless:
            raise ValueError(f"pyramid_scales: {', '.join(f'{v:g}' for v in useless)} on a {side}-pixel side "
                             f"leaves under 2 pixels of the image (each factor must lie from 2/{side} to {side}/2"
                             + (f", and from 2/{side} of the largest with pyramid_bandlimit" if bandlimit else "")
                             + f"), got {scales!r}")
    pool = pool or DEFAULT_POOL
    inputs = keras.Input(shape=backbone.input_shape[1:], name="image")
    outputs = []
    for i, f in enumerate(scales):
        if bandlimit and f != top:  # check_pyramid: top > 1 when bandlimit
            x = CanvasRescale2D(f / top, name=f"pyramid_lowpass{i}")(inputs)
            x = CanvasRescale2D(top, name=f"pyramid_rescale{i}")(x)
        else:
            x = inputs if f == 1.0 else CanvasRescale2D(f, name=f"pyramid_rescale{i}")(inputs)
        outputs.append(backbone(x))
    if len(outputs) == 1:
        y = outputs[0]
    elif pool == "max":
        y = layers.Maximum(name="pyramid_max")(outputs)
    elif pool == "confident":
        y = ConfidentPooling(name="pyramid_confident")(outputs)
    else:
        y = layers.Average(name="pyramid_mean")(outputs)
    y = layers.Activation("linear", dtype="float32", name="pyramid_f32")(y)
    return keras.Model(inputs, y, name=name or f"{backbone.name}_pyramid")
