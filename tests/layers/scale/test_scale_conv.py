"""SESN layers (ScaleLiftingConv2D, ScaleConv2D, ScalePooling): basis and convolution against NumPy
references, exact equivariance at odd integer scale ratios, the stated bound elsewhere, shared checks."""

import math

import keras
import numpy as np
import pytest
from scipy import integrate, ndimage

from layers.scale._scale_basis import exact_pairs, hermite_basis, scale_set
from layers.scale.scale_conv import ScaleConv2D
from layers.scale.scale_lifting_conv import ScaleLiftingConv2D
from layers.scale.scale_pooling import ScalePooling
from models.equivariance import elements, equivariance_errors
from tests.autodiff import to_numpy
from tests.layers.layer_checks import check_layer

SMALL = dict(kernel_size=5, num_scales=3, scale_step=3**0.5, sigma=0.5, max_order=2)


# ----------------------------------------------------------------------------- references


def hermite(n, t):
    """Physicists' Hermite polynomial by the recurrence H_{k+1} = 2t H_k - 2k H_{k-1}."""
    h0, h1 = np.ones_like(t), 2 * t
    if n == 0:
        return h0
    for k in range(1, n):
        h0, h1 = h1, 2 * t * h1 - 2 * k * h0
    return h1


def reference_basis(k, sigmas, max_order):
    """The cell integrals by numerical quadrature (scipy.integrate.quad) of the separable factors,
    each cell cut to |x| <= rho sigma; H_n by its recurrence, not NumPy's hermval."""
    rho = k / (2 * max(sigmas))
    c = (k - 1) / 2
    out = np.zeros((len(sigmas), (max_order + 1) ** 2, k, k))
    for si, s in enumerate(sigmas):
        f1 = np.zeros((max_order + 1, k))
        for n in range(max_order + 1):
            for i in range(k):
                lo, hi = max(i - c - 0.5, -rho * s), min(i - c + 0.5, rho * s)
                if hi > lo:
                    f1[n, i] = integrate.quad(lambda x: hermite(n, x / s) * np.exp(-(x / s) ** 2), lo, hi)[0] / s
        # psi / sigma^2 integrated over the cell = (1/sigma) int_x * (1/sigma) int_y
        for n in range(max_order + 1):
            for m in range(max_order + 1):
                out[si, n * (max_order + 1) + m] = np.outer(f1[m], f1[n])  # rows: y (H_m), columns: x (H_n)
    norms = np.sqrt((out[-1] ** 2).sum(axis=(-1, -2)))
    return out / norms[None, :, None, None]


def correlate_same(x, kernel):
    """NumPy 'same' cross-correlation, zero padding: x [B, H, W, Ci], kernel [k, k, Ci, Co]."""
    k = kernel.shape[0]
    h = (k - 1) // 2
    xp = np.pad(x, ((0, 0), (h, h), (h, h), (0, 0)))
    H, W = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for u in range(k):
        for v in range(k):
            out += np.einsum("bhwi,io->bhwo", xp[:, u : u + H, v : v + W], kernel[u, v])
    return out


def enlarge_nearest(x, a):
    return np.repeat(np.repeat(x, a, axis=1), a, axis=2)


# ----------------------------------------------------------------------------- basis


def test_basis_matches_brute_force_integration():
    sig = scale_set(0.5, 3**0.5, 3)
    got = hermite_basis(5, sig, 2)
    want = reference_basis(5, sig, 2)
    np.testing.assert_allclose(got, want, atol=1e-9 * np.abs(want).max())


def test_basis_block_sums_are_exact_at_odd_integer_ratios():
    sig = scale_set(0.8, 3**0.5, 3)
    assert exact_pairs(sig) == [(0, 2, 3)]
    b = hermite_basis(9, sig, 3, normalize=False)
    # the 9x9 kernel at scale 2 summed over 3x3 blocks is the kernel at scale 0 (inside the 3x3 centre)
    blocks = b[2].reshape(-1, 3, 3, 3, 3).sum(axis=(2, 4))
    np.testing.assert_allclose(blocks, b[0][:, 3:6, 3:6], atol=1e-14)
    assert np.abs(b[0]).sum() - np.abs(b[0][:, 3:6, 3:6]).sum() < 1e-14  # scale 0 lives inside 3x3


