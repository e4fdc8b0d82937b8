"""The fixed multi-scale Hermite-Gaussian basis of the scale-equivariant convolutions (NumPy).

Not part of the public API; used by `ScaleLiftingConv2D` and `ScaleConv2D` and
by their tests. After Sosnovik, Szmaja & Smeulders, "Scale-Equivariant
Steerable Networks", ICLR 2020: at scale sigma the basis functions are

    psi_{sigma, n, m}(x, y) = 1 / sigma^2 * H_n(x / sigma) H_m(y / sigma) exp(-(x^2 + y^2) / sigma^2)

(physicists' Hermite polynomials H_n), for 0 <= n, m <= max_order, each cut to
the square |x|, |y| <= rho * sigma. Written this way the family is an exact
dilation: psi_{a sigma}(x, y) = psi_sigma(x / a, y / a) / a^2.

Discretisation. Instead of sampling psi at pixel centres, every kernel tap
is the INTEGRAL of psi over its pixel cell [i - 1/2, i + 1/2] x [j - 1/2, j + 1/2]
(closed form, since the basis is separable and
integral H_n(t) e^{-t^2} dt = -H_{n-1}(t) e^{-t^2} for n >= 1, and
sqrt(pi)/2 erf(t) for n = 0). Because the family is an exact dilation, the
kernel at scale a * sigma summed over the a x a blocks of pixels centred on
multiples of a is exactly the kernel at scale sigma, for every odd integer a:
this is what makes the convolutions exactly equivariant for odd integer scale
ratios (see `ScaleLiftingConv2D`). Integration also keeps the small scales
honest (a sampled Gaussian narrower than a pixel is not one).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import hermite as _hermite
from scipy.special import erf


def scale_set(sigma: float, scale_step: float, num_scales: int) -> np.ndarray:
    """The basis scales sigma * scale_step**i, i = 0 .. num_scales - 1 (float64)."""
    return float(sigma) * float(scale_step) ** np.arange(num_scales, dtype="float64")


def _hermite_poly(n: int, t: np.ndarray) -> np.ndarray:
    c = np.zeros(n + 1)
    c[n] = 1.0
    return _hermite.hermval(t, c)


def _antiderivative(n: int, t: np.ndarray) -> np.ndarray:
    """F_n(t) with F_n' = H_n(t) e^{-t^2}."""
    if n == 0:
        return 0.5 * math.sqrt(math.pi) * erf(t)
    return -_hermite_poly(n - 1, t) * np.exp(-(t**2))


def cell_integrals(kernel_size: int, sigma: float, max_order: int, support: float) -> np.ndarray:
    """1-D factors [max_order + 1, kernel_size]: entry [n, i] is
    (1 / sigma) * integral over cell i (cut to [-support, support]) of H_n(x / sigma) e^{-x^2 / sigma^2} dx,
    the cell of tap i being [i - c - 1/2, i - c + 1/2], c = (kernel_size - 1) / 2.
    """
    c = (kernel_size - 1) / 2.0
    lo = np.clip(np.arange(kernel_size) - c - 0.5, -support, support) / sigma
    hi = np.clip(np.arange(kernel_size) - c + 0.5, -support, support) / sigma
    return np.stack([_antiderivative(n, hi) - _antiderivative(n, lo) for n in range(max_order + 1)])


def hermite_basis(kernel_size: int, sigmas, max_order: int, normalize: bool = True) -> np.ndarray:
    """The basis [num_scales, num_functions, kernel_size, kernel_size] (float64).

    Function f = n * (max_order + 1) + m is H_n along columns (x) times H_m
    along rows (y). Each scale sigma_s is cut to |x|, |y| <= rho * sigma_s with
    rho = kernel_size / (2 * max(sigmas)): the largest scale fills the kernel,
    the smaller ones are its exact dilations. `normalize` divides each function,
    at every scale alike, by its L2 norm at the largest scale (a constant per
    function, so the dilation relations hold unchanged).
    """
    sigmas = np.asarray(sigmas, dtype="float64")
    rho = kernel_size / (2.0 * float(sigmas.max()))
    out = []
    for s in sigmas:
        f1 = cell_integrals(kernel_size, float(s), max_order, rho * float(s))  # [N, k]
        # rows: y (H_m), columns: x (H_n); 1/sigma^2 * sigma^2 (two cell integrals) = 1
        b = np.einsum("mr,nc->nmrc", f1, f1).reshape(-1, kernel_size, kernel_size)
        out.append(b)
    basis = np.stack(out)
    if normalize:
        norms = np.sqrt(np.sum(basis[-1] ** 2, axis=(-2, -1)))
        basis = basis / norms[None, :, None, None]
    return basis


def exact_pairs(sigmas, tol: float = 1e-9) -> list[tuple[int, int, int]]:
    """(s, t, a): scale t is exactly `a` times scale s, `a` an odd integer >= 3 (the exactly equivariant pairs)."""
    sigmas = np.asarray(sigmas, dtype="float64")
    pairs = []
    for s in range(len(sigmas)):
        for t in range(s + 1, len(sigmas)):
            r = sigmas[t] / sigmas[s]
            a = int(round(r))
            if a >= 3 and a % 2 == 1 and abs(r - a) <= tol * a:
                pairs.append((s, t, a))
    return pairs

