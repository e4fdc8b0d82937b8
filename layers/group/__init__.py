"""The group family (G-CNNs, Cohen & Welling, ICML 2016): regular C_N and D_N convolutions and their companions.

Layout: [batch, height, width, |G|, channels] (the group's elements before the
channels). The group algebra is `_groups.py`. docs/layers.md describes the family.
"""

from layers.group.group_batch_norm import GroupBatchNormalization
from layers.group.group_conv import GroupConv2D
from layers.group.group_pooling import GroupPooling
from layers.group.group_restriction import GroupRestriction
from layers.group.lifting_conv import LiftingConv2D
from layers.group.map_pooling import GroupMapPooling2D

__all__ = ["GroupBatchNormalization", "GroupConv2D", "GroupMapPooling2D", "GroupPooling", "GroupRestriction",
           "LiftingConv2D"]
