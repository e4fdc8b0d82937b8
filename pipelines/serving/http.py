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

The shared limits, timeouts and `HttpServer` base are in
`pipelines.serving.http_base`; each stack has its own module
(`http_aiohttp`, `http_uvicorn`, `http_stdlib`), importable from here as before.
"""

from __future__ import annotations

from pipelines.serving.http_aiohttp import AiohttpServer
from pipelines.serving.http_base import HttpServer
from pipelines.serving.http_stdlib import StdlibServer
from pipelines.serving.http_uvicorn import UvicornServer
from pipelines.serving.rest import RestApi

__all__ = ["STACKS", "AiohttpServer", "HttpServer", "StdlibServer", "UvicornServer", "make_server"]

STACKS = ("aiohttp", "uvicorn", "stdlib")


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
