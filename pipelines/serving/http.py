"""The HTTP server `RestApi` runs on: the standard library's ThreadingHTTPServer, a thread per connection.

Chosen by measurement (bench/bench_serve.py, one 28x28 image per request, 2 shared cores): with 8 clients a median
of 910 req/s against 880 for uvicorn and 730 for aiohttp, with 64 clients 870-1300 against 590-790 for aiohttp
(its handlers parse in their own threads, where one event loop competed for the GIL with the batcher). Only the
request line and header parsing are http.server's (at most 100 headers, lines of at most 64 KiB); the limits,
deadlines and errors below are this module's (Python's documentation warns that http.server checks little).

Limits: a body over `api.max_body_bytes` is a 413 from its Content-Length, before it is read; a chunked body is a
411. Every read is bounded by a deadline (`_DeadlineReader`): a connection whose request headers are not complete
within `header_timeout_s` of its opening or of its previous answer is closed (idle keep-alive ones too), and a
body not complete within `body_timeout_s` gets a 408. Every answer, the stack's own rejections included, is JSON
`{"error": ...}` echoing at most a short prefix of what was sent; a 405 carries `Allow`, as an answer to OPTIONS
does (HEAD is answered as GET, without the body). A client that goes away mid-predict stops its request: its
handler looks at the connection every `_POLL_S` seconds and abandons the predict, so that the batcher drops the
rows it has not run yet.

Connections: at most `max_connections` are open at once; beyond that new ones wait in the kernel's listen backlog
(`_BACKLOG`) until one closes, so a burst is answered late rather than failed and threads, descriptors and memory
stay bounded (Go's `netutil.LimitListener` makes the same choice); reaching the cap is logged at most once a
minute. `drain` (a stop) takes no new connection, closes the idle ones and waits for the requests being answered.

Metrics (`pipelines.serving.metrics.ServerMetrics`, optional): every answered request is counted by model, API and
status code, with its latency from its headers to its answer (a client gone first counts as 499); open
connections are a gauge. Scrapes of the metrics are not counted.
"""

from __future__ import annotations

import io
import logging
import select
import socket
import sys
import threading
import time
from concurrent.futures import wait as wait_futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipelines.serving.metrics import PATH as METRICS_PATH
from pipelines.serving.metrics import ServerMetrics
from pipelines.serving.responses import Pending, Response, clip, error, prefix
from pipelines.serving.rest import _ROUTE, RestApi

__all__ = ["HttpServer"]

log = logging.getLogger("pipelines.serve")

_JSON = "application/json"
_BACKLOG = 1024  # connections the kernel queues while none is accepted (the cap reached)
_POLL_S = 0.05  # how often a handler waiting on a predict looks whether its client is still there
_TRIM_BYTES = 64 << 10  # after a body this large, hand the freed heap back to the system


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
    """The HTTP server's own rejection of a request, as JSON, echoing a short prefix at most."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    text = str(message or "").strip().splitlines()
    detail = f": {clip(text[0], 60)}" if text and text[0] else ""
    return error(status, f"{phrase}{detail}")


_trim_state = {"last": 0.0, "fn": None, "lock": threading.Lock()}


def _trim_memory() -> None:
    """Hand the heap that parsing a large body left free back to the system (glibc malloc_trim),
    at most once a second: otherwise the server's memory stays at its high-water mark."""
    with _trim_state["lock"]:
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


