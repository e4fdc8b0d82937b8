"""The batching queue of the server (pipelines/serving/servables.Batcher), on fake servables."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pipelines.serving.servables import Batcher


class FakeServable:
    """Doubles its input; records the batch sizes it ran; fails on a negative value."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset
        self.batches: list[list[float]] = []
        self.lock = threading.Lock()

    def run(self, inputs):
        x = inputs["x"]
        with self.lock:
            self.batches.append(x[:, 0].tolist())
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": 2 * x + self.offset, "n": np.full(len(x), len(x))}


def one(v: float, rows: int = 1):
    return {"x": np.full((rows, 1), v, np.float32)}


@pytest.fixture
def make_batcher():
    made = []

    def make(**kw):
        b = Batcher("fake", **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def test_waiting_requests_run_as_one_call_and_each_gets_its_rows(make_batcher):
    s = FakeServable()
    b = make_batcher(max_batch=4, batch_wait_ms=5000)  # a full batch does not wait
    futures = [b.submit(s, one(v)) for v in (1, 2, 3, 4)]
    outs = [f.result(timeout=10) for f in futures]
    assert [o["y"][:, 0].tolist() for o in outs] == [[2], [4], [6], [8]]
    assert [o["n"].tolist() for o in outs] == [[4]] * 4  # all four ran in one signature call
    assert s.batches == [[1, 2, 3, 4]]


def test_batches_never_exceed_max_batch_rows(make_batcher):
    s = FakeServable()
    b = make_batcher(max_batch=3, batch_wait_ms=200)
    futures = [b.submit(s, one(v, rows=r)) for v, r in [(1, 1), (2, 2), (3, 1), (4, 5), (5, 1)]]
    outs = [f.result(timeout=10) for f in futures]
    assert [o["y"][:, 0].tolist() for o in outs] == [[2], [4, 4], [6], [8] * 5, [10]]
    sizes = [len(batch) for batch in s.batches]
    assert sum(sizes) == 10
    assert max(sizes) <= 3  # the 5-row request too runs in chunks


class GatedServable(FakeServable):
    """A FakeServable whose first call waits for `gate`, so that requests can queue up behind it."""

    def __init__(self):
        super().__init__()
        self.gate, self.started = threading.Event(), threading.Event()

    def run(self, inputs):
        self.started.set()
        assert self.gate.wait(10)
        return super().run(inputs)


def test_by_default_the_requests_that_arrive_during_a_call_form_the_next_batch(make_batcher):
    """The default wait is 0 (TF Serving's batch_timeout_micros): nothing waits for company, and what queued
    while the model ran goes out as one call."""
    s = GatedServable()
    b = make_batcher(max_batch=8)
    assert b.batch_wait_ms == 0
    first = b.submit(s, one(1))
    assert s.started.wait(10)  # it ran alone, at once
    queued = [b.submit(s, one(v)) for v in (2, 3, 4)]
    s.gate.set()
    assert first.result(timeout=10)["n"].tolist() == [1]
    assert [f.result(timeout=10)["n"].tolist() for f in queued] == [[3]] * 3
    assert s.batches == [[1], [2, 3, 4]]


def test_a_large_request_takes_turns_with_small_ones(make_batcher):
    """Before: a 10-row request was one call, and requests behind it waited for all of it."""
    s = GatedServable()
    b = make_batcher(max_batch=4, batch_wait_ms=0)
    big = b.submit(s, {"x": np.arange(100, 110, dtype=np.float32)[:, None]})
    assert s.started.wait(10)  # its first chunk is running
    small = [b.submit(s, one(v)) for v in (1, 2)]
    s.gate.set()
    assert [f.result(timeout=10)["y"][:, 0].tolist() for f in small] == [[2], [4]]
    assert big.result(timeout=10)["y"][:, 0].tolist() == [2 * v for v in range(100, 110)]  # rows in order
    assert s.batches[0] == [100, 101, 102, 103]
    assert sorted(s.batches[1]) == [1, 2, 104, 105]  # the small ones ride in the very next batch
    assert all(len(batch) <= 4 for batch in s.batches)
    assert sorted(v for batch in s.batches for v in batch) == [1, 2, *range(100, 110)]


def test_two_large_requests_share_every_batch(make_batcher):
    s = GatedServable()
    b = make_batcher(max_batch=4, batch_wait_ms=0)
    first = b.submit(s, {"x": np.full((2, 1), 9, np.float32)})
    assert s.started.wait(10)
    a, c = (b.submit(s, {"x": np.full((8, 1), v, np.float32)}) for v in (1, 3))
    s.gate.set()
    assert a.result(timeout=10)["y"].shape == (8, 1) and c.result(timeout=10)["y"].shape == (8, 1)
    assert first.result(timeout=10)["y"][:, 0].tolist() == [18, 18]
    assert [sorted(batch) for batch in s.batches[1:]] == [[1, 1, 3, 3]] * 4


def test_an_abandoned_request_stops_using_the_model(make_batcher):
    s = GatedServable()
    b = make_batcher(max_batch=2, batch_wait_ms=0)
    big = b.submit(s, {"x": np.ones((100, 1), np.float32)})
    assert s.started.wait(10)
    big.set_exception(TimeoutError("the client went away"))  # what the HTTP side does on a timeout
    s.gate.set()
    assert b.submit(s, one(5)).result(timeout=10)["y"][:, 0].tolist() == [10]
    assert sum(len(batch) for batch in s.batches) <= 2 + 2 + 1  # not the 98 rows left


def test_a_failing_chunk_fails_only_its_request(make_batcher):
    s = FakeServable()
    b = make_batcher(max_batch=3, batch_wait_ms=200)
    x = np.arange(1, 8, dtype=np.float32)[:, None]
    x[5] = -1  # in the second chunk
    bad = b.submit(s, {"x": x})
    good = b.submit(s, one(7))
    with pytest.raises(ValueError, match="negative"):
        bad.result(timeout=10)
    assert good.result(timeout=10)["y"][:, 0].tolist() == [14]


def test_a_failing_request_does_not_fail_the_others_in_its_batch(make_batcher):
    s = FakeServable()
    b = make_batcher(max_batch=3, batch_wait_ms=5000)
    futures = [b.submit(s, one(v)) for v in (1, -1, 3)]
    assert futures[0].result(timeout=10)["y"][:, 0].tolist() == [2]
    with pytest.raises(ValueError, match="negative"):
        futures[1].result(timeout=10)
    assert futures[2].result(timeout=10)["y"][:, 0].tolist() == [6]


def test_requests_for_two_versions_run_on_their_own_version(make_batcher):
    old, new = FakeServable(0.0), FakeServable(100.0)
    b = make_batcher(max_batch=3, batch_wait_ms=5000)
    futures = [b.submit(s, one(v)) for s, v in [(old, 1), (new, 2), (old, 3)]]
    outs = [f.result(timeout=10)["y"][:, 0].tolist() for f in futures]
    assert outs == [[2], [104], [6]]
    assert old.batches == [[1, 3]] and new.batches == [[2]]


def test_max_batch_one_never_batches(make_batcher):
    s = FakeServable()
    b = make_batcher(max_batch=1, batch_wait_ms=500)
    futures = [b.submit(s, one(v)) for v in (1, 2, 3)]
    assert [f.result(timeout=10)["n"].tolist() for f in futures] == [[1]] * 3
    assert s.batches == [[1], [2], [3]]


@pytest.mark.parametrize("kw", [{"max_batch": 0}, {"batch_wait_ms": -1}, {"threads": 0}])
def test_bad_settings_are_rejected(kw):
    with pytest.raises(ValueError, match=str(list(kw.values())[0])):
        Batcher("fake", **kw)
