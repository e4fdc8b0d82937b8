"""The finite planar groups of the group convolutions: cyclic C_N and dihedral D_N (not public API; NumPy only).

An element is a pair (m, r): g = R_r F^m, first the mirror F (x -> -x, a
left-right flip of the image) when m = 1, then the rotation R_r by
360 r / N degrees counter-clockwise. C_N has the N elements (0, r); D_N the
2N elements (m, r). Index of (m, r) on a feature map's group axis: m N + r
(the rotations first, so that C_N's layout is D_N's first half). Products:
R_a F^m R_b F^n = R_(a + (-1)^m b) F^(m + n), so

    (m, a) (n, b) = ((m + n) mod 2, (a + (-1)^m b) mod N),
    (0, r)^-1 = (0, -r),  (1, r)^-1 = (1, r).

A group element acts on an image by `transform_image` (np.flip of the
columns, then np.rot90 or an interpolated rotation) and on a feature map
over the group ([..., |G|, C]) by also permuting the group axis:
out[..., k, :] = in[..., index(g^-1 k), :] (`permutation`). The regular
group convolutions commute with that action (layers/group/lifting_conv.py,
layers/group/group_conv.py).

Names: "C<N>" and "D<N>" (N >= 1); "trivial" is C1. D1 is the mirror group
{identity, left-right flip}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from layers.common import validation as check

_NAME = re.compile(r"^([CD])(\d+)$")


@dataclass(frozen=True)
class Group:
    """C_N (`mirrors` False) or D_N (`mirrors` True); elements indexed m * N + r."""

    rotations: int
    mirrors: bool = False

    def __post_init__(self):
        check.integer(self.rotations, "a group's number of rotations", low=1)

    @property
    def name(self) -> str:
        return f"{'D' if self.mirrors else 'C'}{self.rotations}"

    @property
    def order(self) -> int:
        """|G|: the length of a feature map's group axis."""
        return self.rotations * (2 if self.mirrors else 1)

    def element(self, index: int) -> tuple[int, int]:
        """(m, r) of an index."""
        return divmod(int(index), self.rotations)

    def index(self, m: int, r: int) -> int:
        if m and not self.mirrors:
            raise ValueError(f"{self.name} has no mirrors")
        return int(m) * self.rotations + int(r) % self.rotations

    def mul(self, a: int, b: int) -> int:
        (m, ra), (n, rb) = self.element(a), self.element(b)
        return self.index((m + n) % 2, ra + (-rb if m else rb))

    def inv(self, a: int) -> int:
        m, r = self.element(a)
        return a if m else self.index(0, -r)

    @cached_property
    def inverse_table(self) -> np.ndarray:
        """int32 [|G|, |G|]: T[g, h] = index(g^-1 h), the input element read by output g at filter element h."""
        n = self.order
        return np.array([[self.mul(self.inv(g), h) for h in range(n)] for g in range(n)], np.int32)

    def permutation(self, g: int) -> np.ndarray:
        """int [|G|]: P with out = in[..., P, :] the action of g on a map's group axis."""
        return self.inverse_table[g].copy()

    def degrees(self, g: int) -> float:
        """The rotation part of g in degrees (counter-clockwise)."""
        return 360.0 * self.element(g)[1] / self.rotations

    def mirrored(self, g: int) -> bool:
        return bool(self.element(g)[0])

    def exact(self, g: int) -> bool:
        """Whether g permutes the pixels of a square image (quarter turns and mirrors): exact on the grid."""
        return (4 * self.element(g)[1]) % self.rotations == 0

    def label(self, g: int) -> str:
        """A readable name: 'rot90', 'flip', 'flip+rot45', 'identity'."""
        deg = self.degrees(g)
        rot = f"rot{deg:g}" if deg else ""
        if self.mirrored(g):
            return "flip" + (f"+{rot}" if rot else "")
        return rot or "identity"

    def is_subgroup_of(self, other: "Group") -> bool:
        return other.rotations % self.rotations == 0 and (other.mirrors or not self.mirrors)

    def embedding(self, sub: "Group") -> np.ndarray:
        """int [|H|]: the index in self of each element of the subgroup `sub` (C_M or D_M, M | N)."""
        if not sub.is_subgroup_of(self):
            raise ValueError(f"{sub.name} is not a subgroup of {self.name}")
        step = self.rotations // sub.rotations
        return np.array([self.index(m, r * step) for m, r in map(sub.element, range(sub.order))], np.int64)

    def restriction(self, sub: "Group") -> np.ndarray:
        """int [|H|, |G| / |H|]: idx[j, i] = index(h_j c_i) over coset representatives c_i of H \\ G.

        Gathering a map's group axis by idx.ravel() and folding the cosets into
        the channels turns [..., |G|, C] (regular representation of G) into
        [..., |H|, |G|/|H| * C] (regular of H, |G|/|H| times): H acts on it by
        its own permutation of the first axis, exactly.
        """
        emb = self.embedding(sub)
        seen, reps = set(), []
        for c in range(self.order):
            if c not in seen:
                reps.append(c)
                seen.update(self.mul(int(h), c) for h in emb)
        return np.array([[self.mul(int(h), c) for c in reps] for h in emb], np.int64)


def parse_group(name) -> Group:
    """'C8' -> Group(8), 'D4' -> Group(4, True), 'trivial' -> C1; a Group passes through."""
    if isinstance(name, Group):
        return name
    if name == "trivial":
        return Group(1)
    m = _NAME.match(name) if isinstance(name, str) else None
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"group must be 'C<N>' or 'D<N>' with N >= 1 (e.g. 'C8', 'D4') or 'trivial', got {name!r}")
    return Group(int(m.group(2)), m.group(1) == "D")


def transform_image(x: np.ndarray, group: Group, g: int, rotate) -> np.ndarray:
    """g applied to the spatial axes (1, 2) of [B, H, W, ...]: np.flip of the columns if mirrored, then
    `rotate(x, degrees)` (the caller's resampling: np.rot90 for quarter turns, interpolated otherwise)."""
    if group.mirrored(g):
        x = np.flip(x, axis=2)
    deg = group.degrees(g)
    return rotate(x, deg) if deg else np.ascontiguousarray(x)
