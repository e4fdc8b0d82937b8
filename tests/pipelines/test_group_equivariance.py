"""The evaluation's equivariance section for C_N / D_N group convolutions (models/equivariance.py, family `group`).

A gcnn with N = 4 is exactly equivariant at 90 degrees (rotate the input,
rotate the maps and roll the orientation axis by one); N = 8 is measured at
45 and 90 degrees only (the multiples of 360/N), approximately at 45. A model
without group convolutions has no such section; a lifting convolution whose
N filter copies are not rotations of each other shows a large error.
"""

import json
import os

import keras
import mlflow
import numpy as np
import pytest

import models
from models.equivariance import (Element, elements, equivariance, equivariance_error, equivariance_errors,
                                 equivariant_layers, promised_angles)
from pipelines import evaluation, plots
from pipelines.config import EvaluateConfig

SMALL = dict(max_images=8, rotation_step=90, shift_range=1, elastic_alphas=[0.0], scale_factors=[1.0],
             equivariance_angles=[15.0, 45.0, 90.0], equivariance_images=2)
LAYERS = ["stage0_gconv0", "stage0_gconv1", "stage1_gconv0", "stage1_gconv1"]


def gcnn(n=4):
    keras.utils.set_random_seed(0)
    return models.build_model("gcnn", (12, 12, 1), 3, filters=[2, 3], kernel_size=3, group_order=n)


def data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 12, 12, 1), dtype=np.uint8), rng.integers(0, 3, n)


@pytest.fixture
def store(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    yield
    mlflow.set_tracking_uri(previous)


def test_promised_angles_are_the_multiples_of_360_over_n_plus_the_generator():
    assert promised_angles(4, [15, 45, 90]) == [90.0]
    assert promised_angles(8, [15, 45, 90, 180]) == [45.0, 90.0, 180.0]
    assert promised_angles(16, [15, 45, 90]) == [22.5, 45.0, 90.0]
    assert promised_angles(4, []) == [90.0]
    assert promised_angles(1, [90]) == []  # C_1 has no rotation
    with pytest.raises(ValueError, match="got 0"):
        promised_angles(0)


def test_c4_gcnn_section_is_exact_at_90_degrees_reported_logged_and_plotted(store, tmp_path):
    model = gcnn(4)
    x, y = data()
    ev = evaluation.evaluate(evaluation.keras_predictor(model, 8), x, y, EvaluateConfig(**SMALL), model=model)
    assert list(ev.equivariance) == ["group"]  # no harmonic or scale layers
    assert list(ev.equivariance["group"]) == LAYERS  # the lifting and the three group convolutions
    for errs in ev.equivariance["group"].values():
        assert list(errs) == ["rot90"]  # 15 and 45 degrees are not promised by C_4
        assert errs["rot90"] < 1e-5
    m = ev.metrics()
    assert m["equiv_err_group_mean_rot90"] < 1e-5
    assert {k for k in m if k.startswith("equiv_err_")} == {
        *(f"equiv_err_group_{name}_rot90" for name in LAYERS), "equiv_err_group_mean_rot90"}
    rows = dict(ev.rows())
    assert rows["group equivariance error stage0_gconv0"].endswith("@ rot90")

    files = evaluation.write_report(ev, str(tmp_path / "report"), "gcnn", model=model)
    names = {os.path.basename(f) for f in files}
    assert {"group_equivariance.png", "filters.png"} <= names and "harmonic_equivariance.png" not in names
    assert "| group equivariance error stage1_gconv1 |" in (tmp_path / "report" / "invariance.md").read_text()
    with open(tmp_path / "report" / "invariance.json") as fh:
        assert json.load(fh)["equiv_err_group_mean_rot90"] == pytest.approx(m["equiv_err_group_mean_rot90"])
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())).info.run_id
    evaluation.log_to_run(run_id, ev, files)
    logged = client.get_run(run_id).data.metrics
    assert logged["equiv_err_group_stage0_gconv0_rot90"] == pytest.approx(m["equiv_err_group_stage0_gconv0_rot90"])


