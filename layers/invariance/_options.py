"""The options of the any-model invariance layers (models/invariant.py `invariant`), checked once for the layers and
for `model.params.invariant`: the groups, the methods, the canonicalizer's settings and their defaults."""

from __future__ import annotations

import math

GROUPS = {"C4": (4, False), "C8": (8, False), "D4": (4, True), "D8": (8, True)}
METHODS = ("orbit", "canonicalize")
RELAXATIONS = ("straight_through", "marginal", "continuous")  # how `canonicalize` trains (the module docstring)
NETWORKS = ("group", "polar")  # the canonicalizer's scoring network (the module docstring)
CANONICALIZER = {"filters": 8, "kernel_size": 5, "prior_weight": 0.0, "downscale": 2,
                 "relaxation": "straight_through", "pose_weight": 0.0, "pose_jitter": 0.0,
                 "network": "group"}  # `canonicalize`'s options
POLAR_ANGLES = 32  # the polar canonicalizer's angles: steps of 11.25 degrees, a quarter of C8's 45


def check_invariant(spec) -> dict:
    """The validated `{group, method, ...}` of `model.params.invariant` (a dict, or a group name), defaults filled."""
    if isinstance(spec, str):
        spec = {"group": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"invariant: must be a group name or {{group, method}} (got {spec!r})")
    group, method = spec.get("group"), spec.get("method", "orbit")
    if method not in METHODS:
        raise ValueError(f"invariant.method: must be one of {list(METHODS)} (got {method!r})")
    options = CANONICALIZER if method == "canonicalize" else {}
    unknown = sorted(set(spec) - {"group", "method", *options})
    if unknown:
        raise ValueError(f"invariant: unknown key(s) {unknown}; with method {method} it takes "
                         f"{['group', 'method', *options]}")
    if group not in GROUPS:
        raise ValueError(f"invariant.group: must be one of {list(GROUPS)} (got {group!r})")
    out = {"group": group, "method": method, **options, **{k: spec[k] for k in options if k in spec}}
    if method == "canonicalize":
        for k in ("filters", "kernel_size", "downscale"):
            if not isinstance(out[k], int) or isinstance(out[k], bool) or out[k] < 1:
                raise ValueError(f"invariant.{k}: must be a positive integer (got {out[k]!r})")
        if out["kernel_size"] % 2 == 0:
            raise ValueError(f"invariant.kernel_size: must be odd (got {out['kernel_size']})")
        for k in ("prior_weight", "pose_weight"):
            w = out[k]
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w < math.inf:
                raise ValueError(f"invariant.{k}: must be a number >= 0 (got {w!r})")
        if out["relaxation"] not in RELAXATIONS:
            raise ValueError(f"invariant.relaxation: must be one of {list(RELAXATIONS)} (got {out['relaxation']!r})")
        if out["pose_weight"] and out["relaxation"] != "continuous":
            raise ValueError("invariant.pose_weight: the pose-consistency loss needs relaxation: continuous "
                             f"(a differentiable angle; got {out['relaxation']})")
        j = out["pose_jitter"]
        if not isinstance(j, (int, float)) or isinstance(j, bool) or not 0 <= j <= 180:
            raise ValueError(f"invariant.pose_jitter: must be a number of degrees from 0 to 180 (got {j!r})")
        if j and out["relaxation"] != "continuous":
            raise ValueError("invariant.pose_jitter: jitters the continuous angle and needs relaxation: continuous "
                             f"(got {out['relaxation']})")
        if out["network"] not in NETWORKS:
            raise ValueError(f"invariant.network: must be one of {list(NETWORKS)} (got {out['network']!r})")
        if out["network"] == "polar" and out["relaxation"] != "continuous":
            raise ValueError("invariant.network: polar scores angles, not the group's elements, and needs "
                             f"relaxation: continuous (got {out['relaxation']})")
        if out["relaxation"] == "continuous" and GROUPS[group][1]:
            raise ValueError(f"invariant.relaxation: continuous turns by any angle and takes the rotation groups "
                             f"C4 and C8 (a mirror is not an angle; got {group}: train it straight_through or "
                             f"marginal)")
    return out
