"""One loaded version of one model: `Servable`, its `TensorInfo` specs, and `load_servable`.

A `Servable` is one loaded version of one model: its `serving_default`
signature, the input and output specs, and the signature defs for the
metadata answer. `load_servable` loads it from a SavedModel directory and
warms it up; `pipelines.serving.servables.ModelManager` decides which
version to load and when.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

SIGNATURE = "serving_default"
CLASSIFY = "classify"  # method tensorflow/serving/classify (pipelines/signatures.py)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple  # with None for unknown dims; dim 0 is the batch


@dataclass(eq=False)
class Servable:
    name: str
    version: int
    path: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    signature_defs: dict  # TF Serving's JSON form of the SavedModel's SignatureDefs
    _fn: object = field(repr=False)
    _keep: object = field(repr=False)  # the loaded object owns the variables the signature reads
    class_names: list[str] | None = None  # assets.extra/labels.txt, one name per class id
    signature_def_protos: dict = field(default_factory=dict, repr=False)  # name -> SignatureDef proto
    _signatures: dict = field(default_factory=dict, repr=False)  # name -> concrete function
    max_request_pixels: int | None = None  # the most pixels the encoded images of one request may hold together

    def classify(self, examples: list[bytes]) -> dict[str, np.ndarray]:
        """TF Serving's Classify: serialized `tf.train.Example`s (`image/encoded`) -> `classes` [N, K] (text)
        and `scores` [N, K], by the export's `classify` signature; ValueError if the export has none."""
        import tensorflow as tf

        fn = self._signatures.get(CLASSIFY)
        if fn is None:
            raise ValueError(f"{self.name} version {self.version} has no {CLASSIFY!r} signature "
                             "(exported before it existed); use predict")
        _refuse_unsafe_images(_example_images(examples), self.max_request_pixels)
        out = fn(inputs=tf.constant(list(examples), dtype=tf.string))
        return {k: _text(v.numpy()) for k, v in out.items()}

    def run_signature(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call any signature of the export (e.g. `image_bytes` with string `image_bytes`) unbatched; the
        inputs are converted to the signature's dtypes. KeyError for a signature the export has not."""
        import tensorflow as tf

        if signature == SIGNATURE:
            return self.run(inputs)
        fn = self._signatures[signature]
        specs = fn.structured_input_signature[1]
        for k, v in inputs.items():
            if specs[k].dtype == tf.string:  # encoded images, or (the classify signature's) tf.Examples of them
                blobs = list(np.asarray(v, dtype=object).ravel())
                _refuse_unsafe_images(_example_images(blobs) if signature == CLASSIFY else _numbered(blobs),
                                      self.max_request_pixels)
        feeds = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()}
        return {k: _text(v.numpy()) for k, v in fn(**feeds).items()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        feeds = {k: tf.constant(v, dtype=self.inputs[k].dtype) for k, v in inputs.items()}
        out = {k: _text(v.numpy()) for k, v in self._fn(**feeds).items()}
        if self.class_names and "class_name" not in out and "class_id" in out:
            # An export without the string output (Keras' JAX export has none): the names from labels.txt.
            ids = out["class_id"]
            out["class_name"] = np.array(self.class_names, dtype=object)[np.clip(ids, 0, len(self.class_names) - 1)]
        return out


def _example_images(examples: list[bytes]) -> list[tuple[str, bytes]]:
    """`(which, image)` for the `image/encoded` bytes of serialized `tf.train.Example`s (those that parse)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example.example_pb2 import Example

    images = []
    for i, serialized in enumerate(examples):
        try:
            found = Example.FromString(serialized).features.feature["image/encoded"].bytes_list.value
        except DecodeError:
            continue  # the signature's parse names it
        images += [(f"example {i + 1} of {len(examples)}" if len(examples) > 1 else "", b) for b in found]
    return images


def _numbered(blobs) -> list[tuple[str, bytes]]:
    return [(f"image {i + 1} of {len(blobs)}" if len(blobs) > 1 else "", b) for i, b in enumerate(blobs)]


def _refuse_unsafe_images(images: list[tuple[str, bytes]], max_request_pixels: int | None = None) -> None:
    """ValueError (a 400) for an encoded image the server does not decode, before any signature decodes it, as
    training's header pass would refuse its file (`data.images.refusal`): a format training does not read, an
    animated WebP (exports since the check in `data.images.decode_image` refuse it in their graph; older ones
    would hand it to TensorFlow's decoder, which corrupts the server's memory on one), or more pixels than
    training reads (a 400 KB PNG of 20000x20000 took 12 s and 2.3 GB to decode and resize). `BadRequest` 413
    when the images hold more than `max_request_pixels` together (`--max-request-pixels`): the signatures
    decode up to 10 of a request's images at once, so 8 MB of small PNGs just under the per-image limit each
    would otherwise cost the server gigabytes and minutes. `images`: (which image of the request, its bytes)."""
    from data.images import header_check

    from pipelines.serving.bad_request import BadRequest

    total = 0
    for which, b in images:
        why, pixels = header_check(b) if isinstance(b, bytes) else (None, 0)
        if why:
            raise ValueError(f"{which}: {why}" if which else why)
        total += pixels
    if max_request_pixels is not None and total > max_request_pixels:
        what = (f"the request's {len(images)} images hold {total} pixels together" if len(images) > 1 else
                f"the image holds {total} pixels")
        raise BadRequest(f"{what}, over the limit of {max_request_pixels} per request (--max-request-pixels); "
                         f"send {'them in several requests' if len(images) > 1 else 'a smaller image'}", 413)


def _text(values: np.ndarray) -> np.ndarray:
    """A string output (bytes from TensorFlow) as text, which JSON answers carry; others unchanged."""
    if values.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b), otypes=[object])(values)
    return values


def _signature_defs(path: str) -> tuple[dict, dict]:
    """The SignatureDefs of `path/saved_model.pb`: as TF Serving prints them (JSON), and as protos."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    defs = proto.meta_graphs[0].signature_def
    as_json = {
        k: json_format.MessageToDict(
            defs[k], preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for k in sorted(defs)
    }
    return as_json, {k: defs[k] for k in sorted(defs)}


def read_labels(path: str) -> list[str] | None:
    """The class names of the export at `path` (assets.extra/labels.txt, one per line), or None."""
    f = os.path.join(path, "assets.extra", "labels.txt")
    if not os.path.isfile(f):
        return None
    with open(f, encoding="utf-8", newline="") as fh:  # "\n" only: str.splitlines also splits at \x85, \u2028, ...
        names = fh.read().split("\n")
    if names and names[-1] == "":
        names.pop()
    return [n.removesuffix("\r") for n in names] or None  # a copy saved with Windows line ends reads the same


class _NoGradientWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "with ops with unsaved custom gradients" not in str(record.msg)  # unformatted: never raises here


def load_savedmodel(path: str):
    """`tf.saved_model.load`, without its warning that functions with custom gradients (the fast padding and blur
    of layers/common/_tf_fast.py) "will likely fail if a gradient is requested": these SavedModels are for
    inference, and the warning, printed into every `make train` that publishes such a model and into the server's
    log for each version it loads, read as a fault. Only that message is held back, only during the load (other
    threads' warnings pass: the server loads versions while it answers requests)."""
    import tensorflow as tf

    absl_logger, quiet = logging.getLogger("absl"), _NoGradientWarning()
    absl_logger.addFilter(quiet)
    try:
        return tf.saved_model.load(path)
    finally:
        absl_logger.removeFilter(quiet)


WARM_BUDGET_S = 2.0  # warm-up calls beyond the first stop once this much time is spent


def load_servable(name: str, version: int, path: str, warm_rows=(1,), warm_budget_s: float = WARM_BUDGET_S,
                  max_request_pixels: int | None = None) -> Servable:
    """Load `path`'s `serving_default`, read its specs, and warm it up on zeros: one call of each batch size in
    `warm_rows` (in that order) while the calls after the first have taken less than `warm_budget_s`.

    The first call of a new batch size is slow (TensorFlow sets up kernels per shape, oneDNN its primitives:
    37 ms against 9 ms later for 8 rows of the baseline CNN); the manager passes the sizes its batcher has run,
    most frequent first, so that a version swapped in under load does not pay them on requests.
    """
    loaded = load_savedmodel(path)
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f"{path} has no {SIGNATURE!r} signature (has {sorted(loaded.signatures)})")
    fn = loaded.signatures[SIGNATURE]
    specs = fn.structured_input_signature[1]
    inputs = {
        k: TensorInfo(k, np.dtype(s.dtype.as_numpy_dtype), tuple(s.shape.as_list()))
        for k, s in sorted(specs.items())
    }
    outputs = {
        k: TensorInfo(k, np.dtype(s.dtype.as_numpy_dtype), tuple(s.shape.as_list()))
        for k, s in sorted(fn.structured_outputs.items())
    }
    class_names = read_labels(path)
    if class_names and "class_name" not in outputs and "class_id" in outputs:
        outputs["class_name"] = TensorInfo("class_name", np.dtype(object), outputs["class_id"].shape)
    defs_json, defs = _signature_defs(path)
    servable = Servable(name, version, path, inputs, outputs, defs_json, fn, loaded, class_names, defs,
                        dict(loaded.signatures), max_request_pixels)
    if all(d is not None for t in inputs.values() for d in t.shape[1:]):
        t0 = None
        for rows in dict.fromkeys([1, *warm_rows]):
            if t0 is not None and time.perf_counter() - t0 > warm_budget_s:
                break
            servable.run({k: np.zeros((rows, *t.shape[1:]), t.dtype) for k, t in inputs.items()})
            t0 = time.perf_counter() if t0 is None else t0
    return servable
