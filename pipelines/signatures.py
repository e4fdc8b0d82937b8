"""The signatures of an exported SavedModel: what TensorFlow Serving (and `make serve`) can call.

- `serving_default` (method `tensorflow/serving/predict`): `image`, uint8
  `[N, H, W, C]` -> `probabilities` float32 `[N, K]`, `class_id` int64 `[N]`,
  `class_name` string `[N]`.
- `image_bytes` (predict): `image_bytes`, string `[N]` of encoded PNG / JPEG /
  BMP / GIF / still WebP files -> the same outputs (an animated WebP is refused before it is decoded: see
  `data.images.ANIMATED_WEBP`). Each image is decoded and brought to
  `[H, W, C]` exactly as training read its files (`data.images.preprocess_image`
  with the run's `data.resize`), so any size is accepted.
- `classify` (method `tensorflow/serving/classify`): `inputs`, serialized
  `tf.train.Example`s with the encoded image in the bytes feature
  `image/encoded` -> `classes` string `[N, K]` (the class names, in class-id
  order) and `scores` float32 `[N, K]` (their probabilities): what TF
  Serving's Classify API and REST `:classify` call.

Keras writes the model's own function (`ExportArchive`; on JAX through
jax2tf, which has no string ops); this module loads that SavedModel in
TensorFlow and saves it again with the three signatures around it, so that
every backend's export has the same signatures. TensorFlow's
`tf.saved_model.save` marks every signature as a predict method; the classify
signature's method name is set in the written `saved_model.pb` afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import keras
import tensorflow as tf

from data.images import decode_image, preprocess_image

CLASSIFY_METHOD = "tensorflow/serving/classify"
SIGNATURES = ("serving_default", "image_bytes", "classify")
JAX_PLATFORMS = ("cpu", "cuda")  # what a JAX-trained export runs on


def _write_keras_function(infer: keras.Model, path: str) -> None:
    """`infer` (uint8-castable images -> probabilities) as a SavedModel with one endpoint, `probabilities`."""
    archive = keras.export.ExportArchive()
    archive.track(infer)

    def probabilities(image):
        return {"probabilities": infer(keras.ops.cast(image, "float32"), training=False)}

    # On JAX (jax2tf), lowered for the CPU and CUDA alike: by default jax2tf lowers for JAX's own device only, and
    # a model trained on a GPU would then run nowhere else (not in the CPU-only server, nor in the export check).
    on_jax = keras.backend.backend() == "jax"
    jax = {"jax2tf_kwargs": {"native_serialization_platforms": JAX_PLATFORMS}} if on_jax else {}
    archive.add_endpoint(name="serving_default", fn=probabilities,
                         input_signature=[tf.TensorSpec([None, *infer.input_shape[1:]], tf.uint8, name="image")], **jax)
    archive.write_out(path, verbose=False)


def write_savedmodel(infer: keras.Model, path: str, class_names=None, resize: str = "stretch") -> None:
    """Write `infer` (a `pipelines.export.inference_model`) to `path` with the module's three signatures.

    `class_names` (class id -> name; default the ids as text) name the classes;
    `resize` is the run's `data.resize`, used by the encoded-image signatures.
    """
    h, w, c = (int(d) for d in infer.input_shape[1:])
    k = int(infer.output_shape[-1])
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a model with {k} outputs")
    parent = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(dir=parent, prefix=".keras-") as tmp:
        _write_keras_function(infer, tmp)
        with _without_gradient_warning():
            loaded = tf.saved_model.load(tmp)
        module = _ServingModule(loaded, names, (h, w, c), resize)
        tf.saved_model.save(module, path, signatures={
            "serving_default": module.serving_default,
            "image_bytes": module.image_bytes,
            "classify": module.classify,
        }, options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))  # serving needs no gradients;
        # jax2tf's custom gradients capture tensors that a second save cannot trace
    _set_method_name(path, "classify", CLASSIFY_METHOD)


@contextlib.contextmanager
def _without_gradient_warning():
    """TensorFlow's "Importing a function ... with ops with unsaved custom gradients. Will likely fail if a gradient
    is requested" left out: every JAX export printed it (jax2tf's functions), and the served signatures are saved
    without gradients anyway (`experimental_custom_gradients=False` below)."""
    def unsaved_gradients(record) -> bool:
        return "unsaved custom gradients" not in record.getMessage()

    log = logging.getLogger("absl")  # tf_logging writes through absl's Python logger
    log.addFilter(unsaved_gradients)
    try:
        yield
    finally:
        log.removeFilter(unsaved_gradients)


class _ServingModule(tf.Module):
    def __init__(self, loaded, names: list[str], shape: tuple[int, int, int], resize: str):
        super().__init__()
        self.loaded = loaded  # tracked: its variables are saved with the new signatures
        self.names = tf.constant(names)
        self.shape, self.resize = shape, resize
        h, w, c = shape
        self.serving_default = tf.function(
            self._predict, input_signature=[tf.TensorSpec([None, h, w, c], tf.uint8, name="image")])
        self.image_bytes = tf.function(
            self._predict_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        self.classify = tf.function(
            self._classify, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])

    def _probabilities(self, images):
        return self.loaded.signatures["serving_default"](image=images)["probabilities"]

    def _predict(self, image):
        probs = self._probabilities(image)
        ids = tf.argmax(probs, axis=-1)
        return {"probabilities": probs, "class_id": ids, "class_name": tf.gather(self.names, ids)}

    def _decode(self, encoded):
        h, w, c = self.shape
        return tf.map_fn(lambda b: preprocess_image(decode_image(b), (h, w), self.resize, c), encoded,
                         fn_output_signature=tf.TensorSpec([h, w, c], tf.uint8))

    def _predict_bytes(self, image_bytes):
        return self._predict(self._decode(image_bytes))

    def _classify(self, inputs):
        features = tf.io.parse_example(inputs, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
        probs = self._probabilities(self._decode(features["image/encoded"]))
        classes = tf.tile(self.names[None, :], [tf.shape(probs)[0], 1])
        return {"classes": classes, "scores": probs}


def _set_method_name(path: str, signature: str, method: str) -> None:
    from pipelines.serving.savedmodel import _read_proto

    pb = os.path.join(path, "saved_model.pb")
    proto = _read_proto(path)
    proto.meta_graphs[0].signature_def[signature].method_name = method
    tmp = pb + ".tmp"
    with open(tmp, "wb") as f:
        f.write(proto.SerializeToString())
    os.replace(tmp, pb)


def example(encoded: bytes) -> bytes:
    """A serialized `tf.train.Example` holding `encoded` image bytes as `image/encoded` (what `classify` reads)."""
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