def test_c4_filter_picture_shows_the_rotated_copies():
    title, rows = plots.first_filters(gcnn(4))
    assert "stage0_gconv0 (LiftingConv2D)" in title
    assert [label for label, _ in rows] == ["0 deg", "90 deg", "180 deg", "270 deg"]
    for r in range(4):  # orientation r: the filters rotated by r quarter turns, counter-clockwise
        np.testing.assert_allclose(rows[r][1], np.rot90(rows[0][1], r, axes=(0, 1)), atol=1e-6)


def test_c8_is_measured_at_45_and_90_degrees_only():
    model = gcnn(8)
    x = np.random.default_rng(1).uniform(0, 1, (2, 12, 12, 1)).astype("float32")
    errs = equivariance(model, x, [15.0, 45.0, 90.0])["group"]
    assert list(errs) == LAYERS
    for e in errs.values():
        assert list(e) == ["rot45", "rot90"]
        assert e["rot90"] < 1e-5
        assert 1e-4 < e["rot45"] < 1.0  # the pixel grid's interpolation: approximate only
    assert [(e.label, e.exact) for e in elements(model.get_layer("stage0_gconv0"), [45.0, 90.0])] == [
        ("rot45", False), ("rot90", True)]


def test_a_layer_whose_input_is_zero_at_the_centre_is_left_out_not_reported_exact():
    """A layer fed maps that are zero where it is measured (dead units, a dark centre; here the input is non-zero
    in its border row only, which the measure's disk cuts away) has no error to measure. Before: 0.00e+00 at every
    element, 45 degrees included. An output that is zero on the input but not on its transformed copy is an
    error, not a blank."""
    from layers.group.lifting_conv import LiftingConv2D

    keras.utils.set_random_seed(0)
    layer = LiftingConv2D(4, 3, group="D8", use_bias=False)
    x = np.zeros((2, 16, 16, 1), "float32")
    x[:, 0] = np.random.default_rng(1).uniform(0.5, 1, (2, 16, 1))
    layer.build(x.shape)
    assert equivariance_errors(layer, x, elements(layer, [45.0, 90.0])) == {}
    x[:, 8, 8] = 1.0  # one pixel at the centre: measured again, exact at 90 degrees and not at 45
    errs = equivariance_errors(layer, x, elements(layer, [45.0, 90.0]))
    assert errs["rot90"] < 1e-6 and errs["rot45"] > 1e-3, errs

    class LeftSided(LiftingConv2D):  # zero unless the input's right half outweighs its left: not equivariant
        def call(self, inputs):
            y = super().call(inputs)
            w = inputs.shape[2] // 2
            gap = keras.ops.mean(inputs[:, :, w:]) - keras.ops.mean(inputs[:, :, :w])
            return keras.ops.zeros_like(y) + keras.ops.relu(gap)

    sided = LeftSided(4, 3, group="D8", use_bias=False)
    blob = np.zeros((2, 16, 16, 1), "float32")
    blob[:, 6:10, 3:7] = 1.0  # on the left: zero out; mirrored to the right: not
    sided.build(blob.shape)
    errs = equivariance_errors(sided, blob, elements(sided, [90.0]))
    assert errs["flip"] == pytest.approx(1.0) and min(errs.values()) >= 1.0 - 1e-6, errs  # was {} (hidden)


def test_a_layer_whose_maps_are_too_small_to_measure_is_left_out_not_reported_exact():
    """12 -> 6 -> 3, then 4x4 maps at 16 px: the central disk (1 px in from the border) holds no pixel of a 4x4
    map. Before: its errors read 0.00e+00, exact even at 45 degrees, and pulled the logged mean down."""
    keras.utils.set_random_seed(0)
    model = models.build_model("gcnn", (16, 16, 1), 3, filters=[2, 2, 3], kernel_size=3, group_order=8)
    x = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 1)).astype("float32")
    errs = equivariance(model, x, [45.0, 90.0])["group"]
    assert errs["stage2_gconv0"] == {} and errs["stage2_gconv1"] == {}  # 4x4 maps
    assert all(1e-4 < errs[n]["rot45"] < 1.0 for n in ("stage0_gconv0", "stage1_gconv1"))  # 16x16, 8x8
    ev = evaluation.Evaluation(n_images=2, rotation={0.0: 1.0}, shift_consistency=1.0, circular_consistency=1.0,
                               shift_range=1, elastic={}, elastic_sigma=4.0, equivariance={"group": errs})
    m = ev.metrics()
    assert not any(k.startswith("equiv_err_group_stage2") for k in m)
    measured = [e["rot45"] for e in errs.values() if e]
    assert m["equiv_err_group_mean_rot45"] == pytest.approx(np.mean(measured))
    assert ("group equivariance error stage2_gconv0", evaluation.UNMEASURED) in ev.rows()
    keras.utils.set_random_seed(0)
    restricted = models.build_model("gcnn", (16, 16, 1), 3, filters=[2, 2, 3], kernel_size=3, group="D4",
                                    restrict_to="trivial", restrict_stage=1)
    errs = equivariance(restricted, x, [90.0])["group"]
    assert "stage0_gconv0" in errs and not any(n.startswith(("stage1", "stage2")) for n in errs)  # nothing promised


