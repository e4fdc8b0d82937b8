"""The shift family: anti-aliased and truly shift-invariant downsampling, circular padding, separable convolution.

Layout: plain [batch, height, width, channels] maps. docs/layers.md describes the family.
"""

from layers.shift.blurpool import BlurPool2D
from layers.shift.circular_pad import CircularPad2D
from layers.shift.max_blurpool import MaxBlurPool2D
from layers.shift.polyphase import AdaptivePolyphaseSampling2D
from layers.shift.spatial_separable_conv import SpatialSeparableConv2D

__all__ = ["AdaptivePolyphaseSampling2D", "BlurPool2D", "CircularPad2D", "MaxBlurPool2D", "SpatialSeparableConv2D"]
