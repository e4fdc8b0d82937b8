"""bench_rotated_gcnn.py's resumable runs: a model killed after an epoch resumes from it, with the optimiser's
step (hence the cosine schedule) and the clock carried over, and a finished row is not trained again."""

import argparse
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import bench_rotated_gcnn as b  # noqa: E402

TINY = ("baseline_cnn", {"filters": [4], "head": "gap"})


def _args(epochs=3):
    return argparse.Namespace(epochs=epochs, train_size=64, test_size=32, batch_size=16, lr=1e-2, seed=0,
                              verbose=0)


def _data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (96, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 96)
    return (x[:64], y[:64]), (x[64:], y[64:])


class Killed(Exception):
    pass


def test_killed_run_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    train, test = _data()
    args = _args()
    backup = str(tmp_path / "partial" / "tiny")
    original = b.EpochTimes.on_epoch_end

    def kill_after_first(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise Killed

    monkeypatch.setattr(b.EpochTimes, "on_epoch_end", kill_after_first)
    with pytest.raises(Killed):
        b.run("tiny", *TINY, False, train, test, args, backup)
    state = json.load(open(os.path.join(backup, "times.json")))
    assert len(state["epoch times"]) == 1 and state["fit s"] > 0
    monkeypatch.setattr(b.EpochTimes, "on_epoch_end", original)

    seen = []
    fit = b.keras.Model.fit

    def spy(model, *a, **kw):
        history = fit(model, *a, **kw)
        seen.append((len(history.epoch), int(model.optimizer.iterations.numpy())))
        return history

    monkeypatch.setattr(b.keras.Model, "fit", spy)
    row = b.run("tiny", *TINY, False, train, test, args, backup)
    # Two epochs ran in the second sitting, and the optimiser's step went on from the first sitting's 4.
    assert seen == [(2, 3 * 4)]
    assert row["resumed after epochs"] == [1]
    assert row["train s"] >= state["fit s"]
    assert row["train img/s"] == pytest.approx(3 * 64 / row["train s"])


def test_uninterrupted_run_lists_no_resume_and_each_setting_has_its_own_checkpoint(tmp_path):
    train, test = _data()
    args = _args(epochs=1)
    row = b.run("tiny", *TINY, False, train, test, args, str(tmp_path / "p"))
    assert "resumed after epochs" not in row
    key = json.dumps(["tiny"])
    d1 = b.backup_dir(str(tmp_path / "r.json"), key)
    d2 = b.backup_dir(str(tmp_path / "r.json"), json.dumps(["tiny", 1]))
    assert d1 != d2 and d1.startswith(str(tmp_path / "r.json.partial"))
