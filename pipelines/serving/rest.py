"""TensorFlow Serving's REST API, independent of the HTTP stack it runs on.

Routes (https://www.tensorflow.org/tfx/serving/api_rest):

    GET  /v1/models/<name>[/versions/<v>]            version status
    GET  /v1/models/<name>[/versions/<v>]/metadata   signature defs
    POST /v1/models/<name>[/versions/<v>]:predict    row ("instances") or columnar ("inputs")

An image input (uint8 [batch, H, W, C]) takes nested lists of integers or
`{"b64": "<base64 PNG or JPEG bytes>"}`; a decoded image must have the
signature's height, width and channels. Every mistake of the client is a 4xx
answer `{"error": "..."}` that says what was wrong; 5xx is kept for the
server's own faults.

`RestApi.handle` returns either a `Response` or a `Pending` (a queued predict
whose `future` the HTTP stack waits on, blocking or with asyncio, before
calling `finish()`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import json.scanner
import logging
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipelines.serving.servables import ModelManager, NotFound, Servable, TensorInfo

log = logging.getLogger("pipelines.serve")

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$"
)

_TF_DTYPES = {
    "uint8": "DT_UINT8", "int8": "DT_INT8", "uint16": "DT_UINT16", "int16": "DT_INT16",
    "int32": "DT_INT32", "int64": "DT_INT64", "float16": "DT_HALF", "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE", "bool": "DT_BOOL",
}


class BadRequest(ValueError):
    """A client mistake; `status` is the 4xx code to answer with (and `headers` to add, e.g. Allow)."""

    def __init__(self, message: str, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Response:
    status: int
    body: dict | bytes  # bytes: already encoded (a predict answer)
    headers: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, separators=(",", ":")).encode()


@dataclass
class Pending:
    future: object  # concurrent.futures.Future
    finish_fn: Callable[[dict], dict | bytes]

    def finish(self) -> Response:
        try:
            out = self.future.result(timeout=0)
        except Exception as e:  # noqa: BLE001
            return _model_error(e)
        return Response(200, self.finish_fn(out))

    def wait(self, timeout: float | None = None) -> Response:
        try:
            self.future.result(timeout=timeout)
        except Exception:  # noqa: BLE001 - reported by finish()
            pass
        if not self.future.done():
            self.abandon()
        return self.finish()

    def abandon(self, why: str = "the model did not answer in time; try again") -> None:
        """Give up on the answer: the batcher drops the request's remaining chunks."""
        try:
            if not self.future.done():
                self.future.set_exception(TimeoutError(why))
        except Exception:  # noqa: BLE001 - InvalidStateError: answered meanwhile
            pass


def _model_error(e: BaseException) -> Response:
    import tensorflow as tf

    if isinstance(e, BadRequest):  # found while the batcher took the rows (an undecodable image)
        return error(e.status, str(e))
    if isinstance(e, (tf.errors.InvalidArgumentError, ValueError, TypeError)):
        return Response(400, {"error": f"the model rejected the input: {_first_line(e)}"})
    if isinstance(e, TimeoutError):
        return Response(503, {"error": "the model did not answer in time; try again"})
    log.error("predict failed: %r", e)
    return Response(500, {"error": f"internal error: {type(e).__name__}: {_first_line(e)}"})


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def error(status: int, message: str, headers: dict | None = None) -> Response:
    return Response(status, {"error": message}, headers or {})


def clip(text: str, n: int = 100) -> str:
    """`text` cut to `n` characters (a client's path or name echoed in an error)."""
    text = "".join(c if c.isprintable() else "?" for c in text[: n + 1])
    return text if len(text) <= n else text[:n] + "..."


def prefix(value, n: int = 40) -> str:
    """A short, printable prefix of something a client sent, for error messages and logs."""
    text = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    short = text[:n].encode("ascii", "backslashreplace").decode("ascii")
    short = "".join(c if c.isprintable() else "?" for c in short)
    return repr(short) + (f"... ({len(text)} characters)" if len(text) > n else "")


