"""hnet on mid-sized RGB images (issue 16): deeper stage lists, exact rot90 invariance where sizes pool evenly."""

import keras
import numpy as np
import pytest

import models
from tests.models.antialias_checks import TF_ONLY


@pytest.mark.parametrize("size,stages", [(64, 5), pytest.param(96, 4, marks=TF_ONLY)])
def test_rgb_deeper_stages_keep_exact_rot90_invariance(size, stages):
    # 64 -> 32 -> 16 -> 8 -> 4 and 96 -> 48 -> 24 -> 12: every pooled size is even
    keras.utils.set_random_seed(0)
    m = models.build_model("hnet", (size, size, 3), 5, filters=[2] * stages, convs_per_stage=1, kernel_size=3,
                           n_rings=2)
    pools = [l for l in m.layers if type(l).__name__ == "HarmonicAveragePooling2D"]
    assert [p.output.shape[1] for p in pools] == [size // 2 ** (i + 1) for i in range(stages - 1)]
    x = np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype("float32")
    y = np.asarray(m(x, training=False))
    for k in (1, 2, 3):
        yr = np.asarray(m(np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))), training=False))
        assert np.abs(yr - y).max() <= 1e-5 * np.abs(y).max()
    assert np.abs(y[0] - y[1]).max() > 1e-6  # the logits do depend on the image
