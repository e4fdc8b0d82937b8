"""TFRecord shards (make convert: pipelines/convert.py, data/tfrecord.py) and tfds streaming."""

import json

import numpy as np
import pytest

from data.images import ANIMATED_WEBP
from data.pipeline import make_stream_dataset
from data.sources import DataSourceError, stratified_split
from data.streaming import open_source
from pipelines.cli import run_main
from pipelines.convert import main as convert_main
from tests.data.test_streaming import make_folder, make_uniform_folder


def _convert(src, dest, *extra):
    return run_main(convert_main, ["--src", src, "--dest", str(dest), "--no-progress", *extra])


def _arrays(split):
    return split.arrays()


def _multiset(x, y):
    return sorted(zip(y.tolist(), [im.tobytes() for im in x]))


def test_folder_to_shards_and_back_reads_the_same_data(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", n=8)
    dest = tmp_path / "shards"
    assert _convert(f"folder:{root}", dest, "--shard-size", "5", "--seed", "3") == 0
    assert "Read them with data.source=tfrecord:" in capsys.readouterr().out
    meta = json.loads((dest / "dataset.json").read_text())
    assert meta["class_names"] == ["ant", "bee", "cat"] and meta["image_shape"] is None  # sizes differ
    assert len(meta["splits"]["train"]["files"]) > 1
    assert meta["webp"] is False  # the header pass saw no WebP: the shards decode without its checks

    folder = open_source(f"folder:{root}", image_size=(10, 12), resize="pad", seed=3)
    shards = open_source(f"tfrecord:{dest}", image_size=(10, 12), resize="pad", seed=3)
    assert shards.train._stream.webp is False
    assert shards.class_names == folder.class_names and shards.image_shape == folder.image_shape == (10, 12, 3)
    assert shards.info.counts == folder.info.counts
    for name in ("train", "validation", "test"):
        fx, fy = _arrays(folder.split(name))
        sx, sy = _arrays(shards.split(name))
        np.testing.assert_array_equal(sy, shards.split(name).labels())  # labels known from dataset.json
        if name == "train":  # stored in a seeded random order
            assert _multiset(sx, sy) == _multiset(fx, fy)
        else:
            np.testing.assert_array_equal(sx, fx)
            np.testing.assert_array_equal(sy, fy)
    # training reads the shards: shuffled, every image once per epoch
    batches = list(make_stream_dataset(shards.train, 4, training=True, seed=1).as_numpy_iterator())
    tx = np.rint(np.concatenate([b[0] for b in batches]) * 255).astype(np.uint8)
    ty = np.concatenate([b[1] for b in batches])
    assert _multiset(tx, ty) == _multiset(*_arrays(folder.train))


def test_convert_resumes_and_refuses_another_conversion(tmp_path, capsys):
    root = make_uniform_folder(tmp_path / "u", n=10)
    dest = tmp_path / "s"
    assert _convert(f"folder:{root}", dest, "--shard-size", "4") == 0
    first = {p.name: p.read_bytes() for p in dest.glob("*.tfrecord")}
    victim = sorted(first)[1]
    (dest / victim).unlink()
    (dest / (victim + ".tmp")).write_bytes(b"half")  # a killed writer
    assert _convert(f"folder:{root}", dest, "--shard-size", "4") == 0
    out = capsys.readouterr().out
    assert f"Wrote 1 of {len(first)} shards ({len(first) - 1} already done) of 20 images" in out, out
    assert {p.name: p.read_bytes() for p in dest.glob("*.tfrecord")} == first
    assert not list(dest.glob("*.tmp"))
    assert _convert(f"folder:{root}", dest, "--shard-size", "3") == 2
    assert "holds shards of an earlier conversion" in capsys.readouterr().err  # (changed since: shard_size)
    assert _convert(f"folder:{root}", dest, "--shard-size", "3", "--overwrite") == 0
    assert open_source(f"tfrecord:{dest}/*.tfrecord").info.total_counts["train"] == 16
    (root / "a" / "0.png").unlink()  # the folder changed since: named as such, not as another conversion
    assert _convert(f"folder:{root}", dest, "--shard-size", "3") == 2
    err = capsys.readouterr().err
    assert (f"holds shards of an earlier conversion of folder:{root}, from other files or options (changed since: "
            "its files, the image counts); pass --overwrite") in err, err


def test_convert_bad_files_exit_2_naming_them_or_skip(tmp_path, capsys):
    root = make_uniform_folder(tmp_path / "u", n=4)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert _convert(f"folder:{root}", tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.png" in err and "Traceback" not in err
    assert 'or add ARGS="--skip-bad-images" to skip them' in err and "data.skip_bad_images" not in err  # its option
    assert _convert(f"folder:{root}", tmp_path / "s2", "--skip-bad-images") == 0
    assert "Skipped 1 unreadable file(s)" in capsys.readouterr().out
    meta = json.loads((tmp_path / "s2" / "dataset.json").read_text())
    assert meta["skipped_bad_images"][0][0].endswith("broken.png")


def test_a_damaged_dataset_json_is_one_error_naming_it(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (20, 6, 6), dtype=np.uint8), y_train=np.arange(20) % 2,
             x_test=rng.integers(0, 256, (6, 6, 6), dtype=np.uint8), y_test=np.arange(6) % 2)
    assert _convert(f"npz:{tmp_path / 'd.npz'}", tmp_path / "s") == 0
    meta = tmp_path / "s" / "dataset.json"
    for text, needle in (("{", "dataset.json is not valid JSON"), ("{}", "dataset.json lacks splits, class_names")):
        meta.write_text(text)
        with pytest.raises(DataSourceError, match=needle):
            open_source(f"tfrecord:{tmp_path / 's'}")


def test_npz_to_shards_is_lossless(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (20, 6, 6), dtype=np.uint8), y_train=np.arange(20) % 2,
             x_test=rng.integers(0, 256, (6, 6, 6), dtype=np.uint8), y_test=np.arange(6) % 2)
    assert _convert(f"npz:{tmp_path / 'd.npz'}", tmp_path / "s") == 0
    with np.load(tmp_path / "d.npz") as f:
        ref_x, ref_y = f["x_test"][..., None], f["y_test"]
    s = open_source(f"tfrecord:{tmp_path / 's'}")
    assert s.image_shape == (6, 6, 1)
    x, y = _arrays(s.test)
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(y, ref_y)


