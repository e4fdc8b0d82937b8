"""Group convolution layers on C_N: shared layer checks, NumPy references, the rotated bases, argument errors."""

import keras
import numpy as np
import pytest

from layers.group._group_basis import harmonic_frequencies, rotated_basis
from layers.group.group_batch_norm import GroupBatchNormalization
from layers.group.group_conv import GroupConv2D
from layers.group.group_pooling import GroupPooling
from layers.group.lifting_conv import LiftingConv2D
from layers.group.map_pooling import GroupMapPooling2D
from tests.autodiff import to_numpy
from tests.layers.layer_checks import check_layer


def correlate_same(x, kernel):
    """NumPy reference of a 'same' (zero-padded) cross-correlation: x [B, H, W, Ci], kernel [k, k, Ci, Co]."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + kernel.shape[-1:])
    for a in range(k):
        for b in range(k):
            out += np.einsum("bhwi,io->bhwo", xp[:, a:a + h, b:b + w], kernel[a, b])
    return out


# ---------------------------------------------------------------- shared checks


@pytest.mark.parametrize("n,basis", [(4, "auto"), (8, "auto"), (16, "harmonic")])
def test_lifting_conv_layer_checks(n, basis):
    check_layer(lambda: LiftingConv2D(3, 5, group_order=n, basis=basis), (2, 9, 9, 2), (2, 9, 9, n, 3),
                expects_trainable_weights=True, atol=1e-5)


@pytest.mark.parametrize("n,basis,padding", [(4, "pixel", "same"), (8, "auto", "valid"), (4, "harmonic", "same")])
def test_group_conv_layer_checks(n, basis, padding):
    out = 9 if padding == "same" else 7
    check_layer(lambda: GroupConv2D(3, 3, group_order=n, basis=basis, padding=padding), (2, 9, 9, n, 2),
                (2, out, out, n, 3), expects_trainable_weights=True, atol=1e-5)


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_group_pooling_layer_checks_and_values(mode):
    y = check_layer(lambda: GroupPooling(mode), (2, 5, 5, 8, 3), (2, 5, 5, 3), expects_trainable_weights=False)
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 8, 3)).astype("float32")  # check_layer's input
    np.testing.assert_allclose(y, x.max(axis=3) if mode == "max" else x.mean(axis=3), rtol=1e-6, atol=1e-6)


def map_pool_reference(x, mode):
    """NumPy stride-2 pooling over H and W of [B, H, W, G, C]: windows {2i, 2i+1} along an even side,
    {2i-1, 2i, 2i+1} (inside the side) along an odd one."""
    def windows(n):
        return [[2 * i, 2 * i + 1] for i in range(n // 2)] if n % 2 == 0 else \
            [[j for j in (2 * i - 1, 2 * i, 2 * i + 1) if 0 <= j < n] for i in range((n + 1) // 2)]
    reduce = np.max if mode == "max" else np.mean
    rows, cols = windows(x.shape[1]), windows(x.shape[2])
    return np.stack([np.stack([reduce(x[:, r][:, :, c], axis=(1, 2)) for c in cols], 1) for r in rows], 1)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("size", [(7, 6), (6, 5), (4, 4), (5, 5)])
def test_group_map_pooling_layer_checks_and_windows(mode, size):
    h, w = size
    out = ((h + 1) // 2, (w + 1) // 2)
    y = check_layer(lambda: GroupMapPooling2D(mode), (2, h, w, 4, 3), (2, *out, 4, 3), expects_trainable_weights=False)
    x = np.random.default_rng(0).standard_normal((2, h, w, 4, 3)).astype("float32")  # check_layer's input
    np.testing.assert_allclose(y, map_pool_reference(x, mode), rtol=1e-5, atol=1e-6)
    for turn in (lambda t: np.rot90(t, 1, axes=(1, 2)), lambda t: t[:, :, ::-1], lambda t: t[:, ::-1]):
        if h == w or turn(x).shape == x.shape:  # the windows map onto themselves: the pooled map turns with x
            turned = to_numpy(GroupMapPooling2D(mode)(np.ascontiguousarray(turn(x))))
            np.testing.assert_allclose(turned, turn(y), rtol=1e-5, atol=1e-6)


def test_group_map_pooling_blurs_first():
    x = np.random.default_rng(1).standard_normal((1, 7, 7, 2, 2)).astype("float32")
    y = to_numpy(GroupMapPooling2D("avg", blur_size=3)(x))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)), mode="reflect")
    f = np.array([1.0, 2.0, 1.0]) / 4
    blurred = sum(f[a] * f[b] * padded[:, a:a + 7, b:b + 7] for a in range(3) for b in range(3))
    np.testing.assert_allclose(y, map_pool_reference(blurred, "avg"), rtol=1e-5, atol=1e-6)


def test_group_batch_norm_layer_checks():
    check_layer(lambda: GroupBatchNormalization(activation="relu"), (4, 5, 5, 4, 3), (4, 5, 5, 4, 3),
                expects_trainable_weights=True, atol=1e-5)


# ---------------------------------------------------------------- NumPy references


def test_lifting_conv_matches_numpy_rot90_reference():
    keras.utils.set_random_seed(1)
    layer = LiftingConv2D(4, 5, group_order=4, bias_initializer="random_normal")
    x = np.random.default_rng(1).standard_normal((2, 11, 11, 3)).astype("float32")
    y = to_numpy(layer(x), np.float64)
    assert layer.resolved_basis == "pixel"
    psi = to_numpy(layer.kernel, np.float64).reshape(5, 5, 3, 4)  # pixel coefficients = the filter
    bias = to_numpy(layer.bias, np.float64)
    for r in range(4):
        want = correlate_same(x.astype(np.float64), np.rot90(psi, r, axes=(0, 1))) + bias
        np.testing.assert_allclose(y[..., r, :], want, atol=1e-4, rtol=1e-4)


def test_group_conv_matches_numpy_rot90_and_roll_reference():
    keras.utils.set_random_seed(2)
    layer = GroupConv2D(3, 3, group_order=4, use_bias=False)
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 4, 2)).astype("float32")
    y = to_numpy(layer(x), np.float64)
    psi = to_numpy(layer.kernel, np.float64).reshape(3, 3, 4, 2, 3)  # [k, k, N_in, Ci, Co]
    x64 = x.astype(np.float64).reshape(2, 8, 8, 8)
    for r in range(4):
        # output orientation r: the filter rotated by r * 90 degrees and shifted by r along its orientation axis
        psi_r = np.rot90(np.roll(psi, r, axis=2), r, axes=(0, 1)).reshape(3, 3, 8, 3)
        np.testing.assert_allclose(y[..., r, :], correlate_same(x64, psi_r), atol=1e-4, rtol=1e-4)


def test_harmonic_lifting_conv_matches_numpy_reference():
    keras.utils.set_random_seed(3)
    layer = LiftingConv2D(2, 5, group_order=8, use_bias=False)
    x = np.random.default_rng(3).standard_normal((1, 9, 9, 2)).astype("float32")
    y = to_numpy(layer(x), np.float64)
    basis = rotated_basis(5, 8, "harmonic")  # [N, P, J]
    w = to_numpy(layer.kernel, np.float64)  # [J, Ci, Co]
    for r in range(8):
        psi_r = np.einsum("pj,jio->pio", basis[r], w).reshape(5, 5, 2, 2)
        np.testing.assert_allclose(y[..., r, :], correlate_same(x.astype(np.float64), psi_r), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- the rotated bases


@pytest.mark.parametrize("k", [3, 5, 7])
def test_harmonic_basis_rotates_exactly_by_any_group_angle(k):
    """B[r] = B[0] times the rotation of each frequency: cos/sin(m (theta - a)) mixes cos and sin of m theta."""
    freqs = harmonic_frequencies(k)
    assert len(rotated_basis(k, 8, "harmonic")[0, 0]) == {3: 4, 5: 9, 7: 16}[k]
    for n in (8, 16):
        b = rotated_basis(k, n, "harmonic")
        for r in range(n):
            a = 2 * np.pi * r / n
            cols = []
            j = 0
            for _, m in freqs:
                if m == 0:
                    cols.append(b[0][:, j])
                    j += 1
                    continue
                c, s = b[0][:, j], b[0][:, j + 1]
                cols += [np.cos(m * a) * c + np.sin(m * a) * s, np.cos(m * a) * s - np.sin(m * a) * c]
                j += 2
            np.testing.assert_allclose(b[r], np.stack(cols, -1), atol=1e-12)


@pytest.mark.parametrize("basis", ["pixel", "harmonic"])
def test_quarter_turns_of_every_basis_are_np_rot90(basis):
    k = 5
    for n in (4, 8, 16) if basis == "harmonic" else (4,):
        b = rotated_basis(k, n, basis)
        q = n // 4
        for r in range(4):
            got = b[r * q].reshape(k, k, -1)
            np.testing.assert_allclose(got, np.rot90(b[0].reshape(k, k, -1), r, axes=(0, 1)), atol=1e-12)


def test_weights_count_the_basis_not_the_pixels():
    assert harmonic_frequencies(5) == [(0.0, 0), (1.0, 0), (1.0, 1), (1.0, 2), (2.0, 0), (2.0, 1)]
    lift = LiftingConv2D(4, 5, group_order=8, use_bias=False)
    lift.build((None, 9, 9, 1))
    gconv = GroupConv2D(4, 5, group_order=8, use_bias=False)
    gconv.build((None, 9, 9, 8, 4))
    assert lift.count_params() == 9 * 4 and gconv.count_params() == 9 * 8 * 4 * 4
    c4 = GroupConv2D(4, 5, group_order=4)
    c4.build((None, 9, 9, 4, 4))
    assert c4.count_params() == 25 * 4 * 4 * 4 + 4
    assert tuple(gconv.dense_kernel().shape) == (5, 5, 32, 32)


# ---------------------------------------------------------------- group batch norm


def test_group_batch_norm_shares_statistics_across_orientations():
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    # orientation n has mean 3n: per-orientation statistics would remove that, shared ones keep it
    x = (rng.standard_normal((4, 6, 6, 4, 2)) + 3.0 * np.arange(4)[:, None]).astype("float32")
    bn = GroupBatchNormalization(epsilon=1e-6)
    y = to_numpy(bn(x, training=True), np.float64)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2, 3)), 1.0, atol=1e-3)
    assert np.all(np.diff(y.mean(axis=(0, 1, 2, 4))) > 0.5)
    # it commutes with cyclic shifts of the orientation axis and rot90
    xt = np.ascontiguousarray(np.roll(np.rot90(x, 1, axes=(1, 2)), 1, axis=3))
    yt = to_numpy(GroupBatchNormalization(epsilon=1e-6)(xt, training=True))
    np.testing.assert_allclose(yt, np.roll(np.rot90(y, 1, axes=(1, 2)), 1, axis=3), atol=1e-4)
    assert [tuple(w.shape) for w in bn.trainable_weights] == [(2,), (2,)]


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "cls,kwargs,needle",
    [
        (LiftingConv2D, {"filters": 0}, "0"),
        (LiftingConv2D, {"filters": 4, "kernel_size": 4}, "4"),
        (LiftingConv2D, {"filters": 4, "kernel_size": True}, "True"),
        (LiftingConv2D, {"filters": 4, "group_order": 0}, "group_order.*0"),
        (LiftingConv2D, {"filters": 4, "group_order": 8, "basis": "pixel"}, "pixel.*8"),
        (GroupConv2D, {"filters": 4, "basis": "fourier"}, "'fourier'"),
        (GroupConv2D, {"filters": 4, "padding": "causal"}, "'causal'"),
        (GroupConv2D, {"filters": 4, "use_bias": 1}, "use_bias.*1"),
        (GroupConv2D, {"filters": 2.5}, "2.5"),
        # a stride was taken, then lost on save (the reloaded model computed at full size) and broke rot90
        (LiftingConv2D, {"filters": 4, "strides": 2}, "stride 1 only .*got strides 2; downsample .*GroupMapPooling2D"),
        (GroupConv2D, {"filters": 4, "group": "D4", "strides": (2, 2)}, r"GroupConv2D has stride 1 only .*\(2, 2\)"),
        (GroupPooling, {"mode": "sum"}, "'sum'"),
        (GroupMapPooling2D, {"mode": "blur"}, "'blur'"),
        (GroupMapPooling2D, {"blur_size": 9}, "9"),
        (GroupBatchNormalization, {"momentum": 1.5}, "1.5"),
        (GroupBatchNormalization, {"activation": "nope"}, "'nope'"),
    ],
)
def test_bad_arguments_raise_value_error_echoing_the_value(cls, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        cls(**kwargs)


def test_stride_1_given_outright_is_taken_and_the_config_reloads():
    layer = GroupConv2D(4, group="C4", strides=1)
    assert "strides" not in layer.get_config() and GroupConv2D.from_config(layer.get_config()).strides == 1


def test_group_conv_refuses_a_map_of_another_group_order():
    with pytest.raises(ValueError, match=r"\[batch, H, W, 8 \(C8's elements\)"):
        GroupConv2D(4, 3, group_order=8)(np.zeros((1, 5, 5, 4, 2), "float32"))
