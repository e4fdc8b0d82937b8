"""Publishing versions (pipelines/export.py): a number is never given twice, and the guards compare a new model
with the newest version a server can serve, not with a broken folder beside it."""

from __future__ import annotations

import os
import shutil

import keras
import numpy as np
import pytest

from models.registry import build_model
from pipelines.export import (
    SIGNATURE_FILE,
    export_model,
    predict_savedmodel,
    served_accuracy,
    signature_conflict,
    signature_of,
)


def tiny(seed: int):
    keras.utils.set_random_seed(seed)
    return build_model("baseline_cnn", (12, 12, 1), 3, filters=[2], dense_units=4)


def publish(root, seed, accuracy=0.9):
    assets = {SIGNATURE_FILE: __import__("json").dumps(signature_of((12, 12, 1), ["a", "b", "c"])),
              "metrics.json": f'{{"test_accuracy": {accuracy}, "data.source": "synthetic"}}'}
    return export_model(tiny(seed), str(root), "m", extra_assets=assets, class_names=["a", "b", "c"])


def _served(root, labels_of=None):
    """served_accuracy on 20 random images whose labels are version `labels_of`'s own answers (so that it measures
    1.0 there): (version, accuracy)."""
    x = np.random.default_rng(5).integers(0, 256, (20, 12, 12, 1), dtype=np.uint8)
    y = np.zeros(20, np.int64) if labels_of is None else predict_savedmodel(labels_of, x)["class_id"]
    return served_accuracy(str(root), "m", [(x[:8], y[:8]), (x[8:], y[8:])], (12, 12, 1), ["a", "b", "c"])


def test_a_version_deleted_to_roll_back_does_not_give_its_number_to_the_next_model(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (2, 12, 12, 1), dtype=np.uint8)
    assert publish(tmp_path, 0).endswith(os.path.join("m", "1"))
    second = publish(tmp_path, 1)
    answers = predict_savedmodel(second, x)["probabilities"]
    shutil.rmtree(second)  # rolled back: clients pinned to version 2 get 404 ...
    third = publish(tmp_path, 2)
    assert third.endswith(os.path.join("m", "3"))  # ... not another model under the same number
    assert not os.path.exists(second)
    assert not np.allclose(predict_savedmodel(third, x)["probabilities"], answers)
    assert sorted(d for d in os.listdir(tmp_path / "m") if not d.startswith(".")) == ["1", "3"]


def test_the_guards_read_the_newest_version_a_server_can_load_past_a_broken_folder(tmp_path):
    publish(tmp_path, 0, accuracy=0.95)
    (tmp_path / "m" / "2").mkdir()  # a failed copy: no saved_model.pb
    damaged = tmp_path / "m" / "3"
    shutil.copytree(tmp_path / "m" / "1", damaged)
    (damaged / "assets.extra" / SIGNATURE_FILE).unlink()  # as versions written before signature.json
    (damaged / "saved_model.pb").write_bytes(b"\x00" * 10)  # and damaged: it does not load
    assert _served(tmp_path, labels_of=tmp_path / "m" / "1") == (1, 1.0)  # measured with version 1, the one served
    why = signature_conflict(str(tmp_path), "m", (16, 16, 3), ["a", "b", "c"])
    assert why is not None and "version 1's (12, 12, 1)" in why, why  # compared with version 1 too
    shutil.rmtree(damaged)
    assert signature_conflict(str(tmp_path), "m", (12, 12, 1), ["a", "b", "c"]) is None


def test_the_served_version_is_measured_only_where_it_takes_the_same_input_and_answers_the_same_classes(tmp_path):
    assert _served(tmp_path) is None  # nothing published
    publish(tmp_path, 0)
    x = np.random.default_rng(5).integers(0, 256, (20, 12, 12, 1), dtype=np.uint8)
    calls_a = float(np.mean(predict_savedmodel(tmp_path / "m" / "1", x)["class_id"] == 0))
    assert _served(tmp_path) == (1, calls_a)  # labels all "a": the share of the images version 1 calls "a"
    batches = [(x, np.zeros(20, np.int64))]
    assert served_accuracy(str(tmp_path), "m", batches, (16, 16, 1), ["a", "b", "c"]) is None
    assert served_accuracy(str(tmp_path), "m", batches, (12, 12, 1), ["a", "b", "x"]) is None
    assert served_accuracy(str(tmp_path), "m", [], (12, 12, 1), ["a", "b", "c"]) is None  # no test images


def test_the_served_version_is_one_that_loads_and_one_of_another_shape_is_not_measured(tmp_path):
    """A version whose variables are missing (a copy half done) raised TensorFlow's error out of the export, after
    training; a version from before signature.json that takes another input shape was run on the new images."""
    publish(tmp_path, 0)
    publish(tmp_path, 1)
    for f in (tmp_path / "m" / "2" / "variables").glob("variables.data*"):
        f.unlink()
    assert _served(tmp_path, labels_of=tmp_path / "m" / "1") == (1, 1.0)  # version 2 does not load: version 1
    shutil.rmtree(tmp_path / "m" / "2")
    (tmp_path / "m" / "1" / "assets.extra" / SIGNATURE_FILE).unlink()  # its input shape read from the SavedModel
    x = np.zeros((4, 16, 16, 1), np.uint8)
    assert served_accuracy(str(tmp_path), "m", [(x, np.zeros(4, np.int64))], (16, 16, 1), ["a", "b", "c"]) is None
    assert _served(tmp_path)[0] == 1  # its own shape: measured


