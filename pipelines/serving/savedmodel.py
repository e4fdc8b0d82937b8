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


CHUNK_ROWS = 64  # the most rows of one call of a bucketed servable (a larger request is run in chunks)


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
    bucketed: bool = False  # run at padded batch sizes (`padded_rows`): an export that compiles per batch size
    max_rows: int = CHUNK_ROWS  # a bucketed servable's most rows in one call: CHUNK_ROWS, or the server's max batch

    def classify(self, examples: list[bytes]) -> dict[str, np.ndarray]:
        """TF Serving's Classify: serialized `tf.train.Example`s (`image/encoded`) -> `classes` [N, K] (text)
        and `scores` [N, K], by the export's `classify` signature; ValueError if the export has none."""
        import tensorflow as tf

        fn = self._signatures.get(CLASSIFY)
        if fn is None:
            raise ValueError(f"{self.name} version {self.version} has no {CLASSIFY!r} signature "
                             "(exported before it existed); use predict")
        _refuse_unsafe_images(_example_images(examples), self.max_request_pixels)
        return self._padded(fn, {"inputs": np.array(list(examples), dtype=object)},
                            {"inputs": tf.string}, self._fewest_pixels(examples, CLASSIFY))

    def run_signature(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call any signature of the export (e.g. `image_bytes` with string `image_bytes`) unbatched; the
        inputs are converted to the signature's dtypes. KeyError for a signature the export has not."""
        import tensorflow as tf

        if signature == SIGNATURE:
            return self.run(inputs)
        fn = self._signatures[signature]
        specs = fn.structured_input_signature[1]
        pad_row = None
        for k, v in inputs.items():
            if specs[k].dtype == tf.string:  # encoded images, or (the classify signature's) tf.Examples of them
                blobs = list(np.asarray(v, dtype=object).ravel())
                _refuse_unsafe_images(_example_images(blobs) if signature == CLASSIFY else _numbered(blobs),
                                      self.max_request_pixels)
                pad_row = self._fewest_pixels(blobs, signature) if np.ndim(v) == 1 else pad_row
        return self._padded(fn, inputs, {k: specs[k].dtype for k in inputs}, pad_row)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._padded(self._fn, inputs, {k: self.inputs[k].dtype for k in inputs})
        if self.class_names and "class_name" not in out and "class_id" in out:
            # An export without the string output (Keras' JAX export has none): the names from labels.txt.
            ids = out["class_id"]
            out["class_name"] = np.array(self.class_names, dtype=object)[np.clip(ids, 0, len(self.class_names) - 1)]
        return out

    def _fewest_pixels(self, blobs: list, signature: str) -> int | None:
        """The row of encoded images (or, for `classify`, of Examples holding them) with the fewest pixels: what
        a bucketed servable pads with, so that padding cannot multiply a large image past the pixel limit."""
        if not self.bucketed:
            return None
        from data.images import header_check

        def pixels(blob):
            images = [b for _, b in _example_images([blob])] if signature == CLASSIFY else [blob]
            return sum(header_check(b)[1] if isinstance(b, bytes) else 0 for b in images)

        return min(range(len(blobs)), key=lambda i: pixels(blobs[i]))

    def _padded(self, fn, inputs: dict, dtypes: dict, pad_row: int | None = None) -> dict[str, np.ndarray]:
        """The signature `fn` on `inputs` as tensors of `dtypes`. On a `bucketed` servable the rows go in chunks
        of at most `max_rows`, the last padded to `padded_rows` with copies of row `pad_row` (default: its own
        last row), and the outputs with those rows are cut back (others, not of the batch, are kept as they are)."""
        import tensorflow as tf

        def run(feeds):
            return {k: _text(v.numpy()) for k, v in fn(**{k: tf.constant(v, dtype=dtypes[k])
                                                          for k, v in feeds.items()}).items()}

        rows = len(next(iter(inputs.values()))) if inputs else 0
        if not self.bucketed or rows == 0:
            return run(inputs)
        # strings as objects: NumPy's bytes type would drop an encoded file's trailing zero bytes
        arrays = {k: np.asarray(v, dtype=object if dtypes[k] == tf.string else None) for k, v in inputs.items()}
        parts = []
        for a in range(0, rows, self.max_rows):
            n = min(self.max_rows, rows - a)
            pad, filler = padded_rows(n, self.max_rows) - n, a + n - 1 if pad_row is None else pad_row
            out = run({k: np.concatenate([v[a:a + n], np.repeat(v[filler:filler + 1], pad, axis=0)])
                       for k, v in arrays.items()})
            parts.append({k: v[:n] if np.ndim(v) and len(v) == n + pad else v for k, v in out.items()})
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) if np.ndim(v) and len(v) == min(self.max_rows, rows) else v
                for k, v in parts[0].items()}


