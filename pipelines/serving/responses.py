"""What the REST API answers with: `Response`, `Pending` (a queued predict), `BadRequest`.

Also the helpers every layer uses to word an error: `error` (a JSON
`{"error": ...}` answer), `clip` and `prefix` (a short, printable echo of what
a client sent), and how a failed predict maps onto 4xx/5xx (`_model_error`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Callable

from pipelines.serving.bad_request import BadRequest

__all__ = ["BadRequest", "Pending", "Response", "error", "clip", "prefix"]

log = logging.getLogger("pipelines.serve")


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
    from pipelines.serving.batching import ServerStopping

    if isinstance(e, ServerStopping):  # past the stop's grace period
        return Response(503, {"error": str(e)})
    log.error("predict failed: %r", e)
    return Response(500, {"error": f"internal error: {type(e).__name__}: {_first_line(e)}"})


def _first_line(e: BaseException) -> str:
    """The reason an error gives, on one line. TensorFlow's graph errors start "Graph execution error:" and give
    the reason on the line before their node marker ("[[{{node ...}}]]"), after a stack of the op's origin."""
    lines = [line.strip() for line in str(getattr(e, "message", None) or e).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Graph execution error"):
        marker = next((i for i, line in enumerate(lines) if line.startswith("[[")), len(lines))
        if marker > 1:
            lines = lines[marker - 1:]
    if not lines:
        return type(e).__name__
    # an eager op's error names its function and op ("{{function_node __wrapped__DecodeImage_device_...}} jpeg::
    # Uncompress failed... [Op:DecodeImage]"): the reason only
    line = re.sub(r"^(?:\{\{function_node [^}]*\}\} )+", "", lines[0])
    line = re.sub(r" \[Op:\w+\]( name: \S*)?$", "", line) or lines[0]
    # a tf.debugging.Assert in the graph (the signatures' check for animated WebP): its message, not the wrapping
    asserted = re.fullmatch(r"assertion failed: \[([^][]*)\]", line)
    return asserted.group(1) if asserted else line


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
