"""Load test of `make serve` against `mlflow models serve` on the same model, on loopback.

    PYTHONPATH=. .venv/bin/python bench/bench_serve.py [--clients 8] [--seconds 10] [--rounds 1]

Exports the baseline CNN at its default size (random weights: throughput does
not depend on them) as a SavedModel and logs the same inference model to a
temporary MLflow store; then, one server at a time in its own process, a fixed
number of client threads (keep-alive connections) post one 28x28 image per
request (`{"instances": [...]}`, the same body for every server) for a fixed
time. Prints requests/s, p50 and p99 latency and failed requests for each
server, and throughput as a ratio to `mlflow models serve` measured in the same
run. The rows besides the default (batching on) are the measurement that
chose the batching defaults. (Three HTTP stacks were measured here until the
server kept the fastest, the standard library's; see pipelines/serving/http.py.)
"""

from __future__ import annotations

import argparse
import http.client
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


def load(port: int, path: str, body: bytes, clients: int, seconds: float, warmup: float = 1.0) -> dict:
    """`clients` threads post `body` to `path` for `seconds` (after `warmup`); latencies of the timed part."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    failed = [0] * clients
    start_evt, t_start, t_end = threading.Event(), [0.0], [0.0]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        start_evt.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end[0]:
                break
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200 and b"error" not in data[:20]
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            t1 = time.perf_counter()
            if t0 >= t_start[0]:
                lat[i].append(t1 - t0)
                failed[i] += not ok
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    t_start[0], t_end[0] = now + warmup, now + warmup + seconds
    start_evt.set()
    for t in threads:
        t.join()
    return {"lat_ms": np.array([x for l in lat for x in l]) * 1000, "seconds": seconds, "failed": int(sum(failed))}


def summary(runs: list[dict]) -> dict:
    """Rounds of `load` -> requests, median req/s over rounds, pooled p50/p99 latency, failures."""
    lat = np.concatenate([r["lat_ms"] for r in runs])
    n = len(lat)
    return {
        "requests": n,
        "req/s": float(np.median([len(r["lat_ms"]) / r["seconds"] for r in runs])),
        "p50 ms": float(np.percentile(lat, 50)) if n else float("nan"),
        "p99 ms": float(np.percentile(lat, 99)) if n else float("nan"),
        "failed": sum(r["failed"] for r in runs),
    }


def post_json(port: int, path: str, body: bytes) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = json.loads(resp.read())
    conn.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=1, help="rounds over our configs, interleaved (median req/s)")
    p.add_argument("--no-mlflow", action="store_true", help="skip mlflow models serve (no ratio then)")
    a = p.parse_args()

    from models.registry import build_model
    from pipelines.export import export_model
    from pipelines.serving.mlflow_serve import (
        free_port, log_inference_model, start_mlflow_serve, stop_process, wait_http,
    )

    tmp = tempfile.mkdtemp(prefix="bench_serve_")
    try:
        model = build_model("baseline_cnn", (28, 28, 1), 10)  # default size, random weights
        export_model(model, os.path.join(tmp, "exports"), "baseline")
        image = np.random.default_rng(0).integers(0, 256, (1, 28, 28, 1), dtype=np.uint8)
        body = json.dumps({"instances": image.tolist()}).encode()

        # (label, command-line extras, path); ours first, mlflow last
        path = "/v1/models/baseline:predict"
        configs = [("ours, batching", [], path), ("ours, batching, no wait", ["--batch-wait-ms", "0"], path),
                   ("ours, no batching", ["--max-batch", "1"], path)]
        runs: dict[str, list] = {label: [] for label, _, _ in configs}
        preds = {}
        for (label, extra, path), _ in ((c, r) for r in range(a.rounds) for c in configs):
            port = free_port()
            log_path = os.path.join(tmp, f"ours-{port}.log")
            cmd = [sys.executable, "-m", "pipelines.serve", "--exports", os.path.join(tmp, "exports"),
                   "--port", str(port), *extra]
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            try:
                wait_http(f"http://127.0.0.1:{port}/v1/models/baseline", proc, 180, log_path)
                preds[label] = np.array(post_json(port, path, body)["predictions"][0]["probabilities"])
                runs[label].append(load(port, path, body, a.clients, a.seconds))
                print(label, summary(runs[label][-1:]), flush=True)
            finally:
                stop_process(proc)
        rows = [{"server": label, "clients": a.clients, **summary(r)} for label, r in runs.items()]

        if not a.no_mlflow:
            tracking = f"sqlite:///{tmp}/mlflow.db"
            uri = log_inference_model(model, tracking, os.path.join(tmp, "artifacts"), image)
            port = free_port()
            log_path = os.path.join(tmp, "mlflow.log")
            proc = start_mlflow_serve(uri, port, tracking, log_path)
            try:
                wait_http(f"http://127.0.0.1:{port}/ping", proc, 300, log_path)
                preds["mlflow"] = np.array(post_json(port, "/invocations", body)["predictions"]["probabilities"][0])
                rows.append({"server": "mlflow models serve", "clients": a.clients,
                             **summary([load(port, "/invocations", body, a.clients, a.seconds)])})
                print(rows[-1], flush=True)
            finally:
                stop_process(proc)
            ref = rows[-1]["req/s"]
            for r in rows:
                r["vs mlflow"] = r["req/s"] / ref if ref else float("nan")
            diff = max(float(np.max(np.abs(v - preds["mlflow"]))) for v in preds.values())
            print(f"largest difference between the servers' probabilities: {diff:.2g}")

        print(table(rows, f"bench_serve: {a.clients} clients x {a.seconds:g} s x {a.rounds} round(s), one 28x28x1 image per request, "
                          f"baseline_cnn default size, loopback"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
