"""models.invariant: orbit averaging and learned canonicalization make any model exactly C4 (orbit: D4)
invariant (models/invariant.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import models
from layers.invariance import Canonicalize, GroupOrbit
from layers.invariance._transforms import _rotate
from models.invariant import invariant
from tests.autodiff import gradients

X = np.random.default_rng(0).random((3, 16, 16, 3)).astype("float32")


def rot90(x, k=1):
    return np.ascontiguousarray(np.rot90(x, k, axes=(1, 2)))


def mirror(x):
    return np.ascontiguousarray(x[:, :, ::-1])


def transpose(x):
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3))


def out(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def cnn(group, **params):
    keras.utils.set_random_seed(1)
    return models.build_model("baseline_cnn", (16, 16, 3), 5, filters=[4, 8], dense_units=8,
                              invariant={"group": group}, **params)


def fit_save_reload_and_check(model, tmp_path, element):
    """A training epoch, save and reload: the same outputs, still invariant under `element`."""
    model.fit(X, np.array([0, 1, 2]), epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(out(again, X), out(model, X), atol=1e-6)
    np.testing.assert_allclose(out(again, element(X)), out(again, X), atol=1e-5)


@pytest.mark.parametrize("group,method", [("C8", "orbit"), ("C4", "canonicalize"), ("C4", "orbit")])
def test_jit_compile_predicts_the_eager_outputs(group, method):
    """TensorFlow's image transform (45-degree turns, the canonicalizer's turn back) has no XLA kernel: `predict`
    under jit_compile=True (Keras' "auto" on a TensorFlow GPU) failed there. Such a model now runs unjitted on
    TensorFlow; JAX compiles it, and a C4 orbit (quarter turns) compiles everywhere."""
    if keras.backend.backend() == "torch":
        pytest.skip("jit_compile is torch.compile there: not what this checks")
    keras.utils.set_random_seed(1)
    model = models.build_model("baseline_cnn", (16, 16, 3), 5, filters=[4, 8], dense_units=8,
                               invariant={"group": group, "method": method})
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)
    assert model.jit_compile == (method == "orbit" and group == "C4" or keras.backend.backend() == "jax")
    if keras.backend.backend() == "tensorflow":  # JAX's jitted predict of these models: the other tests here
        np.testing.assert_allclose(model.predict(X, verbose=0), out(model, X), atol=1e-5)


@pytest.mark.parametrize("group", ["C4", "D4", "C8", "D8"])
def test_exact_invariance_under_the_groups_exact_elements(group):
    model = cnn(group)
    y = out(model, X)
    for k in (1, 2, 3):
        np.testing.assert_allclose(out(model, rot90(X, k)), y, atol=1e-5)
    if group.startswith("D"):
        for t in (mirror, transpose):
            np.testing.assert_allclose(out(model, t(X)), y, atol=1e-5)
    else:  # a cyclic group leaves mirrors alone: a plain CNN's logits change under them
        assert np.abs(out(model, mirror(X)) - y).max() > 1e-3


def test_c8_is_closer_to_45_degree_invariance_than_c4():
    """The 45-degree copies are resampled, so C8 is approximate there; still nearer than C4."""
    disk = X * (np.hypot(*np.mgrid[-7.5:8.5, -7.5:8.5]) < 7)[None, :, :, None].astype("float32")  # no corners lost
    turned = keras.ops.convert_to_numpy(_rotate(disk, 45.0))
    err = {g: np.abs(out(cnn(g), turned) - out(cnn(g), disk)).max() for g in ("C4", "C8")}
    assert err["C8"] < err["C4"]


def test_the_resampled_rotation_turns_as_rot90_does():
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(_rotate(X, 90.0)), rot90(X))  # exact at 90


def test_one_backbone_call_on_the_stacked_copies_and_weights_kept():
    keras.utils.set_random_seed(2)
    backbone = models.build_model("baseline_cnn", (16, 16, 3), 5, filters=[4], dense_units=8)
    calls = []
    backbone_call = backbone.call

    def counting(x, *a, **k):
        calls.append(tuple(x.shape))
        return backbone_call(x, *a, **k)

    wrapped = invariant(backbone, "D4")
    assert wrapped.count_params() == backbone.count_params()  # the backbone's own weights, shared
    backbone.call = counting
    wrapped(X)
    assert calls == [(8 * 3, 16, 16, 3)]
    manual = np.mean([out(backbone, t) for t in (
        X, rot90(X, 1), rot90(X, 2), rot90(X, 3), mirror(X), mirror(rot90(X, 1)), mirror(rot90(X, 2)),
        mirror(rot90(X, 3)))], axis=0)
    np.testing.assert_allclose(out(wrapped, X), manual, atol=1e-5)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv, self.dense = keras.layers.Conv2D(4, 3), keras.layers.Dense(5)

    def call(self, x):
        return self.dense(keras.ops.mean(self.conv(x), axis=(1, 2)))


@pytest.mark.parametrize("backbone", ["subclassed", "sequential"])
def test_a_model_without_an_input_shape_is_wrapped_given_one_and_is_one_error_naming_it_without(backbone):
    keras.utils.set_random_seed(3)
    model = _Subclassed() if backbone == "subclassed" else keras.Sequential([keras.layers.Conv2D(4, 3),
                                                                            keras.layers.GlobalAveragePooling2D(),
                                                                            keras.layers.Dense(5)])
    with pytest.raises(ValueError, match=r"defines no input shape .* pass input_shape=\(height, width, channels\)"):
        invariant(model, "D4")
    for bad in [(16, 16), 16, (16, 16, 0), (16.0, 16, 3)]:
        with pytest.raises(ValueError, match=r"input_shape must be \(height, width, channels\) of positive"):
            invariant(model, "D4", input_shape=bad)
    for given in [np.array([16, 16, 3]), (np.int64(16), 16, 3)]:  # NumPy sizes are sizes
        assert invariant(model, "C4", input_shape=given).input_shape == (None, 16, 16, 3)
    for method in ("orbit", "canonicalize"):
        wrapped = invariant(model, "D4", method, input_shape=(16, 16, 3))
        for element in (rot90, mirror, transpose):
            np.testing.assert_allclose(out(wrapped, element(X)), out(wrapped, X), atol=1e-5)


def test_an_input_shape_that_differs_from_the_models_own_is_one_error():
    model = models.build_model("baseline_cnn", (16, 16, 3), 5, filters=[4], dense_units=8)
    with pytest.raises(ValueError, match=r"input_shape \(32, 32, 3\) differs from the \(16, 16, 3\)"):
        invariant(model, "C4", input_shape=(32, 32, 3))
    assert invariant(model, "C4", input_shape=[16, 16, 3]).input_shape == (None, 16, 16, 3)  # the same: taken


def test_a_keras_applications_backbone_is_wrapped_too():
    keras.utils.set_random_seed(3)
    model = models.build_model("keras_app:MobileNetV2", (32, 32, 3), 4, invariant="C4")
    x = np.random.default_rng(1).random((2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(out(model, rot90(x)), out(model, x), atol=1e-4)


def test_trains_saves_reloads_and_stays_invariant(tmp_path):
    model = cnn("D4")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _, grads = gradients(lambda t: keras.ops.mean(keras.ops.square(model(t, training=True))), [X],
                         model.trainable_weights)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    fit_save_reload_and_check(model, tmp_path, transpose)


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="Keras' SavedModel export takes TensorFlow or JAX")
@pytest.mark.parametrize("method", ["orbit", "canonicalize_marginal", "canonicalize_continuous", "canonicalize_polar"])
def test_exported_savedmodel_is_invariant(tmp_path, method):
    """The export is the inference model (for `marginal`: the one canonical pass, not training's marginal)."""
    from pipelines.export import export_model, predict_savedmodel

    if method == "canonicalize_continuous":  # C4: a quarter turn instead of the mirror below
        model, element = canonical("C4", relaxation="continuous"), rot90
    elif method == "canonicalize_polar":
        model, element = canonical("C8", relaxation="continuous", network="polar", filters=4, kernel_size=3), rot90
    else:
        model, element = cnn("D4") if method == "orbit" else canonical("D4", relaxation="marginal"), mirror
    path = export_model(model, str(tmp_path), "inv", class_names=list("abcde"))
    x = (X * 255).astype("uint8")
    p = predict_savedmodel(path, x)["probabilities"]
    want = keras.ops.convert_to_numpy(keras.ops.softmax(model(x.astype("float32") / 255.0, training=False)))
    np.testing.assert_allclose(p, want, atol=1e-5)
    np.testing.assert_allclose(predict_savedmodel(path, element(x))["probabilities"], p, atol=1e-4)


@pytest.mark.parametrize("params,match", [
    ({"invariant": {"group": "C5"}}, "invariant.group"),
    ({"invariant": {"group": "C4", "method": "frames"}}, "invariant.method"),
    ({"invariant": {"group": "D2", "method": "canonicalize"}}, "invariant.group"),
    ({"invariant": {"group": "C4", "method": "canonicalize", "kernel_size": 4}}, "odd"),
    ({"invariant": {"group": "C4", "method": "canonicalize", "prior_weight": -1}}, "prior_weight"),
    ({"invariant": {"group": "C4", "prior_weight": 1.0}}, "unknown key"),
    ({"invariant": {"group": "C4", "method": "canonicalize", "downscale": 0}}, "downscale"),
    ({"invariant": {"group": "C4", "method": "canonicalize", "relaxation": "gumbel"}}, "invariant.relaxation"),
    ({"invariant": {"group": "C4", "relaxation": "marginal"}}, "unknown key"),
    ({"invariant": {"group": "D4", "method": "canonicalize", "relaxation": "continuous"}}, "a mirror is not an angle"),
    ({"invariant": {"group": "C8", "method": "canonicalize", "pose_weight": 1.0}}, "needs relaxation: continuous"),
    ({"invariant": {"group": "C8", "method": "canonicalize", "relaxation": "continuous", "pose_weight": -1}},
     "pose_weight"),
    ({"invariant": {"group": "C8", "method": "canonicalize", "pose_jitter": 20}}, "pose_jitter: .*continuous"),
    ({"invariant": {"group": "C8", "method": "canonicalize", "relaxation": "continuous", "pose_jitter": 200}},
     "pose_jitter: must be a number of degrees from 0 to 180"),
    ({"invariant": {"groups": "C4"}}, "unknown key"),
    ({"invariant": {"group": "C8", "method": "canonicalize", "relaxation": "continuous", "network": "fourier"}},
     "invariant.network: must be one of"),
    ({"invariant": {"group": "C8", "method": "canonicalize", "network": "polar"}}, "polar .*needs relaxation: "
                                                                                   "continuous"),
    ({"invariant": {"group": "D4", "method": "canonicalize", "relaxation": "continuous", "network": "polar"}},
     "a mirror is not an angle"),
])
def test_bad_invariant_params_are_config_errors(params, match):
    with pytest.raises(ValueError, match=match):
        models.registry.check_params("baseline_cnn", params)


@pytest.mark.parametrize("group", ["C4", "C8"])
def test_inference_turns_each_image_once_as_training_s_forward_pass_does(group):
    """Inference resamples each image by its own turn back; training's forward pass takes the same image out
    of all N turned copies (for its straight-through gradient)."""
    keras.utils.set_random_seed(7)
    c = Canonicalize(group)
    fast = keras.ops.convert_to_numpy(c(X, training=False))
    full = keras.ops.convert_to_numpy(c(X, training=True))
    np.testing.assert_allclose(fast, full, atol=1e-6)


def test_the_canonicalizer_pools_by_blocks_that_tile_the_image():
    with pytest.raises(ValueError, match="multiple"):
        Canonicalize("C4", downscale=3)(X)
    with pytest.raises(ValueError, match=r"a 1x1 image of the 16x16 input; it needs at least 2x2 \(the largest "
                                         r"downscale that fits: 8\)"):
        Canonicalize("C4", downscale=16)(X)  # one pixel has no orientation: it named the identity for every image
    keras.utils.set_random_seed(6)
    c = Canonicalize("C4", downscale=4)  # 16 -> 4x4 blocks: still exactly equivariant
    s = keras.ops.convert_to_numpy(c.scores(X))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(c.scores(rot90(X))), np.roll(s, 1, axis=-1), atol=1e-5)


def test_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        GroupOrbit("C4")(np.zeros((1, 8, 6, 1), "float32"))


# ----------------------------------------------------------------------------- canonicalization


def canonical(group, **opts):
    keras.utils.set_random_seed(4)
    return models.build_model("baseline_cnn", (16, 16, 3), 5, filters=[4, 8], dense_units=8,
                              invariant={"group": group, "method": "canonicalize", **opts})


@pytest.mark.parametrize("group", ["C4", "C8"])
def test_the_canonicalizer_is_equivariant_turning_the_input_rolls_its_scores(group):
    keras.utils.set_random_seed(5)
    c = Canonicalize(group)
    n = int(group[1:])
    s = keras.ops.convert_to_numpy(c.scores(X))
    for k in (1, 2, 3):  # a quarter turn is n/4 steps of the group
        got = keras.ops.convert_to_numpy(c.scores(rot90(X, k)))
        np.testing.assert_allclose(got, np.roll(s, k * n // 4, axis=-1), atol=1e-5)
    pred = keras.ops.convert_to_numpy(c.orientation(rot90(X, 1)))
    np.testing.assert_array_equal(pred, (s.argmax(-1) + n // 4) % n)


@pytest.mark.parametrize("relaxation", ["continuous", "straight_through"])
def test_under_mixed_float16_the_canonicalizer_scores_in_float32_and_the_model_stays_invariant(
        mixed_float16, relaxation):
    """Before: the scoring network computed in float16, whose rounding moved the continuous angle between an image
    and its turned copy (logits changed by 3% of their size under quarter turns)."""
    model = canonical("C4", relaxation=relaxation)
    c = next(l for l in model.layers if isinstance(l, Canonicalize))
    assert c.compute_dtype == "float16" and c.lift.compute_dtype == c.score.compute_dtype == "float32"
    x = np.random.default_rng(8).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
    y = out(model, x)
    for k in (1, 2, 3):
        assert np.abs(out(model, rot90(x, k)) - y).max() <= 1e-2 * np.abs(y).max(), k  # float16 scores: 3.5e-2


@pytest.mark.parametrize("group", ["C4", "C8"])
def test_canonicalized_model_is_exactly_invariant_to_quarter_turns(group):
    model = canonical(group)
    y = out(model, X)
    for k in (1, 2, 3):
        np.testing.assert_allclose(out(model, rot90(X, k)), y, atol=1e-5)
    assert np.abs(out(model, mirror(X)) - y).max() > 1e-4  # mirrors are not in C_N


D4_ELEMENTS = [lambda x: x, lambda x: rot90(x, 1), lambda x: rot90(x, 2), lambda x: rot90(x, 3),
               mirror, lambda x: rot90(mirror(x), 1), lambda x: rot90(mirror(x), 2), lambda x: rot90(mirror(x), 3)]


@pytest.mark.parametrize("group", ["D4", "D8"])
def test_the_dihedral_canonicalizer_permutes_its_scores_as_the_group_acts(group):
    from layers.group._groups import parse_group

    keras.utils.set_random_seed(6)
    c, grp = Canonicalize(group), parse_group(group)
    s = keras.ops.convert_to_numpy(c.scores(X))
    assert s.shape == (3, grp.order)
    step = grp.rotations // 4
    for i, t in enumerate(D4_ELEMENTS):  # element (m, r): mirror, then r quarter turns
        g = grp.index(i // 4, (i % 4) * step)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(c.scores(t(X))), s[:, grp.permutation(g)], atol=1e-5)
        pred = keras.ops.convert_to_numpy(c.orientation(t(X)))
        np.testing.assert_array_equal(pred, [grp.mul(g, int(h)) for h in s.argmax(-1)])


@pytest.mark.parametrize("group", ["D4", "D8"])
def test_dihedral_canonicalized_model_is_exactly_invariant_to_quarter_turns_mirrors_and_transposes(group, tmp_path):
    model = canonical(group)
    y = out(model, X)
    for t in D4_ELEMENTS[1:] + [transpose]:
        np.testing.assert_allclose(out(model, t(X)), y, atol=1e-5)
    if group == "D4":
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        fit_save_reload_and_check(model, tmp_path, transpose)


def test_canonicalization_trains_both_networks_with_the_prior_and_reloads(tmp_path):
    model = canonical("C4", prior_weight=0.5)
    canon = next(l for l in model.layers if isinstance(l, Canonicalize))
    model(X, training=True)
    assert len(model.losses) == 1  # the prior, -log p(identity), weighted
    _, grads = gradients(lambda t: keras.ops.mean(keras.ops.square(model(t, training=True))), [X],
                         model.trainable_weights)
    by_name = {w.path: g for w, g in zip(model.trainable_weights, grads)}
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    assert any(np.abs(g).max() > 0 for p, g in by_name.items() if "canonicalize" in p)  # straight-through
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fit_save_reload_and_check(model, tmp_path, rot90)
    assert canon.count_params() < model.count_params()


def test_the_evaluation_reports_how_often_the_canonicalizer_names_the_turn():
    from models.invariant import orientation_accuracy
    from pipelines.config import EvaluateConfig
    from pipelines.evaluation import evaluate, keras_predictor

    model = canonical("C4")
    canon = next(l for l in model.layers if isinstance(l, Canonicalize))
    upright = keras.ops.convert_to_numpy(canon(X))  # images the canonicalizer itself calls upright
    assert orientation_accuracy(model, upright) == 1.0  # exact: each turn k is named k
    assert orientation_accuracy(cnn("C4"), X) is None
    d4 = canonical("D4")
    canon_d4 = next(l for l in d4.layers if isinstance(l, Canonicalize))
    assert orientation_accuracy(d4, keras.ops.convert_to_numpy(canon_d4(X))) == 1.0  # each of the 8 named
    x8 = (X * 255).astype("uint8")
    ev = evaluate(keras_predictor(model), x8, np.array([0, 1, 2]), EvaluateConfig(max_images=3, rotation_step=90),
                  model=model)
    assert 0.0 <= ev.metrics()["canonical_orientation_acc"] <= 1.0
    assert "canonicalizer: turns (and mirrors) of test images it names" in ev.table("t")


def test_a_wrapped_model_loads_in_a_fresh_process_after_import_layers_alone(tmp_path):
    """Orbit, canonicalize and the input pyramid's confident pooling are layers of `layers/`: `import layers`
    registers them (as for every other layer), and the reloaded models answer as the saved ones did."""
    import os
    import subprocess
    import sys

    keras.utils.set_random_seed(3)
    pyramid = models.build_model("baseline_cnn", (16, 16, 3), 5, filters=[4, 8], dense_units=8,
                                 pyramid_scales=[1.0, 0.5], pyramid_pool="confident")
    saved = {"canonical": canonical("C4"), "orbit": cnn("D4"), "pyramid": pyramid}
    for name, model in saved.items():
        model.save(tmp_path / f"{name}.keras")
    np.save(tmp_path / "x.npy", X)
    code = ("import os, sys, keras, numpy as np, layers\n"
            f"os.chdir({str(tmp_path)!r})\n"
            "x = np.load('x.npy')\n"
            f"for name in {sorted(saved)!r}:\n"
            "    m = keras.saving.load_model(name + '.keras')\n"
            "    np.save(name + '_out.npy', keras.ops.convert_to_numpy(m(x, training=False)))\n"
            "print(sorted(n for n in sys.modules if n == 'models' or n.startswith(('models.', 'pipelines'))))\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": keras.backend.backend(),
                               "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"  # neither models nor the jobs were imported
    for name, model in saved.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}_out.npy"), out(model, X), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- canonicalization, marginal training


def plain_backbone(classes=5):
    """No batch norm or dropout: the same function in training and at inference, so that the references hold."""
    keras.utils.set_random_seed(8)
    return keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(6, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes)])


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_marginal_training_output_is_the_exact_marginal_over_the_quarter_turns():
    """In training the output is log sum_k p(k | x) q(y | x turned back by k), q the backbone's softmax on the
    copy: checked against np.rot90 copies; at inference, the backbone's logits on the best element's copy."""
    from models.invariant import canonicalizer

    backbone = plain_backbone()
    model = invariant(backbone, "C4", "canonicalize", relaxation="marginal")
    canon = canonicalizer(model)
    log_p = log_softmax(keras.ops.convert_to_numpy(canon.scores(X)))  # [B, 4]
    log_q = np.stack([log_softmax(keras.ops.convert_to_numpy(backbone(rot90(X, -k)))) for k in range(4)], 1)
    want = np.log(np.exp(log_p[:, :, None] + log_q).sum(1))  # [B, K]
    got = keras.ops.convert_to_numpy(model(X, training=True))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, atol=1e-5)  # log-probabilities: softmax leaves them
    best = log_p.argmax(-1)
    canonical = np.stack([rot90(X[i : i + 1], -int(k))[0] for i, k in enumerate(best)])
    np.testing.assert_allclose(out(model, X), keras.ops.convert_to_numpy(backbone(canonical)), atol=1e-5)


@pytest.mark.parametrize("group, elements", [("C4", [lambda x: rot90(x, k) for k in (1, 2, 3)]),
                                             ("D4", D4_ELEMENTS[1:] + [transpose])])
def test_marginal_canonicalization_is_exactly_invariant_in_training_and_at_inference(group, elements):
    model = invariant(plain_backbone(), group, "canonicalize", relaxation="marginal")
    train, infer = keras.ops.convert_to_numpy(model(X, training=True)), out(model, X)
    for t in elements:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(t(X), training=True)), train, atol=1e-5)
        np.testing.assert_allclose(out(model, t(X)), infer, atol=1e-5)


def assert_every_canonicalizer_weight_learns(model, log_probs):
    """The training loss, -log_probs(model(x)) at the labels, reaches every weight of the canonicalizer, except
    the score's bias: it adds one constant to all elements' logits."""
    labels = keras.ops.convert_to_tensor(np.array([0, 1, 2])[:, None])

    def nll(t):
        return -keras.ops.mean(keras.ops.take_along_axis(log_probs(model(t, training=True)), labels, 1))

    _, grads = gradients(nll, [X], model.trainable_weights)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    canon_grads = {w.path: g for w, g in zip(model.trainable_weights, grads)
                   if "canonicalize" in w.path and not w.path.endswith("score/bias")}
    assert len(canon_grads) >= 5 and all(np.abs(g).max() > 1e-6 for g in canon_grads.values()), canon_grads.keys()


def test_marginal_training_gives_the_canonicalizer_its_exact_gradient_trains_and_reloads(tmp_path):
    model = canonical("C8", relaxation="marginal", prior_weight=0.1)
    canon = next(l for l in model.layers if isinstance(l, Canonicalize))
    assert canon.relaxation == "marginal"
    model(X, training=True)
    assert len(model.losses) == 1  # the prior still applies
    assert_every_canonicalizer_weight_learns(model, lambda z: z)  # the output: the marginal's log-probabilities
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fit_save_reload_and_check(model, tmp_path, rot90)
    again = keras.saving.load_model(str(tmp_path / "m.keras"))  # still trains on the marginal
    assert next(l for l in again.layers if isinstance(l, Canonicalize)).relaxation == "marginal"
    assert again.layers[-1].__class__.__name__ == "CanonicalMarginal"


# ----------------------------------------------------------------------------- canonicalization, continuous angle


@pytest.mark.parametrize("degrees", [0.0, 30.0, 45.0, 90.0, 200.0, -75.0])
def test_the_differentiable_turn_resamples_as_the_affine_transform_does(degrees):
    """`_turn_by` (per-image angles, differentiable in them) against `ops.image.affine_transform`'s rotation;
    a quarter turn is np.rot90 exactly. `_turn_by_op` (inference's, per-image transform rows) agrees."""
    from layers.invariance._transforms import _turn_by, _turn_by_op

    t = np.radians(degrees)
    n = len(X)
    got = keras.ops.convert_to_numpy(_turn_by(X, np.full(n, np.cos(t), "float32"), np.full(n, np.sin(t), "float32")))
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(_rotate(X, degrees)), atol=1e-5)
    by_op = _turn_by_op(X, np.full(n, np.cos(t), "float32"), np.full(n, np.sin(t), "float32"))  # inference's
    np.testing.assert_allclose(keras.ops.convert_to_numpy(by_op), got, atol=1e-5)
    if degrees == 90.0:
        np.testing.assert_array_equal(got, rot90(X))
    assert degrees == 0.0 or np.abs(got - X).max() > 0.1


