"""Custom Keras layers of equivariant and shift-invariant image networks, in five families.

    shift/       BlurPool2D, MaxBlurPool2D, AdaptivePolyphaseSampling2D, CircularPad2D, SpatialSeparableConv2D
    harmonic/    HarmonicConv2D, HarmonicReLU, HarmonicBatchNormalization, HarmonicAveragePooling2D,
                 HarmonicMagnitudeReadout
    group/       LiftingConv2D, GroupConv2D, GroupBatchNormalization, GroupPooling, GroupMapPooling2D,
                 GroupRestriction (C_N, D_N)
    scale/       ScaleLiftingConv2D, ScaleConv2D, ScalePooling, ScaleHarmonicConv2D, CanvasRescale2D,
                 ConfidentPooling
    invariance/  GroupOrbit, OrbitMean, Canonicalize, CanonicalMarginal (any model made invariant: models.invariant)
    common/      what they share (not public API): the bases, the argument checks, the blur and padding ops

Every public class is exported here (`from layers import GroupConv2D`) and
by its family package (`from layers.group import GroupConv2D`); importing
the package registers them all with Keras' serialization
(`package="invariant"`), so a saved `.keras` model loads after
`import layers`, also one wrapped by `models.invariant` or an input pyramid.
This package imports nothing of the project outside
`layers/`, and no TensorFlow (docs/design.md).
"""

from layers.group import (
    GroupBatchNormalization,
    GroupConv2D,
    GroupMapPooling2D,
    GroupPooling,
    GroupRestriction,
    LiftingConv2D,
)
from layers.harmonic import (
    HarmonicAveragePooling2D,
    HarmonicBatchNormalization,
    HarmonicConv2D,
    HarmonicMagnitudeReadout,
    HarmonicReLU,
)
from layers.invariance import CanonicalMarginal, Canonicalize, GroupOrbit, OrbitMean
from layers.scale import (
    CanvasRescale2D,
    ConfidentPooling,
    ScaleConv2D,
    ScaleHarmonicConv2D,
    ScaleLiftingConv2D,
    ScalePooling,
)
from layers.shift import (
    AdaptivePolyphaseSampling2D,
    BlurPool2D,
    CircularPad2D,
    MaxBlurPool2D,
    SpatialSeparableConv2D,
)

__all__ = [
    "AdaptivePolyphaseSampling2D", "BlurPool2D", "CircularPad2D", "MaxBlurPool2D", "SpatialSeparableConv2D",
    "HarmonicAveragePooling2D", "HarmonicBatchNormalization", "HarmonicConv2D", "HarmonicMagnitudeReadout",
    "HarmonicReLU",
    "GroupBatchNormalization", "GroupConv2D", "GroupMapPooling2D", "GroupPooling", "GroupRestriction", "LiftingConv2D",
    "CanvasRescale2D", "ConfidentPooling", "ScaleConv2D", "ScaleHarmonicConv2D", "ScaleLiftingConv2D", "ScalePooling",
    "CanonicalMarginal", "Canonicalize", "GroupOrbit", "OrbitMean",
]
