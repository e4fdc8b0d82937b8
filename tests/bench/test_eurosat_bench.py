"""bench_eurosat.py keeps each trained model's weights before evaluating it, and its orbit row wraps the weights
of the flips + quarter turns resnet trained earlier in the run instead of training that resnet again; its path for
machines without TensorFlow (NumPy augmentation, Pillow) and its time budget do what they say."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import bench_eurosat as b  # noqa: E402

SMALL = dict(b.RESNET, filters=[4, 4, 4, 4])


def fake_eurosat(root, classes=3, per_split=10):
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_split):
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    return root


def test_the_orbit_row_wraps_the_trained_resnet_and_weights_are_kept(tmp_path, monkeypatch):
    data, out = fake_eurosat(tmp_path / "eurosat"), tmp_path / "rows.json"
    monkeypatch.setitem(b.TABLES, "low", {
        "resnet_flips_rot90": ("resnet", SMALL, b.FLIPS_ROT90),
        "resnet_flips_rot90_orbit_d4": ("resnet", SMALL, b.FLIPS_ROT90),
    })
    fits = []
    real_fit = b.train_dataset
    monkeypatch.setattr(b, "train_dataset", lambda *a, **k: (fits.append(1), real_fit(*a, **k))[1])
    monkeypatch.setattr(sys, "argv", ["bench_eurosat.py", "--data", str(data), "--epochs", "1", "--out", str(out),
                                      "--verbose", "0"])
    assert b.main() == 0
    rows = {r["model"]: r for r in json.load(open(out))}
    assert len(fits) == 1  # the resnet was trained once, for both rows
    weights = tmp_path / "rows.weights" / "resnet_flips_rot90.weights.h5"
    assert weights.exists()
    orbit = rows["resnet_flips_rot90_orbit_d4"]
    assert orbit["trained"] == "the weights of resnet_flips_rot90, wrapped"
    assert orbit["train img/s"] == rows["resnet_flips_rot90"]["train img/s"]
    assert orbit["params"] == rows["resnet_flips_rot90"]["params"]  # the wrapper adds no weights

    # another number of epochs: those weights are not that model's, so the resnet is trained again
    monkeypatch.setattr(sys, "argv", ["bench_eurosat.py", "--data", str(data), "--epochs", "2", "--out", str(out),
                                      "--verbose", "0", "--models", "resnet_flips_rot90_orbit_d4"])
    assert b.main() == 0
    assert len(fits) == 2
    assert "trained" not in json.load(open(out))[0]


def test_weight_decay_and_precision_reach_every_model_of_the_table(tmp_path, monkeypatch):
    import keras

    import models

    data, out = fake_eurosat(tmp_path / "eurosat"), tmp_path / "rows.json"
    monkeypatch.setitem(b.TABLES, "low", {"resnet": ("resnet", SMALL, None),
                                          "resnet_flips": ("resnet", SMALL, b.FLIPS_ROT90)})
    built, real_build = [], models.build_model
    monkeypatch.setattr(models, "build_model", lambda *a, **k: (built.append(real_build(*a, **k)), built[-1])[1])
    monkeypatch.setattr(sys, "argv", ["bench_eurosat.py", "--data", str(data), "--epochs", "1", "--out", str(out),
                                      "--verbose", "0", "--weight-decay", "0.01", "--precision", "mixed_bfloat16"])
    assert b.main() == 0
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for whatever runs next
    assert len(built) == 2
    for model, row in zip(built, json.load(open(out))):
        assert model.dtype_policy.name == "mixed_bfloat16" and "bfloat16" in {la.compute_dtype for la in model.layers}
        assert isinstance(model.optimizer, keras.optimizers.AdamW) and model.optimizer.weight_decay == 0.01
        assert row["weight decay"] == 0.01 and row["precision"] == "mixed_bfloat16"
        assert 0 <= row["test acc %"] <= 100


def d4_images(x):
    """The 8 images of x [H, W, C] under the dihedral group D4: quarter turns, each also mirrored."""
    turns = [np.rot90(x, k) for k in range(4)]
    return turns + [t[:, ::-1] for t in turns]


def which_d4_and_shift(out, x, r):
    """(element, dy, dx) with out == the element applied to x, then shifted by (dy, dx) with the border reflected;
    None where nothing matches."""
    h, w = x.shape[:2]
    for e, g in enumerate(d4_images(x)):
        padded = np.pad(g, ((r, r), (r, r), (0, 0)), mode="reflect")
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if np.array_equal(out, padded[r + dy:r + dy + h, r + dx:r + dx + w]):
                    return e, dy, dx
    return None


def test_numpy_augmentation_draws_every_d4_element_and_small_reflected_shifts():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (240, 32, 32, 3), dtype=np.uint8)
    out = b.augment_arrays(x, b.FLIPS_ROT90, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == np.uint8 and not np.shares_memory(out, x)
    r = int(b.SHIFT["max"] * 32)
    found = [which_d4_and_shift(o, i, r) for o, i in zip(out, x)]
    assert all(f is not None for f in found)  # every image is a D4 element of its input, shifted by <= r pixels
    elements = np.bincount([f[0] for f in found], minlength=8)
    assert elements.min() >= 15  # all 8 drawn, about 30 times each
    shifted = np.mean([(f[1], f[2]) != (0, 0) for f in found])
    assert 0.35 < shifted < 0.6  # SHIFT's probability 1/2 (a drawn shift of 0 counts as unshifted)
    assert max(max(abs(f[1]), abs(f[2])) for f in found) == r

    plain = b.augment_arrays(x, None, np.random.default_rng(1))  # shifts only: never turned or mirrored
    assert all(which_d4_and_shift(o, i, r)[0] == 0 for o, i in zip(plain[:40], x[:40]))


def test_array_batches_cover_every_image_once_per_epoch_and_reshuffle():
    x = np.repeat(np.arange(10, dtype=np.uint8)[:, None, None, None] * 20, 8, axis=1).repeat(8, axis=2)
    x = np.repeat(x, 3, axis=3)  # constant images: augmentation leaves them as they are
    y = np.arange(10)
    batches = b.array_batches(x, y, 4, b.FLIPS_ROT90, seed=0)
    assert len(batches) == 3

    def epoch():
        xs, ys = zip(*(batches[i] for i in range(len(batches))))
        return np.concatenate(xs), np.concatenate(ys)

    xa, ya = epoch()
    assert sorted(ya) == list(range(10)) and xa.dtype == np.float32
    np.testing.assert_allclose(xa[:, 0, 0, 0], ya * 20 / 255.0, rtol=1e-6)  # images stay with their labels
    batches.on_epoch_end()
    _, yb = epoch()
    assert sorted(yb) == list(range(10)) and list(yb) != list(ya)


class FakeModel:
    """Records the epochs fitted and the learning rate the schedule gives each; the clock moves as fitting
    takes `first` seconds for epoch 0 and `each` for every later one."""

    def __init__(self, clock, first, each):
        self.clock, self.first, self.each, self.epochs, self.lrs = clock, first, each, [], []

    def fit(self, x, epochs, callbacks, verbose, initial_epoch=0):
        for e in range(initial_epoch, epochs):
            self.lrs.append(callbacks[0].schedule(e, None))
            self.epochs.append(e)
            self.clock[0] += self.first if e == 0 else self.each


def test_the_budget_decides_the_epochs_and_the_cosine_ends_near_zero(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(b.time, "perf_counter", lambda: clock[0])
    args = argparse.Namespace(budget_s=30.0, epochs=100, lr=0.004, verbose=0)
    m = FakeModel(clock, first=10.0, each=2.0)
    assert b.fit_within_budget(m, {"x": None}, args) == 11  # 12 s for two epochs, then 9 more of 2 s in 30 s
    assert m.epochs == list(range(11)) and clock[0] == 30.0
    assert m.lrs[0] == args.lr and all(a > c for a, c in zip(m.lrs[2:], m.lrs[3:]))
    assert m.lrs[-1] < 0.03 * args.lr  # the last epoch's rate: cosine at 10/11

    m = FakeModel(clock, first=10.0, each=2.0)
    assert b.fit_within_budget(m, {"x": None}, argparse.Namespace(**dict(vars(args), epochs=5))) == 5  # capped
    m = FakeModel(clock, first=50.0, each=2.0)
    assert b.fit_within_budget(m, {"x": None}, args) == 2  # over budget after the first: still two epochs


def test_without_tensorflow_on_jax_end_to_end(tmp_path):
    """The path of a GPU machine that has JAX and no TensorFlow (Pillow, the NumPy augmentation, a budget), in a
    subprocess where `import tensorflow` fails."""
    data, out = fake_eurosat(tmp_path / "eurosat"), tmp_path / "rows.json"
    (tmp_path / "no_tf" / "tensorflow").mkdir(parents=True)
    (tmp_path / "no_tf" / "tensorflow" / "__init__.py").write_text("raise ImportError('no TensorFlow here')\n")
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    argv = ["bench_eurosat.py", "--data", str(data), "--epochs", "3", "--out", str(out), "--verbose", "0",
            "--budget-s", "0.01", "--batch-size", "8"]
    code = (f"import sys; sys.argv = {argv!r}; import bench_eurosat as b; assert not b.has_tensorflow(); "
            f"b.TABLES['low'] = {{'resnet_flips_rot90': ('resnet', {SMALL!r}, b.FLIPS_ROT90)}}; "
            f"raise SystemExit(b.main())")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join(
        [str(tmp_path / "no_tf"), root, os.path.join(root, "bench"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.load(open(out))
    assert row["epochs"] == 2 and row["input"] == "arrays" and row["budget s"] == 0.01
    assert row["backend, device"] == "jax, cpu" and 0 <= row["test acc %"] <= 100
    assert (tmp_path / "rows.weights" / "resnet_flips_rot90.weights.h5").exists()


def bar_angles(batch):
    """The angle in degrees of the principal axis of each image's intensity (a bar's direction), from its second
    moments; batch [N, H, W, C]."""
    w = np.asarray(batch).sum(-1)
    ys, xs = np.mgrid[:w.shape[1], :w.shape[2]]
    angles = []
    for im in w:
        m = im.sum()
        cy, cx = (im * ys).sum() / m, (im * xs).sum() / m
        cov_xx, cov_yy = (im * (xs - cx) ** 2).sum() / m, (im * (ys - cy) ** 2).sum() / m
        cov_xy = (im * (xs - cx) * (ys - cy)).sum() / m
        angles.append(np.degrees(0.5 * np.arctan2(2 * cov_xy, cov_xx - cov_yy)))
    return np.array(angles)


def test_the_turns_row_trains_on_tiles_turned_by_up_to_half_of_d8s_step():
    """The D8 row with turns is the D8 network of the table, and its training tiles are turned by angles up to
    22.5 degrees (a centred horizontal bar keeps its direction under shifts alone)."""
    builder, params, flips, turns = b.TABLES["low"]["gcnn_d8_residual_turns"]
    assert (builder, params, flips) == b.TABLES["low"]["gcnn_d8_residual"]
    assert turns["max_degrees"] == 22.5 and turns["fill_mode"] == "reflect"
    x = np.zeros((64, 64, 64, 3), np.uint8)
    x[:, 31:33, 22:42] = 255
    y = np.zeros(64, np.int64)
    plain = np.concatenate([a for a, _ in b.train_dataset(x, y, 16, None, 0)])
    assert np.abs(bar_angles(plain)).max() < 1.0
    turned = np.concatenate([a for a, _ in b.train_dataset(x, y, 16, None, 0, dict(turns, probability=1.0))])
    angles = np.abs(bar_angles(turned))
    assert angles.max() <= 22.5 + 1.0 and np.mean(angles > 5.0) > 0.5


def test_a_row_with_turns_says_so_and_refuses_the_numpy_input(tmp_path, monkeypatch, capsys):
    import pytest

    data, out = fake_eurosat(tmp_path / "eurosat"), tmp_path / "rows.json"
    monkeypatch.setitem(b.TABLES, "low", {"turned": ("resnet", SMALL, None, b.HALF_STEP_TURNS)})
    argv = ["bench_eurosat.py", "--data", str(data), "--epochs", "1", "--out", str(out), "--verbose", "0"]
    monkeypatch.setattr(sys, "argv", argv + ["--input", "arrays"])
    with pytest.raises(SystemExit, match="turned: its turns are augmented in tf.data only"):
        b.main()
    assert not out.exists()
    monkeypatch.setattr(sys, "argv", argv)
    assert b.main() == 0
    (row,) = json.load(open(out))
    assert row["augment"] == "shifts only, turns up to 22.5 degrees"


def _params(low, *names):
    import models

    return {name: models.build_model(low[name][0], (64, 64, 3), 10, **low[name][1]).count_params() for name in names}


def _assert_about_the_table_size(low, model):
    """`model` within 5% of the D8 row's parameters and of the same-size resnet's."""
    for other, count in _params(low, "gcnn_d8_residual", "resnet_flips_rot90").items():
        assert abs(model.count_params() / count - 1) < 0.05, other


def test_the_c16_row_matches_d8s_parameters_with_mirrors_as_augmentation():
    """C16 at D8's widths: the same 16 elements per field, so the same parameter count; no mirror built in, so
    left-right flips augment its tiles as they do C8's."""
    low = b.TABLES["low"]
    builder, params, flips = low["gcnn_c16_residual"]
    assert (builder, params["group"], flips) == ("gcnn", "C16", {"horizontal": True})
    assert params["filters"] == low["gcnn_d8_residual"][1]["filters"]
    count = _params(low, "gcnn_c16_residual", "gcnn_d8_residual")
    assert count["gcnn_c16_residual"] == count["gcnn_d8_residual"]