def test_a_model_without_group_convolutions_has_no_section():
    model = models.build_model("baseline_cnn", (12, 12, 1), 3)
    assert equivariant_layers(model) == []
    x, y = data()
    ev = evaluation.evaluate(evaluation.keras_predictor(model, 8), x, y, EvaluateConfig(**SMALL), model=model)
    assert ev.equivariance == {}
    assert not any(k.startswith("equiv_err") for k in ev.metrics())
    assert not any("equivariance error" in k for k, _ in ev.rows())


def test_a_lifting_convolution_with_unrotated_filter_copies_is_caught():
    model = gcnn(4)
    x = np.random.default_rng(2).uniform(0, 1, (2, 12, 12, 1)).astype("float32")
    lift = model.get_layer("stage0_gconv0")
    # each orientation gets its own random filter basis instead of the rotated copies of one
    lift._basis = np.random.default_rng(3).standard_normal(lift._basis.shape).astype("float32")
    errs = equivariance(model, x, [90.0])["group"]
    assert errs["stage0_gconv0"]["rot90"] > 0.3
    # the later layers, each fed what it now receives, keep their promise: the figure points at the culprit
    assert all(errs[name]["rot90"] < 1e-5 for name in LAYERS[1:])


def test_group_conv_input_must_have_the_layers_orientations():
    layer = gcnn(4).get_layer("stage0_gconv1")
    with pytest.raises(ValueError, match="orientation axis has 8 entries"):
        equivariance_error(layer, np.zeros((1, 12, 12, 8, 2), "float32"), Element("rot90", 1, True))


def test_d4_gcnn_is_mirror_invariant_in_the_evaluation_and_its_mirror_errors_are_exact():
    keras.utils.set_random_seed(0)
    model = models.build_model("gcnn", (12, 12, 1), 3, filters=[2, 3], kernel_size=3, group="D4")
    x, y = data()
    ev = evaluation.evaluate(evaluation.keras_predictor(model, 8), x, y, EvaluateConfig(**SMALL), model=model)
    assert list(ev.mirror) == ["flip_lr", "flip_ud", "transpose"]
    assert all(v == ev.rotation[0] for v in ev.mirror.values())  # same predictions, same accuracy
    assert all(v < 1e-5 for v in ev.mirror_logit_change.values())
    assert list(ev.equivariance["group"]) == LAYERS
    for errs in ev.equivariance["group"].values():
        assert list(errs) == ["rot90", "flip", "flip_rot90"] and max(errs.values()) < 1e-5
    m = ev.metrics()
    assert m["equiv_err_group_mean_flip"] < 1e-5 and m["equiv_err_group_stage1_gconv1_flip_rot90"] < 1e-5
    assert {"mirror_acc_lr", "mirror_acc_ud", "mirror_acc_transpose", "mirror_logit_change_lr"} <= set(m)
    rows = dict(ev.rows())
    assert rows["group equivariance error stage0_gconv0"].endswith("@ flip+rot90")
    assert "accuracy mirrored lr / ud / transpose" in rows


def test_c8_gcnn_logits_change_under_mirrors_and_it_has_no_mirror_section():
    model = gcnn(8)
    x, y = data()
    ev = evaluation.evaluate(evaluation.keras_predictor(model, 8), x, y, EvaluateConfig(**SMALL), model=model)
    assert all("flip" not in k for errs in ev.equivariance["group"].values() for k in errs)
    assert min(ev.mirror_logit_change.values()) > 1e-4
    assert not any(k.endswith("_flip") for k in ev.metrics())
