"""Private helpers of the group convolutions (LiftingConv2D, GroupConv2D): rotated filter bases.

Not part of the public API; NumPy only (constants built once per layer).

A filter is a linear combination of J basis functions on the k x k patch.
`rotated_basis` returns the basis sampled at the N rotations of the cyclic
group C_N, B[r, p, j] = phi_j(R_{-2 pi r / N} p), so that the filter with
coefficients w rotated by 2 pi r / N (counter-clockwise) is
sum_j B[r, :, j] w_j, exactly, for any r. Coordinates are those of
`layers.harmonic.harmonic_conv.harmonic_basis`: x = col - c, y = c - row (the row axis
points down), angles counter-clockwise, so a rotation by 90 degrees is
np.rot90 of the patch.

Two bases:

* `pixel`: the k*k one-hot pixels, J = k*k; rotations by multiples of 90
  degrees permute pixels (np.rot90), so it serves N in {1, 2, 4} only.
* `harmonic`: a band-limited circular-harmonic basis (after Weiler & Cesa,
  NeurIPS 2019, e2cnn): Gaussian rings of radius 0, 1, ..., (k - 1) / 2 px
  (sigma 0.6 px) times cos(m theta) and sin(m theta). Each function is
  defined in the continuous plane, so sampling it at rotated coordinates is
  the exactly rotated function; the rotation is exact on the basis for any
  angle. The frequencies are band-limited per ring so that the sampled
  functions stay close to their continuous selves (measured: rotating a
  smooth image by 45 degrees before or after correlating with one basis
  function differs by <= 6% on a central disk for the kept functions, 20-250%
  for the dropped ones): the inner ring of radius r keeps m <= r + 1, the
  outermost ring (cut by the square patch) m <= 1, the centre m = 0. J = 4
  for k = 3, 9 for k = 5, 16 for k = 7. Each (ring, frequency) pair is scaled to unit mean
  L2 norm on the grid, so he_normal coefficients give He-scaled filters.
"""

from __future__ import annotations

import numpy as np

BASES = ("auto", "pixel", "harmonic")
_SIGMA = 0.6  # radial width of the rings (pixels)


def resolve_basis(basis: str, group_order: int) -> str:
    """`auto` -> `pixel` when 4 % N == 0 (rotations are np.rot90), else `harmonic`."""
    if basis == "auto":
        return "pixel" if 4 % group_order == 0 else "harmonic"
    return basis


def harmonic_frequencies(kernel_size: int) -> list[tuple[float, int]]:
    """(ring radius, frequency m) of the harmonic basis, band-limited per ring (see module doc)."""
    outer = (kernel_size - 1) // 2
    out = []
    for r in range(outer + 1):
        m_max = 0 if r == 0 else (1 if r == outer else r + 1)
        out += [(float(r), m) for m in range(m_max + 1)]
    return out


def _harmonic(kernel_size: int, angle: float, mirror: bool = False) -> np.ndarray:
    """[P, J] harmonic basis functions evaluated at F^m R_{-angle} p (F: x -> -x when `mirror`), with the
    norms of angle 0. The mirror maps theta to pi - theta: cos(m theta) and sin(m theta) go to +-themselves,
    so the mirrored basis spans the same functions, exactly."""
    k = kernel_size
    c = (k - 1) / 2.0
    rows, cols = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    x, y = (cols - c).reshape(-1), (c - rows).reshape(-1)

    def sample(a, flip=False):
        xr = np.cos(a) * x + np.sin(a) * y  # R_{-a} p
        yr = -np.sin(a) * x + np.cos(a) * y
        if flip:
            xr = -xr
        rad, th = np.hypot(xr, yr), np.arctan2(yr, xr)
        cols_ = []
        for r0, m in harmonic_frequencies(k):
            ring = np.exp(-0.5 * (rad - r0) ** 2 / _SIGMA**2)
            if m > 0:  # the angle is undefined at the centre: frequencies m > 0 vanish there
                ring = np.where(rad > 1e-9, ring, 0.0)
            cols_.append(ring * np.cos(m * th))
            if m > 0:
                cols_.append(ring * np.sin(m * th))
        return np.stack(cols_, axis=-1)

    # one norm per (ring, frequency) for its cos and sin alike, so that a rotation mixes each
    # pair by the plain 2x2 rotation matrix of angle m * angle
    b0 = sample(0.0)
    norms, j = [], 0
    for _, m in harmonic_frequencies(k):
        width = 1 if m == 0 else 2
        norms += [np.sqrt(np.mean(np.sum(b0[:, j:j + width] ** 2, axis=0)))] * width
        j += width
    return sample(angle, mirror) / np.asarray(norms)


def rotated_basis(kernel_size: int, group_order: int, basis: str) -> np.ndarray:
    """float64 [N, k*k, J]: the basis at the N rotations 2 pi r / N (see module doc)."""
    basis = resolve_basis(basis, group_order)
    k, n = kernel_size, group_order
    if basis == "pixel":
        if 4 % n:
            raise ValueError(f"the pixel basis rotates by np.rot90 only: group_order must be 1, 2 or 4, got {n!r}")
        eye = np.eye(k * k).reshape(k, k, k * k)
        return np.stack([np.rot90(eye, r * 4 // n, axes=(0, 1)).reshape(k * k, k * k) for r in range(n)])
    return np.stack([_harmonic(k, 2.0 * np.pi * r / n) for r in range(n)])


def group_basis(kernel_size: int, group, basis: str) -> np.ndarray:
    """float64 [|G|, k*k, J]: the basis transformed by each element g = R_r F^m of C_N or D_N
    (layers/group/_groups.py), B[g, p, j] = phi_j(g^-1 p): mirrored (np.flip of the columns), then rotated."""
    from layers.group._groups import parse_group

    group = parse_group(group)
    k, n = kernel_size, group.rotations
    if resolve_basis(basis, n) == "pixel":
        rot = rotated_basis(k, n, "pixel").reshape(n, k, k, -1)
        out = [rot]
        if group.mirrors:
            flipped = np.flip(np.eye(k * k).reshape(k, k, k * k), axis=1)
            out.append(np.stack([np.rot90(flipped, r * 4 // n, axes=(0, 1)) for r in range(n)]))
        return np.concatenate(out).reshape(group.order, k * k, k * k)
    return np.stack([_harmonic(k, 2.0 * np.pi * r / n, bool(m)) for m, r in map(group.element, range(group.order))])

