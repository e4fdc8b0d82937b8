"""Index arithmetic shared by the portable ops (`layers.common._ops`) and the TensorFlow fast path
(`layers.common._tf_fast`): binomial filters, padding splits, border corrections, SAME alignment.

NumPy and slicing only, so both import it and neither imports the other's module
at import time (no cycle).
"""

from __future__ import annotations

import numpy as np

from layers.common.validation import integer

PAD_MODES = ("reflect", "zero", "circular")


def binomial_filter(size: int) -> np.ndarray:
    """Row `size - 1` of Pascal's triangle, normalised to sum to 1 (float64)."""
    integer(size, "filter size", low=1)
    row = [1]
    for _ in range(size - 1):
        row = [a + b for a, b in zip([0] + row, row + [0])]
    row = np.asarray(row, dtype="float64")
    return row / row.sum()


def centered_pads(kernel_size: int) -> tuple[int, int]:
    """Zhang's split of `kernel_size - 1` padding: (before, after), after >= before."""
    before = (kernel_size - 1) // 2
    return before, kernel_size - 1 - before


def take(x, axis, start, stop):
    """x[..., start:stop, ...] along `axis` (a native slice on every backend)."""
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def border_correction(n: int, f: np.ndarray, stride: int, before: int, mode: str):
    """Where reflect/circular padding differs from zero padding along one axis of length `n`.

    A 1-D pass (filter `f`, padding (before, after), subsampling by `stride`)
    gives output i = sum_a f[a] * xp[i * stride + a - before]. With zero padding
    the taps outside [0, n) read 0; with `mode` they read input row src(j). So
    the difference lands only on the first/last few outputs and is a small
    linear map of a few input rows: returns (outputs, sources, M) with
    correction[outputs[r]] = sum_s M[r, s] * x[sources[s]].
    """
    k = len(f)
    m = (n - 1) // stride + 1
    terms = {}
    for i in range(m):
        lo, hi = i * stride - before, i * stride - before + k - 1
        if lo >= 0 and hi <= n - 1:
            continue
        for a in range(k):
            j = i * stride + a - before
            if 0 <= j < n:
                continue
            if mode == "circular":
                src = j % n
            else:  # reflect: ... 2 1 | 0 1 ... n-1 | n-2 ...
                period = 2 * (n - 1)
                src = j % period
                src = period - src if src >= n else src
            terms[(i, src)] = terms.get((i, src), 0.0) + float(f[a])
    outputs = sorted({i for i, _ in terms})
    sources = sorted({s for _, s in terms})
    matrix = np.zeros((len(outputs), len(sources)))
    for (i, s), w in terms.items():
        matrix[outputs.index(i), sources.index(s)] += w
    return outputs, sources, matrix


def same_alignment(n: int, k: int, stride: int, before: int) -> tuple[int, int]:
    """(leading, trailing) zero taps that make a "SAME" convolution read Zhang's window.

    "SAME" (TensorFlow's and JAX's) pads T = (m - 1) * stride + k' - n in
    total, T // 2 before (m = ceil(n / stride)); for stride 2 and even n that
    is one row fewer before than Zhang's (k - 1) // 2. Zero taps fix the
    alignment: with z leading and e trailing zeros (k' = k + z + e) output i
    reads rows i * stride - before + a for tap a of the filter exactly when
    T // 2 == before + z.
    """
    m = (n - 1) // stride + 1
    for z in range(2 * stride + k):
        for e in range(2 * stride + k):
            total = (m - 1) * stride + k + z + e - n
            if total >= 0 and total // 2 == before + z:
                return z, e
    raise AssertionError(f"no SAME alignment for n={n}, k={k}, stride={stride}")  # unreachable: e steps T by 1
