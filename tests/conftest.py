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


_LEFT_ALONE = {".venv", ".pytest_cache", "__pycache__", ".git"}


def _untracked_top_level(root):
    """Top-level entries of the working tree that git does not track (ignored ones included)."""
    import subprocess

    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"], cwd=root,
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None  # not a git checkout: nothing to compare
    entries = {line[3:].strip().strip('"').rstrip("/").split("/")[0] for line in out.stdout.splitlines()
               if line[:2] in ("??", "!!")}
    return entries - _LEFT_ALONE


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller (or the only process)
        session.config._tree_before = _untracked_top_level(session.config.rootpath)


def pytest_sessionfinish(session, exitstatus):
    """The suite writes nothing into the working tree: MLflow artifacts, exports, caches and runs go to
    temporary directories. A test that leaves a file there fails the run, naming it."""
    before = getattr(session.config, "_tree_before", None)
    if before is None:
        return
    left = sorted(_untracked_top_level(session.config.rootpath) - before)
    if left:
        import sys

        print(f"\nerror: the test run left files in the working tree: {', '.join(left)} "
              "(tests write under tmp_path)", file=sys.stderr)
        session.exitstatus = 1
