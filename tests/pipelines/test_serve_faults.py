"""The server under abuse (issue 12, items 7-9): big requests, half-copied versions, slow or broken clients.

Each test reproduces one reported failure on a tiny exported model (the
fixtures of test_serve.py) and checks the fix.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import requests

from pipelines.export import export_model, predict_savedmodel
from pipelines.serve import Server
from tests.pipelines.test_serve import png, tiny_model

@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("exports"))
    path = export_model(tiny_model(0), root, "tiny")
    x = np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    return {"root": root, "path": path, "x": x, "ref": predict_savedmodel(path, x)}


def serve(exports, **kw):
    kw = {"port": 0, "poll_s": 60, "max_body_bytes": 1 << 20, "predict_timeout_s": 30, **kw}
    return Server(exports["root"], **kw)


@pytest.fixture(scope="module")
def server(exports):
    with serve(exports, max_batch=4, max_rows=32, header_timeout_s=1.0, body_timeout_s=1.0) as s:
        yield s


def predict_url(s: Server, name: str = "tiny") -> str:
    return f"{s.url}/v1/models/{name}:predict"


# ----------------------------------------------------------------------------- 7: one large request


def test_a_large_request_runs_in_chunks_of_max_batch_rows(server, exports):
    """Before: the whole request was one signature call (20,852 rows -> 34 s and 5 GB)."""
    servable, _ = server.manager.get("tiny")
    seen: list[int] = []
    run = servable.run

    def spy(inputs):
        seen.append(len(inputs["image"]))
        return run(inputs)

    servable.run = spy
    try:
        x = exports["x"][:30]
        r = requests.post(predict_url(server), json={"instances": [{"b64": png(i)} for i in x]}, timeout=30)
    finally:
        del servable.run
    assert r.status_code == 200, r.text
    probs = np.array([p["probabilities"] for p in r.json()["predictions"]])
    np.testing.assert_allclose(probs, exports["ref"]["probabilities"][:30], atol=1e-6)  # rows in order
    assert sum(seen) == 30 and max(seen) <= 4, seen


def test_too_many_rows_is_413_naming_the_limit(server, exports):
    """Before: any number of rows under the body size limit was accepted."""
    img = np.zeros((28, 28, 1), np.uint8)
    for body in ({"instances": [{"b64": png(img)}] * 33}, {"inputs": {"image": [{"b64": png(img)}] * 33}}):
        r = requests.post(predict_url(server), json=body, timeout=30)
        assert r.status_code == 413, r.text
        assert "33" in r.json()["error"] and "limit of 32" in r.json()["error"]
    r = requests.post(predict_url(server), json={"instances": exports["x"][:32].tolist()}, timeout=30)
    assert r.status_code == 200, r.text


def test_a_bad_image_deep_in_a_large_request_is_a_400_naming_it(server, exports):
    images = [{"b64": png(i)} for i in exports["x"][:20]]
    images[13] = {"b64": png(np.zeros((20, 20, 1), np.uint8))}
    r = requests.post(predict_url(server), json={"instances": images}, timeout=30)
    assert r.status_code == 400 and "instances[13]" in r.json()["error"], r.text
    ok = requests.post(predict_url(server), json={"instances": exports["x"][:2].tolist()}, timeout=30)
    assert ok.status_code == 200


def test_a_client_that_goes_away_stops_its_request(server, exports):
    servable, _ = server.manager.get("tiny")
    seen: list[int] = []
    run = servable.run

    def slow(inputs):
        seen.append(len(inputs["image"]))
        time.sleep(0.05)
        return run(inputs)

    servable.run = slow
    try:
        body = json.dumps({"instances": [{"b64": png(i)} for i in exports["x"][:32]]}).encode()
        with _connect(server) as sock:
            sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body)
            deadline = time.monotonic() + 10
            while not seen and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(1.0)  # 8 chunks x 0.05 s would be done by now
    finally:
        del servable.run
    assert seen and sum(seen) < 32, seen
    gone = ("serving_requests_total", (("api", "predict"), ("code", "499"), ("model", "tiny"), ("protocol", "rest")))
    assert _metrics(server).get(gone) == 1  # counted as 499, nginx's "client closed request"


def _metrics(s: Server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = s.metrics.exposition()[0].decode()
    return {(m.name, tuple(sorted(m.labels.items()))): m.value
            for fam in text_string_to_metric_families(text) for m in fam.samples}


# ----------------------------------------------------------------------------- 8: a version copied in slowly


def _copy_tree_except(src: str, dst: str, skip: str) -> None:
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n == skip])


def test_a_version_copied_in_slowly_is_retried_once_its_files_change(tmp_path, exports, caplog):
    """Before: a version whose load failed was never tried again, even after the copy completed."""
    root = tmp_path / "exports"
    os.makedirs(root / "m")
    shutil.copytree(exports["path"], root / "m" / "1")
    caplog.set_level(logging.INFO, logger="pipelines.serve")
    with Server(str(root), port=0, poll_s=0.05) as s:
        assert s.manager.get("m")[0].version == 1
        _copy_tree_except(exports["path"], str(root / "m" / "2"), "variables")  # the copy is half done
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and 2 not in s.manager.state("m").failed:
            time.sleep(0.05)
        assert 2 in s.manager.state("m").failed
        time.sleep(0.5)  # nothing changes on disk: no second attempt
        assert sum("loading version 2 (attempt" in m for m in caplog.messages) == 1, caplog.messages
        shutil.copytree(os.path.join(exports["path"], "variables"), root / "m" / "2" / "variables")  # completes
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and s.manager.get("m")[0].version != 2:
            time.sleep(0.05)
        assert s.manager.get("m")[0].version == 2
        status = requests.get(f"{s.url}/v1/models/m", timeout=10).json()["model_version_status"]
        assert [(v["version"], v["state"]) for v in status] == [("2", "AVAILABLE"), ("1", "END")]
    tries = [m for m in caplog.messages if "loading version 2 (attempt" in m]
    assert len(tries) >= 2, tries
    assert any("version 2: its files changed" in m and "retrying" in m for m in caplog.messages)


def test_a_version_folder_written_with_a_leading_zero_is_served_as_its_number(tmp_path, exports):
    """TF Serving reads a version folder's name as a number: `08` is version 8. It was listed, then its load
    looked for `8/` and failed for ever."""
    root = tmp_path / "exports"
    os.makedirs(root / "m")
    shutil.copytree(exports["path"], root / "m" / "1")
    shutil.copytree(exports["path"], root / "m" / "08")
    with Server(str(root), port=0, poll_s=0.05) as s:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and s.manager.get("m")[0].version != 8:
            time.sleep(0.05)
        status = requests.get(f"{s.url}/v1/models/m", timeout=10).json()["model_version_status"]
        assert [(v["version"], v["state"]) for v in status] == [("8", "AVAILABLE")], status  # 1 never loaded
        r = requests.post(f"{s.url}/v1/models/m/versions/8:predict", json={"instances": exports["x"].tolist()},
                          timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == len(exports["x"])


def test_retries_of_a_changing_broken_version_back_off(tmp_path, exports, caplog):
    from pipelines.serving.servables import ModelManager

    root = tmp_path / "exports"
    shutil.copytree(exports["path"], root / "m" / "1")
    caplog.set_level(logging.INFO, logger="pipelines.serve")
    m = ModelManager(str(root), poll_s=0.05)
    try:
        m.poll_once()
        os.makedirs(root / "m" / "2")
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 1.0:  # the broken version keeps changing for a second
            (root / "m" / "2" / "saved_model.pb").write_bytes(b"broken" * (i + 1))
            m.poll_once()
            i += 1
            time.sleep(0.01)
        attempts = m.state("m").failures[2].attempts
        # backoff 0.05, 0.1, 0.2, 0.4, 0.8 s: at most 6 attempts in a second, not one per changed poll
        assert 2 <= attempts <= 6 and attempts < i, (attempts, i)
        assert m.get("m")[0].version == 1
    finally:
        m.stop()


# ----------------------------------------------------------------------------- 9: slow and broken clients


def _connect(s: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", s.port), timeout=10)


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes, every: float) -> float | None:
    """Send `trickle` a byte every `every` s; seconds until the server closed the connection, or None."""
    t0 = time.monotonic()
    sock.settimeout(every)
    for b in trickle:
        if time.monotonic() - t0 > seconds:
            return None
        try:
            sock.sendall(bytes([b]))
        except OSError:
            return time.monotonic() - t0
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - t0
        if data == b"" or b"408" in data.split(b"\r\n", 1)[0]:
            return time.monotonic() - t0
    return None


def test_slowloris_headers_are_cut_off(exports):
    """Before: headers sent one byte per 0.5 s kept the connection open forever."""
    with serve(exports, header_timeout_s=1.0) as s, _connect(s) as sock:
        trickle = b"GET /v1/models/tiny HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
        took = _closed_within(sock, 6.0, trickle, 0.5)
        assert took is not None and took < 4.0, took
        r = requests.get(f"{s.url}/v1/models/tiny", timeout=10)  # others are still served
        assert r.status_code == 200


def test_a_slow_body_is_cut_off_with_408(exports):
    with serve(exports, body_timeout_s=1.0) as s, _connect(s) as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                     b"Content-Type: application/json\r\n\r\n")
        took = _closed_within(sock, 6.0, b"{" + b" " * 999, 0.3)
        assert took is not None and took < 4.0, took


def test_a_chunked_body_is_a_411_asking_for_content_length(server):
    r = requests.post(predict_url(server), data=iter([b'{"instances": ', b"[]}"]), timeout=10)  # chunked
    assert r.status_code == 411, r.text
    assert "Content-Length" in r.json()["error"]


def test_an_idle_keepalive_connection_is_still_served_within_the_timeout(server, exports):
    with requests.Session() as sess:
        for _ in range(3):
            r = sess.post(predict_url(server), json={"instances": exports["x"][:1].tolist()}, timeout=10)
            assert r.status_code == 200
            time.sleep(0.3)


def test_405_carries_an_allow_header(exports):
    """Before: 405 answers had no Allow header."""
    with serve(exports) as s:
        r = requests.get(predict_url(s), timeout=10)
        assert r.status_code == 405 and r.headers.get("Allow") == "POST, OPTIONS", (r.status_code, r.headers)
        assert "needs POST" in r.json()["error"]
        r = requests.post(f"{s.url}/v1/models/tiny/metadata", data=b"{}", timeout=10)
        assert r.status_code == 405 and r.headers.get("Allow") == "GET, HEAD, OPTIONS", (r.status_code, r.headers)


def test_head_is_get_without_the_body_and_options_names_the_methods(exports):
    """Before: HEAD and OPTIONS got 501 without Allow (a load balancer's OPTIONS or HEAD health check failed)."""
    with serve(exports) as s, requests.Session() as sess:
        status = f"{s.url}/v1/models/tiny"
        got, head = sess.get(status, timeout=10), sess.head(status, timeout=10)
        assert head.status_code == got.status_code == 200 and head.content == b""
        assert head.headers["Content-Length"] == str(len(got.content)) and got.json()["model_version_status"]
        assert sess.head(f"{s.url}/v1/models/nope", timeout=10).status_code == 404
        for url, allow in ((status, "GET, HEAD, OPTIONS"), (f"{status}/metadata", "GET, HEAD, OPTIONS"),
                           (predict_url(s), "POST, OPTIONS")):
            r = sess.options(url, timeout=10)
            assert r.status_code == 200 and r.headers.get("Allow") == allow, (url, r.status_code, r.headers)
        assert sess.options(f"{s.url}/v1/models/nope", timeout=10).status_code == 404
        assert sess.options(f"{s.url}/v1/models/nope:predict", timeout=10).status_code == 404
        r = sess.head(predict_url(s), timeout=10)
        assert r.status_code == 405 and r.headers.get("Allow") == "POST, OPTIONS" and r.content == b""
        r = sess.post(predict_url(s), json={"instances": exports["x"][:1].tolist()}, timeout=10)
        assert r.status_code == 200  # the same keep-alive connection still answers: no body was left behind


def test_a_bad_content_length_is_a_short_json_400(exports, caplog):
    """Before (aiohttp): a plain-text 400 echoing the request back, and into the log."""
    caplog.set_level(logging.DEBUG)
    junk = b"9" * 10 + b"x" * 100_000
    with serve(exports) as s, _connect(s) as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + junk + b"\r\n\r\n{}")
        sock.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] in (b"400", b"431"), data[:200]
    assert b"application/json" in head.lower(), head
    assert "error" in json.loads(body[: _length(data)])
    assert len(body) < 400 and b"x" * 50 not in body, body[:500]
    assert not any("x" * 50 in r.getMessage() for r in caplog.records)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30


