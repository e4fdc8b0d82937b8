"""Harmonic convolution (Worrall et al., CVPR 2017): complex circular-harmonic filters."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from layers.common import validation as check
from layers.common.conv import BasisConv2D

# Gaussian interpolation of the ring samples onto the pixel grid (pixels).
_BANDWIDTH = 0.5


def ring_radii(kernel_size: int, n_rings: int, order: int) -> np.ndarray:
    """Radii (pixels) of the rings carrying the radial profile of a filter of rotation `order`.

    Evenly spaced from 0 (order 0) or 1 (other orders, whose filters must
    vanish at the centre) to the half-width `kernel_size / 2` of the patch.
    """
    start = 0.0 if order == 0 else 1.0
    return np.linspace(start, kernel_size / 2.0, n_rings)


def harmonic_basis(kernel_size: int, n_rings: int, order: int) -> np.ndarray:
    """The complex basis of the filters of rotation `order` on a `kernel_size` patch.

    Returns complex128 [kernel_size, kernel_size, n_rings]: entry [row, col, j]
    is ring j's contribution to the pixel, so that a filter with radial
    profile R is `sum_j R[j] * basis[..., j]`, a sampled R(r) e^{i m phi}.
    Each ring is sampled at N angles theta_n (N a multiple of 4), every sample
    spread onto the pixels by a normalised Gaussian of bandwidth 0.5 px, and
    the samples are summed with weights e^{i m theta_n} / N. Angles are
    measured counter-clockwise with the row axis pointing down (x = col - c,
    y = c - row), so the basis is exactly steerable on the pixel grid:
    basis(R_90 p) = e^{i m pi/2} basis(p), that is
    np.rot90(basis) = e^{-i m pi/2} basis (np.rot90 moves the value at p to R_90 p).
    """
    k = kernel_size
    c = (k - 1) / 2.0
    rows, cols = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    px = (cols - c).reshape(-1)  # [P]
    py = (c - rows).reshape(-1)
    n = 4 * max(16, math.ceil(math.pi * k))
    theta = 2.0 * np.pi * np.arange(n) / n
    radii = ring_radii(k, n_rings, order)
    sx = radii[:, None] * np.cos(theta)[None, :]  # [J, N]
    sy = radii[:, None] * np.sin(theta)[None, :]
    d2 = (sx[..., None] - px) ** 2 + (sy[..., None] - py) ** 2  # [J, N, P]
    w = np.exp(-0.5 * d2 / _BANDWIDTH**2)
    w /= w.sum(axis=-1, keepdims=True)
    phase = np.exp(1j * order * theta) / n  # [N]
    basis = np.einsum("n,jnp->pj", phase, w)  # [P, J]
    return basis.reshape(k, k, n_rings)


def _assembly_tensor(kernel_size, n_rings, in_orders, in_parts, out_orders, filter_orders):
    """Constant T with dense_kernel = T @ Q, Q = [R cos(beta), R sin(beta)] per filter order.

    Shape [P, M_in, in_parts, M_out, 2, F, J, 2]; the complex product
    (a + ib)(w_r + i w_i) = (w_r a - w_i b) + i (w_i a + w_r b) is written
    into the re/im blocks, with w_r = Re(B) R cos(beta) - Im(B) R sin(beta) and
    w_i = Re(B) R sin(beta) + Im(B) R cos(beta).
    """
    p = kernel_size * kernel_size
    t = np.zeros(
        (p, len(in_orders), in_parts, len(out_orders), 2, len(filter_orders), n_rings, 2), np.float64
    )
    for f, m in enumerate(filter_orders):
        b = harmonic_basis(kernel_size, n_rings, m).reshape(p, n_rings)
        br, bi = b.real, b.imag
        wr = np.stack([br, -bi], axis=-1)  # coefficients of [R cos, R sin] in w_r
        wi = np.stack([bi, br], axis=-1)  # ... in w_i
        for a, pin in enumerate(in_orders):
            for q, pout in enumerate(out_orders):
                if pout - pin != m:
                    continue
                t[:, a, 0, q, 0, f] += wr  # re <- re: w_r
                t[:, a, 0, q, 1, f] += wi  # im <- re: w_i
                if in_parts == 2:
                    t[:, a, 1, q, 0, f] -= wi  # re <- im: -w_i
                    t[:, a, 1, q, 1, f] += wr  # im <- im: w_r
    return t


@keras.saving.register_keras_serializable(package="invariant")
class HarmonicConv2D(BasisConv2D):
    """Harmonic convolution: rotation-equivariant complex filters of chosen rotation orders.

    Each filter of rotation order m is W_m(r, phi) = R(r) e^{i (m phi + beta)},
    with a learned radial profile R on `n_rings` rings (sampled onto the pixel
    grid by Gaussian interpolation, see `harmonic_basis`) and a learned phase
    offset beta, one per (filter order, input channel, output channel). An
    input stream of order p convolved with a filter of order m gives a stream
    of order p + m; the layer makes each output stream of order q in `orders`
    as the sum over input streams p of (W_{q-p} conv z_p), so only streams of
    equal output order are summed ("conv" is Keras' convolution, a
    cross-correlation; the equivariance below holds for either). All order
    pairs run in ONE convolution of a dense kernel
    [k, k, M_in*2*C_in, M_out*2*C_out] (`dense_kernel()`) assembled from the
    weights by one constant matmul. There is no bias (it would break
    equivariance for orders != 0; the nonlinearity carries the bias).

    Equivariance: rotating the input by theta (counter-clockwise), with each
    input stream of order p multiplied by e^{i p theta}, rotates every output
    stream of order q and multiplies it by e^{i q theta}. This is exact for
    multiples of 90 degrees (np.rot90 of an odd, pixel-centred kernel, stride
    1, or any stride on sizes that the stride tiles with 'valid' padding) and
    only approximate at other angles: the filters are sampled on the pixel
    grid and padding cuts them at the border.

    Layout of complex, multi-order feature maps (all harmonic layers):
    a real float tensor [batch, height, width, orders, 2, channels]; axis -3
    runs over the rotation orders (in the order given by `orders`), axis -2
    holds the real (0) and imaginary (1) parts. Real images
    [batch, height, width, channels] are accepted as order-0 streams with
    zero imaginary part.

    Args:
        filters: output channels per order.
        kernel_size: odd filter size (the filter is centred on a pixel).
        orders: rotation orders of the output streams, default (0, 1).
        input_orders: rotation orders of the input streams when the input is
            a 6-D harmonic map; default: the same as `orders`. A 4-D real
            input is always order 0.
        n_rings: rings carrying the radial profile; default max(2, (kernel_size + 1) // 2).
        strides: stride of the convolution.
        padding: 'same' or 'valid'.
        phase: learn the phase offset beta (False: beta = 0, as in the final
            layer of the paper's network).
        radial_initializer: initializer of the radial profiles
            [filter orders, n_rings, C_in, C_out].
        phase_initializer: initializer of the phases [filter orders, C_in, C_out].

    Input shape:
        [batch, H, W, C_in] (real images) or [batch, H, W, M_in, 2, C_in].

    Output shape:
        [batch, H', W', len(orders), 2, filters].

    Example:
        >>> x = keras.Input((28, 28, 1))
        >>> y = HarmonicConv2D(8, 5)(x)           # [None, 28, 28, 2, 2, 8]
        >>> y = HarmonicConv2D(8, 5)(y)           # orders {0,1} -> {0,1}

    Paper: D. E. Worrall, S. J. Garbin, D. Turmukhambetov, G. J. Brostow,
    "Harmonic Networks: Deep Translation and Rotation Equivariance", CVPR 2017.
    """

    min_kernel_size = 3

    def __init__(self, filters, kernel_size=5, orders=(0, 1), input_orders=None, n_rings=None, strides=1,
                 padding="same", phase=True, radial_initializer="he_normal", phase_initializer=None, **kwargs):
        # no bias: it would break equivariance for orders != 0; the radial profiles are the kernel's coefficients
        super().__init__(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
                         kernel_initializer=radial_initializer, **kwargs)
        self.orders = check.integers(orders, "orders")
        self.input_orders = check.integers(input_orders, "input_orders") if input_orders is not None else None
        self.n_rings = check.integer(n_rings, "n_rings", low=1, allow_none=True)
        self.phase = check.boolean(phase, "phase")
        if phase_initializer is None:
            phase_initializer = keras.initializers.RandomUniform(0.0, 2.0 * math.pi)
        self.phase_initializer = check.initializer(phase_initializer, "phase_initializer")

    @property
    def radial_initializer(self):
        """The initializer of the radial profiles (`kernel_initializer` of the base)."""
        return self.kernel_initializer

    @property
    def rings(self) -> int:
        return self.n_rings if self.n_rings is not None else max(2, (self.kernel_size + 1) // 2)

    def _built_attribute(self, name):
        if not self.built:
            raise AttributeError(f"{name} is known once {type(self).__name__} {self.name!r} is built")
        return getattr(self, "_" + name)

    @property
    def in_orders(self) -> tuple:
        """Rotation orders of the input streams (read-only; (0,) for real images). Known once built."""
        return self._built_attribute("in_orders")

    @property
    def in_parts(self) -> int:
        """Parts per input stream (read-only): 1 for real images, 2 (re, im) for harmonic maps. Known once built."""
        return self._built_attribute("in_parts")

    @property
    def filter_orders(self) -> tuple:
        """Rotation orders m = q - p of the filters, sorted (read-only). Known once built."""
        return self._built_attribute("filter_orders")

    def _input_layout(self, input_shape):
        rank = len(input_shape)
        if rank == 4:
            return (0,), 1, input_shape[-1]
        if rank == 6:
            if input_shape[-2] != 2:
                raise ValueError(f"a harmonic map has 2 (re, im) parts on axis -2, got shape {input_shape}")
            in_orders = self.input_orders if self.input_orders is not None else self.orders
            if input_shape[-3] != len(in_orders):
                raise ValueError(
                    f"input has {input_shape[-3]} order streams but input_orders is {list(in_orders)} "
                    f"(shape {input_shape})"
                )
            return in_orders, 2, input_shape[-1]
        raise ValueError(
            f"input must be [batch, H, W, C] or [batch, H, W, orders, 2, C], got shape {input_shape}"
        )

    def check_input_shape(self, input_shape):
        self._input_layout(input_shape)

    @property
    def output_axes(self):
        return (len(self.orders), 2, self.filters)

    def kernel_weights(self):
        return [self.radial, self.phase_offset] if self.phase else [self.radial]

    def build(self, input_shape):
        in_orders, in_parts, _ = self._input_layout(tuple(input_shape))
        self._in_orders, self._in_parts, self._c_in = in_orders, in_parts, self._channels(input_shape)
        self._filter_orders = tuple(sorted({q - p for q in self.orders for p in in_orders}))
        f, j = len(self._filter_orders), self.rings
        self.radial = self.add_weight(
            name="radial", shape=(f, j, self._c_in, self.filters), initializer=self.radial_initializer
        )
        if self.phase:
            self.phase_offset = self.add_weight(
                name="phase", shape=(f, self._c_in, self.filters), initializer=self.phase_initializer
            )
        t = _assembly_tensor(self.kernel_size, j, in_orders, in_parts, self.orders, self._filter_orders)
        if not self.phase:
            t = t[..., :1]  # beta = 0: only the R cos(beta) = R column is used
        # [P * M_in * parts * M_out * 2, F * J * (2 or 1)], kept as a constant of the graph.
        self._assembly = t.reshape(-1, t.shape[-3] * t.shape[-2] * t.shape[-1]).astype("float32")

    def dense_kernel(self):
        """The conv2d kernel [k, k, M_in*parts*C_in, M_out*2*C_out] made from the weights."""
        dtype = self.compute_dtype
        radial = ops.cast(self.radial, "float32")  # [F, J, Ci, Co]
        if self.phase:
            beta = ops.cast(self.phase_offset, "float32")[:, None]  # [F, 1, Ci, Co]
            q = ops.stack([radial * ops.cos(beta), radial * ops.sin(beta)], axis=2)  # [F, J, 2, Ci, Co]
        else:
            q = radial[:, :, None]
        q = ops.reshape(q, (-1, self._c_in * self.filters))
        k = ops.matmul(ops.convert_to_tensor(self._assembly), q)
        k = ops.reshape(
            k,
            (self.kernel_size, self.kernel_size, len(self._in_orders), self._in_parts,
             len(self.orders), 2, self._c_in, self.filters),
        )
        k = ops.transpose(k, (0, 1, 2, 3, 6, 4, 5, 7))
        k = ops.reshape(
            k,
            (self.kernel_size, self.kernel_size, len(self._in_orders) * self._in_parts * self._c_in,
             len(self.orders) * 2 * self.filters),
        )
        return ops.cast(k, dtype)

