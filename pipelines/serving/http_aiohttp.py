"""The aiohttp stack (the default): its low-level server with JSON rejections and body limits."""

from __future__ import annotations

import asyncio
import logging
import threading

from pipelines.serving.http_base import _JSON, HttpServer, _answer_async, _bind, _content_length, _stack_error
from pipelines.serving.responses import Response, error

log = logging.getLogger("pipelines.serve")


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
