"""TF Serving's Classify API over the export's `classify` signature (pipelines/signatures.py).

REST `POST /v1/models/<name>[/versions/<v>]:classify` takes, as TF Serving's
REST API does,

    {"signature_name": "classify",             (optional; the only classification signature)
     "context": {"<feature>": <value>, ...},   (optional; merged into every example)
     "examples": [{"image/encoded": {"b64": "<an encoded image (PNG, JPEG, BMP, GIF, WebP), base64>"}}, ...]}

and answers `{"result": [[["<class name>", <score>], ...], ...]}`: per
example, every class with its probability, in class-id order. A feature value
is `{"b64": ...}` (bytes), a string, an integer, a float or a list of one of
those; the signature reads the bytes feature `image/encoded` (an encoded
image of any size: it is decoded and resized as training read its files).
gRPC `Classify` (pipelines/serving/grpc_server.py) sends the same
`tf.train.Example`s to the same signature.
"""

from __future__ import annotations

import base64
import binascii
import json

from pipelines.serving.request import parse_json, rows_check
from pipelines.serving.responses import BadRequest

_INT64 = (-(2**63), 2**63 - 1)  # an int64_list's range


def _feature(key: str, value):
    import tensorflow as tf

    values = value if isinstance(value, list) else [value]
    if not values:
        raise BadRequest(f"feature {key!r}: an empty list")
    if all(isinstance(v, dict) and set(v) == {"b64"} for v in values):
        try:
            raw = [base64.b64decode(v["b64"], validate=True) for v in values]
        except (binascii.Error, TypeError, ValueError):
            raise BadRequest(f"feature {key!r}: b64 is not valid base64") from None
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=raw))
    if all(isinstance(v, str) for v in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        bad = next((v for v in values if not _INT64[0] <= v <= _INT64[1]), None)
        if bad is not None:
            raise BadRequest(f"feature {key!r}: {str(bad)[:40]} is out of range for int64")
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        try:
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        except (OverflowError, ValueError):  # an integer past float's range among floats
            raise BadRequest(f"feature {key!r}: a value is out of range for float") from None
    raise BadRequest(f"feature {key!r}: values must be all {{\"b64\": ...}}, all strings or all numbers")


def parse_classify(body: bytes, max_rows: int | None = None) -> list[bytes]:
    """The serialized `tf.train.Example`s of a REST classify body; `BadRequest` names what is wrong, a 413 more
    than `max_rows` examples (--max-rows, as for :predict and gRPC Classify)."""
    import tensorflow as tf

    request = parse_json(body, json.loads)  # feature values stay lists (predict's parser makes them arrays)
    if not isinstance(request, dict) or not isinstance(request.get("examples"), list):
        raise BadRequest('a classify request is {"examples": [{"image/encoded": {"b64": ...}}, ...]}')
    sig = request.get("signature_name", "classify")
    if sig != "classify":
        raise BadRequest(f"signature {sig!r} is not a classification signature; this model's is 'classify'")
    examples, context = request["examples"], request.get("context") or {}
    if not examples:
        raise BadRequest("examples is empty")
    rows_check(len(examples), max_rows, "'examples'")
    if not isinstance(context, dict) or not all(isinstance(e, dict) for e in examples):
        raise BadRequest("every example, and the context, is an object of feature name -> value")
    out = []
    for ex in examples:
        merged = {**context, **ex}
        if "image/encoded" not in merged:
            raise BadRequest('every example needs the feature "image/encoded": {"b64": <an encoded image>}')
        features = {k: _feature(k, v) for k, v in merged.items()}
        out.append(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    return out


def format_classify(out: dict) -> dict:
    """`{"result": [[[class, score], ...] per example]}` from the signature's `classes` and `scores`."""
    return {"result": [[[str(c), float(s)] for c, s in zip(cs, ss)] for cs, ss in zip(out["classes"], out["scores"])]}
