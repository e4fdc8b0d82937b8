"""AdaptivePolyphaseSampling2D: shared checks, NumPy reference, circular-shift equivariance, ties."""

import numpy as np
import pytest

from layers.shift.polyphase import AdaptivePolyphaseSampling2D
from tests.autodiff import to_numpy
from tests.layers.layer_checks import check_layer

PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def reference_aps(x):
    out = []
    for sample in x.astype("float64"):
        comps = [sample[i::2, j::2] for i, j in PHASES]
        out.append(comps[int(np.argmax([np.sum(c**2) for c in comps]))])  # np.argmax: first maximum
    return np.stack(out)


def _is_circular_shift_of(a, b):
    return any(
        np.allclose(np.roll(b, (dy, dx), axis=(1, 2)), a, atol=1e-6)
        for dy in range(b.shape[1])
        for dx in range(b.shape[2])
    )


@pytest.mark.parametrize("blur_size", [1, 3])
def test_shared_layer_checks(blur_size, ops_path):
    check_layer(lambda: AdaptivePolyphaseSampling2D(blur_size), (2, 8, 6, 3), (2, 4, 3, 3),
                expects_trainable_weights=False)


def test_matches_numpy_reference_one_choice_per_sample():
    x = np.random.default_rng(0).standard_normal((6, 8, 10, 3)).astype("float32")
    y = to_numpy(AdaptivePolyphaseSampling2D()(x))
    np.testing.assert_allclose(y, reference_aps(x), rtol=1e-6)
    # The choice differs between samples here, so it really is made per sample.
    norms = [[np.sum(s[i::2, j::2] ** 2) for i, j in PHASES] for s in x]
    assert len(set(np.argmax(norms, axis=1))) > 1


@pytest.mark.parametrize("blur_size", [1, 3, 4])
def test_circular_shifts_in_give_circular_shifts_out(blur_size, ops_path):
    rng = np.random.default_rng(blur_size)
    x = rng.standard_normal((3, 8, 8, 4)).astype("float32")
    layer = AdaptivePolyphaseSampling2D(blur_size, padding="circular")
    base = to_numpy(layer(x))
    for dy, dx in [(1, 0), (0, 1), (1, 1), (3, 6), (7, 5)]:
        shifted = to_numpy(layer(np.roll(x, (dy, dx), axis=(1, 2))))
        for a, b in zip(shifted, base):
            assert _is_circular_shift_of(a[None], b[None]), (dy, dx)


def test_plain_subsampling_is_not_shift_equivariant_on_the_same_input():
    """The control: x[:, ::2, ::2] loses the odd-shifted samples, so the check above can fail."""
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 4)).astype("float32")
    assert not _is_circular_shift_of(np.roll(x, 1, axis=1)[:, ::2, ::2], x[:, ::2, ::2])


def test_ties_go_to_the_first_component():
    x = np.zeros((1, 4, 4, 1), "float32")
    x[0, 0, 1, 0] = 2.0  # component (0, 1)
    x[0, 1, 0, 0] = -2.0  # component (1, 0): same norm, different values
    y = to_numpy(AdaptivePolyphaseSampling2D()(x))
    np.testing.assert_array_equal(y, x[:, 0::2, 1::2])


def test_odd_sizes_raise_value_error():
    with pytest.raises(ValueError, match="even height"):
        AdaptivePolyphaseSampling2D()(np.zeros((1, 7, 8, 1), "float32"))


@pytest.mark.parametrize("kwargs", [{"blur_size": 0}, {"blur_size": 9}, {"padding": "valid"}])
def test_invalid_arguments_raise_value_error_naming_the_value(kwargs):
    with pytest.raises(ValueError, match=repr(list(kwargs.values())[0])):
        AdaptivePolyphaseSampling2D(**kwargs)
