"""`make serve`: TensorFlow Serving's REST API for every model under the export directory.

    python -m pipelines.serve --exports exports --host 127.0.0.1 --port 8501

Serves the highest version of each `<exports>/<name>/<version>/` SavedModel
(`pipelines.export`'s layout, which TensorFlow Serving also reads), polls the
directory every `--poll-s` seconds and swaps a new version in without a
restart; a version that fails to load is retried when its files change.
Concurrent predicts are batched (`--max-batch` rows: those that arrived while
the previous batch ran, or, with `--batch-wait-ms`, waiting that long for more); a larger request runs in chunks of `--max-batch` rows
taking turns with the others, up to `--max-rows` rows per request. Slow
clients are cut off (`--header-timeout-s`, `--body-timeout-s`); at most
`--max-connections` HTTP connections (256) are open at once, further ones
wait, not accepted, until one closes (`pipelines/serving/http.py` says why).
Prometheus metrics (requests, latencies, batch sizes, loaded versions) are at
`GET /monitoring/prometheus/metrics`, TF Serving's path
(`pipelines/serving/metrics.py`). With
`--grpc-port` (8500 in `make serve`, TF Serving's) TF Serving's gRPC API
(PredictionService, ModelService.GetModelStatus) answers beside REST over the
same models, batching and limits (`pipelines/serving/grpc_server.py`). See
`pipelines/serving/` for the parts.

With `--model-config-file PATH` the models come from a TF Serving model config
file (text format of `tensorflow.serving.ModelServerConfig`, read with the
official proto) instead of `--exports`, which is then not used. The file is
read again when it changes (one that does not parse is logged and the previous
config kept; at start-up it is an error). Relative base paths are relative to
the working directory, as in TF Serving:

    model_config_list {
      config {
        name: "digits"
        base_path: "exports/digits"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 2 versions: 3 } }  # or latest { num_versions: N }, or all {}
        version_labels { key: "stable" value: 2 }
        version_labels { key: "canary" value: 3 }
      }
      config { name: "shapes" base_path: "/srv/exports/shapes" }  # no policy: latest { num_versions: 1 }
    }

A request without a version gets the highest served version, `/versions/<v>`
any served one, `/labels/<label>` the one the label names (once that one is
AVAILABLE; TF Serving's rule). A version whose directory is deleted is unloaded
within `--poll-s` and the next one the policy asks for serves: delete a bad
version to roll back. Requests in flight on it finish.

    curl -s localhost:8501/v1/models/<name>
    curl -s localhost:8501/v1/models/digits/labels/stable
    curl -s localhost:8501/v1/models/<name>/metadata
    curl -s -X POST localhost:8501/v1/models/<name>:predict -d '{"instances": [{"b64": "<PNG>"}]}'
    curl -s localhost:8501/monitoring/prometheus/metrics
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from pipelines.errors import UserError


class Server:
    """A running server: model manager + REST API + HTTP server + metrics (in background threads)."""

    def __init__(
        self,
        exports: str,
        host: str = "127.0.0.1",
        port: int = 8501,
        poll_s: float = 1.0,
        max_batch: int = 32,
        batch_wait_ms: float = 0.0,
        batch_threads: int = 1,
        max_body_bytes: int = 8 << 20,
        predict_timeout_s: float = 60.0,
        max_rows: int = 4096,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        grpc_port: int | None = None,
        grpc_threads: int = 32,
        model_config_file: str | None = None,
        max_connections: int = 256,
        max_request_pixels: int | None = None,
    ):
        from pipelines.serving.http import HttpServer
        from pipelines.serving.metrics import ServerMetrics
        from pipelines.serving.rest import RestApi
        from pipelines.serving.servables import ModelManager

        from data.images import max_pixels

        # model_config_file: TF Serving's model config file instead of `exports` (a bad one: ModelConfigError);
        # max_request_pixels (of a request's encoded images together): None, as many as one image may have
        self.manager = ModelManager(exports, poll_s, max_batch, batch_wait_ms, batch_threads,
                                    config_file=model_config_file,
                                    max_request_pixels=max_request_pixels or max_pixels())
        self.metrics = ServerMetrics(self.manager)  # its own registry; for the REST API and the gRPC server
        self.api = RestApi(self.manager, max_body_bytes, predict_timeout_s, max_rows, metrics=self.metrics)
        self.http = HttpServer(self.api, host, port, header_timeout_s, body_timeout_s, max_connections, self.metrics)
        self.grpc = None  # TF Serving's gRPC API beside REST (pipelines/serving/grpc_server.py); None or < 0: off
        if grpc_port is not None and grpc_port >= 0:
            from pipelines.serving.grpc_server import GrpcServer

            self.grpc = GrpcServer(self.manager, host, grpc_port, max_body_bytes, predict_timeout_s, max_rows,
                                   grpc_threads, self.metrics)
        self.host = host
        self.port: int | None = None
        self.grpc_port: int | None = None  # the bound gRPC port once started (port 0 picks a free one)

    def start(self) -> "Server":
        self.manager.start()
        try:
            self.port = self.http.start()
            if self.grpc is not None:
                try:
                    self.grpc_port = self.grpc.start()
                except BaseException:
                    self.http.stop()
                    raise
        except BaseException:
            self.manager.stop()
            raise
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Both APIs stop taking requests at once and drain side by side: the requests and RPCs being answered get
        `grace_s` seconds to finish. Then the models stop; a REST request still queued is answered 503 (try again)
        before its connection closes."""
        import threading

        drain = threading.Thread(target=self.http.drain, args=(grace_s,), name="http-drain")
        drain.start()
        try:
            if self.grpc is not None:
                self.grpc.stop(grace_s)
        finally:
            drain.join()
            try:
                self.manager.stop()
            finally:
                self.http.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--exports", default="exports", help="directory holding <name>/<version>/saved_model.pb")
    p.add_argument("--model-config-file", metavar="PATH",
                   help="TF Serving model config file (text ModelServerConfig: models, version policies, version "
                        "labels; see the module docstring), read again when it changes; replaces --exports")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501, help="TF Serving's REST port by default")
    p.add_argument("--poll-s", type=float, default=1.0, help="seconds between scans of the export directory")
    p.add_argument("--max-batch", type=int, default=32, help="most rows per signature call (1: no batching)")
    # 0, as TF Serving's batch_timeout_micros: the batch is what arrived while the model ran. Measured
    # (bench/bench_serve_grpc.py, 8 clients, 28x28, 2 shared cores, two runs each): 2 ms of waiting gave
    # 650-675 REST / 650-685 gRPC req/s, 0 ms 785-845 / 705-745, and lower p50 and p99 on both.
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="longest wait for a batch to fill once a request is waiting (default 0: no wait)")
    p.add_argument("--batch-threads", type=int, default=1, help="signature calls running at once per model")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="request bodies above this get 413")
    p.add_argument("--max-rows", type=int, default=4096, help="most rows (instances) per request; more get 413")
    p.add_argument("--max-request-pixels", type=int, default=None,
                   help="most pixels the encoded images (image_bytes, classify) of one request may hold together, "
                        "by their headers; more get 413 (default: 178956970, as many as one image may have)")
    p.add_argument("--predict-timeout-s", type=float, default=60.0)
    p.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="close a connection whose request headers are not complete this long after it opened "
                        "or after its last answer (slow clients, idle keep-alive)")
    p.add_argument("--body-timeout-s", type=float, default=30.0, help="a request body slower than this gets 408")
    p.add_argument("--max-connections", type=int, default=256,
                   help="most HTTP connections open at once; further ones wait (not accepted) until one closes")
    p.add_argument("--grpc-port", type=int, default=-1,
                   help="also serve TF Serving's gRPC API on this port (make serve: 8500, TF Serving's; 0: a free "
                        "port; -1, the default here: no gRPC, so a bare command never takes a fixed second port)")
    p.add_argument("--grpc-threads", type=int, default=32,
                   help="gRPC worker threads: RPCs handled at once (4x as many are accepted, the rest waiting for "
                        "a thread; beyond that RESOURCE_EXHAUSTED)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    checks = [
        (a.model_config_file is not None or os.path.isdir(a.exports),
         f"--exports {a.exports!r} is not a directory; export a model first (make train)"),
        (a.model_config_file is None or os.path.isfile(a.model_config_file),
         f"--model-config-file {a.model_config_file!r} is not a file"),
        (0 <= a.port <= 65535, f"--port must be in 0..65535, got {a.port}"),
        (a.poll_s > 0, f"--poll-s must be > 0, got {a.poll_s}"),
        (a.max_batch >= 1, f"--max-batch must be >= 1, got {a.max_batch}"),
        (a.batch_wait_ms >= 0, f"--batch-wait-ms must be >= 0, got {a.batch_wait_ms}"),
        (a.batch_threads >= 1, f"--batch-threads must be >= 1, got {a.batch_threads}"),
        (a.max_body_mb > 0, f"--max-body-mb must be > 0, got {a.max_body_mb}"),
        (a.predict_timeout_s > 0, f"--predict-timeout-s must be > 0, got {a.predict_timeout_s}"),
        (a.max_rows >= 1, f"--max-rows must be >= 1, got {a.max_rows}"),
        (a.max_request_pixels is None or a.max_request_pixels >= 1,
         f"--max-request-pixels must be >= 1, got {a.max_request_pixels}"),
        (a.header_timeout_s > 0, f"--header-timeout-s must be > 0, got {a.header_timeout_s}"),
        (a.body_timeout_s > 0, f"--body-timeout-s must be > 0, got {a.body_timeout_s}"),
        (a.max_connections >= 1, f"--max-connections must be >= 1, got {a.max_connections}"),
        (-1 <= a.grpc_port <= 65535, f"--grpc-port must be in 0..65535 (or -1: no gRPC), got {a.grpc_port}"),
        (a.grpc_port <= 0 or a.grpc_port != a.port, f"--grpc-port and --port are both {a.port}; give them two ports"),
        (a.grpc_threads >= 1, f"--grpc-threads must be >= 1, got {a.grpc_threads}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = Server(
        a.exports, a.host, a.port, a.poll_s, a.max_batch, a.batch_wait_ms, a.batch_threads,
        int(a.max_body_mb * (1 << 20)), a.predict_timeout_s, a.max_rows, a.header_timeout_s, a.body_timeout_s,
        a.grpc_port, a.grpc_threads, model_config_file=a.model_config_file, max_connections=a.max_connections,
        max_request_pixels=a.max_request_pixels,
    )
    try:
        server.start()
    except OSError as e:
        where = f"{a.host}:{a.port}" if server.port is None else f"{a.host}:{a.grpc_port} (gRPC)"
        raise UserError(f"cannot listen on {where}: {e.strerror or e}")
    # The handler only appends (no lock): a signal arriving while the previous one's handler runs (`make serve`
    # stopped by SIGTERM to its process group gets two, the group's and the one make forwards) re-enters it, and
    # a handler calling threading.Event.set deadlocked there on the Event's own lock. Installed before the line that
    # says the server is up, so that a signal sent once it is read stops the server cleanly.
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    names = server.manager.names()
    print(
        f"serving {', '.join(names) if names else 'no models yet (waiting for exports)'} "
        f"from {a.model_config_file or a.exports} on {server.url} (REST)"
        f"{f' and gRPC {a.host}:{server.grpc_port}' if server.grpc_port is not None else ''}; Ctrl-C stops",
        flush=True,
    )
    while not stop:
        time.sleep(0.2)  # a signal interrupts the sleep, runs the handler, and the sleep resumes (PEP 475)
    server.stop()
    return 0


if __name__ == "__main__":
    from pipelines.cli import run_main

    sys.exit(run_main(main))