def _route_labels(path: str) -> tuple[str, str]:
    """(model, API) of a request path, for the metrics (`ServerMetrics` bounds both)."""
    m = _ROUTE.match(path.split("?", 1)[0])
    if m is None:
        return "", "other"
    return m["name"], m["verb"] or ("metadata" if m["metadata"] else "status")


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each failing with TimeoutError once the handler's `deadline` has passed."""

    def __init__(self, sock: socket.socket, handler: "_Handler"):
        self.sock, self.handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        deadline = self.handler.deadline
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("read deadline passed")
            self.sock.settimeout(left)
        else:
            self.sock.settimeout(None)
        n = self.sock.recv_into(b)
        if n:  # a request has begun to arrive: a stop's drain waits for its answer (Go's StateActive)
            self.handler.http.began(self.sock)
        return n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    http: "HttpServer"
    deadline: float | None = None

    def setup(self):
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self), 1 << 16)

    def handle_one_request(self):
        self.deadline = time.monotonic() + self.http.header_timeout_s  # from the connection or the last answer
        try:
            super().handle_one_request()
        finally:
            self.http.ended(self.connection)
        if self.http.stopping:  # the request answered while the server drains: no next one on this connection
            self.close_connection = True

    def _do(self) -> None:
        t0, api, body_timeout_s, method = time.perf_counter(), self.http.api, self.http.body_timeout_s, self.command
        n = _content_length(self.headers.get("Content-Length"))
        r = n if isinstance(n, Response) else api.too_large(n)
        if r is None and n is None and "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            r = error(411, "chunked request bodies are not supported; send Content-Length")
        if r is not None:
            self.close_connection = True  # the body was not read
        else:
            self.deadline = time.monotonic() + body_timeout_s
            try:
                body = self.rfile.read(n) if n else b""
            except TimeoutError:
                body = None
            self.deadline = None
            if body is None or len(body) < (n or 0):
                r = error(408, f"the request body did not arrive within {body_timeout_s:g} s")
                self.close_connection = True
            else:
                r = api.handle(method, self.path, body)
                if isinstance(r, Pending):
                    r = self._wait(r)
                if (n or 0) > _TRIM_BYTES:
                    _trim_memory()
        if r is None:  # the client went away
            self.close_connection = True
            self.http.observe(self.path, 499, time.perf_counter() - t0)
            return
        data = r.encode()
        self.http.observe(self.path, r.status, time.perf_counter() - t0)
        self._send(r, data)

    # every method the API knows goes to _do; HEAD is answered as GET without the body (`_send`)
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _do

    def _wait(self, r: Pending) -> Response | None:
        """The predict's answer, a 503 after `predict_timeout_s`, or None if the client went away first."""
        timeout_s = self.http.api.predict_timeout_s
        deadline = time.monotonic() + timeout_s
        poller = select.poll()  # not select(): no limit on descriptor numbers
        poller.register(self.connection, select.POLLIN)
        while not r.future.done():
            left = deadline - time.monotonic()
            if left <= 0:
                r.abandon()
                return error(503, f"the model did not answer within {timeout_s:g} s; try again")
            if self._client_gone(poller):
                r.abandon("the client went away")
                return None
            wait_futures([r.future], timeout=min(_POLL_S, left))
        return r.finish()

    def _client_gone(self, poller) -> bool:
        """Has the client closed its end? (Readable with nothing to read; a pipelined request is not.)"""
        try:
            return bool(poller.poll(0)) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset
            return True

    def _send(self, r: Response, data: bytes) -> None:
        if self.http.stopping:
            self.close_connection = True  # says `Connection: close`: the client opens its next one elsewhere
        self.connection.settimeout(self.http.body_timeout_s)  # a client that does not read the answer
        self.send_response(r.status)
        self.send_header("Content-Type", r.headers.get("Content-Type", _JSON))
        self.send_header("Content-Length", str(len(data)))
        for k, v in r.headers.items():
            if k.lower() != "content-type":
                self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code, message=None, explain=None):
        """The server's own errors (malformed request line, headers too long): JSON, short."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # the default for an unparsable request line: no status line
            self.request_version = "HTTP/1.0"
        self.http.observe("", code, None)
        try:
            r = _stack_error(code, message)
            self._send(r, r.encode())
        except OSError:
            pass

    def log_message(self, format, *args):  # noqa: A002 - no access log
        pass


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that accepts a connection only while fewer than the cap are open."""

    daemon_threads = True
    block_on_close = False  # stop() closes the open connections itself
    request_queue_size = _BACKLOG

    def __init__(self, owner: "HttpServer", handler):
        self.address_family = socket.AF_INET6 if ":" in owner.host else socket.AF_INET
        self.owner = owner
        super().__init__((owner.host, owner.port), handler)

    def get_request(self):
        """Wait for a free slot before accepting (serve_forever's loop waits meanwhile)."""
        owner = self.owner
        while not owner.slots.acquire(timeout=0.2):
            if owner.stopping:
                raise OSError("the server is stopping")
        if owner.stopping:  # a drain has begun: no new connection (serve_forever notices its shutdown late)
            owner.slots.release()
            raise OSError("the server is stopping")
            owner.log_full()
        try:
            conn, addr = super().get_request()
        except OSError:
            owner.slots.release()
            raise
        owner.opened(conn)
        return conn, addr

    def shutdown_request(self, request):
        try:
            super().shutdown_request(request)
        finally:
            self.owner.closed(request)

    def handle_error(self, request, client_address):
        e = sys.exc_info()[1]
        if isinstance(e, OSError):  # the client went away while we wrote, or reset the connection
            log.debug("connection from %s ended: %r", client_address, e)
        else:
            log.exception("unexpected error serving %s", client_address)


