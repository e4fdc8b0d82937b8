"""The scale family (SESN, Sosnovik, Szmaja & Smeulders, ICLR 2020): scale-equivariant convolutions and rescaling.

Layout: [batch, height, width, scales, channels] (ScaleHarmonicConv2D:
harmonic maps, pooled over its dilations). CanvasRescale2D and
ConfidentPooling are the input pyramid's (models/pyramid.py). docs/layers.md
describes the family.
"""

from layers.scale.canvas_rescale import CanvasRescale2D
from layers.scale.confident_pooling import ConfidentPooling
from layers.scale.scale_conv import ScaleConv2D
from layers.scale.scale_harmonic_conv import ScaleHarmonicConv2D
from layers.scale.scale_lifting_conv import ScaleLiftingConv2D
from layers.scale.scale_pooling import ScalePooling

__all__ = [
    "CanvasRescale2D", "ConfidentPooling", "ScaleConv2D", "ScaleHarmonicConv2D", "ScaleLiftingConv2D", "ScalePooling",
]
