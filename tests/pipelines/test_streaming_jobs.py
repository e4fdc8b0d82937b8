"""The jobs on streamed data (issue 13): `make train` on an RGB 64x64 folder dataset with
baseline_cnn and hnet, exported and served; a corrupt file is one error before anything is
written, `data.skip_bad_images` trains and logs what it skipped; the per-process datasets
of a streamed source; the `data.*` reading options of the config."""

from __future__ import annotations

import json
import os
import shlex
import shutil

import mlflow
import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from pipelines.cli import run_main
from pipelines.config import ConfigError, config_from_dict
from pipelines.train import main, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ("circle", "square", "triangle")


def _shape_image(kind: str, rng) -> Image.Image:
    """A 64x64 RGB image: one coloured shape of `kind` on a random dark background."""
    im = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 60, 3)))
    d = ImageDraw.Draw(im)
    r = int(rng.integers(12, 20))
    cx, cy = (int(v) for v in rng.integers(r + 2, 62 - r, 2))
    fill = tuple(int(v) for v in rng.integers(120, 256, 3))
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return im


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> str:
    """train/ and test/ folders of 3 classes, 20 and 6 images per class (PNG, a few JPEG)."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 6)):
        for c in CLASSES:
            os.makedirs(root / split / c)
            for i in range(n):
                ext = "jpg" if i % 5 == 0 else "png"
                _shape_image(c, rng).save(root / split / c / f"{i:03d}.{ext}")
    return str(root)


def _overrides(tmp_path, source: str, name: str, *extra) -> list[str]:
    return [
        f"name={name}", f"data.source={source}", "data.batch_size=16", f"data.cache_dir={tmp_path / 'cache'}",
        "train.epochs=1", "train.verbose=0", f"train.runs_root={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"export.dir={tmp_path / 'exports'}",
        "export.min_test_accuracy=0",  # one epoch of a 4-filter model: the default guard has its own tests
        "evaluate.enabled=false", "augment.translation.max=0", "augment.rotation.max_degrees=0",
        "augment.elastic.alpha=0", *extra,
    ]


CNN = ("model.name=baseline_cnn", "model.params.filters=[4]", "model.params.dense_units=8")
HNET = ("model.name=hnet", "model.params.filters=[2]", "model.params.convs_per_stage=1",
        "model.params.kernel_size=3", "model.params.n_rings=2")


def _metadata_dims(url: str, name: str) -> list[str]:
    r = requests.get(f"{url}/v1/models/{name}/metadata", timeout=30)
    assert r.status_code == 200, r.text
    sig = r.json()["metadata"]["signature_def"]["signature_def"]["serving_default"]
    return [d["size"] for d in sig["inputs"]["image"]["tensor_shape"]["dim"]]


@pytest.mark.slow
def test_make_train_on_a_64px_rgb_folder_exports_and_serves_both_models(shapes, tmp_path):
    from pipelines.serve import Server

    source = f"folder:{shapes}"
    cnn = run(config_from_dict({}, _overrides(tmp_path, source, "shapes_cnn", *CNN, "evaluate.enabled=true",
                                              "evaluate.max_images=6", "evaluate.rotation_step=90",
                                              "evaluate.scale_factors=[1.0]", "augment.rotation.max_degrees=30")))
    hnet = run(config_from_dict({}, _overrides(tmp_path, source, "shapes_hnet", *HNET)))
    client = mlflow.MlflowClient(cnn.tracking_uri)
    for result in (cnn, hnet):
        assert result.export_path and os.path.isfile(os.path.join(result.export_path, "saved_model.pb"))
        params = client.get_run(result.run_id).data.params
        assert params["data.num_train"] == "54" and params["data.num_validation"] == "6"  # 10% carved from train
        assert params["data.num_test"] == "18" and params["data.num_classes"] == "3"
        assert params["data.image_shape"] == "64x64x3" and params["data.bad_images"] == "0"
        artifacts = {a.path for a in client.list_artifacts(result.run_id)}
        assert {"data.json", "confusion_matrix.png"} <= artifacts
    run_data = client.get_run(cnn.run_id).data
    assert run_data.metrics["eval_images"] == 6  # evaluate.max_images test images, read from the stream
    assert "augmentation_preview.png" in {a.path for a in client.list_artifacts(cnn.run_id)}

    server = Server(str(tmp_path / "exports"), port=0, poll_s=0.2, predict_timeout_s=60).start()
    try:
        for name in ("shapes_cnn", "shapes_hnet"):
            dims = _metadata_dims(server.url, name)
            assert dims[1:] == ["64", "64", "3"] and dims[0] in ("-1", None), dims
    finally:
        server.stop()


def _one_error_line(capsys) -> str:
    text = capsys.readouterr().err
    lines = [line for line in text.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and text.strip().endswith(lines[0]), text
    assert "Traceback" not in text
    return lines[0]


def _with_a_corrupt_file(shapes, tmp_path) -> tuple[str, str]:
    root = tmp_path / "data"
    shutil.copytree(shapes, root)
    bad = root / "train" / "square" / "broken.png"
    good = (root / "train" / "square" / "001.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated
    return f"folder:{root}", str(bad)


def test_a_corrupt_file_is_one_error_naming_it_and_nothing_is_written(shapes, tmp_path, capsys):
    source, bad = _with_a_corrupt_file(shapes, tmp_path)
    args = ["--config", os.path.join(ROOT, "pipelines", "configs", "default.yaml"),
            *_overrides(tmp_path, source, "shapes_bad", *CNN)]
    assert run_main(main, args) == 2
    line = _one_error_line(capsys)
    assert bad in line and "skip_bad_images" in line
    for written in ("runs", "mlflow.db", "exports"):
        assert not (tmp_path / written).exists(), written


def _jpeg_only_pil_reads() -> bytes:
    """A 64x64 JPEG with garbage inside its data: the header pass and PIL read it, TensorFlow's decoder does not."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[:700] + np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes() + b"\xff\xd9"