def test_the_deep_d8_row_has_twice_the_blocks_at_about_d8s_parameters():
    """The deep D8 row stacks two basic blocks per stage where D8 has one, narrower so that the table stays at
    about the same size: within 5% of the D8 row's and of the same-size resnet's parameters."""
    import keras

    import models

    low = b.TABLES["low"]
    builder, params, flips = low["gcnn_d8_residual_deep"]
    assert (builder, params["group"], params["blocks_per_stage"], flips) == ("gcnn", "D8", 2, None)
    assert low["gcnn_d8_residual"][1]["blocks_per_stage"] == 1
    model = models.build_model("gcnn", (64, 64, 3), 10, **params)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 8  # 4 stages x 2 basic blocks, one residual addition each
    _assert_about_the_table_size(low, model)


def test_the_restricted_d8_row_keeps_c8_in_its_last_stage_with_mirrors_as_augmentation():
    """D8 restricted to C8 before its last stage: the GroupRestriction layer sits there, the mirrors it gives up are
    augmented as for C8, and the wider last stage keeps it within 5% of D8's and the resnet's parameters."""
    from layers.group.group_restriction import GroupRestriction
    import models

    low = b.TABLES["low"]
    builder, params, flips = low["gcnn_d8_c8_residual"]
    assert (builder, params["group"], params["restrict_to"], flips) == ("gcnn", "D8", "C8", {"horizontal": True})
    model = models.build_model("gcnn", (64, 64, 3), 10, **params)
    (restrict,) = [layer for layer in model.layers if isinstance(layer, GroupRestriction)]
    assert restrict.name == f"stage{len(params['filters']) - 1}_restrict"
    _assert_about_the_table_size(low, model)


