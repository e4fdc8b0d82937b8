"""The HTTP stacks `RestApi` runs on, each started in a background thread.

`aiohttp` is the default: in bench/bench_serve.py (8 clients, one image per
request) it had the highest median requests/s over three runs on this 2-core,
shared machine, though the runs overlap (aiohttp 479-724, stdlib 393-653,
uvicorn 278-594 req/s; see the README's results table). `uvicorn` (pure-Python
h11 parser here: httptools is not installed) and the standard library's
`ThreadingHTTPServer` are kept so that the measurement can be repeated
(`--stack`).

Every stack enforces the body size limit before reading the body (413 from
Content-Length) and while reading it (chunked bodies).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipelines.serving.rest import Pending, Response, RestApi, error

STACKS = ("aiohttp", "uvicorn", "stdlib")
_JSON = "application/json"


def _content_length(value) -> int | None | Response:
    if value is None:
        return None
    try:
        n = int(value)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        return error(400, f"invalid Content-Length header {value!r}")


async def _answer_async(api: RestApi, method: str, path: str, body: bytes) -> Response:
    r = api.handle(method, path, body)
    if isinstance(r, Pending):
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(r.future)), api.predict_timeout_s)
        except asyncio.TimeoutError:
            return error(503, f"the model did not answer within {api.predict_timeout_s:g} s; try again")
        except Exception:  # noqa: BLE001 - reported by finish()
            pass
        r = r.finish()
    return r


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

    def __init__(self, api: RestApi, host: str = "127.0.0.1", port: int = 8501):
        self.api, self.host, self.port = api, host, port
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class AiohttpServer(HttpServer):
    def start(self) -> int:
        from aiohttp import web

        api = self.api

        async def handler(request: web.Request) -> web.Response:
            n = _content_length(request.headers.get("Content-Length"))
            r = n if isinstance(n, Response) else api.too_large(n)
            if r is None:
                buf = bytearray()
                async for chunk in request.content.iter_chunked(1 << 16):
                    buf += chunk
                    if len(buf) > api.max_body_bytes:
                        r = api.too_large(len(buf))
                        break
                if r is None:
                    r = await _answer_async(api, request.method, request.path, bytes(buf))
            return web.Response(body=r.encode(), status=r.status, content_type=_JSON)

        app = web.Application(client_max_size=api.max_body_bytes + 1)
        app.router.add_route("*", "/{tail:.*}", handler)
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
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


class UvicornServer(HttpServer):
    def start(self) -> int:
        import uvicorn

        api = self.api

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            headers = dict(scope["headers"])
            n = _content_length(headers.get(b"content-length", b"").decode() or None)
            r = n if isinstance(n, Response) else api.too_large(n)
            if r is None:
                buf, more = bytearray(), True
                while more:
                    msg = await receive()
                    buf += msg.get("body", b"")
                    more = msg.get("more_body", False)
                    if len(buf) > api.max_body_bytes:
                        r = api.too_large(len(buf))
                        break
                if r is None:
                    r = await _answer_async(api, scope["method"], scope["path"], bytes(buf))
            data = r.encode()
            await send({
                "type": "http.response.start",
                "status": r.status,
                "headers": [(b"content-type", _JSON.encode()), (b"content-length", str(len(data)).encode())],
            })
            await send({"type": "http.response.body", "body": data})

        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    api: RestApi

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
            body = self.rfile.read(n) if n else b""
            r = api.handle(method, self.path, body)
            if isinstance(r, Pending):
                r = r.wait(api.predict_timeout_s)
        data = r.encode()
        self.send_response(r.status)
        self.send_header("Content-Type", _JSON)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 - no access log
        pass


class StdlibServer(HttpServer):
    def start(self) -> int:
        handler = type("Handler", (_Handler,), {"api": self.api})
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


def make_server(stack: str, api: RestApi, host: str, port: int) -> HttpServer:
    cls = {"aiohttp": AiohttpServer, "uvicorn": UvicornServer, "stdlib": StdlibServer}.get(stack)
    if cls is None:
        raise ValueError(f"unknown HTTP stack {stack!r}; choose one of {list(STACKS)}")
    return cls(api, host, port)
