"""Progress in a log file: a line at most every 30 s within an epoch and one per epoch, with rate and ETAs."""

from __future__ import annotations

import io

from pipelines.progress import ProgressLog


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _run(steps=100, epochs=2, step_s=1.0):
    clock, out = FakeClock(), io.StringIO()
    cb = ProgressLog(steps, epochs, batch_size=32, every_s=30, out=out, clock=clock)
    for epoch in range(epochs):
        cb.on_epoch_begin(epoch)
        for batch in range(steps):
            clock.now += step_s
            cb.on_train_batch_end(batch)
        cb.on_epoch_end(epoch)
    return out.getvalue().splitlines()


def test_a_line_every_30_seconds_within_an_epoch_and_one_at_its_end_with_rate_and_etas():
    lines = _run()
    within = [ln for ln in lines if " step " in ln]
    ends = [ln for ln in lines if " done in " in ln]
    assert len(ends) == 2 and len(within) == 6  # 100 s epochs: at 30, 60 and 90 s of each
    assert within[0] == "epoch 1/2  step 30/100  32 images/s  epoch 0:30 elapsed, ETA 1:10  run ETA 2:50"
    assert ends[0] == "epoch 1/2 done in 1:40 (32 images/s)  run ETA 1:40"
    assert within[3].startswith("epoch 2/2  step 30/100") and within[3].endswith("run ETA 1:10")
    assert ends[1].endswith("run ETA 0:00")


def test_fast_epochs_print_only_their_end_lines():
    lines = _run(steps=10, epochs=3, step_s=0.5)
    assert lines == [f"epoch {e}/3 done in 0:05 (64 images/s)  run ETA {eta}" for e, eta in ((1, "0:10"), (2, "0:05"), (3, "0:00"))]


def test_a_slow_first_step_of_a_later_epoch_does_not_make_a_wild_eta():
    """Under load the first step of epoch 2 took 55 s; its ETA comes from epoch 1's time, not from that step."""
    clock, out = FakeClock(), io.StringIO()
    cb = ProgressLog(300, 2, batch_size=32, every_s=30, out=out, clock=clock)
    cb.on_epoch_begin(0)
    for batch in range(300):
        clock.now += 0.5
        cb.on_train_batch_end(batch)
    cb.on_epoch_end(0)  # 150 s
    cb.on_epoch_begin(1)
    clock.now += 55
    cb.on_train_batch_end(0)
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("epoch 2/2  step 1/300") and "ETA 2:30 " in line  # 150 s x 299/300, not 4:33:40


def test_images_per_second_leave_out_the_first_step_and_validation():
    """The first step of an epoch holds the tracing (20 s here) and its end comes after validation (10 s): the
    images/s are the steps' own (32 at 1 s per step of 32 images), not 100 x 32 / 129 s."""
    clock, out = FakeClock(), io.StringIO()
    cb = ProgressLog(100, 1, batch_size=32, every_s=30, out=out, clock=clock)
    cb.on_epoch_begin(0)
    for batch in range(100):
        clock.now += 20.0 if batch == 0 else 1.0
        cb.on_train_batch_end(batch)
    clock.now += 10.0
    cb.on_epoch_end(0)
    lines = out.getvalue().splitlines()
    assert lines[0] == "epoch 1/1  step 11/100  32 images/s  epoch 0:30 elapsed, ETA 1:29  run ETA 1:29"  # not 12/s
    assert lines[-1] == "epoch 1/1 done in 2:09 (32 images/s)  run ETA 0:00"


def test_the_last_partial_batch_counts_its_own_images():
    """72 images in batches of 64: the second step holds 8 images, not 64 (a user's log said 1444 images/s for
    a folder of 72 images trained at about 150)."""
    clock, out = FakeClock(), io.StringIO()
    cb = ProgressLog(2, 1, batch_size=64, every_s=30, out=out, clock=clock, images=72)
    cb.on_epoch_begin(0)
    clock.now += 9.0
    cb.on_train_batch_end(0)
    clock.now += 0.05
    cb.on_train_batch_end(1)
    cb.on_epoch_end(0)
    assert out.getvalue().splitlines() == ["epoch 1/1 done in 0:09 (160 images/s)  run ETA 0:00"]
