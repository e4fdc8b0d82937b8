"""A `.keras` file saved under one Keras backend loads under the other and gives the same outputs.

Built and saved here (the backend of this test run), loaded in a subprocess on
the other one (TensorFlow <-> JAX): the baseline variants that hold every
shift-invariance layer, and an H-Net with every harmonic layer.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OTHER = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
SHAPE = (16, 16, 1)

CASES = {
    "blur_spatial_separable_circular": (
        "baseline_cnn", {"downsample": "blur", "conv": "spatial_separable", "conv_rank": 2, "padding": "circular"}),
    "aps_circular_gap": ("baseline_cnn", {"downsample": "aps", "padding": "circular", "head": "gap", "blur_size": 3}),
    "blur_strided_blur_avg_separable": ("baseline_cnn", {"downsample": ["blur_strided", "blur_avg"], "conv": "separable"}),
    "hnet": ("hnet", {"filters": [4, 4], "convs_per_stage": 1, "blur_size": 3}),
}

LOADER = """
import sys
import keras
import numpy as np
import layers  # its __init__ imports every public layer, which registers them
x = np.load(sys.argv[1])
outputs = [keras.ops.convert_to_numpy(keras.saving.load_model(p)(x, training=False)) for p in sys.argv[3:]]
np.savez(sys.argv[2], *outputs)
print(keras.backend.backend())
"""


@pytest.fixture(scope="module")
def saved_and_reloaded(tmp_path_factory):
    """{case: (outputs here, outputs of the file loaded on the other backend)}."""
    tmp = tmp_path_factory.mktemp("cross_backend")
    x = np.random.default_rng(0).uniform(0, 1, (3, *SHAPE)).astype("float32")
    np.save(tmp / "x.npy", x)
    here, paths = {}, []
    for i, (case, (name, params)) in enumerate(CASES.items()):
        keras.utils.set_random_seed(i)
        if name == "baseline_cnn":
            params = {"filters": [4, 8], "convs_per_stage": 1, **params}
        model = models.build_model(name, SHAPE, 5, **params)
        path = str(tmp / f"{case}.keras")
        model.save(path)
        here[case] = keras.ops.convert_to_numpy(model(x, training=False))
        paths.append(path)
    env = dict(os.environ, KERAS_BACKEND=OTHER, PYTHONPATH=ROOT)
    if OTHER == "jax":
        env["XLA_FLAGS"] = "--xla_backend_optimization_level=0 " + env.get("XLA_FLAGS", "")
    run = subprocess.run([sys.executable, "-c", LOADER, str(tmp / "x.npy"), str(tmp / "out.npz"), *paths],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == OTHER
    with np.load(tmp / "out.npz") as f:
        there = [f[f"arr_{i}"] for i in range(len(paths))]
    return {case: (here[case], out) for case, out in zip(CASES, there)}


@pytest.mark.parametrize("case", list(CASES))
def test_a_keras_file_saved_here_loads_on_the_other_backend_with_the_same_outputs(saved_and_reloaded, case):
    here, there = saved_and_reloaded[case]
    assert np.std(here) > 0
    np.testing.assert_allclose(there, here, rtol=1e-4, atol=1e-5 * np.abs(here).max())
