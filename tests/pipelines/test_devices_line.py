"""The devices line that `make train` and `make tune` print, and MLflow's `devices` tag, say which CPU kernel set
TensorFlow runs (pipelines/experiment.py `describe_devices`, `onednn_state`), in a fresh process per setting:
TF_ENABLE_ONEDNN_OPTS is read when TensorFlow loads."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CODE = ("from tensorflow.python.util import _pywrap_util_port\n"
        "from pipelines.experiment import describe_devices\n"
        "print(_pywrap_util_port.IsMklEnabled())\n"
        "print(describe_devices())")


def _devices_line(setting):
    """(whether oneDNN is on, the devices line) in a process started with TF_ENABLE_ONEDNN_OPTS=setting (None:
    unset: TensorFlow's own choice for this CPU)."""
    pytest.importorskip("tensorflow")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    out = subprocess.run([sys.executable, "-c", CODE], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    on, line = out.stdout.strip().splitlines()[-2:]
    if "GPU(s): " in line:
        pytest.skip(f"a GPU machine: the line names the GPUs ({line})")
    return on == "True", line


@pytest.mark.parametrize("setting", ["0", "1", None])
def test_the_line_says_which_kernel_set_tensorflow_runs_and_the_setting_that_decided_it(setting):
    on, line = _devices_line(setting)
    if setting is not None:
        assert on == (setting == "1")  # the setting took effect where the line says it did
    assert line.startswith("0 GPU(s); CPU only: /physical_device:CPU:0"), line
    assert line.endswith(f"; oneDNN {'on' if on else 'off'} (TF_ENABLE_ONEDNN_OPTS={setting or 'unset'})"), line


def test_on_jax_the_line_names_jax_devices_not_tensorflow_s():
    """On JAX (and PyTorch) TensorFlow only feeds tf.data: the line names the backend's own devices."""
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", "from pipelines.experiment import describe_devices\n"
                          "import jax\nprint(jax.default_backend())\nprint(describe_devices())"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    platform, line = out.stdout.strip().splitlines()[-2:]
    if platform != "cpu":
        pytest.skip(f"a GPU machine: {line}")
    assert line == "0 GPU(s); CPU only (jax)"
