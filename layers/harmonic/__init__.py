"""The harmonic family (Harmonic Networks, Worrall et al., CVPR 2017): rotation-equivariant complex streams.

Layout: [batch, height, width, orders, 2, channels] (real and imaginary parts
on axis -2). docs/layers.md describes the family.
"""

from layers.harmonic.harmonic_batch_norm import HarmonicBatchNormalization
from layers.harmonic.harmonic_conv import HarmonicConv2D
from layers.harmonic.harmonic_pool import HarmonicAveragePooling2D
from layers.harmonic.harmonic_readout import HarmonicMagnitudeReadout
from layers.harmonic.harmonic_relu import HarmonicReLU

__all__ = ["HarmonicAveragePooling2D", "HarmonicBatchNormalization", "HarmonicConv2D", "HarmonicMagnitudeReadout",
           "HarmonicReLU"]