def test_the_differentiable_turn_has_the_angle_s_finite_difference_gradient():
    from layers.invariance._transforms import _turn_by

    i, j = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")  # smooth images: small kinks at pixel edges
    x = np.stack([np.sin(0.4 * i + 0.1 * c) * np.cos(0.3 * j - c) for c in range(6)]).reshape(2, 3, 16, 16)
    x = x.transpose(0, 2, 3, 1)
    x, w = x.astype("float32"), np.random.default_rng(3).random(x.shape).astype("float32")
    t0 = np.array([0.3, -2.0], "float32")

    def loss(t):
        return keras.ops.sum(keras.ops.multiply(_turn_by(x, keras.ops.cos(t), keras.ops.sin(t)), w))

    (g,), _ = gradients(loss, [t0])
    f = lambda t: float(keras.ops.convert_to_numpy(loss(keras.ops.convert_to_tensor(t))))  # noqa: E731
    for i in range(2):
        e = np.zeros(2, "float32")
        e[i] = 1e-3  # small enough not to straddle many of bilinear sampling's kinks
        fd = (f(t0 + e) - f(t0 - e)) / 2e-3
        np.testing.assert_allclose(g[i], fd, rtol=0.02)
        assert abs(g[i]) > 0.1


@pytest.mark.parametrize("group", ["C4", "C8"])
def test_the_continuous_pose_turns_with_the_image_and_the_model_is_invariant_to_quarter_turns(group):
    """A quarter turn rolls the scores and adds exactly 90 degrees to the pose; the canonical image, and so the
    logits, stay (to the angle's float rounding). Training (the differentiable gathers) and inference (the
    resampling op) give the same logits."""
    from models.invariant import canonicalizer

    model = invariant(plain_backbone(), group, "canonicalize", relaxation="continuous")
    canon = canonicalizer(model)
    n = int(group[1:])

    def degrees(x):
        c, s = canon.pose(canon.scores(x))
        return np.degrees(np.arctan2(keras.ops.convert_to_numpy(s), keras.ops.convert_to_numpy(c)))

    a, y = degrees(X), out(model, X)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(X, training=True)), y, atol=1e-5)
    assert np.abs(a - np.round(a / (360 / n)) * (360 / n)).max() > 0.5  # a continuous angle, not an element's
    for k in (1, 2, 3):
        turned = (degrees(rot90(X, k)) - a - 90 * k + 180) % 360 - 180
        np.testing.assert_allclose(turned, 0.0, atol=1e-2)
        np.testing.assert_allclose(out(model, rot90(X, k)), y, atol=1e-4)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(canon.orientation(rot90(X, k))),
                                      (keras.ops.convert_to_numpy(canon.orientation(X)) + k * n // 4) % n)
    assert np.abs(out(model, mirror(X)) - y).max() > 1e-4  # mirrors are not in C_N


def test_continuous_canonicalization_learns_its_angle_from_the_loss_trains_and_reloads(tmp_path):
    model = canonical("C8", relaxation="continuous")
    assert_every_canonicalizer_weight_learns(model, lambda z: keras.ops.log_softmax(z, axis=-1))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fit_save_reload_and_check(model, tmp_path, rot90)
    again = keras.saving.load_model(str(tmp_path / "m.keras"))
    assert next(l for l in again.layers if isinstance(l, Canonicalize)).relaxation == "continuous"


def test_the_pose_consistency_loss_is_zero_at_quarter_turns_and_training_lowers_it(tmp_path):
    """`pose_weight`: 1 - cos(pose(x turned by a) - pose(x) - a). Exactly 0 at quarter turns (the scoring network
    is equivariant there), not at other angles before training; fitting on it (with the labels' loss) lowers it
    at angles it never drew, and it trains only in training."""
    from models.invariant import canonicalizer

    model = canonical("C8", relaxation="continuous", pose_weight=1.0)
    canon = canonicalizer(model)
    rng = np.random.default_rng(0)
    x = rng.random((32, 16, 16, 3)).astype("float32")
    x[:, :, 8:] *= np.linspace(0.2, 1.0, 8)[None, None, :, None]  # a direction to find: brighter to the right
    x = keras.ops.convert_to_tensor(x)

    def inconsistency(a):
        cos, sin = canon.pose(canon.scores(x))
        return float(keras.ops.convert_to_numpy(canon.pose_inconsistency(x, cos, sin, np.asarray(a, "float32"))))

    for k in (1, 2, 3):
        assert inconsistency(np.full(32, k * np.pi / 2)) < 1e-5
    angles = rng.uniform(0.2, 1.3, 32)  # away from the quarter turns
    before = inconsistency(angles)
    assert before > 1e-3
    model(x, training=True)
    assert len(model.losses) == 1
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.arange(32) % 5, epochs=30, batch_size=32, verbose=0)
    assert inconsistency(angles) < 0.5 * before
    model(x, training=False)
    assert len(model.losses) == 0
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert canonicalizer(keras.saving.load_model(path)).pose_weight == 1.0


