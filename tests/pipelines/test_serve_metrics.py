"""The server's Prometheus metrics (GET /monitoring/prometheus/metrics) and its cap on open connections.

Servers run in-process on tiny exports (the models of test_serve.py); the
metrics are read with prometheus_client's own parser of the text format.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from pipelines.errors import UserError
from pipelines.export import export_model
from pipelines.serve import Server
from pipelines.serving.metrics import PATH, ServerMetrics
from tests.pipelines.test_serve import tiny_model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("exports"))
    export_model(tiny_model(0), root, "tiny")
    export_model(tiny_model(1), root, "live")
    os.makedirs(os.path.join(root, "broken", "2"))
    with open(os.path.join(root, "broken", "2", "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    x = np.random.default_rng(0).integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
    return {"root": root, "x": x}


@pytest.fixture(scope="module")
def server(exports):
    with Server(exports["root"], port=0, poll_s=0.1, max_batch=4, batch_wait_ms=0) as s:
        yield s


def parse(text: str) -> dict:
    """{(sample name, ((label, value), ...)): value} of a text exposition."""
    return {
        (smp.name, tuple(sorted(smp.labels.items()))): smp.value
        for fam in text_string_to_metric_families(text) for smp in fam.samples
    }


def scrape(s: Server) -> dict:
    r = requests.get(s.url + PATH, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers
    return parse(r.text)


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def predict(s: Server, rows: np.ndarray, model: str = "tiny", suffix: str = "") -> requests.Response:
    return requests.post(f"{s.url}/v1/models/{model}{suffix}:predict", json={"instances": rows.tolist()}, timeout=30)


# ----------------------------------------------------------------------------- requests


def test_requests_are_counted_by_model_api_and_code(server, exports):
    x = exports["x"]
    before = scrape(server)
    for _ in range(3):
        assert predict(server, x[:1]).status_code == 200
    assert requests.post(f"{server.url}/v1/models/tiny:predict", data=b"{oops", timeout=10).status_code == 400
    assert predict(server, x[:1], suffix="/versions/7").status_code == 404
    assert predict(server, x[:1], model="made-up-name").status_code == 404
    assert requests.get(f"{server.url}/v1/models/tiny", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/v1/models/tiny/metadata", timeout=10).status_code == 200
    after = scrape(server)

    count = "serving_requests_total"
    rest = {"protocol": "rest"}
    assert delta(before, after, count, model="tiny", api="predict", code="200", **rest) == 3
    assert delta(before, after, count, model="tiny", api="predict", code="400", **rest) == 1
    assert delta(before, after, count, model="tiny", api="predict", code="404", **rest) == 1
    assert delta(before, after, count, model="", api="predict", code="404", **rest) == 1  # names not served: ""
    assert delta(before, after, count, model="tiny", api="status", code="200", **rest) == 1
    assert delta(before, after, count, model="tiny", api="metadata", code="200", **rest) == 1
    moved = {k: v - before.get(k, 0.0) for k, v in after.items() if k[0] == count and v != before.get(k, 0.0)}
    assert sum(moved.values()) == 8, moved  # nothing else counted (the scrapes themselves are not)
    assert not any("made-up-name" in str(k) for k in after)

    latency = "serving_request_latency_seconds"
    assert delta(before, after, f"{latency}_count", model="tiny", api="predict", **rest) == 5
    assert delta(before, after, f"{latency}_count", model="tiny", api="status", **rest) == 1
    assert 0 < delta(before, after, f"{latency}_sum", model="tiny", api="predict", **rest) < 30
    assert delta(before, after, f"{latency}_bucket", model="tiny", api="predict", le="+Inf", **rest) == 5


def test_batch_sizes_count_rows_per_signature_call(server, exports):
    before = scrape(server)
    r = predict(server, exports["x"][:10])  # max_batch 4: calls of 4, 4 and 2 rows
    assert r.status_code == 200, r.text
    after = scrape(server)
    hist = "serving_batch_size_rows"
    assert delta(before, after, f"{hist}_count", model="tiny") == 3
    assert delta(before, after, f"{hist}_sum", model="tiny") == 10
    assert delta(before, after, f"{hist}_bucket", model="tiny", le="1.0") == 0
    assert delta(before, after, f"{hist}_bucket", model="tiny", le="2.0") == 1
    assert delta(before, after, f"{hist}_bucket", model="tiny", le="4.0") == 3
    assert delta(before, after, f"{hist}_bucket", model="tiny", le="+Inf") == 3


def test_loaded_versions_are_a_gauge(server, exports):
    gauge = "serving_model_version_available"
    m = scrape(server)
    assert value(m, gauge, model="tiny", version="1") == 1
    assert (gauge, (("model", "broken"), ("version", "2"))) in m  # failed to load: listed, 0
    assert value(m, gauge, model="broken", version="2") == 0

    export_model(tiny_model(2), exports["root"], "live")  # version 2, picked up by the poller
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and value(scrape(server), gauge, model="live", version="2") != 1:
        time.sleep(0.1)
    m = scrape(server)
    assert value(m, gauge, model="live", version="2") == 1
    assert (gauge, (("model", "live"), ("version", "1"))) not in m  # unloaded: END in status, no series here
    assert [(r.version, r.state) for r in server.manager.status("live")] == [(2, "AVAILABLE"), (1, "END")]


def test_the_metrics_route_answers_get_only(server):
    r = requests.post(server.url + PATH, data=b"{}", timeout=10)
    assert r.status_code == 405 and r.headers.get("Allow") == "GET, HEAD, OPTIONS", (r.status_code, r.headers)
    assert "GET" in r.json()["error"]


def test_each_server_has_its_own_registry():
    a, b = ServerMetrics(), ServerMetrics()  # same metric names: no clash
    a.observe_request("m", "predict", 200, 0.01)
    a.observe_request("m", "predict", 200, 0.02)
    b.observe_request("m", "classify", "OK", 0.01, protocol="grpc")
    b.observe_request("m", "no-such-api", 404, None)
    ma, mb = parse(a.exposition()[0].decode()), parse(b.exposition()[0].decode())
    count = "serving_requests_total"
    assert value(ma, count, model="m", api="predict", code="200", protocol="rest") == 2
    assert value(mb, count, model="m", api="predict", code="200", protocol="rest") == 0
    assert value(mb, count, model="m", api="classify", code="OK", protocol="grpc") == 1
    assert value(mb, count, model="m", api="other", code="404", protocol="rest") == 1
    assert value(mb, "serving_request_latency_seconds_count", model="m", api="other", protocol="rest") == 0


# ----------------------------------------------------------------------------- the connection cap


def _wait_for(cond, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_connections_over_the_cap_wait_until_one_closes(exports):
    with Server(exports["root"], port=0, poll_s=60, max_connections=2, header_timeout_s=30) as s:
        held = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(2)]
        try:
            assert _wait_for(lambda: s.http.open_connections == 2)
            gauge = ("serving_open_connections", (("protocol", "rest"),))
            assert parse(s.metrics.exposition()[0].decode())[gauge] == 2
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as third:  # the kernel queues it
                third.sendall(b"GET /v1/models/tiny HTTP/1.1\r\nHost: x\r\n\r\n")
                third.settimeout(1.0)
                with pytest.raises(socket.timeout):  # not accepted: no answer
                    third.recv(65536)
                assert s.http.open_connections == 2
                held.pop().close()  # a slot comes free: the waiting connection is served
                third.settimeout(10)
                assert third.recv(65536).startswith(b"HTTP/1.1 200"), "the waiting connection was not served"
            for sock in held:
                sock.close()
            assert _wait_for(lambda: s.http.open_connections == 0)
            assert parse(s.metrics.exposition()[0].decode())[gauge] == 0
            r = requests.get(f"{s.url}/v1/models/tiny", timeout=10)  # and the server goes on
            assert r.status_code == 200
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_the_cli_rejects_a_bad_connection_cap(tmp_path, value):
    from pipelines.serve import main

    with pytest.raises(UserError, match="--max-connections must be >= 1"):
        main(["--exports", str(tmp_path), "--max-connections", value])