@pytest.mark.parametrize("n_proc", [2])
def test_tfrecord_shards_disjoint_and_complete(tmp_path, n_proc):
    root = make_uniform_folder(tmp_path / "u", classes=("a", "b", "c"), n=6)
    _convert(f"folder:{root}", tmp_path / "s", "--shard-size", "4")  # train: 3 files (whole files per process), test: 1 (records)
    whole = open_source(f"tfrecord:{tmp_path / 's'}")
    for name in ("train", "test"):
        ref = sorted(im.tobytes() for im in _arrays(whole.split(name))[0])
        got = []
        for pid in range(n_proc):
            part = open_source(f"tfrecord:{tmp_path / 's'}", num_processes=n_proc, process_id=pid).split(name)
            xs = [im.tobytes() for im in _arrays(part)[0]]
            assert len(xs) == part.count
            got += xs
        assert sorted(got) == ref


def _store_tfds(tmp_path, name="tiny_rgb", with_validation=False, channels=3):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)

    def split(n):
        return tf.data.Dataset.from_tensor_slices(
            {"image": rng.integers(0, 255, (n, 8, 8, channels)).astype("uint8"), "label": np.arange(n) % 3})

    splits = {"train": split(24), "test": split(9)}
    if with_validation:
        splits["validation"] = split(6)
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", data_dir=str(tmp_path),
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, channels)),
                                             "label": tfds.features.ClassLabel(names=["a", "b", "c"])}),
        split_datasets=splits,
    )


