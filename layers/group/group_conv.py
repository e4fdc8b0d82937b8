"""Group convolution on the cyclic group C_N or the dihedral group D_N, regular representation (Cohen & Welling, ICML 2016)."""

from __future__ import annotations

import keras
from keras import ops

from layers.group._group_common import GroupConvBase


@keras.saving.register_keras_serializable(package="invariant")
class GroupConv2D(GroupConvBase):
    """Group convolution G -> G (C_N or D_N): feature maps over the group's elements to maps over them.

    A filter psi[p, n, c_in, c_out] sees all N input orientations. Output
    orientation r uses psi rotated by 2 pi r / N (counter-clockwise) in space
    AND cyclically shifted by r along its orientation axis:
    y[., r, c] = sum_{p, n, c'} psi_c(R_r^-1 p, (n - r) mod N, c') x(. + p, n, c').
    The N transformed copies are stacked into ONE kernel
    [k, k, N * C_in, N * filters] (`dense_kernel()`, built by one constant gather and one
    batched matmul from the weights) and applied by one convolution. Spatial
    rotations act on a basis (see `basis`) whose rotated copies are exact
    constants: for N = 4 (and 1, 2) the pixel basis rotated by np.rot90, for
    other N a band-limited circular-harmonic basis (Gaussian rings times
    cos/sin(m theta), after Weiler & Cesa's e2cnn) that rotates exactly by
    any angle.

    Equivariance: rotating the input by g = 2 pi s / N and shifting its
    orientation axis by s (np.roll by s) rotates every output map by g and
    shifts the output orientation axis by s. This is exact for rotations by
    multiples of 90 degrees (np.rot90; 'same' padding, or 'valid' on any
    size) when N is a multiple of 4, so it holds through any stack of these
    layers, pointwise nonlinearities, GroupBatchNormalization and 2x2
    pooling on even sizes. At the group's other angles (45 degrees for
    N = 8, 22.5 for N = 16) it holds only approximately: the input must be
    interpolated on the pixel grid. Measured on the central disk (radius 16)
    of smooth (Gaussian-blurred, sigma 2 px) 48x48 inputs rotated by cubic
    interpolation, a lifting convolution, ReLU and this layer with random
    3x3 or 5x5 filters, over 20 weight draws: relative max error 2.4-3.2%
    (median), at most 5.5%, at 45 degrees for N = 8; 2.6-3.7%, at most 5.9%,
    at 45 and 22.5 degrees for N = 16. Between group angles no orientation
    shift matches (9-18% off), but the maps pooled over orientations
    (GroupPooling of the rotated input's maps against the rotated pooled
    map) stay close: mean pooling 0.8-1.3% (median), at most 3.7% (N = 8
    at 22.5 and 30 degrees, N = 16 at 11.25 and 30), max pooling 6-8%, at
    most 21% (it depends on how fast the weights vary over the orientations),
    against 7-22% (mean) and 33-50% (max) for N = 4 at 22.5 and 45 degrees.
    tests/layers/group/test_group_equivariance.py asserts bounds with a margin.

    Mirrors (`group='D4'`, `'D8'`): output element g = R_r F^m uses psi
    mirrored and rotated by g in space and its group axis permuted by g:
    y[., g, c] = sum_{p, h, c'} psi_c(g^-1 p, g^-1 h, c') x(. + p, h, c')
    (one constant gather by the group's table of g^-1 h, layers/group/_groups.py).
    Transforming the input by g (space, and the group axis by
    out[..., k, :] = in[..., g^-1 k, :]) transforms the output the same
    way; exact for all of D4 and for D8's mirrors and quarter turns, through
    any stack (tests/layers/group/test_dihedral.py).

    Feature-map layout: as LiftingConv2D's.

    Args:
        filters, kernel_size, group_order, basis, padding, use_bias, group:
            as LiftingConv2D's (pixel filters: k*k free weights per filter
            and group element).
        kernel_initializer: initializer of the coefficients [J, |G|, C_in, filters].
        bias_initializer: initializer of the bias [filters].
        Weights: J * |G| * C_in * filters (|G| = N, or 2N for D_N).

    Input shape:
        [batch, H, W, |G|, C_in].

    Output shape:
        [batch, H', W', |G|, filters] (H' = H for 'same', H - k + 1 for 'valid').

    Example:
        >>> x = keras.Input((28, 28, 1))
        >>> y = LiftingConv2D(8, 5, group_order=4)(x)   # [None, 28, 28, 4, 8]
        >>> y = GroupConv2D(16, 3, group_order=4)(y)    # [None, 28, 28, 4, 16]

    Papers: T. S. Cohen, M. Welling, "Group Equivariant Convolutional
    Networks", ICML 2016; M. Weiler, G. Cesa, "General E(2)-Equivariant
    Steerable CNNs", NeurIPS 2019 (e2cnn).
    """

    input_ndim = 5

    def __init__(self, filters, kernel_size=3, group_order=None, basis="auto", padding="same", use_bias=True,
                 kernel_initializer="he_normal", bias_initializer="zeros", group=None, **kwargs):
        super().__init__(filters, kernel_size, group_order, basis, padding, use_bias, kernel_initializer,
                         bias_initializer, group, **kwargs)
        # [|G|, |G|]: the input element read by output element g at filter element h, index(g^-1 h)
        # ((h - g) mod N on C_N)
        self._shift = self._group.inverse_table

    def check_input_shape(self, input_shape):
        if input_shape[-2] != self.group_size:
            raise ValueError(
                f"input must be [batch, H, W, {self.group_size} ({self.group}'s elements), channels], "
                f"got shape {input_shape}"
            )

    def coefficient_shape(self, channels):
        return (self._basis.shape[-1], self.group_size, channels, self.filters)

    def dense_kernel(self):
        """The conv kernel [k, k, |G| * C_in, |G| * filters] (element-major on both channel axes)."""
        k, n, ci, co = self.kernel_size, self.group_size, self._c_in, self.filters
        w = ops.cast(self.kernel, "float32")  # [J, N, Ci, Co]
        w = ops.take(w, ops.convert_to_tensor(self._shift), axis=1)  # [J, N_out, N_in, Ci, Co]
        w = ops.reshape(ops.transpose(w, (1, 0, 2, 3, 4)), (n, -1, n * ci * co))  # [N_out, J, N_in*Ci*Co]
        kern = ops.matmul(ops.convert_to_tensor(self._basis), w)  # [N_out, P, N_in*Ci*Co]
        kern = ops.reshape(kern, (n, k, k, n, ci, co))
        kern = ops.transpose(kern, (1, 2, 3, 4, 0, 5))  # [k, k, N_in, Ci, N_out, Co]
        return ops.cast(ops.reshape(kern, (k, k, n * ci, n * co)), self.compute_dtype)
