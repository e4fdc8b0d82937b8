"""One end-to-end check (slow): make train evaluates at its end; make evaluate by run id and by
export path; make compare on the result."""

import json
import os
import re

import mlflow
import numpy as np
import pytest
from PIL import Image

from pipelines import compare, evaluate, train
from pipelines.cli import run_main
from pipelines.config import config_from_dict
from pipelines.errors import UserError

EVAL = ["evaluate.max_images=40", "evaluate.rotation_step=90", "evaluate.elastic_alphas=[0, 8]"]


@pytest.mark.slow
def test_train_then_evaluate_by_run_id_and_by_export_then_compare(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    cfg = config_from_dict(
        {
            "data": {"synthetic": {"train_size": 300, "test_size": 100}, "batch_size": 64,
                     "cache_dir": str(tmp_path / "cache")},
            "model": {"name": "baseline_cnn", "params": {"filters": [4], "dense_units": 8}},
            "train": {"epochs": 1, "runs_root": str(tmp_path / "runs"), "verbose": "0"},
            "tracking": {"uri": uri, "register_model": False},
            "export": {"dir": str(tmp_path / "exports"), "min_test_accuracy": 0},  # the guard has its own tests
        },
        EVAL,
    )
    try:
        result = train.run(cfg)
    finally:
        mlflow.set_tracking_uri(previous)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    # make train ran the evaluation inside its run
    assert run.data.metrics["eval_images"] == 40
    assert {"rot_acc_000", "rot_acc_270", "shift_consistency", "elastic_acc_8"} <= set(run.data.metrics)
    in_training = {os.path.basename(a.path) for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"rotation_curve.png", "filters.png", "invariance.md"} <= in_training
    assert os.path.isfile(os.path.join(result.run_dir, "evaluation", "rotation_curve.png"))
    capsys.readouterr()

    # by run id: the stored config and model, results logged to the same (finished) run
    reports = tmp_path / "reports"
    args = ["--tracking-uri", uri, "--reports-dir", str(reports), *EVAL, "evaluate.shift_range=1"]
    assert run_main(evaluate.main, ["--run", result.run_id, *args]) == 0
    out = capsys.readouterr().out
    assert "shift consistency (+-1 px, pad-and-crop)" in out and "Report: " in out
    by_run = json.loads((reports / f"run-{result.run_id[:8]}" / "invariance.json").read_text())
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["shift_consistency"] == pytest.approx(by_run["shift_consistency"])

    # by export path (the model directory: its highest version), on the SavedModel's uint8 signature
    assert run_main(evaluate.main, ["--run", os.path.dirname(result.export_path), *args]) == 0
    by_export = json.loads((reports / "default-v1" / "invariance.json").read_text())
    # unrotated and rot90 images stay exact uint8 pixels: both ways must agree there
    for k in ("rot_acc_000", "rot_acc_090", "rot_acc_180", "rot_acc_270"):
        assert by_export[k] == pytest.approx(by_run[k])
    assert not any(k.startswith("equiv_err") for k in by_export)
    # a second evaluation of the same version keeps the first report and writes its own beside it
    assert run_main(evaluate.main, ["--run", os.path.dirname(result.export_path), *args]) == 0
    assert json.loads((reports / "default-v1" / "invariance.json").read_text()) == by_export
    assert json.loads((reports / "default-v1-1" / "invariance.json").read_text()) == pytest.approx(by_export)

    _, table, files = compare.compare([result.run_id], uri, str(reports))
    assert result.run_id[:8] in table and all(os.path.isfile(f) for f in files)

    # test data whose classes are not the model's ("3" gone, "x" new): one error by run id and by export, no
    # report; scored, class ids would be taken for other classes (a 100% model once scored 0%)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ["0", "1", "2", "4", "5", "6", "7", "8", "9", "x"]:
            (tmp_path / "other" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                    tmp_path / "other" / split / c / f"{i}.png")
    before = sorted(os.listdir(reports))
    for run in (result.run_id, os.path.dirname(result.export_path)):
        assert run_main(evaluate.main, ["--run", run, *args, f"data.source=folder:{tmp_path / 'other'}"]) == 2
        err = capsys.readouterr().err
        assert "it lacks [3]; it has [x], which the model does not answer" in err, err
        assert "Traceback" not in err and err.count("error:") == 1, err
    # the model's classes on images of another size: one error naming both shapes (it was a traceback from inside
    # the model, or from the SavedModel's graph)
    big = rng.integers(0, 256, (20, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "big.npz", x_train=big, y_train=np.arange(20) % 10, x_test=big, y_test=np.arange(20) % 10)
    for run in (result.run_id, os.path.dirname(result.export_path)):
        assert run_main(evaluate.main, ["--run", run, *args, f"data.source=npz:{tmp_path / 'big.npz'}"]) == 2
        err = capsys.readouterr().err
        assert "are 32 x 32 x 1, and" in err and "takes 28 x 28 x 1" in err and "data.image_size=[H,W]" in err, err
        assert "Traceback" not in err and err.count("error:") == 1, err
    assert sorted(os.listdir(reports)) == before


def test_a_model_of_any_size_takes_test_images_of_any_size_and_others_their_own():
    evaluate._check_shape((None, None, 3), (64, 48, 3), "m", "folder:d")
    evaluate._check_shape(None, (64, 48, 3), "m", "folder:d")  # an export from before signature.json: not known
    with pytest.raises(UserError, match=re.escape("are 64 x 48 x 1, and m takes any x any x 3")):
        evaluate._check_shape((None, None, 3), (64, 48, 1), "m", "folder:d")


def test_classes_in_another_order_are_named():
    with pytest.raises(UserError, match=re.escape("in another order: [b, a] against the model's [a, b]")):
        evaluate._check_classes(["a", "b"], ["b", "a"], "m", "folder:d")
    evaluate._check_classes(["a", "b"], ["a", "b"], "m", "folder:d")
    evaluate._check_classes(None, ["a", "b"], "m", "folder:d")  # an export from before labels.txt: not known