def test_the_5x5_d8_row_has_more_weights_per_filter_at_about_d8s_parameters():
    """The 5x5 D8 row: every convolution (the lifting one included) 5x5 where D8's are 3x3, so each filter pair has
    9 free weights where D8's has 4, narrower so that it stays within 5% of D8's and the resnet's parameters."""
    from layers.group import GroupConv2D, LiftingConv2D
    import models

    low = b.TABLES["low"]
    builder, params, flips = low["gcnn_d8_residual_k5"]
    assert (builder, params["group"], params["kernel_size"], flips) == ("gcnn", "D8", 5, None)
    assert low["gcnn_d8_residual"][1]["kernel_size"] == 3
    model = models.build_model("gcnn", (64, 64, 3), 10, **params)
    convs = [layer for layer in model.layers if isinstance(layer, (GroupConv2D, LiftingConv2D))]
    assert {layer.kernel_size for layer in convs if not layer.name.endswith("_proj")} == {5}
    for size, weights in ((3, 4), (5, 9)):  # free weights per input field, output field and element of D8
        conv = GroupConv2D(10, size, group="D8", use_bias=False)
        conv.build((None, 8, 8, 16, 10))
        assert conv.count_params() == 10 * 10 * 16 * weights
    _assert_about_the_table_size(low, model)


