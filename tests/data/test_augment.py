"""The augmentation's promises (issue 3): per-image transforms on batches of unknown size,
eagerly and inside tf.data; the Simard elastic field; seeds; identity when not training;
exact 90-degree rotation; value range."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from data.augment import (
    Augmentation,
    ElasticWarp,
    augment_dataset,
    bilinear_sample,
    build_augmentation,
    gaussian_smoothing_matrix,
)
from tests.layers.layer_checks import check_layer

H = W = 16

OPS = {
    "translation": dict(translation={"max": 0.2}),
    "rotation": dict(rotation={"max_degrees": 180}),
    "elastic": dict(elastic={"alpha": 8.0, "sigma": 2.0}),
    "chain": dict(translation={"max": 0.2}, rotation={"max_degrees": 180}, elastic={"alpha": 8.0, "sigma": 2.0}),
}


def digit_like(n=1, seed=0):
    """A batch of n identical, asymmetric test images in [0, 1]."""
    img = np.zeros((H, W, 1), "float32")
    img[3:13, 6:9] = 1.0
    img[3:6, 6:12] = 0.7
    img[8, 4:12] = 0.4
    return np.repeat(img[None], n, axis=0)


def all_distinct(batch, tol=1e-3):
    flat = np.asarray(batch).reshape(len(batch), -1)
    return all(np.abs(flat[i] - flat[j]).max() > tol for i, j in itertools.combinations(range(len(flat)), 2))


# ----------------------------------------------------------------------------- building blocks vs NumPy/SciPy


@pytest.mark.parametrize("n,sigma", [(28, 4.0), (16, 1.5), (12, 5.0)])  # the last one's kernel (radius 20) is wider than the image
def test_smoothing_matrix_is_scipy_gaussian_filter(n, sigma):
    m = gaussian_smoothing_matrix(n, sigma)
    v = np.random.default_rng(0).uniform(-1, 1, (n, 3))
    np.testing.assert_allclose(m @ v, ndimage.gaussian_filter1d(v, sigma, axis=0, mode="reflect", truncate=4.0), atol=1e-12)


def test_bilinear_sample_matches_scipy_map_coordinates():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(3, 7, 9, 2)).astype("float32")
    rows = rng.uniform(-2, 8, (3, 7, 9)).astype("float32")
    cols = rng.uniform(-2, 10, (3, 7, 9)).astype("float32")
    out = bilinear_sample(images, rows, cols, fill_value=0.0).numpy()
    for b, c in itertools.product(range(3), range(2)):
        ref = ndimage.map_coordinates(images[b, :, :, c].astype("float64"), [rows[b], cols[b]], order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out[b, :, :, c], ref, atol=1e-5)


def test_elastic_warp_resamples_at_the_displaced_positions():
    layer = ElasticWarp(alpha=6.0, sigma=2.0)
    x = np.random.default_rng(2).uniform(size=(2, H, W, 1)).astype("float32")
    seed = tf.constant([3, 4], tf.int64)
    out = layer(x, training=True, seed=seed).numpy()
    field = layer.displacement(2, seed).numpy()
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    for b in range(2):
        ref = ndimage.map_coordinates(x[b, ..., 0].astype("float64"), [r + field[b, ..., 0], c + field[b, ..., 1]], order=1, mode="grid-constant")
        np.testing.assert_allclose(out[b, ..., 0], ref, atol=1e-5)


# The mixed-precision pass compares a float16 copy's second call with the float32 layer's first: an
# augmentation draws a new transform at every call, so the two outputs differ by design.
RANDOM_PER_CALL = "a random augmentation: every call draws a new transform, so no two calls compare"


def test_elastic_warp_shared_layer_checks():
    check_layer(lambda: ElasticWarp(alpha=6.0, sigma=2.0, seed=1), (2, 12, 12, 1), (2, 12, 12, 1), expects_trainable_weights=False,
                skip_mixed_precision=RANDOM_PER_CALL)


def test_augmentation_shared_layer_checks():
    check_layer(
        lambda: Augmentation(OPS["chain"]["translation"], OPS["chain"]["rotation"], OPS["chain"]["elastic"], seed=1),
        (2, 12, 12, 1),
        (2, 12, 12, 1),
        expects_trainable_weights=False,
        skip_mixed_precision=RANDOM_PER_CALL,
    )


# ----------------------------------------------------------------------------- the Simard field


@pytest.mark.parametrize("alpha,sigma", [(34.0, 4.0), (8.0, 2.0)])
def test_elastic_mean_displacement_matches_simard_recipe(alpha, sigma):
    n = 200
    layer = ElasticWarp(alpha=alpha, sigma=sigma)
    layer.build((None, 28, 28, 1))
    field = layer.displacement(n, seed=tf.constant([0, 7], tf.int64)).numpy()
    ours = np.sqrt((field**2).sum(-1)).mean()
    # Simard et al.: U(-1, 1) per pixel and axis, Gaussian-smoothed (scipy's defaults), times alpha.
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, (n, 2, 28, 28))
    ref_field = alpha * np.stack([[ndimage.gaussian_filter(f, sigma) for f in pair] for pair in noise])
    ref = np.sqrt((ref_field**2).sum(1)).mean()
    assert abs(ours - ref) / ref < 0.10, (ours, ref)


def test_elastic_x_and_y_fields_are_uncorrelated_and_images_independent():
    layer = ElasticWarp(alpha=34.0, sigma=4.0)
    layer.build((None, 28, 28, 1))
    field = layer.displacement(300, seed=tf.constant([1, 2], tf.int64)).numpy()
    dy, dx = field[..., 0], field[..., 1]
    # Over many samples, at every pixel and pooled.
    assert abs(np.corrcoef(dy.ravel(), dx.ravel())[0, 1]) < 0.1
    assert abs(np.corrcoef(dy[:, 14, 14], dx[:, 14, 14])[0, 1]) < 0.2  # 300 samples at one pixel: looser
    # Consecutive images of one batch draw their own fields.
    assert abs(np.corrcoef(dx[:-1].ravel(), dx[1:].ravel())[0, 1]) < 0.1


# ----------------------------------------------------------------------------- per-image independence


@pytest.mark.parametrize("op", list(OPS))
def test_each_image_draws_its_own_transform_eagerly(op):
    aug = build_augmentation(**OPS[op], seed=0)
    assert all_distinct(aug(digit_like(6), training=True))


@pytest.mark.parametrize("op", list(OPS))
def test_each_image_draws_its_own_transform_in_tf_data_with_unknown_batch(op):
    aug = build_augmentation(**OPS[op], seed=0)
    ds = tf.data.Dataset.from_tensor_slices(digit_like(12)).batch(6)
    assert ds.element_spec.shape[0] is None
    plain = ds.map(lambda b: aug(b, training=True))  # the layer's own SeedGenerator
    seeded = augment_dataset(ds, aug)  # a stateless seed per batch
    for mapped in (plain, seeded):
        batches = list(mapped.as_numpy_iterator())
        assert len(batches) == 2
        assert all_distinct(np.concatenate(batches))


@pytest.mark.parametrize("layer_factory", [lambda: keras.layers.RandomRotation(0.5, seed=0), lambda: keras.layers.RandomTranslation(0.2, 0.2, seed=0)])
def test_keras_rotation_and_translation_are_per_image_in_tf_data(layer_factory):
    """Why Keras' own layers are used: unlike RandomElasticTransform they draw per image
    when the batch size is unknown."""
    layer = layer_factory()
    ds = tf.data.Dataset.from_tensor_slices(digit_like(6)).batch(6).map(lambda b: layer(b, training=True))
    assert all_distinct(next(iter(ds)).numpy())


def test_translation_shifts_x_and_y_independently():
    """RandomTranslation draws dx and dy with two calls on one seed argument; the seed
    stream must give those calls different seeds (else dx == dy: diagonal shifts only)."""
    aug = build_augmentation(translation={"max": 0.3}, seed=0)
    x = digit_like(64)
    aug.build(x.shape)
    from data.augment import _SeedStream

    t = aug._translation_layer.get_random_transformation(x, training=True, seed=_SeedStream(tf.constant([5, 6])))
    shifts = t["translations"].numpy()
    assert abs(np.corrcoef(shifts[:, 0], shifts[:, 1])[0, 1]) < 0.4


def test_translation_in_pixels_stays_within_max():
    img = np.zeros((1, H, W, 1), "float32")
    img[0, 8, 8] = 1.0
    aug = build_augmentation(translation={"max": 3, "units": "pixels"}, seed=0)
    out = aug(np.repeat(img, 200, 0), training=True).numpy()[..., 0]
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    mass = out.sum((1, 2))
    shift_r = (out * r).sum((1, 2)) / mass - 8
    shift_c = (out * c).sum((1, 2)) / mass - 8
    assert np.abs(shift_r).max() <= 3.0 + 1e-4 and np.abs(shift_c).max() <= 3.0 + 1e-4
    assert np.abs(shift_r).max() > 2.5 and np.abs(shift_c).max() > 2.5


def test_probability_applies_each_op_to_that_fraction_of_images():
    x = digit_like(400)
    aug = build_augmentation(rotation={"max_degrees": 180, "probability": 0.3}, seed=0)
    changed = np.abs(aug(x, training=True).numpy() - x).reshape(400, -1).max(1) > 1e-4
    assert 0.2 < changed.mean() < 0.4


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_built_under_a_mixed_policy_it_draws_the_float32_transforms(policy):
    # Every op at probability 0.5 (tf.where of the transformed and the untouched images): built under a
    # mixed global policy, the sub-layers once returned half precision into call's float32 arithmetic.
    ops = {k: dict(v, probability=0.5) for k, v in (("translation", {"max": 0.2}), ("rotation", {"max_degrees": 180}),
                                                     ("elastic", {"alpha": 8.0, "sigma": 2.0}))}
    x, seed = digit_like(8), tf.constant([3, 4], tf.int64)
    ref = build_augmentation(**ops, seed=0)(x, training=True, seed=seed).numpy()
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        aug = build_augmentation(**ops, seed=0)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    out = aug(x, training=True, seed=seed)
    assert out.dtype == aug.compute_dtype == policy.split("_")[1]
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), ref, atol=1e-2)


# ----------------------------------------------------------------------------- seeds, training flag, range


def _two_epochs(seed):
    aug = build_augmentation(**OPS["chain"], seed=seed)
    ds = augment_dataset(tf.data.Dataset.from_tensor_slices(digit_like(24)).batch(4), aug, num_parallel_calls=tf.data.AUTOTUNE)
    return [np.concatenate(list(ds.as_numpy_iterator())) for _ in range(2)]


def test_same_seed_same_batches_under_parallel_map_new_draws_each_epoch():
    a, b = _two_epochs(seed=3), _two_epochs(seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.abs(a[0] - a[1]).max() > 0.1  # the second epoch draws new transforms
    assert np.abs(a[0] - _two_epochs(seed=4)[0]).max() > 0.1


def test_same_seed_same_output_eagerly():
    x = digit_like(4)
    a = build_augmentation(**OPS["chain"], seed=7)(x, training=True)
    b = build_augmentation(**OPS["chain"], seed=7)(x, training=True)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", list(OPS))
def test_eager_and_tf_data_agree_for_the_same_seed(op):
    x = digit_like(5)
    seed = tf.constant([11, 12], tf.int64)
    aug = build_augmentation(**OPS[op], seed=0)
    eager = aug(x, training=True, seed=seed).numpy()
    ds = tf.data.Dataset.from_tensor_slices(x).batch(5).map(lambda b: aug(b, training=True, seed=seed))
    np.testing.assert_allclose(next(iter(ds)).numpy(), eager, atol=1e-6)
    # Without an explicit seed: a fresh layer's first draw is the same eagerly and in tf.data.
    fresh_eager = build_augmentation(**OPS[op], seed=5)(x, training=True).numpy()
    fresh = build_augmentation(**OPS[op], seed=5)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(5).map(lambda b: fresh(b, training=True))
    np.testing.assert_allclose(next(iter(ds)).numpy(), fresh_eager, atol=1e-6)


@pytest.mark.parametrize("op", list(OPS))
def test_identity_when_not_training(op):
    x = np.random.default_rng(0).uniform(size=(3, H, W, 1)).astype("float32")
    aug = build_augmentation(**OPS[op], seed=0)
    np.testing.assert_array_equal(aug(x, training=False), x)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(3).map(lambda b: aug(b, training=False))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), x)
    model = keras.Sequential([keras.Input((H, W, 1)), aug])
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)  # inference mode


@pytest.mark.parametrize("seed", [0, 1])
def test_rotation_by_exactly_90_degrees_is_rot90(seed):
    """Keras' RandomRotation with its range pinned to a quarter turn (factor (0.25, 0.25)),
    counter-clockwise for positive angles, equals np.rot90 on a square image."""
    x = np.random.default_rng(seed).uniform(size=(2, 11, 11, 3)).astype("float32")
    layer = keras.layers.RandomRotation((0.25, 0.25), fill_mode="constant", seed=seed)
    np.testing.assert_allclose(layer(x, training=True), np.rot90(x, k=1, axes=(1, 2)), atol=1e-5)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(2).map(lambda b: layer(b, training=True))
    np.testing.assert_allclose(next(iter(ds)).numpy(), np.rot90(x, k=1, axes=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("fill_mode", ["constant", "reflect", "wrap", "nearest"])
def test_value_range_kept_and_no_nan(fill_mode):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(size=(8, H, W, 1)), np.ones((8, H, W, 1)), np.zeros((8, H, W, 1))]).astype("float32")
    aug = build_augmentation(
        translation={"max": 0.4, "fill_mode": fill_mode},
        rotation={"max_degrees": 180, "fill_mode": fill_mode},
        elastic={"alpha": 34.0, "sigma": 4.0},
        seed=0,
    )
    out = aug(x, training=True).numpy()
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out[16:], 0.0)  # black stays black


# ----------------------------------------------------------------------------- config


def test_all_off_builds_nothing():
    assert build_augmentation() is None
    assert build_augmentation({"max": 0.2, "probability": 0.0}, {"max_degrees": 0}, {"alpha": 0}, seed=0) is None
    assert build_augmentation(elastic={"alpha": 34}, seed=0).operations == ["elastic"]


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(rotation={"max_degrees": 190}), "190"),
        (dict(translation={"max": 0.1, "units": "inch"}), "inch"),
        (dict(translation={"max": 0.1, "fill_mode": "mirror"}), "mirror"),
        (dict(elastic={"alpha": 3, "sigma": 0}), "sigma"),
        (dict(elastic={"alpha": 3, "probability": 1.5}), "1.5"),
        (dict(rotation={"degrees": 10}), "degrees"),
        (dict(flip={"horizontal": "yes"}), "flip.horizontal"),
        (dict(flip={"mirror": True}), "mirror"),
    ],
)
def test_bad_sections_raise_naming_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        build_augmentation(**kwargs, seed=0)


def test_translation_in_pixels_larger_than_image_is_an_error():
    aug = build_augmentation(translation={"max": 20, "units": "pixels"}, seed=0)
    with pytest.raises(ValueError, match="20"):
        aug(digit_like(2), training=True)


def test_an_elastic_sigma_larger_than_the_image_is_an_error_naming_it_before_any_kernel_is_built():
    with pytest.raises(ValueError, match=r"^elastic\.sigma=1e\+09 pixels is larger than the image \(28x28\)"):
        build_augmentation(elastic={"alpha": 8, "sigma": 1e9}, seed=0).build((None, 28, 28, 1))
    build_augmentation(elastic={"alpha": 8, "sigma": 28}, seed=0).build((None, 28, 28, 1))  # at most the side


def test_scale_in_the_chain_is_per_image_with_an_unknown_batch_size():
    """`augment.scale` rescales each image by its own factor inside tf.data (unknown batch size)."""
    import tensorflow as tf

    aug = build_augmentation(scale={"min": 0.4, "max": 1.0}, seed=3)
    assert aug.operations == ["scale"]
    x = np.zeros((6, 28, 28, 1), "float32")
    x[:, 4:24, 4:24] = 1.0  # the same square six times
    ds = augment_dataset(tf.data.Dataset.from_tensor_slices(x).batch(6), aug, seed=3)
    assert ds.element_spec.shape[0] is None
    out = np.asarray(next(iter(ds)))
    areas = (out > 0.5).sum(axis=(1, 2, 3))
    assert len(set(areas.tolist())) >= 4 and areas.max() < 400 + 1  # several factors, all shrinking
    assert build_augmentation(scale={"min": 1.0, "max": 1.0}, seed=0) is None
    with pytest.raises(ValueError, match=r"scale\.min: must be <= scale\.max"):
        build_augmentation(scale={"min": 1.5, "max": 1.2}, seed=0)


# ----------------------------------------------------------------------------- flips and quarter turns


def dihedral_images(img):
    """The 8 images of the square `img` [H, W, C] under quarter turns and mirrors."""
    out = []
    for k in range(4):
        r = np.rot90(img, k)
        out += [r, r[:, ::-1]]
    return out


def test_flips_and_quarter_turns_are_exact_and_draw_all_eight_per_image():
    """Every output is one of the input's 8 exact dihedral images (no resampling), each image draws
    its own, and all 8 occur (in tf.data, batch size unknown)."""
    rng = np.random.RandomState(0)
    x = rng.rand(256, H, W, 3).astype("float32")
    aug = build_augmentation(flip={"horizontal": True, "vertical": True, "rotate90": True}, seed=3)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(64)
    y = np.concatenate(list(augment_dataset(ds, aug).as_numpy_iterator()))
    seen = []
    for a, b in zip(x, y):
        hits = [j for j, t in enumerate(dihedral_images(a)) if np.array_equal(t, b)]
        assert len(hits) == 1
        seen.append(hits[0])
    counts = np.bincount(seen, minlength=8)
    assert counts.min() > 10, counts  # 256 draws of 8 equally likely: about 32 each


@pytest.mark.parametrize("key", ["horizontal", "vertical"])
def test_one_mirror_only_gives_that_mirror_or_the_image(key):
    """`horizontal` mirrors left-right, `vertical` top-bottom, about half the images each; nothing else."""
    x = np.random.RandomState(1).rand(64, H, W, 1).astype("float32")
    y = build_augmentation(flip={key: True}, seed=0)(x, training=True).numpy()
    mirror = (lambda a: a[:, ::-1]) if key == "horizontal" else (lambda a: a[::-1])
    same = [np.array_equal(a, b) for a, b in zip(x, y)]
    flipped = [np.array_equal(mirror(a), b) for a, b in zip(x, y)]
    assert all(s or f for s, f in zip(same, flipped))
    assert 10 < sum(flipped) < 54


def test_quarter_turns_need_square_images():
    aug = build_augmentation(flip={"rotate90": True}, seed=0)
    with pytest.raises(ValueError, match="square"):
        aug(np.zeros((2, 8, 6, 1), "float32"), training=True)


def test_flip_is_a_config_section_and_in_the_preview():
    from data.augment import preview_rows
    from pipelines.config import load_config

    cfg = load_config("pipelines/configs/default.yaml", ["augment.flip.horizontal=true"])
    assert cfg.augment.flip.horizontal and "flip" in cfg.augment.sections()
    assert build_augmentation(**cfg.augment.sections(), seed=0).operations[0] == "flip"
    labels = [label for label, _ in preview_rows(digit_like(2), **cfg.augment.sections())]
    assert labels[1] == "flip\nhorizontal"
