"""JSON in and out of the predict API, kind to the other threads on large bodies.

`_loads` parses a request body (the top levels here, each value below them by
json's C scanner, deep lists turned into NumPy arrays at once);
`format_predict` shapes the outputs as TF Serving answers them and
`encode_predict` encodes that answer `_ENCODE_ROWS` rows per call.
"""

from __future__ import annotations

import json
import json.scanner
import re

import numpy as np

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
