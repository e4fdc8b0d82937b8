"""The standard library's stack: ThreadingHTTPServer, its reads bounded by a deadline."""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipelines.serving.http_base import _JSON, HttpServer, _content_length, _stack_error
from pipelines.serving.responses import Pending, Response, error
from pipelines.serving.rest import RestApi


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
