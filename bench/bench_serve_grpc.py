"""Load test of `make serve`'s gRPC API against its REST API, and p99 latency while a new version is swapped in.

    PYTHONPATH=. .venv/bin/python bench/bench_serve_grpc.py [--clients 8] [--seconds 10] [--rounds 3]

Exports the baseline CNN at its default size (random weights, with class
names) and starts one server (`python -m pipelines.serve --port P
--grpc-port G`, default batching) in its own process. Then, in one run, with
`--clients` threads (each its own keep-alive connection or gRPC channel), one
image per request (28x28x1; `--image-size` for larger RGB ones), for
`--seconds` each (after a 1 s warm-up):

1. `--rounds` rounds of REST `:predict` (`{"instances": [...]}`, as
   bench/bench_serve.py) then gRPC `Predict` (the official
   `PredictionServiceStub`, a uint8 TensorProto), interleaved because the
   machine is shared: the median requests/s, and latencies pooled;
2. gRPC while a new version is published: a version exported beforehand is
   renamed into the export directory (as `pipelines.export` publishes)
   halfway through; the server loads it and swaps it in under load. The swap
   window is from the rename to 1 s after the first answer from the new
   version (the load, the warm-up and the heap freeze after the swap fall in
   it); the run is extended until that window has passed. Its requests outside
   the window are a second steady baseline, taken under the same neighbours.

Prints requests/s, p50/p99 latency and failed requests per phase, and the
issue's goals: gRPC at least 1.5x REST's requests/s, p99 in the swap window
at most 2x the steady gRPC p99, no failed request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from common import ROOT, table

sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_serve import load, post_json, summary  # noqa: E402 - the REST client of bench_serve.py

SWAP_TAIL_S = 1.0  # the swap window ends this long after the first answer from the new version


def grpc_load(port: int, request, clients: int, seconds: float, warmup: float = 1.0,
              publish_at: float | None = None, publish=None, max_extra_s: float = 60.0) -> dict:
    """`clients` threads call Predict for `seconds` (after `warmup`); with `publish`, it is called `publish_at`
    seconds into the timed part and the run lasts until `SWAP_TAIL_S` after the first answer of a new version."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    recs: list[list[tuple]] = [[] for _ in range(clients)]  # (start, latency s, ok, version)
    failed_details: list[str] = []
    start_evt, t = threading.Event(), {"start": 0.0, "end": 0.0, "published": None, "first_new": None}
    lock = threading.Lock()

    def client(i: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            first_version = stub.Predict(request, timeout=60).model_spec.version.value  # connected before the start
            start_evt.wait()
            while True:
                t0 = time.perf_counter()
                if t0 >= t["end"]:
                    break
                version = None
                try:
                    version = stub.Predict(request, timeout=60).model_spec.version.value
                    ok = True
                except grpc.RpcError as e:
                    ok = False
                    failed_details.append(f"{e.code().name}: {e.details()}")
                t1 = time.perf_counter()
                if t0 >= t["start"]:
                    recs[i].append((t0, t1 - t0, ok, version))
                if version is not None and version != first_version and publish is not None:
                    with lock:
                        if t["first_new"] is None:
                            t["first_new"] = t1
                            t["end"] = max(t["end"], t1 + SWAP_TAIL_S + 0.5)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    now = time.perf_counter()
    t["start"], t["end"] = now + warmup, now + warmup + seconds + (max_extra_s if publish else 0)
    start_evt.set()
    if publish is not None:
        time.sleep(max(0.0, t["start"] + publish_at - time.perf_counter()))
        t["published"] = time.perf_counter()
        publish()
        while t["first_new"] is None and time.perf_counter() < t["end"]:
            time.sleep(0.05)
        with lock:  # the new version answered (or never will): back to `seconds`, or the window's end
            t["end"] = max(t["start"] + seconds, (t["first_new"] or 0) + SWAP_TAIL_S + 0.5)
    for th in threads:
        th.join()
    rows = [r for per in recs for r in per]
    lat = np.array([r[1] for r in rows]) * 1000
    out = {"lat_ms": lat, "seconds": t["end"] - t["start"],
           "failed": sum(not r[2] for r in rows), "details": sorted(set(failed_details))[:5]}
    if publish is not None:
        t_pub, t_new = t["published"], t["first_new"]
        end = (t_new if t_new is not None else t["end"]) + SWAP_TAIL_S
        window = [r for r in rows if t_pub <= r[0] <= end]
        outside = [r for r in rows if not t_pub <= r[0] <= end]
        whole = t["end"] - t["start"]
        for key, part, secs in (("window", window, end - t_pub), ("outside", outside, whole - (end - t_pub))):
            out[key] = {"lat_ms": np.array([r[1] for r in part]) * 1000, "seconds": max(secs, 1e-9),
                        "failed": sum(not r[2] for r in part)}
        out["swap_s"] = None if t_new is None else t_new - t_pub
        out["versions"] = sorted({r[3] for r in rows if r[3] is not None})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3, help="rounds of REST then gRPC, interleaved (median req/s)")
    p.add_argument("--image-size", type=int, default=28, help="images of this side (28: 28x28x1, else NxNx3)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for the server (repeat it), e.g. --server-arg=--batch-wait-ms=0")
    a = p.parse_args()

    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from models.registry import build_model
    from pipelines.export import export_model
    from pipelines.serving.mlflow_serve import free_port, stop_process, wait_http

    tmp = tempfile.mkdtemp(prefix="bench_serve_grpc_")
    try:
        exports, staging = os.path.join(tmp, "exports"), os.path.join(tmp, "staging")
        names = [f"class{i}" for i in range(10)]
        labels = {"labels.txt": "".join(f"{n}\n" for n in names)}
        shape = (28, 28, 1) if a.image_size == 28 else (a.image_size, a.image_size, 3)
        export_model(build_model("baseline_cnn", shape, 10), exports, "baseline", class_names=names,
                     extra_assets=labels)
        new_version = export_model(build_model("baseline_cnn", shape, 10), staging, "baseline",
                                   class_names=names, extra_assets=labels)  # published during the swap run
        image = np.random.default_rng(0).integers(0, 256, (1, *shape), dtype=np.uint8)
        body = json.dumps({"instances": image.tolist()}).encode()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "baseline"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
        path = "/v1/models/baseline:predict"

        port, grpc_port = free_port(), free_port()
        log_path = os.path.join(tmp, "server.log")
        cmd = [sys.executable, "-m", "pipelines.serve", "--exports", exports, "--port", str(port),
               "--grpc-port", str(grpc_port), "--poll-s", "0.5", *a.server_arg]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        rows = []
        try:
            wait_http(f"http://127.0.0.1:{port}/v1/models/baseline", proc, 180, log_path)
            import grpc
            from tensorflow_serving.apis import prediction_service_pb2_grpc

            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
                answer = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(request, timeout=60)
            diff = float(np.max(np.abs(tf.make_ndarray(answer.outputs["probabilities"])[0] - np.array(
                post_json(port, path, body)["predictions"][0]["probabilities"]))))
            print(f"largest difference between gRPC's and REST's probabilities: {diff:.2g}", flush=True)

            rest_runs, grpc_runs = [], []
            for r in range(a.rounds):
                rest_runs.append(load(port, path, body, a.clients, a.seconds))
                print(f"round {r + 1}: REST", summary(rest_runs[-1:]), flush=True)
                grpc_runs.append(grpc_load(grpc_port, request, a.clients, a.seconds))
                print(f"round {r + 1}: gRPC", summary(grpc_runs[-1:]), flush=True)
            rows.append({"protocol": "REST", "phase": "steady", **summary(rest_runs)})
            rows.append({"protocol": "gRPC", "phase": "steady", **summary(grpc_runs)})
            publish = lambda: os.rename(new_version, os.path.join(exports, "baseline", "2"))  # noqa: E731
            swap = grpc_load(grpc_port, request, a.clients, a.seconds, publish_at=a.seconds / 2, publish=publish)
            rows.append({"protocol": "gRPC", "phase": "swap run, whole", **summary([swap])})
            rows.append({"protocol": "gRPC", "phase": "swap run, outside the window", **summary([swap["outside"]])})
            rows.append({"protocol": "gRPC", "phase": "swap run, swap window", **summary([swap["window"]])})
            for run in (*grpc_runs, swap):
                for d in run["details"]:
                    print("failed:", d)
        finally:
            stop_process(proc)
        print(table(rows, f"bench_serve_grpc: {a.clients} clients x {a.seconds:g} s x {a.rounds} round(s), one "
                          f"{'x'.join(map(str, shape))} image per request, baseline_cnn default size, one server "
                          f"(REST + gRPC), loopback"))
        ratio = rows[1]["req/s"] / rows[0]["req/s"]
        swap_ratio = rows[4]["p99 ms"] / rows[1]["p99 ms"]
        same_run = rows[4]["p99 ms"] / rows[3]["p99 ms"]
        failed = sum(r["failed"] for r in rows[:3])
        print(f"version swap: v2 answered {swap['swap_s']:.2f} s after it was published; versions answered "
              f"{swap['versions']}" if swap["swap_s"] is not None else "version swap: v2 never answered")
        print(f"gRPC / REST requests/s: {ratio:.2f} (goal >= 1.5: {'met' if ratio >= 1.5 else 'MISSED'})")
        print(f"p99 in the swap window / steady gRPC p99: {swap_ratio:.2f} "
              f"(goal <= 2: {'met' if swap_ratio <= 2 else 'MISSED'}); / p99 outside the window, same run: "
              f"{same_run:.2f}")
        print(f"failed requests: {failed} (goal 0: {'met' if failed == 0 else 'MISSED'})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