def test_a_file_that_fails_to_decode_in_training_is_one_error_naming_it_and_the_run_resumes_without_it(
        shapes, tmp_path, capsys):
    from data.images import scan_images

    root = tmp_path / "data"
    shutil.copytree(shapes, root)
    bad = root / "train" / "circle" / "noise.jpg"
    bad.write_bytes(_jpeg_only_pil_reads())
    assert not isinstance(scan_images([str(bad)])[0], str)  # the default header pass lets it through
    args = ["--config", os.path.join(ROOT, "pipelines", "configs", "default.yaml"),
            *_overrides(tmp_path, f"folder:{root}", "shapes_decode", *CNN)]
    assert run_main(main, args) == 2
    line = _one_error_line(capsys)
    assert str(bad) in line and "TensorFlow: jpeg::Uncompress failed" in line and "found while this run read" in line
    assert not (tmp_path / "exports").exists()
    bad.unlink()
    assert run_main(main, args) == 0  # the same command, the file removed: it resumes, and says the data changed
    assert "Warning: the data changed since this run started" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "exports" / "shapes_decode" / "1" / "saved_model.pb")
    from pipelines import evaluate

    bad_test = root / "test" / "circle" / "noise.jpg"  # now in the split `make evaluate` reads
    bad_test.write_bytes(_jpeg_only_pil_reads())
    reports = tmp_path / "reports"
    args = ["--run", str(tmp_path / "exports" / "shapes_decode"), "--reports-dir", str(reports)]
    assert run_main(evaluate.main, args) == 2
    line = _one_error_line(capsys)
    assert str(bad_test) in line and "TensorFlow: jpeg::Uncompress failed" in line
    assert not reports.exists()


def test_damaged_tfrecord_shards_are_one_error_naming_them_and_the_run_resumes_once_convert_rewrites_them(
        shapes, tmp_path, capsys):
    from pipelines import convert

    dest = tmp_path / "shards"
    convert_args = ["--src", f"folder:{shapes}", "--dest", str(dest), "--shard-size", "12", "--no-progress"]
    assert run_main(convert.main, convert_args) == 0
    corrupt, cut = dest / "train-00001-of-00005.tfrecord", dest / "train-00003-of-00005.tfrecord"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2:len(data) // 2 + 40] = bytes(40)  # a record's bytes overwritten: its checksum fails
    corrupt.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:-100])  # the last record cut short
    args = ["--config", os.path.join(ROOT, "pipelines", "configs", "default.yaml"),
            *_overrides(tmp_path, f"tfrecord:{dest}", "shapes_shards", *CNN)]

    assert run_main(main, [*args, "data.check_images=full"]) == 2  # found before anything is written
    line = _one_error_line(capsys)
    assert f"{corrupt} (corrupted record at byte" in line and f"{cut} (truncated record at byte" in line
    again = f'make convert SRC=folder:{shapes} DEST={dest} ARGS="--shard-size 12"'
    assert f"`{again}` again" in line  # the settings these shards were written with: another would be refused
    for written in ("runs", "mlflow.db", "exports"):
        assert not (tmp_path / written).exists(), written

    assert run_main(main, args) == 2  # the default check reads no record: found while the run reads them
    line = _one_error_line(capsys)
    assert str(corrupt) in line and str(cut) in line and "found while this run read its data" in line
    assert not (tmp_path / "exports").exists()
    corrupt.unlink()
    cut.unlink()
    words = dict(w.split("=", 1) for w in shlex.split(again)[2:])  # the printed command, as make passes it on
    printed = ["--src", words["SRC"], "--dest", words["DEST"], *shlex.split(words["ARGS"]), "--no-progress"]
    capsys.readouterr()
    assert run_main(convert.main, printed) == 0  # writes the two missing shards alone
    n_shards = len(list(dest.glob("*.tfrecord")))
    assert f"Wrote 2 of {n_shards} shards ({n_shards - 2} already done)" in capsys.readouterr().out
    assert run_main(main, args) == 0  # the same command resumes
    assert "(resumed)" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "exports" / "shapes_shards" / "1" / "saved_model.pb")


