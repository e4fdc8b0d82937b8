"""Progress in a log file: a line at most every 30 s within an epoch and one per epoch, with rate and ETAs."""

from __future__ import annotations

import io

import pytest

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


class _SwallowingStep:
    """A signal that arrives inside a bare `except:` of the training loop, as on JAX (Keras' conversion of the
    logs, where JAX's asynchronous step blocks) and PyTorch (Keras' custom-gradient function): Python's handler
    raises its KeyboardInterrupt there, and it is swallowed."""

    def __init__(self, signum, at_step: int):
        self.signum, self.at_step = signum, at_step

    def __call__(self, step: int):
        import os
        import time

        if step == self.at_step:
            try:
                os.kill(os.getpid(), self.signum)
                time.sleep(0.05)  # the handler runs here
            except:  # noqa: E722 (what Keras does)
                pass


def _fit(steps_seen, swallow, stop=None):
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")

    class Steps(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            steps_seen.append(batch)
            swallow(batch)

    callbacks = [Steps(), *([stop] if stop else [])]
    model.fit(np.zeros((40, 4)), np.zeros((40, 2)), batch_size=4, epochs=1, verbose=0, callbacks=callbacks)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_training_at_the_end_of_its_step_even_where_its_interrupt_would_be_swallowed(signum, capsys):
    import signal

    from pipelines.cli import interrupt_on_sigterm
    from pipelines.progress import StopOnSignal, raise_if_signalled

    sig = getattr(signal, signum)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # xdist's workers: SIG_IGN
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
        interrupt_on_sigterm()  # as `make train` does
        interrupt_handler = signal.getsignal(signal.SIGTERM)
        seen = []
        _fit(seen, _SwallowingStep(sig, at_step=3))
        assert len(seen) == 10  # the bug: the interrupt was lost and the training ran to its end

        seen = []
        with pytest.raises(KeyboardInterrupt), StopOnSignal() as stop:
            _fit(seen, _SwallowingStep(sig, at_step=3), stop)
        assert seen == [0, 1, 2, 3]  # stopped at the end of the step the signal came in
        assert "Stopping at the end of this step" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the training
        assert signal.getsignal(signal.SIGTERM) is interrupt_handler

        seen, reached = [], []
        with pytest.raises(KeyboardInterrupt), StopOnSignal() as stop:  # the same signal twice: at once
            _fit(seen, _twice(sig, reached), stop)
        assert seen == [0] and reached == []  # raised inside the step, by the handler of the second signal

        # A signal after the training's last check, while the caller saves its model: noted, raised after it.
        import os
        import time

        saved = []
        with StopOnSignal():
            os.kill(os.getpid(), sig)
            time.sleep(0.05)
            saved.append(True)  # the work after fit goes on
        assert saved
        with pytest.raises(KeyboardInterrupt):
            raise_if_signalled()
        raise_if_signalled()  # once only

        # A noted signal wins over another exception leaving the block (KerasTuner would go on to the next trial).
        with pytest.raises(KeyboardInterrupt), StopOnSignal():
            os.kill(os.getpid(), sig)
            time.sleep(0.05)
            raise ValueError("a trial's own failure")
        raise_if_signalled()  # delivered: nothing left
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def _twice(sig, reached):
    def send(step):
        import os
        import time

        if step == 0:
            os.kill(os.getpid(), sig)
            time.sleep(0.05)
            os.kill(os.getpid(), sig)  # not swallowed: raised by the handler itself, inside the step
            time.sleep(0.05)
            reached.append(step)  # only if the second signal was merely noted
    return send


def test_a_job_stopped_while_its_backup_is_written_resumes_from_the_last_whole_one(tmp_path):
    """Keras wrote over the last backup in place: a job stopped mid-write left half a file, loaded in part (the
    optimizer's state dropped with a warning) or not at all. Here the last whole backup stands."""
    import os
    import warnings

    import keras
    import numpy as np

    from pipelines.progress import BackupAndRestore

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
        m.compile(optimizer="adam", loss="mse")
        return m

    x, y = np.random.default_rng(0).normal(size=(40, 4)), np.zeros((40, 2))
    ends = []

    class KilledWhileSaving(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # before the backup's, which comes later in the list
            ends.append([w.copy() for w in self.model.get_weights()] +
                        [int(self.model.optimizer.iterations.numpy())])
            if epoch == 1:
                real = self.model.save_weights

                def half_written(filepath, overwrite=True, **kwargs):
                    real(filepath, overwrite=overwrite, **kwargs)
                    with open(filepath, "r+b") as fh:
                        fh.truncate(os.path.getsize(filepath) // 2)
                    raise KeyboardInterrupt("killed while the backup was written")
                self.model.save_weights = half_written

    backup = str(tmp_path / "backup")
    first = model()
    with pytest.raises(KeyboardInterrupt):
        first.fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=[KilledWhileSaving(), BackupAndRestore(backup)])
    assert os.listdir(backup) and len(ends) == 2

    again = model()
    restored = []

    class Restored(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # after the backup's (earlier in the list) has loaded
            restored.extend([*self.model.get_weights(), int(self.model.optimizer.iterations.numpy())])

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Ss]kipping variable loading")  # the optimizer's state dropped
        history = again.fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=[BackupAndRestore(backup), Restored()])
    assert len(history.history["loss"]) == 3  # epochs 2-4: epoch 1's backup is the last whole one
    assert restored[-1] == ends[0][-1] == 10  # Adam's step count (and moments) of the end of epoch 1
    for a, b in zip(restored[:-1], ends[0][:-1]):
        np.testing.assert_array_equal(a, b)


_JOB = """
import atexit, sys
from pipelines.cli import exit_job, run_main

atexit.register(lambda: open(sys.argv[2], "w").write("shutdown ran"))  # stands for Python's shutdown work


def main(argv=None):
    print("a line without its end", end="")  # still in stdout's buffer
    if sys.argv[1] == "interrupt":
        raise KeyboardInterrupt
    return 0


exit_job(run_main(main, resumes="from its last epoch"))
"""


@pytest.mark.parametrize("how,supervised", [("interrupt", False), ("finish", False), ("interrupt", True)])
def test_an_interrupted_job_exits_without_python_s_shutdown_and_loses_no_output(tmp_path, how, supervised):
    """After Ctrl-C the job has saved what it resumes from; Python's shutdown then waited for tf.data's threads to
    finish batches nobody reads (`make train` on one core: 7.8 s from the "interrupted" line to the prompt, 2.3 s
    without it). A job that ends otherwise shuts down as usual, and so does a process of a training across
    processes (supervised): its peers wait for JAX's shutdown at exit."""
    import os
    import subprocess
    import sys

    from pipelines.distribute import ENV_SUPERVISED

    script, marker = tmp_path / "job.py", tmp_path / "shutdown"
    script.write_text(_JOB)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != ENV_SUPERVISED}
    out = subprocess.run([sys.executable, str(script), how, str(marker)], cwd=root, capture_output=True, text=True,
                         env=dict(env, PYTHONPATH=root, **({ENV_SUPERVISED: "1"} if supervised else {})), timeout=120)
    assert out.stdout == "a line without its end"
    if supervised:
        assert out.returncode == 130 and marker.read_text() == "shutdown ran"
    elif how == "interrupt":
        assert out.returncode == 130 and out.stderr.splitlines()[-1] == \
            "interrupted; the same command resumes from its last epoch"
        assert not marker.exists()
    else:
        assert out.returncode == 0 and marker.read_text() == "shutdown ran"


@pytest.mark.parametrize("job", ["train.py", "tune/job.py", "tune/__main__.py", "evaluate.py", "convert.py"])
def test_the_jobs_that_read_data_leave_through_exit_job(job):
    """Their data pipelines' threads are what Python's shutdown waited for after Ctrl-C."""
    import os

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "pipelines", job)) as fh:
        source = fh.read()
    assert "exit_job(run_main(" in source and "sys.exit(run_main(" not in source