def _tfds_reference(tmp_path, name, fraction, seed):
    """{split: (images, labels)} as tfds decodes them, validation carved from train (stratified, seeded)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(tmp_path))
    read = {}
    for split in ("train", "test"):
        items = list(tfds.as_numpy(builder.as_dataset(split=split)))
        read[split] = (np.stack([e["image"] for e in items]), np.array([e["label"] for e in items]))
    read["train"], read["validation"] = stratified_split(*read["train"], fraction, seed)
    return read


def test_tfds_streams_the_stored_splits_with_a_carved_validation(tmp_path):
    _store_tfds(tmp_path)
    ref = _tfds_reference(tmp_path, "tiny_rgb", 0.25, 2)
    s = open_source("tfds:tiny_rgb", data_dir=str(tmp_path), validation_fraction=0.25, seed=2)
    assert s.class_names == ["a", "b", "c"] and s.image_shape == (8, 8, 3)
    for name in ("train", "validation", "test"):
        x, y = _arrays(s.split(name))
        rx, ry = ref[name]
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
    small = open_source("tfds:tiny_rgb", data_dir=str(tmp_path), image_size=(4, 4), channels=1)
    assert small.test.elements().element_spec[0].shape == (4, 4, 1)
    assert _arrays(small.test)[0].shape == (9, 4, 4, 1)
    parts = [open_source("tfds:tiny_rgb", data_dir=str(tmp_path), num_processes=2, process_id=p).test for p in (0, 1)]
    assert sorted(a.tobytes() for p in parts for a in _arrays(p)[0]) == sorted(a.tobytes() for a in ref["test"][0])
    # and into shards (the sequential path of make convert)
    assert _convert("tfds:tiny_rgb", tmp_path / "s", "--data-dir", str(tmp_path), "--shard-size", "5") == 0
    back = open_source(f"tfrecord:{tmp_path / 's'}")
    np.testing.assert_array_equal(_arrays(back.test)[0], ref["test"][0])


def test_tfds_gray_source_offline(tmp_path):
    _store_tfds(tmp_path, "tiny_gray", channels=1)
    s = open_source("tfds:tiny_gray", data_dir=str(tmp_path), validation_fraction=0.2)
    assert s.class_names == ["a", "b", "c"]
    assert s.image_shape == (8, 8, 1) and s.test.count == 9
    assert s.train.count + s.validation.count == 24


def test_tfds_not_prepared_says_how_to_prepare(tmp_path):
    with pytest.raises(DataSourceError, match=r"tfds:mnist: not prepared in .*download_and_prepare"):
        open_source("tfds:mnist", data_dir=str(tmp_path))
    with pytest.raises(DataSourceError, match="unknown dataset"):
        open_source("tfds:surely_not_a_dataset_name", data_dir=str(tmp_path))


def test_a_download_without_network_is_one_error_at_once_and_a_failed_download_one_line(tmp_path, monkeypatch):
    """Without a network TFDS retried for about 4 minutes, then printed a page of tracebacks."""
    import socket
    import time

    import tensorflow_datasets as tfds
    from requests.exceptions import ConnectionError as RequestsConnectionError

    def no_network(address, *a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    started = time.monotonic()
    with pytest.raises(DataSourceError, match=r"tfds:mnist: not prepared in .*cannot reach storage\.googleapis\.com "
                                              r"\(no network here\?\)\. Prepare it on a machine with network"):
        open_source("tfds:mnist", data_dir=str(tmp_path), download=True)
    assert time.monotonic() - started < 10

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: type("C", (), {"close": lambda self: None})())

    def refused(self, *a, **k):
        raise RequestsConnectionError("Max retries exceeded with url: /mnist\nmore lines")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refused)
    with pytest.raises(DataSourceError, match=r"tfds:mnist: the download failed \(ConnectionError: Max retries "
                                              r"exceeded with url: /mnist\)\. Prepare it"):
        open_source("tfds:mnist", data_dir=str(tmp_path), download=True)


def test_the_decode_scan_names_each_undecodable_record_by_its_index(tmp_path):
    import io

    import tensorflow as tf
    from PIL import Image

    from data.sources.tfrecord import scan_shards

    def record(encoded: bytes, label: bool = True) -> bytes:
        feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                   "image/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0]))}
        if not label:
            del feature["image/label"]
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "PNG")
    good, bad = buf.getvalue(), b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # a PNG signature and nothing readable
    broken = {3, 17, 18, 29} | set(range(40, 55))  # more than the 10 whose message is read again
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for i in range(60):
            w.write(record(bad if i in broken else good))
    found = scan_shards({path: 60}, decode=True)
    assert [p for p, _ in found] == [f"{path} record {i}" for i in sorted(broken)]
    assert all(why for _, why in found) and "PNG" in found[0][1], found[0]
    assert scan_shards({path: 60}) == []  # without decode: the checksums are whole
    assert scan_shards({path: 61}, decode=True) == [(path, "60 records where dataset.json lists 61")]
    with tf.io.TFRecordWriter(path) as w:  # a record with no label: before, the scan itself ended in a traceback
        for i in range(5):
            w.write(record(good, label=i != 2))
    (where, why), = scan_shards({path: 5}, decode=True)
    assert where == f"{path} record 2" and why.startswith("not an image record (") and "image/label" in why, why
    from tests.data.test_streaming import animated_webp

    with tf.io.TFRecordWriter(path) as w:  # unguarded, TensorFlow's decoder would abort this process on record 1
        for i in range(4):
            w.write(record(animated_webp() if i == 1 else good))
    assert scan_shards({path: 4}, decode=True) == [(f"{path} record 1", ANIMATED_WEBP)]


def test_an_interrupted_convert_says_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    import os
    import runpy
    import sys

    import data.tfrecord

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def leaving_at_once(code):  # an interrupted job's os._exit (cli.exit_job), which would end this test process
        raise SystemExit(f"os._exit({code})")

    monkeypatch.setattr(data.tfrecord, "convert", interrupted)
    monkeypatch.setattr(os, "_exit", leaving_at_once)
    monkeypatch.delitem(sys.modules, "pipelines.convert", raising=False)  # run as `python -m`, a fresh module
    monkeypatch.setattr(sys, "argv", ["convert", "--src", "synthetic", "--dest", str(tmp_path / "s")])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("pipelines.convert", run_name="__main__", alter_sys=True)
    assert e.value.code == "os._exit(130)"
    assert capsys.readouterr().err.strip() == "interrupted; the same command resumes the conversion: the shards " \
                                               "written are kept"