def test_where_the_file_system_has_no_locks_a_version_is_still_published(tmp_path, monkeypatch, capsys):
    import fcntl

    def no_locks(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert publish(tmp_path, 0).endswith(os.path.join("m", "1"))
    assert publish(tmp_path, 1).endswith(os.path.join("m", "2"))
    assert "no file lock here" in capsys.readouterr().out


def test_a_version_folder_with_a_leading_zero_is_guarded_as_the_server_serves_it(tmp_path):
    publish(tmp_path, 0, accuracy=0.95)
    os.rename(tmp_path / "m" / "1", tmp_path / "m" / "07")  # copied in by hand; TF Serving serves it as 7
    assert _served(tmp_path, labels_of=tmp_path / "m" / "07") == (7, 1.0)
    why = signature_conflict(str(tmp_path), "m", (16, 16, 3), ["a", "b", "c"])
    assert why is not None and "version 7's (12, 12, 1)" in why, why
    assert publish(tmp_path, 1).endswith(os.path.join("m", "8"))


def test_a_folder_named_past_int64_is_no_version_to_the_guards_nor_to_the_server(tmp_path):
    """TF Serving reads a version folder's name as an int64 and leaves any other alone; such a folder was served
    here (then every gRPC call failed, its version out of range) and hid the newer versions from it."""
    import requests

    from pipelines.serve import Server

    publish(tmp_path, 0, accuracy=0.95)
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / str(2**63))
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "99999999999999999999999")
    assert _served(tmp_path)[0] == 1
    assert publish(tmp_path, 1).endswith(os.path.join("m", "2"))
    with Server(str(tmp_path), port=0, poll_s=0.2) as s:
        status = requests.get(f"{s.url}/v1/models/m", timeout=10).json()["model_version_status"]
        assert [(v["version"], v["state"]) for v in status] == [("2", "AVAILABLE")]
    from pipelines.errors import UserError
    from pipelines.serving.model_config import version_number

    assert version_number(str(2**63 - 1)) == 2**63 - 1 and version_number("007") == 7
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / str(2**63 - 1))  # int64's largest: no number after it
    with pytest.raises(UserError, match="no version number is left under it"):
        publish(tmp_path, 2)


def test_loading_an_export_with_custom_gradients_warns_of_no_gradient_fault(tmp_path, caplog):
    """The fast blur's custom gradient made every load print that gradients "will likely fail": in each `make train`
    of an anti-aliased model, and in the server's log for each version, where nothing asks for a gradient."""
    import logging

    import models
    import tensorflow as tf

    from pipelines.serving.savedmodel import load_servable

    model = models.antialias(tiny(0))
    path = export_model(model, str(tmp_path), "aa", class_names=["a", "b", "c"])
    x = np.random.default_rng(0).integers(0, 256, (2, 12, 12, 1), dtype=np.uint8)
    warned = lambda: [r for r in caplog.records if "custom gradients" in r.getMessage()]  # noqa: E731
    with caplog.at_level(logging.WARNING):
        assert predict_savedmodel(path, x)["probabilities"].shape == (2, 3)
        servable = load_servable("aa", 1, path)  # the server's load, too
        assert servable.run({"image": x})["probabilities"].shape == (2, 3)
        assert not warned()
        tf.saved_model.load(path)
        assert warned()  # TensorFlow's own load warns about these functions (and our filter is gone)


def test_a_model_built_for_any_size_is_one_error_and_nothing_is_written(tmp_path):
    """Its signatures serve one size: before, a TypeError from deep in the signature writer."""
    from pipelines.errors import UserError

    keras.utils.set_random_seed(0)
    model = build_model("gcnn", (None, None, 1), 3, filters=[2], convs_per_stage=1, group_order=4)
    with pytest.raises(UserError, match=r"takes images of any size \(\(None, None, None, 1\)\).*data.image_size"):
        export_model(model, str(tmp_path), "m", class_names=["a", "b", "c"])
    assert not (tmp_path / "m").exists()


def test_an_export_whose_signature_fails_here_is_one_error_naming_the_reason(tmp_path, monkeypatch):
    """A JAX export lowered for CUDA only (what jax2tf wrote on a GPU by default) fails on a CPU when it runs, not
    when it loads: the export check and `make evaluate` said so in a traceback; now one UserError, the reason."""
    import types

    import tensorflow as tf

    from pipelines import export
    from pipelines.errors import UserError

    reason = "The current platform CPU is not among the platforms required by the module: [CUDA]"

    def cuda_only(image):
        raise tf.errors.NotFoundError(None, None, f"Graph execution error:\n\nDetected at node XlaCallModule\n\n"
                                      f"{reason}\n\t [[{{{{node XlaCallModule}}}}]]")

    monkeypatch.setattr(export, "load_savedmodel", lambda path: types.SimpleNamespace(
        signatures={"serving_default": cuda_only}))
    predict = export.savedmodel_predictor(str(tmp_path))
    with pytest.raises(UserError) as raised:
        predict(np.zeros((2, 28, 28, 1), np.uint8))
    assert str(raised.value) == f"{tmp_path}: its serving_default fails on this machine: {reason}"
