"""TensorFlow Serving's REST API, independent of the HTTP stack it runs on.

Routes (https://www.tensorflow.org/tfx/serving/api_rest):

    GET  /v1/models/<name>[/versions/<v>]            version status
    GET  /v1/models/<name>[/versions/<v>]/metadata   signature defs
    POST /v1/models/<name>[/versions/<v>]:predict    row ("instances") or columnar ("inputs")
    GET  /monitoring/prometheus/metrics              Prometheus metrics (`pipelines.serving.metrics`)

`/labels/<label>` may stand where `/versions/<v>` does: the version the label
names in the model config file (404 for an unknown label, and while the
version it names is not AVAILABLE). Without either, the highest served version.

An image input (uint8 [batch, H, W, C]) takes nested lists of integers or
`{"b64": "<base64 PNG or JPEG bytes>"}`; a decoded image must have the
signature's height, width and channels. Every mistake of the client is a 4xx
answer `{"error": "..."}` that says what was wrong; 5xx is kept for the
server's own faults.

`RestApi.handle` returns either a `Response` or a `Pending` (a queued predict
whose `future` the HTTP server waits on before calling `finish()`).

`pipelines.serving.responses` holds the answer types and error wording,
`pipelines.serving.request` the request parsing and checking,
`pipelines.serving.codec` the JSON decoding and encoding; their public names
are importable from here as before.
"""

from __future__ import annotations

import logging
import re

from pipelines.serving.codec import _loads, encode_predict, format_predict
from pipelines.serving.metrics import PATH as METRICS_PATH
from pipelines.serving.request import IMAGE_BYTES, EncodedImages, LazyInstances, parse_predict
from pipelines.serving.responses import BadRequest, Pending, Response, _first_line, clip, error, prefix
from pipelines.serving.servables import ModelManager, NotFound

__all__ = [
    "BadRequest", "LazyInstances", "Pending", "Response", "RestApi", "_loads", "clip", "encode_predict", "error",
    "format_predict", "parse_predict", "prefix",
]

log = logging.getLogger("pipelines.serve")

_ROUTE = re.compile(  # case-insensitive but for the names, as TF Serving's routes ("(?i)/v1/models/...")
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$", re.IGNORECASE,
)

READ, WRITE = "GET, HEAD, OPTIONS", "POST, OPTIONS"  # the methods of the status and metadata routes; of the verbs


def _options(allow: str) -> Response:
    """The answer to OPTIONS (a load balancer's health check may send it): the methods the route answers."""
    return Response(200, {}, {"Allow": allow})


_TF_DTYPES = {
    "uint8": "DT_UINT8", "int8": "DT_INT8", "uint16": "DT_UINT16", "int16": "DT_INT16",
    "int32": "DT_INT32", "int64": "DT_INT64", "float16": "DT_HALF", "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE", "bool": "DT_BOOL",
}


class RestApi:
    """Routes a request to the model manager; answers in TF Serving's JSON."""

    def __init__(
        self,
        manager: ModelManager,
        max_body_bytes: int = 8 << 20,
        predict_timeout_s: float = 60.0,
        max_rows: int | None = 4096,
        metrics=None,  # pipelines.serving.metrics.ServerMetrics, served at its PATH; None: 404 there
    ):
        self.manager = manager
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.predict_timeout_s = predict_timeout_s
        self.max_rows = max_rows
        self._pool = None

    def _classify_pool(self):
        """Classify and `image_bytes` predict calls run here, off the HTTP stack's loop (they are not batched)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(2, thread_name_prefix="classify")
        return self._pool

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
        if method == "OPTIONS" and path == "*":  # the server as a whole
            return _options("GET, HEAD, POST, OPTIONS")
        if path == METRICS_PATH and self.metrics is not None:
            if method == "OPTIONS":
                return _options(READ)
            if method not in ("GET", "HEAD"):  # HEAD: GET's headers, its body left out by the HTTP layer
                raise BadRequest(f"{path} answers GET, got {prefix(method, 16)}", 405, {"Allow": READ})
            body, content_type = self.metrics.exposition()
            return Response(200, body, {"Content-Type": content_type})
        # As TF Serving: a path under /v1/ that is no route is a malformed request (400), any other a 404.
        malformed = BadRequest if path[:4].lower() == "/v1/" else NotFound
        m = _ROUTE.match(path)
        if m is None:
            raise malformed(f"Malformed request: {clip(method, 16)} {clip(path)} (routes: /v1/models/<name>"
                            f"[/versions/<v>|/labels/<label>][/metadata|:predict|:classify])")
        name, label, verb = m["name"], m["label"], m["verb"] and m["verb"].lower()
        if len(path) > 200:
            raise malformed(f"Malformed request: path of {len(path)} characters {clip(path, 60)}")
        version = None
        if m["version"] is not None:
            if not m["version"].isdigit():
                raise BadRequest(f"the version must be a positive integer, got {m['version']!r}")
            version = int(m["version"])
        if verb is not None:
            if verb not in ("predict", "classify", "regress"):
                raise BadRequest(f"Malformed request: unknown verb {verb!r} (use :predict or :classify)")
            if method == "OPTIONS":
                self.manager.status(name, version, label)  # a model (version) it does not know: 404, as for POST
                return _options(WRITE)
            if method != "POST":
                raise BadRequest(f"{verb} needs POST, got {prefix(method, 16)}", 405, {"Allow": WRITE})
            if verb == "classify":  # TF Serving's Classify on the export's `classify` signature
                from pipelines.serving.classify import format_classify, parse_classify

                servable, _ = self.manager.resolve(name, version, label)
                examples = parse_classify(body, self.max_rows)
                return Pending(self._classify_pool().submit(servable.classify, examples), format_classify)
            if verb != "predict":
                raise BadRequest(f"{verb} is not supported: the export has no regression signature; "
                                 "use :predict or :classify")
            servable, batcher = self.manager.resolve(name, version, label)
            inputs, row = parse_predict(body, servable, self.max_rows)
            if isinstance(inputs, EncodedImages):  # files of any size: the export decodes and resizes them
                import numpy as np

                if IMAGE_BYTES not in servable.signature_defs:
                    raise BadRequest(f"{name} version {servable.version} has no {IMAGE_BYTES!r} signature (exported "
                                     "before it existed); send pixels to 'serving_default'")
                files = {IMAGE_BYTES: np.array(inputs, dtype=object)}
                fut = self._classify_pool().submit(servable.run_signature, IMAGE_BYTES, files)
                return Pending(fut, lambda out: encode_predict(out, row))
            fut = batcher.submit(servable, inputs)
            return Pending(fut, lambda out: encode_predict(out, row))
        if method == "OPTIONS":
            self.manager.status(name, version, label)  # a model (version) it does not know: 404, as for GET
            return _options(READ)
        if method not in ("GET", "HEAD"):
            raise BadRequest(f"{path} answers GET, got {prefix(method, 16)}", 405, {"Allow": READ})
        if m["metadata"]:
            servable, _ = self.manager.resolve(name, version, label)
            return Response(200, {
                "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": {"signature_def": servable.signature_defs},
                             # this server's addition (TF Serving has signature_def only): class id -> name
                             **({"class_names": servable.class_names} if servable.class_names else {})},
            })
        return Response(200, {"model_version_status": [  # the rows gRPC's GetModelStatus answers too
            {"version": str(v), "state": s, "status": {"error_code": code, "error_message": msg}}
            for v, s, code, msg in self.manager.status(name, version, label)
        ]})
