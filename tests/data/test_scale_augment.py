"""Scale augmentation (data/scale_augment.py): against tf.image.resize, per image (each its own factor),
eagerly and inside tf.data with an unknown batch size, no-op when disabled, deterministic rescale."""

import numpy as np
import pytest
import tensorflow as tf

from data.scale_augment import RandomScale, random_scale, rescale_batch


def blob_images(n=4, size=28, seed=0):
    """Smooth random blobs, zero within 4 px of the border (so resizing has no border effects)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, size, size, 1), np.float32)
    x[:, 4:-4, 4:-4] = rng.uniform(size=(n, size - 8, size - 8, 1))
    return x


def test_shrinking_by_half_is_tf_antialiased_resize_padded_into_the_centre():
    x = blob_images()
    small = tf.image.resize(x, (14, 14), method="bilinear", antialias=True).numpy()
    want = np.pad(small, ((0, 0), (7, 7), (7, 7), (0, 0)))
    np.testing.assert_allclose(rescale_batch(x, 0.5), want, atol=1e-5)


def test_enlarging_by_two_is_a_bilinear_resize_of_the_centre_crop():
    x = blob_images(seed=1)
    want = tf.image.resize(x[:, 7:21, 7:21], (28, 28), method="bilinear").numpy()
    np.testing.assert_allclose(rescale_batch(x, 2.0)[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], atol=1e-5)


def test_rescale_batch_keeps_types_identity_and_mass():
    x = blob_images(seed=2)
    assert rescale_batch(x, 1.0) is x
    out = rescale_batch(x, 0.6)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == x.shape
    assert isinstance(rescale_batch(tf.constant(x), 0.6), tf.Tensor)
    # anti-aliased shrinking keeps the total intensity times factor^2, and leaves a zero border
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), 0.36 * x.sum(axis=(1, 2, 3)), rtol=0.03)
    assert np.all(out[:, :4] == 0) and np.all(out[:, :, -4:] == 0)
    # aliasing: a one-pixel checkerboard shrunk by 0.5 becomes flat grey, not a pattern
    checker = (np.indices((28, 28)).sum(0) % 2).astype(np.float32)[None, :, :, None]
    centre = rescale_batch(checker, 0.5)[0, 10:18, 10:18, 0]
    assert np.ptp(centre) < 0.05 and abs(centre.mean() - 0.5) < 0.05


def _factors(seed, n, lo, hi, p):
    """The draws random_scale makes from a stateless seed (white-box: same formula)."""
    seed = tf.cast(tf.constant(seed), tf.int64)
    draw = tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(seed, 1))
    keep = tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(seed, 2))
    f = lo + (hi - lo) * draw
    return tf.where(keep < p, f, tf.ones_like(f)).numpy()


def test_each_image_gets_its_own_factor_eagerly():
    x = np.repeat(blob_images(1, seed=3), 8, axis=0)  # eight copies of one image
    out = random_scale(x, 0.3, 1.5, seed=[5, 6]).numpy()
    factors = _factors([5, 6], 8, 0.3, 1.5, 1.0)
    assert len(set(np.round(factors, 4))) == 8
    for b in range(8):
        np.testing.assert_allclose(out[b], rescale_batch(x[b : b + 1], float(factors[b]))[0], atol=2e-6)
    assert min(np.abs(out[i] - out[j]).max() for i in range(8) for j in range(i)) > 1e-3
    # the same seed, the same factors; another seed, others
    np.testing.assert_array_equal(random_scale(x, 0.3, 1.5, seed=[5, 6]).numpy(), out)
    assert np.abs(random_scale(x, 0.3, 1.5, seed=[5, 7]).numpy() - out).max() > 1e-3


def test_inside_tf_data_with_unknown_batch_size_each_image_its_own_factor():
    x = np.repeat(blob_images(1, seed=4), 10, axis=0)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4)  # batches of 4, 4, 2: batch size None
    assert ds.element_spec.shape[0] is None
    ds = ds.enumerate().map(lambda i, b: random_scale(b, 0.3, 1.0, seed=tf.stack([i, tf.constant(9, tf.int64)])),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = [b.numpy() for b in ds]
    assert [len(b) for b in batches] == [4, 4, 2]
    out = np.concatenate(batches)
    assert min(np.abs(out[i] - out[j]).max() for i in range(10) for j in range(i)) > 1e-3  # no two alike
    for i, b in enumerate(batches):
        f = _factors([i, 9], len(b), 0.3, 1.0, 1.0)
        for k in range(len(b)):
            np.testing.assert_allclose(b[k], rescale_batch(x[:1], float(f[k]))[0], atol=2e-6)


def test_probability_and_disabled_cases():
    x = blob_images(16, seed=5)
    assert random_scale(x, 0.5, 2.0, training=False) is x
    assert random_scale(x, 0.5, 2.0, probability=0.0) is x
    assert random_scale(x, 1.0, 1.0) is x
    out = random_scale(x, 0.5, 0.8, probability=0.5, seed=[1, 2]).numpy()
    unchanged = [np.array_equal(out[b], x[b]) for b in range(16)]
    assert 2 <= sum(unchanged) <= 14  # some kept exactly (factor 1 is the identity), some rescaled
    kept = _factors([1, 2], 16, 0.5, 0.8, 0.5) == 1.0
    assert unchanged == list(kept)


def test_layer_form_and_global_seed():
    x = blob_images(4, seed=6)
    layer = RandomScale(0.5, 1.0, seed=3)
    a, b = layer(x).numpy(), layer(x).numpy()
    assert a.shape == x.shape and np.abs(a - b).max() > 1e-4  # a fresh draw per call
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    assert RandomScale.from_config(layer.get_config()).get_config() == layer.get_config()
    assert random_scale(tf.constant(x), 0.5, 1.0).shape == x.shape  # seed=None: TF's global state


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(min_factor=0.0, max_factor=1.0), "min_factor must be a positive number, got 0.0"),
        (dict(min_factor=1.2, max_factor=0.8), "min_factor must not exceed max_factor, got min_factor=1.2 max_factor=0.8"),
        (dict(min_factor=0.5, max_factor=1.0, probability=1.5), r"probability must be a number in \[0, 1\], got 1.5"),
        (dict(min_factor=0.5, max_factor="2"), "max_factor must be a positive number, got '2'"),
    ],
)
def test_bad_arguments_are_refused_with_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_scale(blob_images(1), **kwargs)
    with pytest.raises(ValueError, match="factor must be a positive number, got -1"):
        rescale_batch(blob_images(1), -1)
