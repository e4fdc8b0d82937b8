"""H-Net: the Harmonic Network of Worrall et al. (CVPR 2017), rotation-invariant classifier.

Default: the paper's rotated-MNIST network. Stages of harmonic convolutions
(5x5 filters, 4 rings, orders {0, 1}) at 8, 16 and 32 channels, two per stage
(the first followed by C-ReLU, the second by batch norm of magnitudes with a
ReLU), average pooling between stages (28 -> 14 -> 7), a final harmonic
convolution to one channel per class without phase, and the invariant readout
(magnitudes summed over orders, averaged over positions, plus a bias). About
34k parameters (the paper: 33k). Per-stage lists drive it, as in baseline.py.

The logits are exactly invariant to 90-degree rotations of the input when
every pooled size is even (28 -> 14 -> 7 is), and approximately invariant to
other rotations.
"""

from __future__ import annotations

import keras
from keras import layers

from layers.common import validation as check
from layers.harmonic.harmonic_batch_norm import HarmonicBatchNormalization
from layers.harmonic.harmonic_conv import HarmonicConv2D
from layers.harmonic.harmonic_pool import HarmonicAveragePooling2D
from layers.harmonic.harmonic_readout import HarmonicMagnitudeReadout
from layers.harmonic.harmonic_relu import HarmonicReLU
from layers.scale.scale_harmonic_conv import ScaleHarmonicConv2D
from models.baseline import stages
from models.registry import register


def search_space(hp) -> dict:
    """KerasTuner search space of the hnet builder's params."""
    width = hp.Choice("width", [4, 8, 12])
    return {
        "filters": [width, 2 * width, 4 * width],
        "kernel_size": hp.Choice("kernel_size", [3, 5]),
        "n_rings": hp.Choice("n_rings", [3, 4]),
        "blur_size": hp.Choice("blur_size", [1, 3]),
        "max_order": hp.Choice("max_order", [1, 2]),
        # dense: 0.6x the error of 2-epoch probes, no gain after 30 epochs (README)
        "readout": hp.Choice("readout", ["class_conv", "dense"]),
    }


@register("hnet", search_space=search_space)
def build(
    input_shape,
    num_classes,
    *,
    filters=(8, 16, 32),
    convs_per_stage: int = 2,
    kernel_size=5,
    n_rings: int = 4,
    max_order: int = 1,
    batch_norm: bool = True,
    blur_size: int = 1,
    bn_momentum: float = 0.9,
    scales=None,
    readout: str = "class_conv",
    radial_initializer="he_normal",
    name: str = "hnet",
) -> keras.Model:
    """Build an H-Net.

    Args:
        filters: channels per order per stage; its length is the number of stages.
        convs_per_stage: harmonic convolutions in each stage.
        kernel_size: odd filter size per stage (or one for all); the final layer
            uses the last stage's.
        n_rings: rings of the radial profiles.
        max_order: streams of rotation orders 0..max_order (the paper: 1).
        batch_norm: the last convolution of each stage is followed by batch
            norm of magnitudes + ReLU (else C-ReLU, like the others).
        blur_size: odd binomial blur length of the pooling between stages (1: plain
            average pooling, as in the paper; 3: anti-aliased).
        bn_momentum: momentum of the batch norms' moving statistics (0.9, as in
            baseline.py: with Keras' 0.99 they lag behind the weights when an
            epoch has few steps, and evaluation after a short run suffers).
        scales: None, or integer dilations such as [1, 2, 3]: the roto-scale
            H-Net. Every stage convolution is then a ScaleHarmonicConv2D: the
            same harmonic filters (shared radial profiles) applied at each
            dilation, pooled over the scales by magnitude; invariant to
            rotation (exactly at 90 degrees) and approximately to rescaling
            within the dilations' range; about len(scales) times the cost.
        readout: "class_conv" (the paper's): a final harmonic convolution to
            one channel per class, its magnitudes averaged over positions, plus
            a bias. "dense": the last stage's magnitudes (summed over orders)
            averaged over positions, then a dense layer, as gcnn reads out.
        radial_initializer: Keras initializer (name or config) of every
            harmonic convolution's radial profiles.
    Returns:
        A Keras model from float images in [0, 1] to class logits (float32).
    """
    n, filters, kernel_sizes = stages(filters, kernel_size)
    convs_per_stage = check.integer(convs_per_stage, "convs_per_stage", low=1, what="an integer >= 1")
    batch_norm = check.boolean(batch_norm, "batch_norm")
    if not isinstance(max_order, int) or max_order < 0:
        raise ValueError(f"max_order must be a non-negative integer, got {max_order!r}")
    orders = tuple(range(max_order + 1))
    if scales is not None and (not isinstance(scales, (list, tuple)) or not scales
                               or any(not isinstance(a, int) or isinstance(a, bool) or a < 1 for a in scales)):
        raise ValueError(f"scales must be a list of positive integer dilations (e.g. [1, 2, 3]) or None, got {scales!r}")

    if readout not in ("class_conv", "dense"):
        raise ValueError(f"readout must be 'class_conv' or 'dense', got {readout!r}")
    try:
        keras.initializers.get(radial_initializer)
    except (ValueError, TypeError) as e:
        raise ValueError(f"radial_initializer: not a Keras initializer: {radial_initializer!r} ({e})") from None
    conv_args = dict(orders=orders, n_rings=n_rings, radial_initializer=radial_initializer)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for s, (f, k) in enumerate(zip(filters, kernel_sizes)):
        if s > 0:
            x = HarmonicAveragePooling2D(2, blur_size=blur_size, name=f"stage{s}_pool")(x)
        for c in range(convs_per_stage):
            if scales is None:
                x = HarmonicConv2D(f, k, **conv_args, name=f"stage{s}_hconv{c}")(x)
            else:
                x = ScaleHarmonicConv2D(f, k, **conv_args, dilations=list(scales), name=f"stage{s}_hconv{c}")(x)
            if batch_norm and c == convs_per_stage - 1:
                x = HarmonicBatchNormalization(
                    momentum=bn_momentum, activation="relu", name=f"stage{s}_hbn{c}")(x)
            else:
                x = HarmonicReLU(name=f"stage{s}_crelu{c}")(x)
    if readout == "class_conv":
        x = HarmonicConv2D(num_classes, kernel_sizes[-1], **conv_args, phase=False, name="class_hconv")(x)
        x = HarmonicMagnitudeReadout(use_bias=True, name="readout")(x)
    else:
        x = HarmonicMagnitudeReadout(name="readout")(x)
        x = layers.Dense(num_classes, name="classifier")(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits_f32")(x)
    return keras.Model(inputs, outputs, name=name)
