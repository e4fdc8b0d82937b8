"""Export of versioned SavedModels in TensorFlow Serving's layout.

`<exports>/<name>/<version>/saved_model.pb`, versions 1, 2, ... The signature
`serving_default` takes raw images `image: uint8 [batch, H, W, C]` and returns
`probabilities: float32 [batch, classes]` and `class_id: int64 [batch]`.

The exported graph is the *inference model*: raw pixel values -> /255 ->
trained model -> softmax. The same inference model is what MLflow logs, so
both ways of serving give the same predictions. Augmentation never enters it:
it lives in the training pipeline only.

Writes are atomic: a version is written and verified under a hidden temporary
name in the same directory and renamed into place, so a server that scans for
numeric version directories never sees a half-written one.
"""

from __future__ import annotations

import os
import shutil
import uuid

import keras
import numpy as np
import tensorflow as tf


class ExportMismatchError(RuntimeError):
    """The reloaded SavedModel does not reproduce the in-memory model."""


def inference_model(model: keras.Model) -> keras.Model:
    """Wrap a model (float [0, 1] images -> logits) as raw pixels [0, 255] -> probabilities."""
    inputs = keras.Input(shape=model.input_shape[1:], dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    x = model(x, training=False)
    outputs = keras.layers.Softmax(dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{model.name}_inference")


def version_dirs(base: str) -> list[int]:
    """The numeric version directories under `base`, ascending."""
    if not os.path.isdir(base):
        return []
    return sorted(int(d) for d in os.listdir(base) if d.isdigit() and os.path.isdir(os.path.join(base, d)))


def _write_savedmodel(infer: keras.Model, path: str) -> None:
    shape = [None, *infer.input_shape[1:]]
    archive = keras.export.ExportArchive()
    archive.track(infer)

    def serve(image):
        probs = infer(tf.cast(image, tf.float32), training=False)
        return {"probabilities": probs, "class_id": tf.argmax(probs, axis=-1)}

    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec(shape, tf.uint8, name="image")],
    )
    archive.write_out(path, verbose=False)


def predict_savedmodel(path: str, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run `serving_default` of the SavedModel at `path` on uint8 `images`."""
    fn = tf.saved_model.load(path).signatures["serving_default"]
    parts: dict[str, list] = {}
    for i in range(0, len(images), batch_size):
        out = fn(image=tf.constant(images[i : i + batch_size], tf.uint8))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def export_model(
    model: keras.Model,
    exports_dir: str,
    name: str,
    check_images: np.ndarray | None = None,
    tolerance: float = 1e-5,
    extra_assets: dict[str, str] | None = None,
) -> str:
    """Export `model` as the next version of `exports_dir/name`; return the version's path.

    If `check_images` (uint8 [N, H, W, C]) is given, the written SavedModel is
    reloaded and its probabilities compared with the in-memory inference model;
    a difference above `tolerance` raises `ExportMismatchError` and nothing is
    published. `extra_assets` (file name -> text) are written to the version's
    `assets.extra/`, which TF Serving ignores; training stores the resolved
    experiment config there as `experiment.yaml`.
    """
    base = os.path.join(exports_dir, name)
    os.makedirs(base, exist_ok=True)
    infer = inference_model(model)
    tmp = os.path.join(base, f".tmp-{uuid.uuid4().hex}")
    try:
        _write_savedmodel(infer, tmp)
        for fname, text in (extra_assets or {}).items():
            os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
            with open(os.path.join(tmp, "assets.extra", fname), "w") as fh:
                fh.write(text)
        if check_images is not None and len(check_images):
            expected = infer.predict(check_images.astype("float32"), batch_size=256, verbose=0)
            got = predict_savedmodel(tmp, check_images)["probabilities"]
            diff = float(np.max(np.abs(got - expected)))
            if not diff <= tolerance:
                raise ExportMismatchError(
                    f"reloaded SavedModel differs from the model by {diff:.3g} (> {tolerance:g}); not published"
                )
        while True:  # another writer may take a version number at the same time
            version = (version_dirs(base) or [0])[-1] + 1
            final = os.path.join(base, str(version))
            try:
                os.rename(tmp, final)
                return final
            except OSError:
                if not os.path.exists(final):
                    raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
