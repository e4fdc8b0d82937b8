"""`make serve`: TensorFlow Serving's REST API for every model under the export directory.

    python -m pipelines.serve --exports exports --host 127.0.0.1 --port 8501

Serves the highest version of each `<exports>/<name>/<version>/` SavedModel
(`pipelines.export`'s layout, which TensorFlow Serving also reads), polls the
directory every `--poll-s` seconds and swaps a new version in without a
restart; a version that fails to load is retried when its files change.
Concurrent predicts are batched (`--max-batch` rows, waiting at most
`--batch-wait-ms`); a larger request runs in chunks of `--max-batch` rows
taking turns with the others, up to `--max-rows` rows per request. Slow
clients are cut off (`--header-timeout-s`, `--body-timeout-s`). See
`pipelines/serving/` for the parts.

    curl -s localhost:8501/v1/models/<name>
    curl -s localhost:8501/v1/models/<name>/metadata
    curl -s -X POST localhost:8501/v1/models/<name>:predict -d '{"instances": [{"b64": "<PNG>"}]}'
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from pipelines.errors import UserError


class Server:
    """A running server: model manager + REST API + HTTP stack (in background threads)."""

    def __init__(
        self,
        exports: str,
        host: str = "127.0.0.1",
        port: int = 8501,
        stack: str = "aiohttp",
        poll_s: float = 1.0,
        max_batch: int = 32,
        batch_wait_ms: float = 2.0,
        batch_threads: int = 1,
        max_body_bytes: int = 8 << 20,
        predict_timeout_s: float = 60.0,
        max_rows: int = 4096,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
    ):
        from pipelines.serving.http import make_server
        from pipelines.serving.rest import RestApi
        from pipelines.serving.servables import ModelManager

        self.manager = ModelManager(exports, poll_s, max_batch, batch_wait_ms, batch_threads)
        self.api = RestApi(self.manager, max_body_bytes, predict_timeout_s, max_rows)
        self.http = make_server(stack, self.api, host, port, header_timeout_s, body_timeout_s)
        self.host = host
        self.port: int | None = None

    def start(self) -> "Server":
        self.manager.start()
        try:
            self.port = self.http.start()
        except BaseException:
            self.manager.stop()
            raise
        return self

    def stop(self) -> None:
        self.http.stop()
        self.manager.stop()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def parse_args(argv=None) -> argparse.Namespace:
    from pipelines.serving.http import STACKS

    p = argparse.ArgumentParser(prog="python -m pipelines.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--exports", default="exports", help="directory holding <name>/<version>/saved_model.pb")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501, help="TF Serving's REST port by default")
    p.add_argument("--stack", choices=STACKS, default="aiohttp", help="HTTP stack (aiohttp measured fastest)")
    p.add_argument("--poll-s", type=float, default=1.0, help="seconds between scans of the export directory")
    p.add_argument("--max-batch", type=int, default=32, help="most rows per signature call (1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="longest wait for a batch to fill")
    p.add_argument("--batch-threads", type=int, default=1, help="signature calls running at once per model")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="request bodies above this get 413")
    p.add_argument("--max-rows", type=int, default=4096, help="most rows (instances) per request; more get 413")
    p.add_argument("--predict-timeout-s", type=float, default=60.0)
    p.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="close a connection whose request headers are not complete this long after it opened "
                        "or after its last answer (slow clients, idle keep-alive)")
    p.add_argument("--body-timeout-s", type=float, default=30.0, help="a request body slower than this gets 408")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    checks = [
        (os.path.isdir(a.exports), f"--exports {a.exports!r} is not a directory; export a model first (make train)"),
        (0 <= a.port <= 65535, f"--port must be in 0..65535, got {a.port}"),
        (a.poll_s > 0, f"--poll-s must be > 0, got {a.poll_s}"),
        (a.max_batch >= 1, f"--max-batch must be >= 1, got {a.max_batch}"),
        (a.batch_wait_ms >= 0, f"--batch-wait-ms must be >= 0, got {a.batch_wait_ms}"),
        (a.batch_threads >= 1, f"--batch-threads must be >= 1, got {a.batch_threads}"),
        (a.max_body_mb > 0, f"--max-body-mb must be > 0, got {a.max_body_mb}"),
        (a.predict_timeout_s > 0, f"--predict-timeout-s must be > 0, got {a.predict_timeout_s}"),
        (a.max_rows >= 1, f"--max-rows must be >= 1, got {a.max_rows}"),
        (a.header_timeout_s > 0, f"--header-timeout-s must be > 0, got {a.header_timeout_s}"),
        (a.body_timeout_s > 0, f"--body-timeout-s must be > 0, got {a.body_timeout_s}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = Server(
        a.exports, a.host, a.port, a.stack, a.poll_s, a.max_batch, a.batch_wait_ms, a.batch_threads,
        int(a.max_body_mb * (1 << 20)), a.predict_timeout_s, a.max_rows, a.header_timeout_s, a.body_timeout_s,
    )
    try:
        server.start()
    except OSError as e:
        raise UserError(f"cannot listen on {a.host}:{a.port}: {e.strerror or e}")
    names = server.manager.names()
    print(
        f"serving {', '.join(names) if names else 'no models yet (waiting for exports)'} from {a.exports} "
        f"on {server.url} ({a.stack}); Ctrl-C stops",
        flush=True,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    from pipelines.cli import run_main

    sys.exit(run_main(main))