class HttpServer:
    """`start()` serves in a background thread and returns the bound port; `stop()` ends it."""

    def __init__(
        self,
        api: RestApi,
        host: str = "127.0.0.1",
        port: int = 8501,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        max_connections: int = 256,
        metrics: ServerMetrics | None = None,
    ):
        if header_timeout_s <= 0 or body_timeout_s <= 0:
            raise ValueError(f"timeouts must be > 0, got {header_timeout_s!r} and {body_timeout_s!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        self.api, self.host, self.port = api, host, port
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        self.max_connections, self.metrics = max_connections, metrics
        self.slots = threading.BoundedSemaphore(max_connections)
        self.stopping = False
        self._open: set[socket.socket] = set()  # the accepted connections not yet closed
        self._busy: set[socket.socket] = set()  # those whose request is being read or answered
        self._closed: set[socket.socket] = set()  # those closed by a stop while idle
        self._lock = threading.Lock()
        self._full_logged = 0.0
        self._thread: threading.Thread | None = None

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def start(self) -> int:
        handler = type("Handler", (_Handler,), {"http": self})
        self._httpd = _Server(self, handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)
        self._thread.start()
        return self.port

    def stop(self, grace_s: float = 5.0) -> None:
        """`drain(grace_s)`, then `close()`."""
        self.drain(grace_s)
        self.close()

    def drain(self, grace_s: float = 5.0) -> None:
        """Stop accepting; close the idle connections; give the requests being answered `grace_s` seconds, each
        answered with `Connection: close` (as Go's `http.Server.Shutdown` and gRPC's server.stop(grace) drain)."""
        if self._thread is None:
            return
        self.stopping = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=30)
        self._thread = None
        self._wait_busy(grace_s)

    def close(self, wait_s: float = 1.0) -> None:
        """Close every connection left, after up to `wait_s` seconds for answers being written (the 503s of
        requests the stopped batcher failed: pipelines/serve.py `Server.stop`)."""
        self._wait_busy(wait_s)
        with self._lock:
            left = list(self._open)
        self._close(left)  # a predict still running is abandoned by its handler, which sees its client gone

    def _wait_busy(self, seconds: float) -> None:
        """Until no request is being answered, for at most `seconds`; closing each connection once it is idle."""
        deadline = time.monotonic() + seconds
        while True:
            with self._lock:
                idle = [c for c in self._open if c not in self._busy and c not in self._closed]
                self._closed.update(idle)
                busy = len(self._busy)
            self._close(idle)  # wakes their handlers, waiting for a next request that is not coming
            if not busy or time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    @staticmethod
    def _close(conns) -> None:
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- connections and metrics (called from the server's threads)

    def opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.add(conn)
        if self.metrics is not None:
            self.metrics.connection_opened("rest")

    def began(self, conn: socket.socket) -> None:
        with self._lock:
            self._busy.add(conn)

    def ended(self, conn: socket.socket) -> None:
        with self._lock:
            self._busy.discard(conn)

    def closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._busy.discard(conn)
            self._closed.discard(conn)
            if conn not in self._open:
                return
            self._open.discard(conn)
        self.slots.release()
        if self.metrics is not None:
            self.metrics.connection_closed("rest")

    def log_full(self) -> None:
        now = time.monotonic()
        if now - self._full_logged >= 60.0:
            self._full_logged = now
            log.warning("%d connections open, the limit (--max-connections): new ones wait until one closes",
                        self.max_connections)

    def observe(self, path: str, code: int, seconds: float | None) -> None:
        if self.metrics is not None and path.split("?", 1)[0] != METRICS_PATH:
            self.metrics.observe_request(*_route_labels(path), code, seconds, "rest")
