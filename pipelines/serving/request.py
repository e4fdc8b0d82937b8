"""A predict request body -> checked input arrays (`parse_predict`).

Row ("instances") and columnar ("inputs") formats; every value is checked
against the signature's specs (shape, dtype, range) and every mistake is a
`BadRequest` naming where it is. An image input (uint8 [batch, H, W, C])
takes nested lists of integers or `{"b64": "<base64 PNG or JPEG bytes>"}`;
b64 images are decoded later, a chunk at a time, by the batcher
(`LazyInstances`). More than `max_rows` rows is a 413.
"""

from __future__ import annotations

import base64
import binascii
import io
import json

import numpy as np

from pipelines.serving.codec import _loads
from pipelines.serving.responses import BadRequest, _first_line, prefix
from pipelines.serving.savedmodel import Servable, TensorInfo


def _shape_str(shape) -> str:
    return "[" + ", ".join("batch" if i == 0 and d is None else ("?" if d is None else str(d)) for i, d in enumerate(shape)) + "]"


def _check_shape(arr: np.ndarray, spec: TensorInfo, where: str) -> None:
    ok = arr.ndim == len(spec.shape) and all(d is None or d == a for d, a in zip(spec.shape, arr.shape))
    if not ok:
        raise BadRequest(
            f"{where}: wrong shape {list(arr.shape)} for input {spec.name!r}, expected {_shape_str(spec.shape)}"
        )


def _numeric(value, spec: TensorInfo, where: str) -> np.ndarray:
    """Nested lists -> an array of the spec's dtype, checking the values fit it."""
    try:
        arr = _asarray(value)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadRequest(f"{where}: input {spec.name!r} is not a rectangular array of numbers ({_first_line(e)})")
    want = spec.dtype
    kind = arr.dtype.kind
    if kind == "b" and want.kind != "b" or kind not in "biuf":
        what = {"U": "strings", "O": "mixed or nested objects", "b": "booleans"}.get(kind, arr.dtype.name)
        raise BadRequest(f"{where}: wrong dtype for input {spec.name!r}: expected {want.name} numbers, got {what}")
    if want.kind in "iu":
        if kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))].ravel()[0]
                raise BadRequest(f"{where}: wrong dtype for input {spec.name!r}: expected {want.name} integers, "
                                 f"got {bad.item()!r}")
        info = np.iinfo(want)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            bad = arr.min() if arr.min() < info.min else arr.max()
            raise BadRequest(
                f"{where}: value {bad.item()!r} out of range for input {spec.name!r} of dtype {want.name} "
                f"({info.min}..{info.max})"
            )
    return arr.astype(want, copy=False)


def _is_b64(v) -> bool:
    return isinstance(v, dict) and set(v) == {"b64"}


def _b64_bytes(obj: dict, where: str) -> bytes:
    """The bytes of a `{"b64": <string>}` value; `BadRequest` naming `where` for a value that is not base64."""
    s = obj["b64"]
    if not isinstance(s, str):
        raise BadRequest(f"{where}: the b64 value must be a string, got {type(s).__name__}")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{where}: invalid base64 ({_first_line(e)})") from None


_FILES_HINT = ('; send files of any size and channels to the image_bytes signature ("signature_name": '
               '"image_bytes"), which reads them as training read its files')