def test_d8s_variants_run_only_when_named(tmp_path, monkeypatch):
    """A run without --models runs every row of the table but D8's variants; naming one runs it."""
    assert set(b.VARIANTS) < set(b.TABLES["low"]) and "gcnn_d8_residual" not in b.VARIANTS
    data, out = fake_eurosat(tmp_path / "eurosat"), tmp_path / "rows.json"
    monkeypatch.setitem(b.TABLES, "low", {"small": ("resnet", SMALL, None), b.VARIANTS[0]: ("resnet", SMALL, None)})
    monkeypatch.setattr(b, "run", lambda name, *rest: {"model": name, "epochs": 1})  # which rows, not how they train
    argv = ["bench_eurosat.py", "--data", str(data), "--epochs", "1", "--out", str(out), "--verbose", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    assert b.main() == 0
    assert [r["model"] for r in json.load(open(out))] == ["small"]
    monkeypatch.setattr(sys, "argv", argv + ["--resume", "--models", b.VARIANTS[0]])
    assert b.main() == 0
    assert [r["model"] for r in json.load(open(out))] == ["small", b.VARIANTS[0]]


def test_a_folder_cut_to_the_low_regimes_files_gives_the_same_training_images_with_train_every_1(tmp_path,
                                                                                                  monkeypatch):
    """`--train-every 1` on a copy of `train/` that keeps only every 10th file of each class (small enough to send
    to a GPU machine) trains on exactly the images, in the order, of the low regime on the whole folder."""
    full = fake_eurosat(tmp_path / "full", per_split=20)
    cut = tmp_path / "cut"
    for split in ("valid", "test"):
        shutil.copytree(full / split, cut / split)
    for c in sorted(os.listdir(full / "train")):
        (cut / "train" / c).mkdir(parents=True)
        for f in sorted(os.listdir(full / "train" / c))[::10]:
            shutil.copy(full / "train" / c / f, cut / "train" / c / f)
    seen = []

    def run(name, spec, train, *rest):  # records the training split main() read, trains nothing
        seen.append(train)
        return {"model": name, "epochs": 1}

    monkeypatch.setattr(b, "run", run)
    for root, extra in ((full, []), (cut, ["--train-every", "1"])):
        monkeypatch.setattr(sys, "argv", ["bench_eurosat.py", "--data", str(root), "--models", "resnet",
                                          "--out", str(tmp_path / f"{root.name}.json"), *extra])
        assert b.main() == 0
    (xf, yf), (xc, yc) = seen
    assert len(xf) == 3 * 2  # 3 classes, files 000 and 010 of each
    np.testing.assert_array_equal(xf, xc)
    np.testing.assert_array_equal(yf, yc)
    monkeypatch.setattr(sys, "argv", ["bench_eurosat.py", "--data", str(cut), "--train-every", "0"])
    with pytest.raises(SystemExit) as err:
        b.main()
    assert err.value.code == 2  # argparse's error, before any data is read


class Killed(Exception):
    pass


def test_a_model_killed_after_an_epoch_resumes_there_with_resume_and_starts_afresh_without(tmp_path, monkeypatch):
    """A model longer than one sitting: killed after its first of 3 epochs, `--resume` goes on from epoch 1 with the
    optimiser's step (so the cosine schedule) carried over and says so in its row, and the checkpoint is removed
    once the row is written; a rerun without --resume trains all 3 epochs again."""
    import bench_rotated_gcnn

    data, out = fake_eurosat(tmp_path / "eurosat"), tmp_path / "rows.json"
    monkeypatch.setitem(b.TABLES, "low", {"small": ("resnet", SMALL, None)})
    argv = ["bench_eurosat.py", "--data", str(data), "--epochs", "3", "--batch-size", "8", "--train-every", "1",
            "--out", str(out), "--verbose", "0"]
    clock = bench_rotated_gcnn.EpochTimes
    original = clock.on_epoch_end

    def kill_after_first(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise Killed

    monkeypatch.setattr(clock, "on_epoch_end", kill_after_first)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(Killed):
        b.main()
    partial = tmp_path / "rows.json.partial"
    (backup,) = partial.iterdir()
    assert json.load(open(backup / "times.json"))["sitting starts"] == [0]
    monkeypatch.setattr(clock, "on_epoch_end", original)

    import keras

    seen, fit = [], keras.Model.fit

    def spy(model, *a, **kw):
        history = fit(model, *a, **kw)
        seen.append((len(history.epoch), int(model.optimizer.iterations.numpy())))
        return history

    monkeypatch.setattr(keras.Model, "fit", spy)
    monkeypatch.setattr(sys, "argv", argv + ["--resume"])
    assert b.main() == 0
    (row,) = json.load(open(out))
    steps = 4  # 30 training tiles in batches of 8
    assert seen == [(2, 3 * steps)]  # two epochs in the second sitting, the step went on from the first's 4
    assert row["resumed after epochs"] == [1] and row["epochs"] == 3
    assert not any(partial.iterdir())

    monkeypatch.setattr(sys, "argv", argv)
    assert b.main() == 0
    (row,) = json.load(open(out))
    assert seen[-1] == (3, 3 * steps) and "resumed after epochs" not in row