def test_a_record_whose_image_does_not_decode_is_one_error_naming_its_shard_and_record(shapes, tmp_path, capsys):
    from pipelines import convert

    root = tmp_path / "data"
    shutil.copytree(shapes, root)
    (root / "train" / "circle" / "noise.jpg").write_bytes(_jpeg_only_pil_reads())  # convert's header pass takes it
    dest = tmp_path / "shards"
    assert run_main(convert.main, ["--src", f"folder:{root}", "--dest", str(dest), "--no-progress"]) == 0
    args = ["--config", os.path.join(ROOT, "pipelines", "configs", "default.yaml"),
            *_overrides(tmp_path, f"tfrecord:{dest}", "shapes_records", *CNN)]
    for extra, nothing_written in ((["data.check_images=full"], True), ([], False)):
        assert run_main(main, [*args, *extra]) == 2
        line = _one_error_line(capsys)
        assert f"{dest / 'train-00000-of-00001.tfrecord'} record " in line, line
        assert "1 unreadable record(s)" in line and "jpeg::Uncompress failed" in line
        assert f'`make convert SRC=folder:{root} DEST={dest} ARGS="--skip-bad-images --overwrite"`' in line, line
        assert (tmp_path / "runs").exists() != nothing_written
    assert run_main(main, [*args, "data.skip_bad_images=true"]) == 0  # as the message says: skipped in training
    assert run_main(main, [*args, "data.skip_bad_images=true", "data.check_images=full"]) == 0  # and with the check
    assert "1 unreadable record(s), skipped in training (data.skip_bad_images)" in capsys.readouterr().out


def test_quarter_turns_of_images_that_are_not_square_are_one_error_and_nothing_is_written(shapes, tmp_path, capsys):
    args = ["--config", os.path.join(ROOT, "pipelines", "configs", "images.yaml"),
            *_overrides(tmp_path, f"folder:{shapes}", "shapes_turns", "data.image_size=[32,48]",
                        "augment.flip.rotate90=true")]
    assert run_main(main, args) == 2
    line = _one_error_line(capsys)
    assert "augment.flip.rotate90 needs square images, got height x width 32x48" in line
    for written in ("runs", "mlflow.db", "exports"):
        assert not (tmp_path / written).exists(), written


@pytest.mark.parametrize("extra, refused", [
    ((), "export: the PyTorch backend cannot write a SavedModel"),
    (("export.enabled=false", "train.xla=true"), "train.xla: on PyTorch Keras (3.15) compiles the train step with "
                                                  "torch.compile, which recompiles")])
def test_an_option_the_backend_cannot_honour_is_refused_before_the_data(shapes, tmp_path, capsys, monkeypatch, extra,
                                                                        refused):
    import keras

    from pipelines import experiment

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")  # what KERAS_BACKEND=torch reports
    loaded = []  # before the data: a large folder's load took minutes before the refusal
    monkeypatch.setattr(experiment, "load_data", lambda *a, **k: loaded.append(a) or pytest.fail("data loaded"))
    args = ["--config", os.path.join(ROOT, "pipelines", "configs", "default.yaml"),
            *_overrides(tmp_path, f"folder:{shapes}", "shapes_torch", *CNN, *extra)]
    assert run_main(main, args) == 2
    assert _one_error_line(capsys).startswith(f"error: {refused}") and not loaded
    for written in ("runs", "mlflow.db", "exports"):
        assert not (tmp_path / written).exists(), written