def test_smooth_response_is_the_same_at_every_scale():
    # the 1/sigma^2 normalisation: a constant image gives the same response at every scale
    b = hermite_basis(9, scale_set(0.8, 3**0.5, 3), 3)
    sums = b.sum(axis=(-1, -2))
    np.testing.assert_allclose(sums, np.broadcast_to(sums[:1], sums.shape), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- convolutions vs NumPy


def test_lifting_matches_a_direct_convolution():
    keras.utils.set_random_seed(0)
    layer = ScaleLiftingConv2D(3, bias_initializer="random_normal", **SMALL)
    x = np.random.default_rng(0).standard_normal((2, 9, 11, 2)).astype("float32")
    y = to_numpy(layer(x))
    basis = reference_basis(5, layer.scales, 2)
    w, bias = to_numpy(layer.kernel, np.float64), to_numpy(layer.bias, np.float64)
    for s in range(3):
        kernel = np.einsum("frc,fio->rcio", basis[s], w)
        np.testing.assert_allclose(y[:, :, :, s], correlate_same(x, kernel) + bias, atol=1e-4)


def test_scale_conv_matches_a_direct_convolution_with_interscale():
    keras.utils.set_random_seed(1)
    layer = ScaleConv2D(2, interscale=2, bias_initializer="random_normal", **SMALL)
    z = np.random.default_rng(1).standard_normal((1, 8, 8, 3, 3)).astype("float32")
    y = to_numpy(layer(z))
    basis = layer.basis()
    w, bias = to_numpy(layer.kernel, np.float64), to_numpy(layer.bias, np.float64)
    for s in range(3):
        want = bias + sum(
            correlate_same(z[:, :, :, s + d], np.einsum("frc,fio->rcio", basis[s], w[:, d]))
            for d in range(2) if s + d < 3  # scales past the last read zeros
        )
        np.testing.assert_allclose(y[:, :, :, s], want, atol=1e-4)


# ----------------------------------------------------------------------------- equivariance


def test_lifting_is_exactly_equivariant_for_a_threefold_enlargement():
    keras.utils.set_random_seed(2)
    layer = ScaleLiftingConv2D(4, 9, bias_initializer="random_normal")  # defaults: scale 2 = 3 x scale 0
    assert layer.exact_pairs == [(0, 2, 3)]
    x = np.random.default_rng(2).standard_normal((2, 8, 10, 2)).astype("float32")
    y = to_numpy(layer(x))
    y3 = to_numpy(layer(enlarge_nearest(x, 3)))
    got = y3[:, 1::3, 1::3, 2]  # block centres, scale 2
    np.testing.assert_allclose(got, y[:, :, :, 0], atol=1e-5 * np.abs(y).max())  # every position, borders too
    # not trivially: scale 1 (x1.73 apart) does not match
    assert np.abs(y3[:, 1::3, 1::3, 1] - y[:, :, :, 0]).max() > 0.05 * np.abs(y).max()


def test_scale_conv_is_exactly_equivariant_where_the_scale_range_allows():
    keras.utils.set_random_seed(3)
    layer = ScaleConv2D(3, 9, num_scales=4, interscale=2)
    rng = np.random.default_rng(3)
    z = rng.standard_normal((1, 6, 6, 4, 2)).astype("float32")
    zt = rng.standard_normal((1, 18, 18, 4, 2)).astype("float32")  # scales 0, 1 of the enlarged input: anything
    zt[:, :, :, 2:] = enlarge_nearest(z[:, :, :, :2], 3)  # in'[s + 2] = U_3 in[s]
    y = to_numpy(layer(z))
    yt = to_numpy(layer(zt))
    np.testing.assert_allclose(yt[:, 1::3, 1::3, 2], y[:, :, :, 0], atol=1e-5 * np.abs(y).max())
    # scale 1 -> 3 reads scale 4, past the end: the boundary, not exact
    assert np.abs(yt[:, 1::3, 1::3, 3] - y[:, :, :, 1]).max() > 1e-3


@pytest.fixture(scope="module")
def smooth():
    rng = np.random.default_rng(4)
    return ndimage.gaussian_filter(rng.standard_normal((2, 40, 40, 2)), (0, 2, 2, 0)).astype("float32")


def test_non_integer_ratios_are_equivariant_within_the_stated_bound(smooth):
    keras.utils.set_random_seed(4)
    lift = ScaleLiftingConv2D(8, 9)  # docstring: 2.2% and 1.3% for one step on such inputs
    errors = equivariance_errors(lift, smooth, elements(lift))  # the protocol's scale family, one step up
    assert set(errors) == {"s0_s1", "s1_s2"}
    assert all(e < 0.04 for e in errors.values()), errors
    z = np.stack([smooth] * 3, axis=3)[..., :1].repeat(4, axis=-1)
    conv = ScaleConv2D(4, 9, interscale=2)
    errors = equivariance_errors(conv, z, elements(conv))
    assert set(errors) == {"s0_s1"} and errors["s0_s1"] < 0.04, errors
    # the figure means something: comparing with the wrong scale is far off
    y = to_numpy(lift(smooth))
    assert np.linalg.norm(y[..., 0, :] - y[..., 1, :]) > 0.2 * np.linalg.norm(y[..., 0, :])


def test_scale_pooling_is_invariant_to_a_shift_of_the_scales():
    x = np.random.default_rng(5).standard_normal((2, 4, 4, 3, 5)).astype("float32")
    np.testing.assert_array_equal(to_numpy(ScalePooling()(x)), x.max(axis=3))
    np.testing.assert_allclose(to_numpy(ScalePooling("mean")(x)), x.mean(axis=3), rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(ScalePooling()(x[:, :, :, ::-1])), x.max(axis=3))


# ----------------------------------------------------------------------------- shared checks, validation


def test_shared_layer_checks():
    check_layer(lambda: ScaleLiftingConv2D(3, **SMALL), (2, 8, 8, 2), (2, 8, 8, 3, 3), expects_trainable_weights=True)
    check_layer(lambda: ScaleConv2D(2, interscale=2, **SMALL), (2, 8, 8, 3, 2), (2, 8, 8, 3, 2),
                expects_trainable_weights=True, atol=1e-5)
    check_layer(lambda: ScaleLiftingConv2D(2, strides=2, padding="valid", **SMALL), (1, 9, 9, 1), (1, 3, 3, 3, 2))
    check_layer(lambda: ScalePooling("max"), (2, 4, 4, 3, 2), (2, 4, 4, 2), expects_trainable_weights=False)


def test_mixed_precision_forward():
    x = np.random.default_rng(6).standard_normal((1, 8, 8, 2)).astype("float32")
    lift32, conv32 = ScaleLiftingConv2D(3, **SMALL), ScaleConv2D(2, **SMALL)
    ref = to_numpy(conv32(lift32(x)))
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        lift, conv = ScaleLiftingConv2D(3, **SMALL), ScaleConv2D(2, **SMALL)
        lift.build(x.shape)
        conv.build((1, 8, 8, 3, 3))
        lift.set_weights(lift32.get_weights())
        conv.set_weights(conv32.get_weights())
        y = conv(lift(x))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert lift.compute_dtype == conv.compute_dtype == "float16"
    assert lift.kernel.dtype == "float32"  # variables stay float32
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(y, np.float32), ref, atol=1e-2 * np.abs(ref).max())


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (ScaleLiftingConv2D, dict(filters=0), "filters must be a positive integer, got 0"),
        (ScaleLiftingConv2D, dict(filters=2, kernel_size=4), "kernel_size must be an odd integer >= 3, got 4"),
        (ScaleLiftingConv2D, dict(filters=2, num_scales=0), "num_scales must be a positive integer, got 0"),
        (ScaleLiftingConv2D, dict(filters=2, scale_step=1.0), "scale_step must be a number > 1, got 1.0"),
        (ScaleLiftingConv2D, dict(filters=2, sigma=-1), "sigma must be a positive number, got -1"),
        (ScaleLiftingConv2D, dict(filters=2, max_order=True), "max_order must be a non-negative integer, got True"),
        (ScaleLiftingConv2D, dict(filters=2, padding="full"), r"padding must be one of \('same', 'valid'\), got 'full'"),
        (ScaleConv2D, dict(filters=2, interscale=4), r"interscale must be an integer from 1 to num_scales \(3\), got 4"),
        (ScaleConv2D, dict(filters=2, use_bias="yes"), "use_bias must be True or False, got 'yes'"),
        (ScalePooling, dict(mode="min"), r"mode must be one of \('max', 'mean'\), got 'min'"),
    ],
)
def test_bad_arguments_are_refused_with_the_value(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_scale_conv_refuses_a_wrong_scale_axis():
    with pytest.raises(ValueError, match="num_scales = 3"):
        ScaleConv2D(2, **SMALL)(np.zeros((1, 8, 8, 4, 2), "float32"))
    assert math.isclose(ScaleConv2D(2, **SMALL).scales[-1], 1.5)
