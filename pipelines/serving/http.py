"""The HTTP stacks `RestApi` runs on, each started in a background thread.

`aiohttp` is the default: in bench/bench_serve.py (8 clients, one image per
request) it had the highest median requests/s over three runs on this 2-core,
shared machine, though the runs overlap (aiohttp 479-724, stdlib 393-653,
uvicorn 278-594 req/s; see the README's results table). `uvicorn` (pure-Python
h11 parser here: httptools is not installed) and the standard library's
`ThreadingHTTPServer` are kept so that the measurement can be repeated
(`--stack`).

Every stack enforces the body size limit before reading the body (413 from
Content-Length) and while reading it (chunked bodies), and guards against slow
clients: a connection whose request headers are not complete within
`header_timeout_s` of its opening or of its previous answer is closed (this
also closes idle keep-alive connections), and a body not complete within
`body_timeout_s` gets a 408. Every answer, the stack's own errors included
(a malformed request line, a bad Content-Length), is JSON `{"error": ...}`
that echoes at most a short prefix of what the client sent; a 405 carries
`Allow`. Bodies over `_INLINE_BYTES` are parsed and answered in a worker
thread, so the event loop keeps serving the others meanwhile.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipelines.serving.rest import Pending, Response, RestApi, clip, error, prefix

STACKS = ("aiohttp", "uvicorn", "stdlib")
_JSON = "application/json"
_INLINE_BYTES = 64 << 10  # larger bodies are parsed (and their answers encoded) off the event loop

log = logging.getLogger("pipelines.serve")


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


class AiohttpServer(HttpServer):
    """aiohttp's low-level server. Its keep-alive timer, armed when a connection opens and after
    each answer and not pushed back by incoming bytes, closes a connection still waiting for
    complete headers: that is the header timeout."""

    def start(self) -> int:
        from aiohttp import web
        from aiohttp.web_protocol import RequestHandler

        api, body_timeout_s = self.api, self.body_timeout_s

        class Handler(RequestHandler):
            def handle_error(self, request, status=500, exc=None, message=None):
                r = _stack_error(status, message or exc)
                log.warning("rejected a request from %s: %s", request.remote, r.body["error"])
                resp = web.Response(body=r.encode(), status=status, content_type=_JSON)
                resp.force_close()
                return resp

        class WebServer(web.Server):
            def __call__(self):
                return Handler(self, loop=self._loop, **self._kwargs)

        async def read_body(request) -> bytes | Response:
            buf = bytearray()
            async for chunk in request.content.iter_chunked(1 << 16):
                buf += chunk
                if len(buf) > api.max_body_bytes:
                    return api.too_large(len(buf))
            return bytes(buf)

        async def handler(request: web.BaseRequest) -> web.Response:
            n = _content_length(request.headers.get("Content-Length"))
            r = n if isinstance(n, Response) else api.too_large(n)
            data = None
            if r is None:
                try:
                    body = await asyncio.wait_for(read_body(request), body_timeout_s)
                except asyncio.TimeoutError:
                    body = error(408, f"the request body did not arrive within {body_timeout_s:g} s")
                if isinstance(body, Response):
                    r = body
                else:
                    r, data = await _answer_async(api, request.method, request.path, body)
            resp = web.Response(body=data or r.encode(), status=r.status, content_type=_JSON, headers=r.headers)
            if r.status in (400, 408, 411, 413) and data is None:  # the body may be unread: close
                resp.force_close()
            return resp

        self._loop = asyncio.new_event_loop()
        server = WebServer(  # handler_cancellation: a client gone mid-predict abandons its remaining rows
            handler, loop=self._loop, handler_cancellation=True, access_log=None,
            keepalive_timeout=self.header_timeout_s, lingering_time=2.0,
        )
        self._runner = web.ServerRunner(server, handle_signals=False)
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
        self._thread = threading.Thread(target=self._loop.run_forever, name="http-aiohttp", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self._thread = None


def _uvicorn_protocol(header_timeout_s: float):
    """uvicorn's h11 protocol with a header timeout and JSON answers to malformed requests."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc):
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def on_response_complete(self):
            super().on_response_complete()
            self._arm_header_timer()

        def _arm_header_timer(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _header_timeout(self):
            self._header_timer = None
            waiting = self.cycle is None or self.cycle.response_complete  # no request in progress
            if waiting and not self.transport.is_closing():
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            data = _stack_error(400, msg).encode()
            headers = [(b"content-type", _JSON.encode()), (b"content-length", str(len(data)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=data), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol


class UvicornServer(HttpServer):
    def start(self) -> int:
        import uvicorn

        api, body_timeout_s = self.api, self.body_timeout_s

        async def read_body(receive) -> bytes | Response:
            buf, more = bytearray(), True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    break
                buf += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(buf) > api.max_body_bytes:
                    return api.too_large(len(buf))
            return bytes(buf)

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            headers = dict(scope["headers"])
            n = _content_length(headers.get(b"content-length", b"").decode("latin-1") or None)
            r = n if isinstance(n, Response) else api.too_large(n)
            data = None
            if r is None:
                try:
                    body = await asyncio.wait_for(read_body(receive), body_timeout_s)
                except asyncio.TimeoutError:
                    body = error(408, f"the request body did not arrive within {body_timeout_s:g} s")
                if isinstance(body, Response):
                    r = body
                else:
                    r, data = await _answer_async(api, scope["method"], scope["path"], body)
            data = data or r.encode()
            extra = [(k.lower().encode(), v.encode()) for k, v in r.headers.items()]
            if r.status == 408:
                extra.append((b"connection", b"close"))
            await send({
                "type": "http.response.start",
                "status": r.status,
                "headers": [(b"content-type", _JSON.encode()), (b"content-length", str(len(data)).encode()), *extra],
            })
            await send({"type": "http.response.body", "body": data})

        config = uvicorn.Config(
            app, lifespan="off", log_level="warning", access_log=False,
            http=_uvicorn_protocol(self.header_timeout_s), timeout_keep_alive=max(1, round(self.header_timeout_s)),
        )
        self._server = uvicorn.Server(config)
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="http-uvicorn", daemon=True
        )
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            threading.Event().wait(0.01)
        return self.port

    def stop(self) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._thread = None


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
        return self.sock.recv_into(b)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    api: RestApi
    header_timeout_s: float
    body_timeout_s: float
    deadline: float | None = None

    def setup(self):
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self), 1 << 16)

    def handle_one_request(self):
        self.deadline = time.monotonic() + self.header_timeout_s  # from the connection or the last answer
        super().handle_one_request()

    def do_GET(self):
        self._do("GET")

    def do_POST(self):
        self._do("POST")

    def do_PUT(self):
        self._do("PUT")

    def do_DELETE(self):
        self._do("DELETE")

    def _do(self, method: str) -> None:
        api = self.api
        n = _content_length(self.headers.get("Content-Length"))
        r = n if isinstance(n, Response) else api.too_large(n)
        if r is None and n is None and "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            r = error(411, "chunked request bodies are not supported by this stack; send Content-Length")
        if r is not None:
            self.close_connection = True  # the body was not read
        else:
            self.deadline = time.monotonic() + self.body_timeout_s
            try:
                body = self.rfile.read(n) if n else b""
            except TimeoutError:
                body = None
            self.deadline = None
            if body is None or len(body) < (n or 0):
                r = error(408, f"the request body did not arrive within {self.body_timeout_s:g} s")
                self.close_connection = True
            else:
                r = api.handle(method, self.path, body)
                if isinstance(r, Pending):
                    r = r.wait(api.predict_timeout_s)
        self._send(r)

    def _send(self, r: Response) -> None:
        data = r.encode()
        self.connection.settimeout(self.body_timeout_s)  # a client that does not read the answer
        self.send_response(r.status)
        self.send_header("Content-Type", _JSON)
        self.send_header("Content-Length", str(len(data)))
        for k, v in r.headers.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code, message=None, explain=None):
        """The stack's own errors (malformed request line, headers too long): JSON, short."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # the default for an unparsable request line: no status line
            self.request_version = "HTTP/1.0"
        try:
            self._send(_stack_error(code, message))
        except OSError:
            pass

    def log_message(self, format, *args):  # noqa: A002 - no access log
        pass


class StdlibServer(HttpServer):
    def start(self) -> int:
        handler = type("Handler", (_Handler,), {
            "api": self.api, "header_timeout_s": self.header_timeout_s, "body_timeout_s": self.body_timeout_s,
        })
        server_cls = type("Server", (ThreadingHTTPServer,), {
            "address_family": socket.AF_INET6 if ":" in self.host else socket.AF_INET,
            "request_queue_size": 1024,
            "daemon_threads": True,
        })
        self._httpd = server_cls((self.host, self.port), handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http-stdlib", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._thread is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=30)
        self._thread = None


def make_server(
    stack: str,
    api: RestApi,
    host: str,
    port: int,
    header_timeout_s: float = 10.0,
    body_timeout_s: float = 30.0,
) -> HttpServer:
    cls = {"aiohttp": AiohttpServer, "uvicorn": UvicornServer, "stdlib": StdlibServer}.get(stack)
    if cls is None:
        raise ValueError(f"unknown HTTP stack {stack!r}; choose one of {list(STACKS)}")
    return cls(api, host, port, header_timeout_s, body_timeout_s)