# ----------------------------------------------------------------------------- request parsing


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
                raise BadRequest(f"{where}: wrong dtype for input {spec.name!r}: expected {want.name} integers, got {bad!r}")
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


def _decode_image(obj: dict, spec: TensorInfo, where: str) -> np.ndarray:
    """{"b64": PNG/JPEG} -> [H, W, C] array of the spec's dtype, checked against the spec."""
    from PIL import Image, UnidentifiedImageError

    if len(spec.shape) != 4 or spec.dtype.kind not in "uif":
        raise BadRequest(f"{where}: b64 values are only accepted for image inputs [batch, H, W, C]; "
                         f"input {spec.name!r} is {spec.dtype.name} {_shape_str(spec.shape)}")
    s = obj["b64"]
    if not isinstance(s, str):
        raise BadRequest(f"{where}: the b64 value must be a string, got {type(s).__name__}")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{where}: invalid base64 ({_first_line(e)})")
    _, h, w, c = spec.shape
    try:
        img = Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"])
        # size from the header, checked before decoding the pixels
        if (h is not None and img.height != h) or (w is not None and img.width != w):
            raise BadRequest(
                f"{where}: image is {img.width}x{img.height} (width x height), "
                f"input {spec.name!r} expects {w}x{h}"
            )
        if img.mode == "1":
            img = img.convert("L")
        elif img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(img.mode)
        if channels is None:
            raise BadRequest(f"{where}: unsupported image mode {img.mode!r}; send 8-bit grayscale, RGB or RGBA")
        if c is not None and channels != c:
            raise BadRequest(f"{where}: image has {channels} channel(s) ({img.mode}), input {spec.name!r} expects {c}")
        arr = np.asarray(img)
    except BadRequest:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
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


_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner json.loads uses
_WS = re.compile(r"[ \t\n\r]*")
_WALK = 3  # levels parsed here: the request object, its lists of instances, an instance


def _loads(text: str | bytes):
    """json.loads(text) for a request body, kinder to the other threads on a large one.

    The top `_WALK` levels are parsed here, each value below them by json's C
    scanner, one value per call, and a list found there becomes a NumPy array
    at once. So a large body of nested lists (8 MB: about 1.5 million lists)
    neither holds the GIL for its whole parse nor leaves millions of live lists
    behind (their garbage collections stalled every thread for seconds). The
    same values (lists deep down as arrays, unless ragged or not numbers) and
    the same errors as json.loads.
    """

    def fail(msg: str, i: int):
        raise json.JSONDecodeError(msg, text, i)

    def ws(i: int) -> int:
        return _WS.match(text, i).end()

    def value(i: int, depth: int):
        i = ws(i)
        c = text[i : i + 1]
        if depth < _WALK and c == "[":
            out, i = [], ws(i + 1)
            if text[i : i + 1] == "]":
                return out, i + 1
            while True:
                v, i = value(i, depth + 1)
                out.append(v)
                i = ws(i)
                c = text[i : i + 1]
                if c == "]":
                    return out, i + 1
                if c != ",":
                    fail("Expecting ',' delimiter", i)
                i += 1
        if depth < _WALK and c == "{":
            out, i = {}, ws(i + 1)
            if text[i : i + 1] == "}":
                return out, i + 1
            while True:
                if text[i : i + 1] != '"':
                    fail("Expecting property name enclosed in double quotes", i)
                k, i = _SCAN(text, i)
                i = ws(i)
                if text[i : i + 1] != ":":
                    fail("Expecting ':' delimiter", i)
                out[k], i = value(i + 1, depth + 1)
                i = ws(i)
                c = text[i : i + 1]
                if c == "}":
                    return out, i + 1
                if c != ",":
                    fail("Expecting ',' delimiter", i)
                i = ws(i + 1)
        try:
            v, i = _SCAN(text, i)
        except StopIteration as e:
            fail("Expecting value", e.value)
        if isinstance(v, list) and v:
            try:
                a = np.asarray(v)
                if a.dtype.kind in "biuf":
                    v = a
            except (ValueError, TypeError, OverflowError):
                pass  # ragged or not numbers: left as it is for the checks to name
        return v, i

    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8-sig" if text[:3] == b"\xef\xbb\xbf" else "utf-8")
    obj, end = value(0, 0)
    end = ws(end)
    if end != len(text):
        fail("Extra data", end)
    return obj