def padded_rows(rows: int, most: int = CHUNK_ROWS) -> int:
    """The batch size a `bucketed` servable runs `rows` (at most `most`) rows at: the next power of 2, or `most`
    (TF Serving's `allowed_batch_sizes`, which end at its `max_batch_size`). A JAX export (jax2tf: `XlaCallModule`
    ops) compiles its function for each batch size it meets, 0.5-3 s each on a CPU, while the model's batching
    queue waits: padded (and run in chunks of `most`), a version meets at most 7 sizes, and those the traffic has
    had are compiled before it serves (`load_servable`)."""
    return min(1 << max(0, rows - 1).bit_length(), most)


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


def _read_proto(path: str):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def jax2tf_platforms(proto) -> list[list[str]]:
    """The platforms each `XlaCallModule` op of a SavedModel proto (`_read_proto`) was lowered for (jax2tf's
    `native_serialization_platforms`; e.g. `[["CPU", "CUDA"]]`): empty for a model without such ops."""
    graph = proto.meta_graphs[0].graph_def
    nodes = [n for f in graph.library.function for n in f.node_def] + list(graph.node)
    return [[p.decode() for p in n.attr["platforms"].list.s] for n in nodes if n.op == "XlaCallModule"]


def _signature_defs(proto) -> tuple[dict, dict]:
    """The SignatureDefs of a SavedModel proto: as TF Serving prints them (JSON), and as protos."""
    from google.protobuf import json_format

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
                  max_request_pixels: int | None = None, max_batch: int | None = None) -> Servable:
    """Load `path`'s `serving_default`, read its specs, and warm it up on zeros: one call of each batch size in
    `warm_rows` (in that order) while the calls after the first have taken less than `warm_budget_s`.

    The first call of a new batch size is slow (TensorFlow sets up kernels per shape, oneDNN its primitives:
    37 ms against 9 ms later for 8 rows of the baseline CNN); the manager passes the sizes its batcher has run,
    most frequent first, so that a version swapped in under load does not pay them on requests. A JAX export
    (`XlaCallModule` ops) is `bucketed` (`padded_rows`): it is warmed at the padded sizes of all of `warm_rows`,
    past the budget (a JAX version of images.yaml's resnet compiled each size for 2-3 s on one core), and runs
    at most `max_batch` rows (the server's `--max-batch`) in one call, as its batcher does.
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
    proto = _read_proto(path)
    defs_json, defs = _signature_defs(proto)
    bucketed = bool(jax2tf_platforms(proto))
    most = min(CHUNK_ROWS, max_batch or CHUNK_ROWS)
    servable = Servable(name, version, path, inputs, outputs, defs_json, fn, loaded, class_names, defs,
                        dict(loaded.signatures), max_request_pixels, bucketed, most)
    if all(d is not None for t in inputs.values() for d in t.shape[1:]):
        t0 = None  # a bucketed servable warms every padded size the traffic has had (a few), however long
        for rows in dict.fromkeys(padded_rows(min(r, most), most) if bucketed else r for r in [1, *warm_rows]):
            if t0 is not None and time.perf_counter() - t0 > warm_budget_s and not bucketed:
                break
            servable.run({k: np.zeros((rows, *t.shape[1:]), t.dtype) for k, t in inputs.items()})
            t0 = time.perf_counter() if t0 is None else t0
    return servable
