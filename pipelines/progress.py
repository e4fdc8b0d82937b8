"""Progress a person can follow in a log file (`make train > log` prints a line at least every 30 s), and a
training that stops where it is asked to (Ctrl-C, SIGTERM) on every backend, from a backup written whole."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import keras


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLog(keras.callbacks.Callback):
    """When stdout is not a terminal (Keras then prints one line per epoch), a line at most every
    `every_s` seconds within an epoch, and one at each epoch's end: step / steps, images/s, the elapsed
    time and ETA of the epoch and of the run. The images/s are the training steps' own, from the end of the
    epoch's first step (which holds the tracing and the input pipeline's start) to the latest step's end.

        epoch 2/5  step 120/266  85 images/s  epoch 1:30 elapsed, ETA 1:50  run ETA 9:20
    """

    def __init__(self, steps: int, epochs: int, batch_size: int, every_s: float = 30.0, out=None, clock=time.monotonic,
                 images: int | None = None):
        super().__init__()
        self.steps, self.epochs, self.batch_size, self.every_s = steps, epochs, batch_size, every_s
        self.images = images or steps * batch_size  # an epoch's: its last batch may be a partial one
        self.out, self.clock = out, clock
        self.epoch_times: list[float] = []

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.started = epoch, self.clock()
        self.last = self.started
        self.first_end = self.last_end = None  # the clock at the end of the epoch's first step and of its latest
        self.done = 0

    def _through(self, steps: int) -> int:
        """The images of an epoch's first `steps` steps."""
        return min(steps * self.batch_size, self.images)

    def _rate(self) -> float:
        """Training images/s of the epoch's steps after its first; of the whole epoch so far while it has one."""
        if self.done > 1 and self.last_end > self.first_end:
            return (self._through(self.done) - self._through(1)) / (self.last_end - self.first_end)
        return self._through(self.done) / max(self.last_end - self.started, 1e-9)

    def _eta_run(self, epoch_seconds: float) -> float:
        per_epoch = sum(self.epoch_times) / len(self.epoch_times) if self.epoch_times else epoch_seconds
        return per_epoch * (self.epochs - self.epoch - 1)

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        if self.first_end is None:
            self.first_end = now
        self.last_end, self.done = now, batch + 1
        if now - self.last < self.every_s:
            return
        self.last = now
        done, elapsed = batch + 1, now - self.started
        rate = self._rate()
        eta_epoch = (self.images - self._through(done)) / max(rate, 1e-9)
        if self.epoch_times and done * 10 < self.steps:  # a few steps in: a slow first step would dominate
            eta_epoch = sum(self.epoch_times) / len(self.epoch_times) * (self.steps - done) / self.steps
        self._print(f"epoch {self.epoch + 1}/{self.epochs}  step {done}/{self.steps}  {rate:.0f} images/s  "
                    f"epoch {_clock(elapsed)} elapsed, ETA {_clock(eta_epoch)}  "
                    f"run ETA {_clock(eta_epoch + self._eta_run(elapsed + eta_epoch))}")

    def on_epoch_end(self, epoch, logs=None):
        took = self.clock() - self.started
        self.epoch_times.append(took)
        rate = self._rate() if self.done else self.images / max(took, 1e-9)
        self._print(f"epoch {epoch + 1}/{self.epochs} done in {_clock(took)} ({rate:.0f} images/s)  "
                    f"run ETA {_clock(self._eta_run(took))}")


_signalled: list[int] = []  # the signal that asked the training under way to stop (StopOnSignal)


def raise_if_signalled() -> None:
    """The KeyboardInterrupt of a signal noted under StopOnSignal and not raised yet (it came as the training
    ended): raised where the caller has kept what the same command resumes from (the trained model saved)."""
    if _signalled:
        raise KeyboardInterrupt(f"signal {_signalled.pop()}")


class StopOnSignal(keras.callbacks.Callback):
    """Around a training and what must follow it before it can stop (`with StopOnSignal() as stop:
    model.fit(..., callbacks=[..., stop]); model.save(...)`, then `raise_if_signalled()`; `stop` last in the
    list): Ctrl-C or SIGTERM stops the training at the end of the step, validation step or epoch under way (after
    the other callbacks' checkpoint and log of an epoch); after `fit` it is only noted until the block ends, and
    raised there by `raise_if_signalled`. The same signal again stops at once. A noted signal wins over another
    exception leaving the block (KerasTuner would count a failed trial and go on to the next).

    On JAX, Ctrl-C and SIGTERM did nothing: the KeyboardInterrupt of Python's handler was raised where JAX's
    asynchronous step blocks, in Keras' conversion of the logs, whose bare `except:` swallowed it
    (keras/src/utils/python_utils.py), and the run went on to its end. On PyTorch one raised inside a custom
    gradient was swallowed by Keras' `CustomGradientFunction` and became an AttributeError (a FAILED run).
    A handler that only takes note, checked between steps, is safe on every backend. A signal that comes after
    the last check (the training finished) is raised by `raise_if_signalled` once the model is saved."""

    def __enter__(self):
        _signalled.clear()
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(signum)
                if callable(handler):  # ignored (nohup, `&`) or the default (SIGTERM kills): left as it is
                    self.previous[signum] = handler
                    signal.signal(signum, self._note)
        return self

    def __exit__(self, exc_type, exc, tb):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            _signalled.clear()  # delivered
        elif exc_type is not None and _signalled:
            raise KeyboardInterrupt(f"signal {_signalled.pop()}") from exc
        return False

    @staticmethod
    def _note(signum, frame):
        if _signalled:
            raise KeyboardInterrupt(f"signal {signum}")
        _signalled.append(signum)
        try:
            print("Stopping at the end of this step (the same signal again stops at once)", file=sys.stderr,
                  flush=True)
        except RuntimeError:  # the signal came while stderr was being written: a reentrant write is refused
            pass

    def _stop_if_signalled(self, *args, **kwargs):
        if _signalled:  # kept until the block ends: swallowed here too, it is raised at the next check
            raise KeyboardInterrupt(f"signal {_signalled[0]}")

    on_train_batch_end = on_test_batch_end = on_epoch_end = _stop_if_signalled


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, each backup written whole or not at all: beside the last one, then renamed over it.

    Keras writes over the last backup in place. A job stopped while it wrote (a Ctrl-C that landed there before
    StopOnSignal, SIGKILL, out of memory) left a half-written file, which the next run loaded in part with only a
    warning ("Skipping variable loading for optimizer 'adam', because it has 77 variables whereas the saved
    optimizer has 63 variables": Adam's moments and step count, and so the learning-rate schedule, started
    afresh, and the resumed model scored 0.58 against 0.75), or could not load at all. Keras 3.15's own
    attributes name the files (`_weights_path`, `_training_metadata_path`) and the position. A local folder (the
    run directory): written with `os`, not Keras' `file_utils`; `double_checkpoint` is not used."""

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = os.path.join(self.backup_dir, "partial.weights.h5")  # Keras asks for the .weights.h5 ending
        metadata = f"{self._training_metadata_path}.partial"
        self.model.save_weights(weights, overwrite=True)
        with open(metadata, "w") as fh:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, fh)
        for path in (weights, metadata):  # on disk before either replaces the last backup (a host that crashes)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        # The weights first: stopped in the microseconds between the two renames, the resumed run trains that
        # epoch again (from its end's weights), where the other order would skip one.
        os.replace(weights, self._weights_path)
        os.replace(metadata, self._training_metadata_path)
