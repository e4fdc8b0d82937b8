"""Gentle version swaps: the load leaves requests the GIL (pipelines/serving/polite.py) and the new version is
warmed up at the batch sizes the traffic has had (pipelines/serving/savedmodel.load_servable); an export that
compiles per batch size (JAX's) runs at padded sizes, and is warmed at those."""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.serving import polite as polite_mod
from pipelines.serving.polite import polite


def busy_python(seconds: float) -> int:
    """Pure Python calls for `seconds` (what `tf.saved_model.load` mostly is), holding the GIL."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += len(str(n))
    return n


def test_it_pauses_after_every_slice_and_returns_the_value(monkeypatch):
    """On a fake clock (0.5 ms per reading): a pause each time a slice (2 ms) has passed since the last one."""
    tick, pauses = 0.0005, []
    clock = {"t": 0.0}

    def perf_counter():
        clock["t"] += tick
        return clock["t"]

    monkeypatch.setattr(polite_mod, "time", SimpleNamespace(perf_counter=perf_counter,
                                                            sleep=lambda s: pauses.append((clock["t"], s))))
    def square(i):
        return i * i

    assert polite(lambda: [square(i) for i in range(300)][-1]) == 299 * 299
    assert len(pauses) >= 50  # 600 calls and returns: a slice every 4 readings
    assert all(s == polite_mod.PAUSE_S for _, s in pauses)
    gaps = np.diff([t for t, _ in pauses])
    assert gaps.min() >= polite_mod.SLICE_S and gaps.max() <= polite_mod.SLICE_S + 3 * tick, gaps


def test_the_hook_is_removed_and_exceptions_pass_through():
    before = sys.getprofile()

    def boom():
        raise KeyError("bad export")

    with pytest.raises(KeyError, match="bad export"):
        polite(boom)
    assert sys.getprofile() is before


def test_only_the_calling_thread_pauses(monkeypatch):
    pauses = {}
    real_sleep = time.sleep

    def sleep(s):
        pauses[threading.current_thread().name] = pauses.get(threading.current_thread().name, 0) + 1
        real_sleep(s)

    monkeypatch.setattr(polite_mod.time, "sleep", sleep)
    other = threading.Thread(target=busy_python, args=(0.1,), name="request")
    other.start()
    polite(lambda: busy_python(0.1))
    other.join()
    assert pauses.get(threading.current_thread().name, 0) > 0
    assert "request" not in pauses


def test_a_waiting_thread_gets_the_gil_sooner():
    """A thread that needs the GIL in short turns (a request) is held up for a switch interval (5 ms) at a time
    by a thread running Python; against a polite one, for about a slice (2 ms)."""

    def worst_gap(runner) -> float:
        gaps, stop = [], threading.Event()

        def ticker():
            last = time.perf_counter()
            while not stop.is_set():
                time.sleep(0.0002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        th = threading.Thread(target=ticker)
        th.start()
        runner(lambda: busy_python(0.3))
        stop.set()
        th.join()
        return sorted(gaps)[int(0.9 * len(gaps))]  # the 90th percentile: robust to a busy machine

    plain = worst_gap(lambda fn: fn())
    kind = worst_gap(polite)
    assert kind < 0.75 * plain, (kind, plain)


def test_the_manager_loads_politely_only_while_something_is_served(tmp_path, monkeypatch):
    from pipelines.serving import servables

    class Loaded:  # what load_servable returns, enough for the manager
        def __init__(self, version):
            self.version = version

    loads = []

    def fake_load(name, version, path, warm_rows=(1,), max_request_pixels=None, max_batch=None):
        loads.append((version, sys.getprofile() is not None, list(warm_rows)))  # the hook is on while polite
        assert max_batch == 48  # the server's --max-batch: a padded call runs no more rows than a batch
        return Loaded(version)

    monkeypatch.setattr(servables, "load_servable", fake_load)
    (tmp_path / "m" / "1").mkdir(parents=True)
    manager = servables.ModelManager(str(tmp_path), max_batch=48)
    try:
        manager.poll_once()  # start-up: nothing served yet, full speed
        batcher = manager.resolve("m")[1]
        for rows in (3, 8, 8, 1):  # the traffic's batches so far
            batcher._called({"x": np.zeros((rows, 1))})
        (tmp_path / "m" / "2").mkdir()
        manager.poll_once()  # version 1 is serving: the load of 2 leaves requests the GIL
        assert loads[0] == (1, False, [])
        assert loads[1][:2] == (2, True)
        assert loads[1][2][0] == 8 and sorted(loads[1][2]) == [1, 3, 8]  # the most frequent size first
        assert manager.resolve("m")[0].version == 2
    finally:
        manager.stop()


def test_a_loaded_version_is_warmed_up_at_the_given_batch_sizes(tmp_path, monkeypatch):
    from pipelines.export import export_model
    from pipelines.serving import savedmodel
    from tests.pipelines.test_serve import tiny_model

    path = export_model(tiny_model(0), str(tmp_path), "tiny")
    calls = []
    real_run = savedmodel.Servable.run
    monkeypatch.setattr(savedmodel.Servable, "run", lambda self, feeds: (
        calls.append(len(next(iter(feeds.values())))), real_run(self, feeds))[1])
    savedmodel.load_servable("tiny", 1, path, warm_rows=[8, 3, 1])
    assert calls == [1, 8, 3]  # 1 first (it checks the export), each size once
    calls.clear()
    savedmodel.load_servable("tiny", 1, path, warm_rows=[8, 3], warm_budget_s=0.0)
    assert calls == [1]  # no time for more: the other sizes are left to the traffic


def test_an_export_that_compiles_per_batch_size_is_run_and_warmed_at_padded_sizes(tmp_path, monkeypatch):
    """A JAX export (`XlaCallModule` ops, compiled once per batch size) is `bucketed`: its rows are padded to the
    next power of 2 and the answers cut back; it is warmed at the padded sizes the traffic has had, past the
    warm-up budget (a compile is 0.5-2 s). A TensorFlow export, without such ops, is not."""
    import base64

    from pipelines.export import export_model
    from pipelines.serving import savedmodel
    from tests.pipelines.test_serve import png, tiny_model

    path = export_model(tiny_model(0), str(tmp_path), "tiny")
    plain = savedmodel.load_servable("tiny", 1, path)
    assert not plain.bucketed and savedmodel.jax2tf_platforms(savedmodel._read_proto(path)) == []
    assert [savedmodel.padded_rows(n) for n in (1, 2, 3, 5, 8, 9, 33)] == [1, 2, 4, 8, 8, 16, 64]

    monkeypatch.setattr(savedmodel, "jax2tf_platforms", lambda proto: [["CPU", "CUDA"]])  # as a JAX export's
    warmed, real_run = [], savedmodel.Servable.run
    monkeypatch.setattr(savedmodel.Servable, "run", lambda self, feeds: (
        warmed.append(len(next(iter(feeds.values())))), real_run(self, feeds))[1])
    bucketed = savedmodel.load_servable("tiny", 1, path, warm_rows=[8, 3, 5, 1, 100], warm_budget_s=0.0)
    assert bucketed.bucketed and warmed == [1, 8, 4, 64]  # 3, 5 run as 4, 8; 100 in chunks of 64: each size once
    monkeypatch.setattr(savedmodel.Servable, "run", real_run)

    seen = []

    def recording(fn):
        def call(**feeds):
            seen.append(int(next(iter(feeds.values())).shape[0]))
            return fn(**feeds)
        call.structured_input_signature = fn.structured_input_signature
        return call

    bucketed._fn = recording(bucketed._fn)
    bucketed._signatures = {k: recording(f) for k, f in bucketed._signatures.items()}
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    want = plain.run({"image": x})
    got = bucketed.run({"image": x})
    assert seen == [4] and got.keys() == want.keys()
    for k in want:
        assert len(got[k]) == 3
        if want[k].dtype == object:
            assert got[k].tolist() == want[k].tolist()
        else:
            np.testing.assert_allclose(got[k], want[k], atol=1e-6)
    seen.clear()  # a large request: in chunks of CHUNK_ROWS, the last padded
    x70 = np.random.default_rng(1).integers(0, 256, (savedmodel.CHUNK_ROWS + 6, 28, 28, 1), dtype=np.uint8)
    got = bucketed.run({"image": x70})
    assert seen == [savedmodel.CHUNK_ROWS, 8]
    np.testing.assert_allclose(got["probabilities"], plain.run({"image": x70})["probabilities"], atol=1e-6)
    # the encoded-image signature too, a file ending in zero bytes kept whole (BMP rows of black pixels), given
    # as a list (NumPy's bytes type would drop those zeros)
    files = [base64.b64decode(png(im, "BMP")) for im in np.concatenate([x, np.zeros_like(x[:2])])]
    assert files[-1].endswith(b"\0\0\0")
    seen.clear()
    got = bucketed.run_signature("image_bytes", {"image_bytes": list(files)})
    assert seen == [8] and len(got["class_id"]) == 5
    np.testing.assert_array_equal(got["class_id"], plain.run_signature(
        "image_bytes", {"image_bytes": np.array(files, dtype=object)})["class_id"])
    np.testing.assert_array_equal(got["class_id"][:3], want["class_id"])

    # `make serve --max-batch 48`: the batcher runs at most 48 rows, and so does a padded call (not 64, past it)
    assert [savedmodel.padded_rows(n, 48) for n in (3, 33, 40, 48)] == [4, 48, 48, 48]
    monkeypatch.setattr(savedmodel.Servable, "run", lambda self, feeds: (
        warmed.append(len(next(iter(feeds.values())))), real_run(self, feeds))[1])
    warmed.clear()
    capped = savedmodel.load_servable("tiny", 1, path, warm_rows=[100, 40, 3], warm_budget_s=0.0, max_batch=48)
    assert capped.max_rows == 48 and warmed == [1, 48, 4]
    monkeypatch.setattr(savedmodel.Servable, "run", real_run)
    capped._fn = recording(capped._fn)
    seen.clear()
    got = capped.run({"image": x70})
    assert seen == [48, 32]  # 70 rows: 48, then 22 padded to 32
    np.testing.assert_allclose(got["probabilities"], plain.run({"image": x70})["probabilities"], atol=1e-6)


def test_a_version_that_fails_with_a_graph_error_is_listed_with_its_reason(tmp_path, monkeypatch):
    """TensorFlow's graph errors start "Graph execution error:" and give the reason lines later (here what a
    JAX export lowered for CUDA only says on a CPU): the status and the log give the reason, not the first line."""
    import tensorflow as tf

    from pipelines.serving import servables

    reason = "The current platform CPU is not among the platforms required by the module: [CUDA]"

    def failing_load(name, version, path, warm_rows=(1,), max_request_pixels=None, max_batch=None):
        raise tf.errors.NotFoundError(None, None, f"Graph execution error:\n\nDetected at node XlaCallModule defined "
                                      f"at (most recent call last):\n  File x.py, line 1\n\n{reason}\n\t "
                                      f"[[{{{{node XlaCallModule}}}}]] [Op:__inference_signature_wrapper_1]")

    monkeypatch.setattr(servables, "load_servable", failing_load)
    (tmp_path / "m" / "1").mkdir(parents=True)
    manager = servables.ModelManager(str(tmp_path))
    try:
        manager.poll_once()
        (status,) = manager.status("m")
        assert status.state == "END" and status.error_message == f"NotFoundError: {reason}"
    finally:
        manager.stop()


def test_a_padded_call_repeats_the_row_with_the_fewest_pixels(tmp_path, monkeypatch):
    """Padding with the last row would let a request of small images and one large one last decode that one
    up to 63 more times, past `--max-request-pixels` (checked on the rows sent): it repeats the smallest."""
    import base64

    from pipelines.export import export_model
    from pipelines.serving import savedmodel
    from pipelines.signatures import example
    from tests.pipelines.test_serve import png, tiny_model

    monkeypatch.setattr(savedmodel, "jax2tf_platforms", lambda proto: [["CPU"]])
    servable = savedmodel.load_servable("tiny", 1, export_model(tiny_model(0), str(tmp_path), "tiny"))
    fed = []
    for name, fn in list(servable._signatures.items()):
        def call(fn=fn, **feeds):
            fed.append(next(iter(feeds.values())).numpy().tolist())
            return fn(**feeds)
        call.structured_input_signature = fn.structured_input_signature
        servable._signatures[name] = call
    files = [base64.b64decode(png(np.full((side, side, 1), 9, np.uint8))) for side in (40, 8, 200)]
    out = servable.run_signature("image_bytes", {"image_bytes": np.array(files, dtype=object)})
    assert len(out["class_id"]) == 3 and fed[-1] == files + [files[1]]  # 3 rows run as 4: the 8x8 again

    examples = [example(f) for f in files]
    out = servable.classify(examples)
    assert out["scores"].shape == (3, 10) and fed[-1] == examples + [examples[1]]
