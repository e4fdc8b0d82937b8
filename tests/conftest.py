"""Test-suite hooks shared by every test file."""


def pytest_configure(config):
    """Full float32 arithmetic on GPUs, on every backend.

    On NVIDIA GPUs since Ampere, TensorFlow and JAX run float32 convolutions and
    matrix products in TF32 (10-bit mantissa) by default, and PyTorch its
    convolutions: measured on an H200 with JAX, the layers then match their NumPy
    references and commute with rot90 only to about 1e-4 relative, which fails the
    tests' 1e-5 bounds (the same tests pass there at full precision). The tests check
    the mathematics, so they pin full precision; training keeps each backend's default.
    On CPUs this changes nothing."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif backend == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)


def pytest_collection_modifyitems(session, config, items):
    """Files with end-to-end tests (marked `slow`) first, in their collected order, then the rest.

    `make test` runs whole files on parallel workers (pytest-xdist `--dist loadfile`), handed out
    in this order: the long files then start first, instead of one worker finishing the run
    alone on the distributed-training file while the other idles. Without workers the order
    changes nothing that a test may rely on (each file keeps its own order)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within files is kept
