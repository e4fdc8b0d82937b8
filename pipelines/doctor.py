"""`make doctor`: a self-check before a long job on a new machine or GPU.

    python -m pipelines.doctor            # the backend of KERAS_BACKEND (default tensorflow)

Prints what this machine runs (Python, TensorFlow, Keras, JAX and PyTorch
where installed, the backend, its devices, oneDNN, TF32, XLA flags, thread
counts), then one forward-and-backward check of every layer family on the
present backend and its default device against a NumPy reference: one line
per family, `ok` with the largest error, or what went wrong. Exit code 0 only
if every family passes.

Each family's forward output is compared with a NumPy computation of what the
layer promises (a binomial blur, or a convolution by the layer's own dense
kernel); its backward pass by the adjoint identity of a linear map,
<grad_x <L(x) - L(0), r>, d> = <L(d) - L(0), r>, which needs no second
reference. The tolerance is float32's with TF32 allowed (1e-3 relative to the
output's scale): this checks that the kernels run and compute the right
thing on this machine, not the last bits.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time

import numpy as np

from pipelines.errors import UserError

TOLERANCE = 1e-3  # relative to the largest reference value; TF32 convolutions stay within about 1e-4


# ----------------------------------------------------------------------------- NumPy references


def np_conv_valid(x: np.ndarray, kernel: np.ndarray, stride: int = 1) -> np.ndarray:
    """VALID cross-correlation of [N, H, W, C] with [k, k, C, M] at `stride` (float64)."""
    k0, k1 = kernel.shape[:2]
    win = np.lib.stride_tricks.sliding_window_view(x.astype("float64"), (k0, k1), axis=(1, 2))  # N,H',W',C,k,k
    y = np.einsum("nhwcab,abcm->nhwm", win, kernel.astype("float64"))
    return y[:, ::stride, ::stride]


def np_blurpool_zero(x: np.ndarray, stride: int = 2) -> np.ndarray:
    """BlurPool2D(blur_size=3, padding='zero'): zero pad (1, 1), the [1, 2, 1] / 4 outer-product blur
    per channel, every `stride`-th pixel (Zhang, ICML 2019)."""
    f = np.array([1.0, 2.0, 1.0]) / 4.0
    c = x.shape[-1]
    kernel = np.zeros((3, 3, c, c))
    for i in range(c):
        kernel[:, :, i, i] = np.outer(f, f)
    padded = np.pad(x.astype("float64"), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return np_conv_valid(padded, kernel, stride)


# ----------------------------------------------------------------------------- the families


def _family_layers():
    """(family, what, make layer, input shape, reference(layer, x) -> NumPy output) of every family."""
    from keras import ops

    from layers.group.group_conv import GroupConv2D
    from layers.group.lifting_conv import LiftingConv2D
    from layers.harmonic.harmonic_conv import HarmonicConv2D
    from layers.scale.scale_conv import ScaleConv2D
    from layers.shift.blurpool import BlurPool2D
    from layers.shift.spatial_separable_conv import SpatialSeparableConv2D

    def numpy_of(t):
        return np.asarray(ops.convert_to_numpy(t), dtype="float64")

    def separable(layer, x):
        v, h = numpy_of(layer.vertical_kernel), numpy_of(layer.horizontal_kernel)  # rank 1
        kernel = v[:, 0, :, :][:, None, :, :] * h[0, :, :, 0][None, :, None, :]  # [k, k, C, M]
        return np_conv_valid(x, kernel, layer.strides) + numpy_of(layer.bias)

    def harmonic(layer, x):
        y = np_conv_valid(x, numpy_of(layer.dense_kernel()))
        return y.reshape(y.shape[:3] + (len(layer.orders), 2, layer.filters))

    def lifting(layer, x):
        y = np_conv_valid(x, numpy_of(layer.dense_kernel()))
        return y.reshape(y.shape[:3] + (layer.group_size, layer.filters)) + numpy_of(layer.bias)

    def group(layer, x):
        y = np_conv_valid(x.reshape(x.shape[:3] + (-1,)), numpy_of(layer.dense_kernel()))
        return y.reshape(y.shape[:3] + (layer.group_size, layer.filters)) + numpy_of(layer.bias)

    def scale(layer, x):
        outs = [np_conv_valid(x[:, :, :, s], k) for s, k in enumerate(numpy_of(layer.dense_kernel()))]
        return np.stack(outs, axis=3) + numpy_of(layer.bias)

    bias = {"bias_initializer": "random_normal"}
    return [
        ("shift", "BlurPool2D, stride 2", lambda: BlurPool2D(3, strides=2, padding="zero"), (2, 9, 10, 3),
         lambda layer, x: np_blurpool_zero(x)),
        ("shift", "SpatialSeparableConv2D, stride 2",
         lambda: SpatialSeparableConv2D(4, 3, rank=1, strides=2, padding="valid", **bias), (2, 9, 10, 3), separable),
        ("harmonic", "HarmonicConv2D, orders 0 and 1",
         lambda: HarmonicConv2D(3, 5, orders=(0, 1), padding="valid"), (2, 11, 11, 2), harmonic),
        ("group", "LiftingConv2D C4", lambda: LiftingConv2D(3, 3, group_order=4, padding="valid", **bias),
         (2, 9, 9, 2), lifting),
        ("group", "GroupConv2D C4", lambda: GroupConv2D(3, 3, group_order=4, padding="valid", **bias),
         (2, 9, 9, 4, 2), group),
        ("group", "GroupConv2D D4", lambda: GroupConv2D(3, 3, group="D4", padding="valid", **bias),
         (2, 9, 9, 8, 2), group),
        ("scale", "ScaleConv2D, 3 scales", lambda: ScaleConv2D(3, 5, num_scales=3, padding="valid", **bias),
         (2, 11, 11, 3, 2), scale),
    ]


def _forward_and_vjp(layer, x: np.ndarray, r: np.ndarray):
    """(layer(x), the gradient of <layer(x), r> with respect to x), on the present backend."""
    import keras
    from keras import ops

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
            loss = tf.reduce_sum(y * tf.constant(r))
        return ops.convert_to_numpy(y), tape.gradient(loss, xt).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        y, pull = jax.vjp(lambda t: layer(t), jnp.asarray(x))
        return np.asarray(y), np.asarray(pull(jnp.asarray(r))[0])
    if backend == "torch":
        import torch

        xt = ops.convert_to_tensor(x).detach().requires_grad_(True)  # on Keras' device (a GPU where present)
        y = layer(xt)
        (y * ops.convert_to_tensor(r)).sum().backward()
        return ops.convert_to_numpy(y), xt.grad.detach().cpu().numpy()
    raise RuntimeError(f"no backward check for the {backend} backend")


def check_family(what: str, make, shape, reference, seed: int = 0) -> float:
    """The largest relative error of the forward and backward checks; raises AssertionError above TOLERANCE."""
    rng = np.random.default_rng(seed)
    x, d = (rng.normal(size=shape).astype("float32") for _ in range(2))
    layer = make()
    layer(x)  # build
    y, _ = _forward_and_vjp(layer, x, np.zeros(layer.compute_output_shape(shape), "float32"))
    ref = reference(layer, x)
    scale = max(float(np.abs(ref).max()), 1e-6)
    if y.shape != ref.shape:
        raise AssertionError(f"{what}: output shape {y.shape}, the reference's {ref.shape}")
    forward = float(np.abs(y - ref).max()) / scale
    # Backward, by the adjoint identity of the linear map L(x) - L(0).
    r = rng.normal(size=y.shape).astype("float32")
    _, grad = _forward_and_vjp(layer, x, r)
    y0 = np.asarray(_forward_and_vjp(layer, np.zeros_like(x), np.zeros_like(r))[0], "float64")
    yd = np.asarray(_forward_and_vjp(layer, d, np.zeros_like(r))[0], "float64")
    lhs, rhs = float(np.sum(grad.astype("float64") * d)), float(np.sum((yd - y0) * r))
    backward = abs(lhs - rhs) / max(float(np.linalg.norm(grad) * np.linalg.norm(d)), 1e-6)
    err = max(forward, backward)
    if not np.isfinite(err) or err > TOLERANCE:
        raise AssertionError(f"{what}: forward error {forward:.2e}, backward error {backward:.2e} "
                             f"(relative; tolerance {TOLERANCE:g})")
    return err


def run_checks(out=None) -> bool:
    """One line per family (on `out`, default stdout); True if every family passes."""
    import keras

    out = out or sys.stdout
    keras.utils.set_random_seed(0)
    families: dict[str, list] = {}
    for family, what, make, shape, reference in _family_layers():
        families.setdefault(family, []).append((what, make, shape, reference))
    all_ok = True
    for family, checks in families.items():
        started, worst, problem = time.perf_counter(), 0.0, None
        for what, make, shape, reference in checks:
            try:
                worst = max(worst, check_family(what, make, shape, reference))
            except Exception as e:  # any failure of a kernel is the report, not a traceback
                text = " ".join(str(e).split())
                problem = f"{type(e).__name__}: {text[:300]}" if not isinstance(e, AssertionError) else text
                break
        names = ", ".join(w for w, *_ in checks)
        took = time.perf_counter() - started
        if problem is None:
            print(f"  {family:<9} ok    ({names}; max relative error {worst:.1e}, {took:.1f} s)", file=out)
        else:
            all_ok = False
            print(f"  {family:<9} FAIL  {problem}", file=out)
    return all_ok


# ----------------------------------------------------------------------------- the machine


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_lines() -> list[str]:
    """What this process runs on: versions, backend, devices and the settings that change numbers or speed."""
    import keras

    backend = keras.backend.backend()
    lines = [f"Python {platform.python_version()} on {platform.machine()} ({platform.processor() or platform.system()}), "
             f"{os.cpu_count()} CPU(s)"]
    versions = {name: _version(pkg) for name, pkg in
                (("TensorFlow", "tensorflow-cpu"), ("Keras", "keras"), ("JAX", "jax"), ("PyTorch", "torch"))}
    versions["TensorFlow"] = versions["TensorFlow"] or _version("tensorflow")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) +
                 "; not installed: " + (", ".join(k for k, v in versions.items() if not v) or "none"))
    lines.append(f"backend: {backend}")
    if backend == "tensorflow":
        import tensorflow as tf

        from layers.common import _tf_fast
        from pipelines import experiment

        lines.append("devices: " + ", ".join(d.name for d in tf.config.list_logical_devices()))
        lines.append(f"oneDNN: {experiment.onednn_state()}; "
                     f"grouped-convolution gradients: {'yes' if _tf_fast.grouped_conv_gradients() else 'no'}")
        tf32 = "allowed" if tf.config.experimental.tensor_float_32_execution_enabled() else "off"
        gpus = tf.config.list_logical_devices("GPU")
        lines.append(f"TF32: {tf32} ({'used by GPUs since Ampere' if gpus else 'no GPU here: not used'})")
        lines.append(f"threads: intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}, "
                     f"inter-op {tf.config.threading.get_inter_op_parallelism_threads() or 'auto'}; "
                     f"XLA: jit {'auto' if tf.config.optimizer.get_jit() else 'off'} "
                     f"(TF_XLA_FLAGS={os.environ.get('TF_XLA_FLAGS', 'unset')})")
    elif backend == "jax":
        import jax

        lines.append("devices: " + ", ".join(str(d) for d in jax.devices()))
        lines.append(f"matmul/conv precision: {jax.config.jax_default_matmul_precision or 'default (TF32 on GPUs)'}")
    elif backend == "torch":
        import torch

        devs = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
        lines.append("devices: " + ", ".join(devs))
        lines.append(f"TF32: matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, "
                     f"cuDNN convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}; "
                     f"threads {torch.get_num_threads()}")
    lines.append(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', 'unset')}")
    return lines


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="make doctor", description=__doc__.split("\n\n")[0]).parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras  # noqa: F401 (the backend of KERAS_BACKEND loads here)
    except ValueError as e:  # an unknown name (a broken install's ImportError is what the doctor is for: shown whole)
        raise UserError(f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND')}: {e} (tensorflow, jax or torch)") from None
    for line in machine_lines():
        print(line)
    print("layer families (forward and backward against NumPy references):")
    ok = run_checks()
    print("doctor: all layer families pass" if ok else "doctor: some layer families FAIL (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    from pipelines.cli import run_main

    sys.exit(run_main(main))
