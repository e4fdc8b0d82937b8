"""Every job's `--help` answers without loading TensorFlow, Keras or KerasTuner (the seconds a user waits):
the arguments are read before the heavy imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOBS = ["train", "tune", "evaluate", "compare", "serve", "preview", "convert", "doctor", "ui"]

PROBE = """
import runpy, sys
sys.argv = ["job", "--help"]
try:
    runpy.run_module("pipelines.{job}", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("tensorflow", "keras", "keras_tuner", "jax", "torch", "mlflow") if m in sys.modules)
print("HEAVY", ",".join(heavy), "CODE", code)
"""


@pytest.mark.parametrize("job", JOBS)
def test_help_answers_without_loading_the_frameworks(job):
    out = subprocess.run([sys.executable, "-c", PROBE.format(job=job)], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert "usage:" in out.stdout, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last == "HEAVY  CODE 0", last


def test_an_interrupted_job_says_whether_the_same_command_resumes(capsys):
    from pipelines.cli import run_main

    def killed(argv):
        raise KeyboardInterrupt

    assert run_main(killed, [], resumes="from the last finished epoch") == 130
    assert capsys.readouterr().err.strip() == "interrupted; the same command resumes from the last finished epoch"
    assert run_main(killed, []) == 130  # a server or the UI: nothing to resume
    assert capsys.readouterr().err.strip() == "interrupted"


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupt_that_lands_in_a_gc_callback_still_stops_the_job(capsys, signum):
    """Importing TensorFlow installs JAX's gc callback; a Ctrl-C whose KeyboardInterrupt is raised in it is only
    printed by Python ('Exception ignored in ...'), and `make convert` then ran to its end. SIGTERM: a job whose
    SIGINT is ignored (started with nohup or `&`), stopped politely (`interrupt_on_sigterm`)."""
    import gc
    import signal
    import time

    from pipelines.cli import interrupt_on_sigterm, run_main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # xdist's workers: SIG_IGN
    try:
        if signum == "SIGINT":  # as in a terminal
            signal.signal(signal.SIGINT, signal.default_int_handler)
        else:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            interrupt_on_sigterm()

        def job(work_s):
            fired = []

            def callback(phase, info):  # where the signal handler's KeyboardInterrupt lands
                if not fired:
                    fired.append(phase)
                    raise KeyboardInterrupt

            gc.callbacks.append(callback)
            try:
                gc.collect()
            finally:
                gc.callbacks.remove(callback)
            assert fired
            for _ in range(int(work_s / 0.005)):  # the rest of the job, which the interrupt must stop
                time.sleep(0.005)
            return 0

        assert run_main(job, 1.0) == 130
        err = capsys.readouterr().err
        assert err.strip() == "interrupted" and "Exception ignored" not in err, err
        assert run_main(job, 0) == 0  # it ended before the interrupt came again: done, and nothing is raised later
        time.sleep(0.1)  # (a delivery after run_main returned would raise here, in the caller)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
