"""What every HTTP stack shares: the body limits, the timeouts, and answering from an event loop.

`HttpServer` is the base of the stacks (`start()` returns the bound port,
`stop()` ends it), holding the header and body timeouts. `_content_length`
checks the header before a body is read; `_stack_error` words a stack's own
rejection as JSON; `_answer_async` runs `RestApi.handle` from an event loop
(bodies over `_INLINE_BYTES` parsed and answered in a worker thread, a
predict awaited up to `predict_timeout_s`, the heap trimmed after a large
one); `_bind` opens the listening socket. See `pipelines.serving.http` for
the stacks and what they guarantee.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from http import HTTPStatus

from pipelines.serving.responses import Pending, Response, clip, error, prefix
from pipelines.serving.rest import RestApi

_JSON = "application/json"
_INLINE_BYTES = 64 << 10  # larger bodies are parsed (and their answers encoded) off the event loop


def _content_length(value) -> int | None | Response:
    if value is None:
        return None
    try:
        n = int(value)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        return error(400, f"invalid Content-Length header {prefix(value, 20)}")


def _stack_error(status: int, message) -> Response:
    """The HTTP stack's own rejection of a request, as JSON, echoing a short prefix at most."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    text = str(message or "").strip().splitlines()
    detail = f": {clip(text[0], 60)}" if text and text[0] else ""
    return error(status, f"{phrase}{detail}")


_trim_state = {"last": 0.0, "fn": None}


def _trim_memory() -> None:
    """Hand the heap that parsing a large body left free back to the system (glibc malloc_trim),
    at most once a second: otherwise the server's memory stays at its high-water mark."""
    now = time.monotonic()
    if now - _trim_state["last"] < 1.0 or _trim_state["fn"] is False:
        return
    _trim_state["last"] = now
    if _trim_state["fn"] is None:
        try:
            import ctypes

            _trim_state["fn"] = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _trim_state["fn"] = False
            return
    _trim_state["fn"](0)


def _timed_out(api: RestApi, r: Pending) -> Response:
    r.abandon()
    return error(503, f"the model did not answer within {api.predict_timeout_s:g} s; try again")


async def _answer_async(api: RestApi, method: str, path: str, body: bytes) -> tuple[Response, bytes]:
    """`api.handle` from an event loop: large bodies in a worker thread, the predict awaited."""
    loop = asyncio.get_running_loop()
    big = len(body) > _INLINE_BYTES
    r = await loop.run_in_executor(None, api.handle, method, path, body) if big else api.handle(method, path, body)
    if isinstance(r, Pending):
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(r.future)), api.predict_timeout_s)
        except asyncio.TimeoutError:
            r = _timed_out(api, r)
        except asyncio.CancelledError:  # the client went away: stop computing its rows
            r.abandon("the client went away")
            raise
        except Exception:  # noqa: BLE001 - reported by finish()
            pass
    if isinstance(r, Pending):
        if big:
            r = await loop.run_in_executor(None, r.finish)
            data = await loop.run_in_executor(None, r.encode)
            loop.run_in_executor(None, _trim_memory)
            return r, data
        r = r.finish()
    return r, r.encode()


def _bind(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP (socket.create_server leaves proto 0 -> 40 ms Nagle/delayed-ACK stalls)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    """Base: `start()` serves in a background thread and returns the bound port; `stop()` ends it."""

    def __init__(
        self,
        api: RestApi,
        host: str = "127.0.0.1",
        port: int = 8501,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
    ):
        if header_timeout_s <= 0 or body_timeout_s <= 0:
            raise ValueError(f"timeouts must be > 0, got {header_timeout_s!r} and {body_timeout_s!r}")
        self.api, self.host, self.port = api, host, port
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError
