"""Fixtures of the layer tests: the blur and padding layers' two code paths."""

import keras
import pytest

from layers.common._ops import tf_fast_path

# The portable keras.ops path runs on every backend; on TensorFlow the layers take the
# hand-written-gradient fast path (layers/common/_tf_fast.py) by default, so both are tested there.
OPS_PATHS = ["portable"] + (["tf_fast"] if keras.backend.backend() == "tensorflow" else [])


@pytest.fixture(params=OPS_PATHS)
def ops_path(request):
    """Run the test on one code path of layers/common/_ops.py (the other turned off), restored after."""
    with tf_fast_path(request.param == "tf_fast"):
        yield request.param