def _decode_image(obj: dict, spec: TensorInfo, where: str) -> np.ndarray:
    """{"b64": PNG/JPEG} -> [H, W, C] array of the spec's dtype, checked against the spec."""
    from PIL import Image, UnidentifiedImageError

    if len(spec.shape) != 4 or spec.dtype.kind not in "uif":
        raise BadRequest(f"{where}: b64 values are only accepted for image inputs [batch, H, W, C]; "
                         f"input {spec.name!r} is {spec.dtype.name} {_shape_str(spec.shape)}")
    raw = _b64_bytes(obj, where)
    _, h, w, c = spec.shape
    try:
        img = Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"])
        # size from the header, checked before decoding the pixels
        if (h is not None and img.height != h) or (w is not None and img.width != w):
            raise BadRequest(
                f"{where}: image is {img.width}x{img.height} (width x height), "
                f"input {spec.name!r} expects {w}x{h}{_FILES_HINT}"
            )
        if img.mode == "1":
            img = img.convert("L")
        elif img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(img.mode)
        if channels is None:
            raise BadRequest(f"{where}: unsupported image mode {img.mode!r}; send 8-bit grayscale, RGB or RGBA")
        if c is not None and channels != c:
            raise BadRequest(f"{where}: image has {channels} channel(s) ({img.mode}), input {spec.name!r} expects {c}"
                             f"{_FILES_HINT}")
        if img.format == "JPEG":  # TensorFlow's decoder, as training and image_bytes read it: PIL's JPEG pixels
            import tensorflow as tf  # differ by up to 5 levels in most pixels

            try:
                arr = tf.io.decode_image(raw, channels=channels, expand_animations=False).numpy()
            except tf.errors.OpError as e:  # a truncated or corrupt JPEG whose header PIL read
                raise BadRequest(f"{where}: undecodable image (PNG or JPEG expected): {_first_line(e)}") from None
        else:
            arr = np.asarray(img)
    except BadRequest:
        raise
    except UnidentifiedImageError:  # its message is PIL's repr of our buffer (<_io.BytesIO object at 0x...>)
        raise BadRequest(f"{where}: undecodable image (PNG or JPEG expected): not a PNG or JPEG file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadRequest(f"{where}: undecodable image (PNG or JPEG expected): {_first_line(e)}")
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr.astype(spec.dtype, copy=False)


def _instance_value(value, spec: TensorInfo, where: str) -> np.ndarray:
    """One instance (no batch dim): b64 image or nested lists."""
    arr = _decode_image(value, spec, where) if _is_b64(value) else _numeric(value, spec, where)
    inner = TensorInfo(spec.name, spec.dtype, spec.shape[1:])
    ok = arr.ndim == len(inner.shape) and all(d is None or d == a for d, a in zip(inner.shape, arr.shape))
    if not ok:
        raise BadRequest(
            f"{where}: wrong shape {list(arr.shape)} for one instance of input {spec.name!r}, "
            f"expected [{', '.join('?' if d is None else str(d) for d in inner.shape)}]"
        )
    return arr


def _stack(parts: list[np.ndarray], spec: TensorInfo, where: str) -> np.ndarray:
    shapes = {p.shape for p in parts}
    if len(shapes) > 1:
        raise BadRequest(f"{where}: instances of input {spec.name!r} have different shapes {sorted(shapes)}")
    return np.stack(parts)


class LazyInstances:
    """A batch of instances some of which are b64 images, decoded a slice at a time.

    The batcher takes `[a:b]` of it one chunk (`--max-batch` rows) at a time,
    so a large request of small PNGs never lives decoded all at once.
    """

    def __init__(self, values: list, spec: TensorInfo, where: str):
        for i, v in enumerate(values):  # the cheap checks now; decoding later
            if _is_b64(v) and not isinstance(v["b64"], str):
                raise BadRequest(f"{where}[{i}]: the b64 value must be a string, got {type(v['b64']).__name__}")
        self.values, self.spec, self.where = values, spec, where

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start = rows.start or 0
        return _stack(
            [_instance_value(v, self.spec, f"{self.where}[{start + i}]") for i, v in enumerate(self.values[rows])],
            self.spec, self.where,
        )


def _batch_value(value, spec: TensorInfo, where: str):
    """A whole batch of one input: nested lists (an array), or a list of instances some of which are b64."""
    if isinstance(value, list) and any(_is_b64(v) for v in value):
        return LazyInstances(value, spec, where)
    if _is_b64(value):
        raise BadRequest(f"{where}: input {spec.name!r} needs a batch: send a list of b64 images")
    arr = _numeric(value, spec, where)
    _check_shape(arr, spec, where)
    return arr


def _asarray(value) -> np.ndarray:
    """np.asarray(value), a row at a time for long lists (np.asarray holds the GIL throughout)."""
    if isinstance(value, list) and len(value) > 64 and all(isinstance(v, (list, np.ndarray)) for v in value):
        parts = [np.asarray(v) for v in value]
        if len({p.shape for p in parts}) > 1:
            raise ValueError("the rows have different shapes")
        return np.stack(parts)
    return np.asarray(value)


def rows_check(n: int, max_rows: int | None, what: str) -> None:
    if max_rows is not None and n > max_rows:
        raise BadRequest(
            f"{what} holds {n} rows, over the limit of {max_rows} per request (--max-rows); "
            f"split it into several requests", 413,
        )


IMAGE_BYTES = "image_bytes"  # the export's signature of encoded files (pipelines/signatures.py)


class EncodedImages(list):
    """The files of a predict request on the `image_bytes` signature (bytes, one per row), as TensorFlow Serving
    reads its string input: `{"b64": ...}` per row, named `image_bytes` or not."""


def _encoded_images(req: dict, max_rows: int | None) -> EncodedImages:
    rows = req.get("instances", req.get("inputs"))
    if isinstance(rows, dict) and set(rows) == {IMAGE_BYTES}:  # columnar, named
        rows = rows[IMAGE_BYTES]
    elif isinstance(rows, dict) and rows and not _is_b64(rows):  # columnar under another name
        raise BadRequest(f"the {IMAGE_BYTES!r} signature has one input, {IMAGE_BYTES!r}; got {sorted(rows)}")
    if not isinstance(rows, list) or not rows:
        raise BadRequest(f"the {IMAGE_BYTES!r} signature takes a non-empty list of {{\"b64\": <file>}}, one per image")
    rows_check(len(rows), max_rows, "'instances'" if "instances" in req else "'inputs'")
    out = EncodedImages()
    for i, row in enumerate(rows):
        if isinstance(row, dict) and set(row) == {IMAGE_BYTES}:
            row = row[IMAGE_BYTES]
        if not _is_b64(row) or not isinstance(row["b64"], str):
            raise BadRequest(f"row {i}: the {IMAGE_BYTES!r} signature takes {{\"b64\": <an encoded image file>}}")
        out.append(_b64_bytes(row, f"row {i}"))
    return out


def parse_json(body: bytes, loads=_loads):
    """`loads(body)`, every way a body is not JSON one `BadRequest` (400) saying how."""
    try:
        return loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON in the request body: {e}") from None
    except RecursionError:  # e.g. 100k nested '[': deeper than any tensor (64 dims at most)
        raise BadRequest("malformed JSON in the request body: nested too deeply") from None
    except ValueError as e:  # an integer over sys.get_int_max_str_digits() (4300) digits
        why = "a number has too many digits" if "digits" in str(e) else prefix(_first_line(e), 80)
        raise BadRequest(f"malformed JSON in the request body: {why}") from None


def parse_predict(body: bytes, servable: Servable, max_rows: int | None = None) -> tuple[dict, bool]:
    """A predict request body -> (inputs by name, row format?).

    An input is an array, or `LazyInstances` where b64 images are decoded by
    the batcher a chunk at a time. More than `max_rows` rows is a 413. On the
    `image_bytes` signature: `EncodedImages` (the files) instead of the inputs.
    """
    req = parse_json(body)
    if not isinstance(req, dict):
        raise BadRequest(f"the request body must be a JSON object with 'instances' or 'inputs', got {type(req).__name__}")
    sig = req.get("signature_name", "serving_default")
    if sig not in ("serving_default", "", None, IMAGE_BYTES):
        also = "; its 'classify' signature answers at :classify" if sig == "classify" else ""
        raise BadRequest(f"unknown signature_name {sig!r}; :predict here serves 'serving_default' and "
                         f"{IMAGE_BYTES!r}{also}")
    unknown = sorted(set(req) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise BadRequest(f"unknown key(s) {unknown} in the request; expected 'instances' or 'inputs'")
    if ("instances" in req) == ("inputs" in req):
        raise BadRequest("the request must have exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    if sig == IMAGE_BYTES:
        return _encoded_images(req, max_rows), "instances" in req
    specs = servable.inputs
    names = list(specs)
    if "instances" in req:
        inst = req["instances"]
        if not isinstance(inst, list) or not inst:
            raise BadRequest("'instances' must be a non-empty list, one entry per instance")
        rows_check(len(inst), max_rows, "'instances'")
        named = all(isinstance(x, dict) and not _is_b64(x) for x in inst)
        if not named:
            if len(names) != 1:
                raise BadRequest(f"this signature has inputs {names}: each instance must be an object naming them")
            spec = specs[names[0]]
            return {spec.name: _batch_value(inst, spec, "instances")}, True
        cols: dict[str, list] = {n: [] for n in names}
        for i, x in enumerate(inst):
            if set(x) != set(names):
                raise BadRequest(f"instances[{i}] has keys {sorted(x)}, the signature's inputs are {names}")
            for n in names:
                cols[n].append(x[n])
        return {n: _batch_value(cols[n], specs[n], f"instances.{n}") for n in names}, True
    inputs = req["inputs"]
    for v in inputs.values() if isinstance(inputs, dict) and not _is_b64(inputs) else [inputs]:
        if isinstance(v, list):
            rows_check(len(v), max_rows, "'inputs'")
    if isinstance(inputs, dict) and not _is_b64(inputs):
        if set(inputs) != set(names):
            raise BadRequest(f"'inputs' has keys {sorted(inputs)}, the signature's inputs are {names}")
        arrays = {n: _batch_value(inputs[n], specs[n], f"inputs.{n}") for n in names}
    else:
        if len(names) != 1:
            raise BadRequest(f"this signature has inputs {names}: 'inputs' must be an object naming them")
        arrays = {names[0]: _batch_value(inputs, specs[names[0]], "inputs")}
    sizes = {n: len(a) for n, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise BadRequest(f"inputs have different batch sizes {sizes}")
    if not next(iter(sizes.values())):
        raise BadRequest("'inputs' holds an empty batch")
    return arrays, False
