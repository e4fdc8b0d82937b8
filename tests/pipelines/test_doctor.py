"""`make doctor`: the machine report and the per-family checks against NumPy references, passing and failing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipelines import doctor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAMILIES = ("shift", "harmonic", "group", "scale")


def _family_lines(text):
    return {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}


def test_every_family_passes_on_this_backend_and_the_report_names_the_machine(capsys):
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    lines = _family_lines(out)
    assert sorted(lines) == sorted(FAMILIES)
    assert all(" ok " in line for line in lines.values()), out
    assert "versions: " in out and "Keras 3." in out and "backend: " in out and "devices: " in out
    assert out.rstrip().endswith("doctor: all layer families pass")


def test_a_family_whose_kernel_computes_wrong_values_fails_alone_and_the_exit_code_says_so(monkeypatch, capsys):
    from layers.shift.blurpool import BlurPool2D

    call = BlurPool2D.call
    monkeypatch.setattr(BlurPool2D, "call", lambda self, x: call(self, x) * 1.01)  # 1% off: a wrong kernel
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    lines = _family_lines(out)
    assert "FAIL" in lines["shift"] and "BlurPool2D" in lines["shift"] and "forward error 1.00e-02" in lines["shift"]
    assert all(" ok " in lines[f] for f in FAMILIES if f != "shift"), out
    assert "some layer families FAIL" in out


def test_a_family_whose_kernel_raises_reports_the_error_in_one_line(monkeypatch, capsys):
    from layers.group.lifting_conv import LiftingConv2D

    def missing_kernel(self):
        raise RuntimeError("no kernel for this op on this device\nsecond line of a long message")

    monkeypatch.setattr(LiftingConv2D, "dense_kernel", missing_kernel)
    assert doctor.run_checks() is False
    lines = _family_lines(capsys.readouterr().out)
    assert lines["group"].split()[:3] == ["group", "FAIL", "RuntimeError:"]
    assert "no kernel for this op on this device second line" in lines["group"]
    assert " ok " in lines["shift"]


@pytest.mark.parametrize("value", ["0", "1"])
def test_the_report_says_whether_onednn_is_on(value):
    pytest.importorskip("tensorflow")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_ENABLE_ONEDNN_OPTS=value, PYTHONPATH=ROOT,
               TF_CPP_MIN_LOG_LEVEL="2")
    code = "from pipelines import doctor; print('\\n'.join(doctor.machine_lines()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("oneDNN: ")]
    assert line.startswith("oneDNN: on" if value == "1" else "oneDNN: off"), line
    # On a CPU-only machine, TensorFlow's grouped-convolution gradients exist exactly with oneDNN.
    assert line.endswith("grouped-convolution gradients: " + ("yes" if value == "1" else "no")), line
    (tf32,) = [ln for ln in out.stdout.splitlines() if ln.startswith("TF32: ")]
    gpus = pytest.importorskip("tensorflow").config.list_physical_devices("GPU")
    assert tf32.endswith("(used by GPUs since Ampere)" if gpus else "(no GPU here: not used)"), tf32


def test_an_unknown_backend_is_one_error_line_and_exit_2():
    out = subprocess.run([sys.executable, "-m", "pipelines.doctor"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, KERAS_BACKEND="foo", PYTHONPATH=ROOT), timeout=300)
    assert out.returncode == 2 and out.stderr.strip() == \
        "error: KERAS_BACKEND=foo: Unable to import backend : foo (tensorflow, jax or torch)", out.stderr