def _asarray(value) -> np.ndarray:
    """np.asarray(value), a row at a time for long lists (np.asarray holds the GIL throughout)."""
    if isinstance(value, list) and len(value) > 64 and all(isinstance(v, (list, np.ndarray)) for v in value):
        parts = [np.asarray(v) for v in value]
        if len({p.shape for p in parts}) > 1:
            raise ValueError("the rows have different shapes")
        return np.stack(parts)
    return np.asarray(value)


def _rows_check(n: int, max_rows: int | None, what: str) -> None:
    if max_rows is not None and n > max_rows:
        raise BadRequest(
            f"{what} holds {n} rows, over the limit of {max_rows} per request (--max-rows); "
            f"split it into several requests", 413,
        )


def parse_predict(body: bytes, servable: Servable, max_rows: int | None = None) -> tuple[dict, bool]:
    """A predict request body -> (inputs by name, row format?).

    An input is an array, or `LazyInstances` where b64 images are decoded by
    the batcher a chunk at a time. More than `max_rows` rows is a 413.
    """
    try:
        req = _loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON in the request body: {e}")
    except RecursionError:  # e.g. 100k nested '[': deeper than any tensor (64 dims at most)
        raise BadRequest("malformed JSON in the request body: nested too deeply") from None
    except ValueError as e:  # an integer over sys.get_int_max_str_digits() (4300) digits
        why = "a number has too many digits" if "digits" in str(e) else prefix(_first_line(e), 80)
        raise BadRequest(f"malformed JSON in the request body: {why}") from None
    if not isinstance(req, dict):
        raise BadRequest(f"the request body must be a JSON object with 'instances' or 'inputs', got {type(req).__name__}")
    sig = req.get("signature_name", "serving_default")
    if sig not in ("serving_default", "", None):
        raise BadRequest(f"unknown signature_name {sig!r}; this model serves 'serving_default'")
    unknown = sorted(set(req) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise BadRequest(f"unknown key(s) {unknown} in the request; expected 'instances' or 'inputs'")
    if ("instances" in req) == ("inputs" in req):
        raise BadRequest("the request must have exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    specs = servable.inputs
    names = list(specs)
    if "instances" in req:
        inst = req["instances"]
        if not isinstance(inst, list) or not inst:
            raise BadRequest("'instances' must be a non-empty list, one entry per instance")
        _rows_check(len(inst), max_rows, "'instances'")
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
            _rows_check(len(v), max_rows, "'inputs'")
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


_ENCODE_ROWS = 256


def _dumps_list(values: list) -> str:
    """json.dumps of a list, `_ENCODE_ROWS` items per call: a long answer (20k rows take ~0.3 s to
    encode) lets the other threads (the event loop, the batcher) run between the calls."""
    if len(values) <= _ENCODE_ROWS:
        return json.dumps(values, separators=(",", ":"))
    parts = (json.dumps(values[i : i + _ENCODE_ROWS], separators=(",", ":"))[1:-1]
             for i in range(0, len(values), _ENCODE_ROWS))
    return "[" + ",".join(parts) + "]"


def encode_predict(out: dict[str, np.ndarray], row: bool) -> bytes:
    """`format_predict`'s answer as JSON bytes, encoded a slice of rows at a time."""
    body = format_predict(out, row)
    key = next(iter(body))
    value = body[key]
    if isinstance(value, dict):
        inner = ",".join(f"{json.dumps(k)}:{_dumps_list(v)}" for k, v in value.items())
        return f'{{"{key}":{{{inner}}}}}'.encode()
    return f'{{"{key}":{_dumps_list(value)}}}'.encode()


def format_predict(out: dict[str, np.ndarray], row: bool) -> dict:
    """Outputs -> TF Serving's answer: `predictions` (row) or `outputs` (columnar)."""
    lists = {k: v.tolist() for k, v in out.items()}
    if row:
        if len(lists) == 1:
            return {"predictions": next(iter(lists.values()))}
        keys = list(lists)
        return {"predictions": [dict(zip(keys, vals)) for vals in zip(*(lists[k] for k in keys))]}
    if len(lists) == 1:
        return {"outputs": next(iter(lists.values()))}
    return {"outputs": lists}


# ----------------------------------------------------------------------------- the API


class RestApi:
    """Routes a request to the model manager; answers in TF Serving's JSON."""

    def __init__(
        self,
        manager: ModelManager,
        max_body_bytes: int = 8 << 20,
        predict_timeout_s: float = 60.0,
        max_rows: int | None = 4096,
    ):
        self.manager = manager
        self.max_body_bytes = max_body_bytes
        self.predict_timeout_s = predict_timeout_s
        self.max_rows = max_rows

    def too_large(self, size: int | None) -> Response | None:
        if size is not None and size > self.max_body_bytes:
            return error(413, f"payload of {size} bytes is over the limit of {self.max_body_bytes} bytes")
        return None

    def handle(self, method: str, path: str, body: bytes = b"") -> Response | Pending:
        try:
            return self._handle(method, path, body)
        except BadRequest as e:
            return error(e.status, str(e), e.headers)
        except NotFound as e:
            return error(404, str(e))
        except Exception as e:  # noqa: BLE001 - never die on a request
            log.exception("unexpected error on %s %s", method, path)
            return error(500, f"internal error: {type(e).__name__}: {_first_line(e)}")

    def _handle(self, method: str, path: str, body: bytes) -> Response | Pending:
        path = path.split("?", 1)[0]
        m = _ROUTE.match(path)
        if m is None:
            raise NotFound(f"Malformed request: {clip(method, 16)} {clip(path)} (routes: /v1/models/<name>[/versions/<v>]"
                           f"[/metadata|:predict])")
        name, label, verb = m["name"], m["label"], m["verb"]
        if len(path) > 200:
            raise NotFound(f"Malformed request: path of {len(path)} characters {clip(path, 60)}")
        if label is not None:
            raise NotFound(f"version labels are not supported (got label {label!r}); use /versions/<v>")
        version = None
        if m["version"] is not None:
            if not m["version"].isdigit():
                raise BadRequest(f"the version must be a positive integer, got {m['version']!r}")
            version = int(m["version"])
        if verb is not None:
            if verb not in ("predict", "classify", "regress"):
                raise NotFound(f"Malformed request: unknown verb {verb!r} (use :predict)")
            if method != "POST":
                raise BadRequest(f"{verb} needs POST, got {prefix(method, 16)}", 405, {"Allow": "POST"})
            if verb != "predict":
                raise BadRequest(f"{verb} is not supported by the 'serving_default' signature; use :predict")
            servable, batcher = self.manager.get(name, version)
            inputs, row = parse_predict(body, servable, self.max_rows)
            fut = batcher.submit(servable, inputs)
            return Pending(fut, lambda out: encode_predict(out, row))
        if method != "GET":
            raise BadRequest(f"{path} answers GET, got {prefix(method, 16)}", 405, {"Allow": "GET"})
        if m["metadata"]:
            servable, _ = self.manager.get(name, version)
            return Response(200, {
                "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
            })
        return Response(200, {"model_version_status": self._status(name, version)})

    def _status(self, name: str, version: int | None) -> list[dict]:
        st = self.manager.state(name)
        rows = []
        if st.servable is not None:
            rows.append((st.servable.version, "AVAILABLE", "OK", ""))
        if st.loading is not None:
            rows.append((st.loading, "LOADING", "OK", ""))
        rows += [(v, "END", "UNKNOWN", msg) for v, msg in sorted(st.failed.items())]
        if version is not None:
            rows = [r for r in rows if r[0] == version]
            if not rows:
                raise NotFound(f"Could not find version {version} of model {name!r}")
        return [
            {"version": str(v), "state": s, "status": {"error_code": code, "error_message": msg}}
            for v, s, code, msg in rows
        ]