def test_a_malformed_request_line_is_a_json_400(exports):
    with serve(exports) as s, _connect(s) as sock:
        sock.sendall(b"GARBAGE\x01 " + b"y" * 5000 + b"\r\n\r\n")
        sock.settimeout(10)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1].startswith(b"4"), data[:200]
    assert b"application/json" in head.lower(), head
    assert "error" in json.loads(body[: _length(data)]) and b"y" * 50 not in body


def test_a_5000_digit_integer_is_a_400(server):
    """Before: 500 (int() refuses over 4300 digits with a ValueError json.loads does not wrap)."""
    body = b'{"instances": [' + b"1" * 5000 + b"]}"
    r = requests.post(predict_url(server), data=body, timeout=10)
    assert r.status_code == 400, r.text
    assert "digits" in r.json()["error"] and "1" * 50 not in r.json()["error"]


# ----------------------------------------------------------------------------- the parser and encoder behind 7


JSON_CASES = [
    "{}", "[]", "[1, 2 ,3]", ' {"a" : [ [1,2], {"b": [3]} ], "c": "x"} ', '{"instances": [{"b64": "abc"}]}',
    '"s"', "1", "null", '{"a":[[[[1]]]]}', '[{}, [], {"x": []}]', '{"instances": [[[1,2],[3]], [["a"]], [[true]]]}',
    '{"inputs": {"image": [[[1.5, 2]], [[1e400]]]}}', b'\xef\xbb\xbf{"a": [1]}',  # with a UTF-8 BOM
]
JSON_BAD = [
    "", "{", "[1,", '{"a" 1}', '{"a":1,}', "[1 2]", "{1:2}", "[1]]", "nul", "[1,]", '{"a":[[[1,]]]}',
    '{"instances": [' + "1" * 5000 + "]}", "[" * 20000 + "]" * 20000,
]