def test_pose_jitter_turns_training_images_back_to_within_the_jitter_of_their_pose_and_leaves_inference_alone(
        tmp_path):
    """`pose_jitter: J`: in training each image is turned back by its angle minus d, d uniform in [-J, J] and
    drawn per image; at inference the same canonical image as without it (the model stays invariant)."""
    from layers.invariance._transforms import _turn_by
    from models.invariant import canonicalizer

    jitter = 30.0
    model = canonical("C8", relaxation="continuous", pose_jitter=jitter)
    plain = canonical("C8", relaxation="continuous")  # no jitter, given the same weights
    plain.set_weights(model.get_weights())
    canon, canon0 = canonicalizer(model), canonicalizer(plain)
    x = np.repeat(np.random.default_rng(3).random((1, 16, 16, 3)).astype("float32"), 64, axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(canon(x)), keras.ops.convert_to_numpy(canon0(x)),
                               atol=1e-6)  # inference: no jitter
    cos, sin = (float(keras.ops.convert_to_numpy(v)[0]) for v in canon.pose(canon.scores(x[:1])))
    theta = np.arctan2(sin, cos)
    trained = keras.ops.convert_to_numpy(canon(x, training=True))  # 64 copies of one image, 64 draws of d
    grid = np.radians(np.arange(-45.0, 45.01, 0.5))  # candidate jitters, beyond the range on both sides
    candidates = keras.ops.convert_to_numpy(_turn_by(x[:1].repeat(len(grid), 0), np.cos(theta - grid).astype(
        "float32"), -np.sin(theta - grid).astype("float32")))
    errors = np.abs(trained[:, None] - candidates[None]).max(axis=(2, 3, 4))  # [copy, candidate]
    best = np.degrees(grid[errors.argmin(axis=1)])
    assert errors.min(axis=1).max() < 0.05  # every copy is the image turned by theta - d for one d
    assert np.abs(best).max() <= jitter + 0.5 and best.std() > jitter / 3  # spread over [-J, J], not beyond
    assert np.abs(trained - keras.ops.convert_to_numpy(canon0(x, training=True))).max() > 0.05
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:8], np.arange(8) % 5, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert canonicalizer(keras.saving.load_model(path)).pose_jitter == jitter


