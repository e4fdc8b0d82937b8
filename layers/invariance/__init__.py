"""Layers that make any model invariant to C4, C8, D4 or D8 (models/invariant.py `invariant` builds with them).

    GroupOrbit, OrbitMean   orbit averaging: the |G| transformed copies in one backbone call, the logits' mean
    Canonicalize            learned canonicalization: a small equivariant network picks the pose to turn back by
    CanonicalMarginal       the exact marginal over the poses (`relaxation: marginal`) in training
"""

from layers.invariance.canonical_marginal import CanonicalMarginal
from layers.invariance.canonicalize import Canonicalize
from layers.invariance.group_orbit import GroupOrbit
from layers.invariance.orbit_mean import OrbitMean

__all__ = ["CanonicalMarginal", "Canonicalize", "GroupOrbit", "OrbitMean"]
