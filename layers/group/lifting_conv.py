"""Lifting convolution (Cohen & Welling, ICML 2016): an image -> feature maps over the elements of C_N or D_N."""

from __future__ import annotations

import keras
from keras import ops

from layers.group._group_common import GroupConvBase


@keras.saving.register_keras_serializable(package="invariant")
class LiftingConv2D(GroupConvBase):
    """Lifting convolution to C_N or D_N: one filter bank correlated at the group's N rotations (and mirrors).

    Output orientation r is the input correlated with the filters rotated by
    2 pi r / N (counter-clockwise): y[..., r, c] = sum_p psi_c(R_r^-1 p) x(. + p).
    The N rotated copies of the filter bank are stacked into ONE kernel
    [k, k, C_in, N * filters] (`dense_kernel()`) and applied by one convolution. Filters are
    combinations of a basis (see `basis`) whose rotated copies are exact
    constants, built once: for N = 4 (and 1, 2) the pixel basis rotated by
    np.rot90, for other N a band-limited circular-harmonic basis (Gaussian
    rings times cos/sin(m theta), after Weiler & Cesa's e2cnn), which
    rotates exactly by any angle because it is sampled from functions of
    the continuous plane.

    Equivariance: rotating the input by g = 2 pi s / N rotates every output
    map by g and cyclically shifts the orientation axis by s
    (y[..., r, :] -> y[..., (r - s) mod N, :], i.e. np.roll by s). This is
    exact for rotations by multiples of 90 degrees (np.rot90, 'same' padding
    or 'valid' on any size; N a multiple of 4, or N = 1, 2 for 180 and 360
    degrees). At the group's other angles (45 degrees for N = 8, 22.5 for
    N = 16) and in between it holds approximately only, because the input
    must be interpolated on the pixel grid. Measured on the central disk
    (radius 16) of smooth (Gaussian-blurred, sigma 2 px) 48x48 inputs,
    rotated by cubic interpolation, one layer with random 3x3 or 5x5
    filters, over 20 weight draws: relative max error 0.7-1.8% (median), at
    most 3.4%, at 45 degrees (N = 8, 16) and at 22.5 degrees (N = 16). Between two group angles no shift matches: at
    22.5 degrees for N = 8 the orientation maps are 15-18% off (nearest
    shift), for N = 4 at 45 degrees 44-50%; GroupConv2D's docstring gives
    the orientation-pooled figures. tests/layers/group/test_group_equivariance.py
    asserts bounds with a margin.

    Mirrors (`group='D4'`, `'D8'`, the dihedral groups of Veeling et al.'s
    p4m and e2cnn's D_N): the group axis has 2N entries, element
    g = R_r F^m at index m N + r (layers/group/_groups.py), the filters mirrored
    left-right (np.flip of the columns) and then rotated. Transforming the
    input by g (flip, then rotate) transforms every output map by g and
    permutes the group axis by g (out[..., k, :] = in[..., g^-1 k, :]);
    exact for every element of D4 (np.rot90, left-right and up-down flips,
    transposes), and for D8's mirrors and quarter turns; D8's 45-degree
    elements are as approximate as C8's.

    Feature-map layout of all group layers: [batch, height, width, |G|, channels],
    the group axis (orientations) before the channels.

    Args:
        filters: output channels per orientation.
        kernel_size: odd filter size (the filter is centred on a pixel).
        group_order: N, the number of rotations of C_N (4: exact rot90);
            None: 4, or the rotations of `group`.
        basis: `auto` (`pixel` if N divides 4, else `harmonic`), `pixel`
            (k*k free weights, N in {1, 2, 4}) or `harmonic` (J band-limited
            circular harmonics: 4 for k = 3, 9 for k = 5, 16 for k = 7).
        padding: 'same' or 'valid' (stride 1).
        use_bias: add a bias per output channel, shared by the N orientations
            (an orientation-dependent bias would break the equivariance).
        kernel_initializer: initializer of the basis coefficients [J, C_in, filters].
        bias_initializer: initializer of the bias [filters].
        group: 'C<N>' or 'D<N>' (e.g. 'D4': 4 rotations and their mirrors);
            None: C_N with N = group_order.

    Input shape:
        [batch, H, W, C_in].

    Output shape:
        [batch, H', W', |G|, filters] (|G| = N, or 2N for D_N; H' = H for
        'same', H - k + 1 for 'valid').

    Example:
        >>> x = keras.Input((28, 28, 1))
        >>> y = LiftingConv2D(8, 5, group_order=8)(x)   # [None, 28, 28, 8, 8]
        >>> y = GroupConv2D(8, 5, group_order=8)(y)     # C_8 -> C_8
        >>> z = LiftingConv2D(8, 3, group="D4")(x)      # [None, 28, 28, 8, 8]: 4 rotations x 2 mirrors

    Papers: T. S. Cohen, M. Welling, "Group Equivariant Convolutional
    Networks", ICML 2016; M. Weiler, G. Cesa, "General E(2)-Equivariant
    Steerable CNNs", NeurIPS 2019 (e2cnn).
    """

    input_ndim = 4

    def coefficient_shape(self, channels):
        return (self._basis.shape[-1], channels, self.filters)

    def dense_kernel(self):
        """The conv kernel [k, k, C_in, |G| * filters] (element-major on the output axis)."""
        k, n = self.kernel_size, self.group_size
        w = ops.reshape(ops.cast(self.kernel, "float32"), (-1, self._c_in * self.filters))  # [J, Ci*Co]
        b = ops.reshape(ops.convert_to_tensor(self._basis), (n * k * k, -1))  # [N*P, J]
        kern = ops.reshape(ops.matmul(b, w), (n, k, k, self._c_in, self.filters))
        kern = ops.transpose(kern, (1, 2, 3, 0, 4))
        return ops.cast(ops.reshape(kern, (k, k, self._c_in, n * self.filters)), self.compute_dtype)