def test_skip_bad_images_trains_and_logs_the_skipped_file(shapes, tmp_path):
    import warnings

    source, bad = _with_a_corrupt_file(shapes, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(config_from_dict({}, _overrides(tmp_path, source, "shapes_skip", *CNN,
                                                     "data.skip_bad_images=true", "export.enabled=false")))
    assert not [w for w in caught if "interpreted in multiple ways" in str(w.message)]  # MLflow's, on every run
    # Keras' advice to `.repeat()` the data, given when a split of unknown length (files may drop out) ends:
    # the training batches repeat without end, and validation and test are read to their end by design
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    src = mlflow.MlflowClient(result.tracking_uri).get_run(result.run_id).inputs.dataset_inputs[0].dataset.source
    assert json.loads(src)["uri"] == os.path.abspath(source.partition(":")[2])
    client = mlflow.MlflowClient(result.tracking_uri)
    params = client.get_run(result.run_id).data.params
    assert params["data.bad_images"] == "1" and params["data.num_train"] == "54"
    saved = client.download_artifacts(result.run_id, "data.json", str(tmp_path))
    with open(saved) as fh:
        info = json.load(fh)
    assert [p for p, _ in info["bad_files"]] == [bad]


def test_processes_read_disjoint_shards_in_equal_steps_and_validation_counts_each_image_once(shapes, tmp_path):
    from pipelines import experiment

    cfg = config_from_dict({}, _overrides(tmp_path, f"folder:{shapes}", "shards", "data.batch_size=8"))
    whole = experiment.load_data(cfg)
    parts = []
    for i in range(2):
        train, val, _ = experiment.make_datasets(cfg, whole, None, (2, i))  # opens process i's shard itself
        train_batches = [(x.shape[0], y) for x, y in train.as_numpy_iterator()]
        val_batches = list(val.as_numpy_iterator())
        parts.append((train_batches, val_batches))
    steps = experiment.steps_per_epoch(cfg, whole, 2)
    assert steps == 54 // 8
    for train_batches, val_batches in parts:
        assert len(train_batches) == steps and all(n == 4 for n, _ in train_batches)  # half the global batch
        assert len(val_batches) == 1 and all(len(b[0]) == 4 for b in val_batches)  # ceil(6 / 8) padded batches
    # Validation: each image once over both processes (weight 1), the rest zero-weight padding.
    weights = np.concatenate([b[2] for _, vb in parts for b in vb])
    labels = np.concatenate([b[1][b[2] > 0] for _, vb in parts for b in vb])
    assert weights.sum() == whole.validation.total_count == 6
    assert sorted(labels) == sorted(whole.validation.labels())
    pixels = [b[0][b[2] > 0] for _, vb in parts for b in vb]
    assert len({x.tobytes() for x in np.concatenate(pixels)}) == 6  # disjoint shards


@pytest.mark.parametrize(
    "override, key",
    [("data.resize=squash", "data.resize"), ("data.channels=2", "data.channels"), ("data.cache=ram", "data.cache"),
     ("data.cache_budget_mb=-1", "data.cache_budget_mb"), ("data.check_images=deep", "data.check_images"),
     ("data.shuffle_buffer=0", "data.shuffle_buffer"), ("data.skip_bad_images=maybe", "data.skip_bad_images"),
     ("data.random_crop=1", "data.random_crop"), ("data.source=tfrecord:", "data.source")],
)
def test_bad_reading_options_are_config_errors_naming_key_and_value(override, key):
    with pytest.raises(ConfigError, match=key) as e:
        config_from_dict({}, [override])
    assert repr(override.split("=", 1)[1]).strip("'") in str(e.value)


def test_reading_options_reach_the_streaming_options():
    from pipelines.experiment import data_options

    cfg = config_from_dict({}, ["data.source=tfrecord:/data/shards/*.tfrecord", "data.resize=crop", "data.channels=3",
                                "data.random_crop=true", "data.cache=disk", "data.cache_budget_mb=64",
                                "data.skip_bad_images=true", "data.check_images=full", "data.shuffle_buffer=100",
                                "data.image_size=[32, 48]"])
    o = data_options(cfg, (4, 3))
    assert (o.resize, o.channels, o.random_crop, o.cache, o.cache_budget_mb) == ("crop", 3, True, "disk", 64)
    assert (o.skip_bad_images, o.check_images, o.shuffle_buffer, o.image_size) == (True, "full", 100, (32, 48))
    assert (o.num_processes, o.process_id) == (4, 3)