def test_the_polar_grid_reads_a_linear_image_exactly():
    """`_polar_table`: its bilinear reads of an image linear in row and column give the linear function at the
    grid's points (angle 360 j / 32 counter-clockwise, radius i + 1/2 from the centre), so indices and weights
    are right."""
    from layers.invariance._options import POLAR_ANGLES
    from layers.invariance._transforms import _polar_table

    side = 16
    index, weight = _polar_table(side, side // 2, POLAR_ANGLES)
    rows, cols = np.mgrid[:side, :side]
    image = (3.0 * rows - 2.0 * cols + 5.0).reshape(-1)
    got = (image[index] * weight).sum(-1)
    t = 2 * np.pi * np.arange(POLAR_ANGLES)[:, None] / POLAR_ANGLES
    r = np.arange(side // 2)[None, :] + 0.5
    centre = (side - 1) / 2
    np.testing.assert_allclose(got, 3.0 * (centre - r * np.sin(t)) - 2.0 * (centre + r * np.cos(t)) + 5.0,
                               atol=1e-4)
    np.testing.assert_allclose(weight.sum(-1), 1.0, atol=1e-6)  # every read inside the image


def smooth_images(n=3, side=16):
    """Blobs that fade to zero before the border: turning them by any angle loses nothing to the corners."""
    rng = np.random.default_rng(2)
    rows, cols = np.mgrid[:side, :side] - (side - 1) / 2
    out = np.zeros((n, side, side, 3), "float32")
    for b in range(n):
        for _ in range(4):
            cy, cx = rng.uniform(-3, 3, 2)
            out[b, :, :, rng.integers(3)] += np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / 4.0)
    return out


def test_the_polar_canonicalizer_rolls_its_angle_scores_with_every_turn_of_its_grid():
    """network: polar: a quarter turn rolls the 32 angle logits by 8 (to float rounding); a turn by one step of
    11.25 degrees, which the group CNN is not built for, rolls them by 1 up to the bilinear reads; the pose turns
    with the image and the wrapped model is exactly invariant to quarter turns."""
    from models.invariant import canonicalizer

    model = canonical("C8", relaxation="continuous", network="polar", filters=6, kernel_size=3, downscale=1)
    canon = canonicalizer(model)
    s = keras.ops.convert_to_numpy(canon.scores(X))
    assert s.shape == (3, 32)
    y = out(model, X)
    for k in (1, 2, 3):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(canon.scores(rot90(X, k))), np.roll(s, 8 * k, -1),
                                   atol=1e-5)
        np.testing.assert_allclose(out(model, rot90(X, k)), y, atol=1e-4)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(canon.orientation(rot90(X, k))),
                                      (keras.ops.convert_to_numpy(canon.orientation(X)) + 2 * k) % 8)
    x = smooth_images()
    s = keras.ops.convert_to_numpy(canon.scores(x))
    turned = keras.ops.convert_to_numpy(canon.scores(keras.ops.convert_to_numpy(_rotate(x, 11.25))))
    off = [np.abs(turned - np.roll(s, r, -1)).mean() for r in range(32)]
    assert int(np.argmin(off)) == 1 and off[1] < 0.5 * min(off[0], off[2])


def test_polar_canonicalization_learns_its_angle_from_the_loss_trains_and_reloads(tmp_path):
    model = canonical("C8", relaxation="continuous", network="polar", filters=4, kernel_size=3, pose_weight=1.0)
    assert_every_canonicalizer_weight_learns(model, lambda z: keras.ops.log_softmax(z, axis=-1))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, np.array([0, 1, 2]), epochs=1, verbose=0)
    model.save(str(tmp_path / "m.keras"))
    again = keras.saving.load_model(str(tmp_path / "m.keras"))
    np.testing.assert_allclose(out(again, X), out(model, X), atol=1e-6)
    # invariant to the float rounding of the angle, which the norm of the scores' Fourier coefficient scales:
    # after one epoch on 3 noise images it is small for some (on JAX, 5% of a logit for one of them)
    np.testing.assert_allclose(out(again, rot90(X)), out(again, X), atol=1e-3)
    canon = next(la for la in again.layers if isinstance(la, Canonicalize))
    assert canon.network == "polar" and not hasattr(canon, "lift")