def _plain(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, list):
        return [_plain(v) for v in o]
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    return o


@pytest.mark.parametrize("text", JSON_CASES)
def test_the_request_parser_reads_what_json_loads_reads(text):
    from pipelines.serving.rest import _loads

    body = text if isinstance(text, bytes) else text.encode()
    assert _plain(_loads(body)) == json.loads(body)


@pytest.mark.parametrize("text", JSON_BAD, ids=range(len(JSON_BAD)))
def test_the_request_parser_fails_where_json_loads_fails(text):
    from pipelines.serving.rest import _loads

    with pytest.raises(Exception) as ours:
        _loads(text.encode())
    with pytest.raises(Exception) as theirs:
        json.loads(text.encode())
    assert type(ours.value) is type(theirs.value)


def test_a_nested_list_request_leaves_few_live_lists_behind():
    """8 MB of nested lists were ~1.5M live lists; their full garbage collections stalled all threads."""
    import gc

    from pipelines.serving.rest import _loads

    x = np.random.default_rng(0).integers(0, 256, (200, 28, 28, 1), dtype=np.uint8)
    for body in ({"instances": x.tolist()}, {"inputs": {"image": x.tolist()}}, {"instances": [{"image": i} for i in x.tolist()]}):
        gc.collect()
        before = len(gc.get_objects())
        req = _loads(json.dumps(body).encode())
        assert len(gc.get_objects()) - before < 200 * 30  # not 200 * 813 lists
        del req


@pytest.mark.parametrize("rows", [1, 3, 1000])
def test_answers_encoded_in_slices_are_the_same_json(rows):
    from pipelines.serving.rest import encode_predict, format_predict

    out = {"probabilities": np.random.default_rng(0).random((rows, 10), np.float32), "class_id": np.arange(rows)}
    for row in (True, False):
        assert json.loads(encode_predict(out, row)) == format_predict(out, row)
        one = {"p": out["probabilities"]}
        assert json.loads(encode_predict(one, row)) == format_predict(one, row)
