"""The uvicorn stack: an ASGI app on uvicorn's h11 protocol, given a header timeout."""

from __future__ import annotations

import asyncio
import threading

from pipelines.serving.http_base import _JSON, HttpServer, _answer_async, _bind, _content_length, _stack_error
from pipelines.serving.responses import Response, error


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
