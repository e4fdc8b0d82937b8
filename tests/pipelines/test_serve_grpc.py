"""TF Serving's gRPC API beside REST (pipelines/serving/grpc_server.py), with the official client stubs.

A `pipelines.serve.Server` with REST and gRPC on free loopback ports serves
tiny exports; gRPC answers are checked against REST's on the same images, and
every mistake must be one gRPC status with TF Serving's code and a message.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading

import grpc
import keras
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from models.registry import build_model
from pipelines.export import export_model
from pipelines.serve import Server

NAMES = ["airplane", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck", "zebra"]
LIMIT = 64 * 1024  # message (and REST body) size limit of the test server
MAX_ROWS = 16
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("exports"))
    keras.utils.set_random_seed(2)
    model = build_model("baseline_cnn", (28, 28, 1), 10, filters=[4, 8], dense_units=8)
    export_model(model, root, "named", class_names=NAMES, extra_assets={"labels.txt": "".join(f"{n}\n" for n in NAMES)})
    for seed in (3, 4):  # versions 1 and 2, served together under labels by a model config file
        keras.utils.set_random_seed(seed)
        export_model(build_model("baseline_cnn", (28, 28, 1), 10, filters=[4], dense_units=8), root, "two")
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    return {"root": root, "x": x}


@pytest.fixture(scope="module")
def server(exports):
    s = Server(exports["root"], port=0, grpc_port=0, poll_s=0.2, max_body_bytes=LIMIT, max_rows=MAX_ROWS,
               predict_timeout_s=30, batch_wait_ms=20).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(x, name="named", version=None, label=None, **kw) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest(**kw)
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    req.inputs["image"].CopyFrom(tf.make_tensor_proto(x))
    return req


def rest_predict(server, x) -> list[dict]:
    r = requests.post(f"{server.url}/v1/models/named:predict", json={"instances": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def assert_same_as_rest(response: predict_pb2.PredictResponse, rest: list[dict]) -> None:
    out = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    np.testing.assert_allclose(out["probabilities"], [p["probabilities"] for p in rest], atol=1e-6)
    assert out["class_id"].tolist() == [p["class_id"] for p in rest]
    assert [b.decode() for b in out["class_name"]] == [p["class_name"] for p in rest]


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=30)
    return e.value


# ----------------------------------------------------------------------------- Predict


def test_predict_answers_what_rest_answers(server, stub, exports):
    x = exports["x"]
    rest = rest_predict(server, x)
    for version in (None, 1):
        response = stub.Predict(predict_request(x, version=version), timeout=30)
        assert_same_as_rest(response, rest)
        assert (response.model_spec.name, response.model_spec.version.value) == ("named", 1)
        assert response.model_spec.signature_name == "serving_default"
        assert response.outputs["class_name"].dtype == tf.string.as_datatype_enum
        assert response.outputs["probabilities"].dtype == tf.float32.as_datatype_enum


def test_predict_output_filter_and_other_integer_dtypes(server, stub, exports):
    x = exports["x"]
    rest = rest_predict(server, x)
    response = stub.Predict(predict_request(x, output_filter=["class_name"]), timeout=30)
    assert list(response.outputs) == ["class_name"]
    assert [b.decode() for b in tf.make_ndarray(response.outputs["class_name"])] == [p["class_name"] for p in rest]
    for dtype in (np.int32, np.int64, np.uint16):  # pixel values sent as other integers, as REST takes them
        assert_same_as_rest(stub.Predict(predict_request(x.astype(dtype)), timeout=30), rest)


def test_predict_on_the_image_bytes_signature(server, stub, exports):
    """Any predict signature of the export answers (unbatched): here encoded PNGs as DT_STRING."""
    x = exports["x"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "named", "image_bytes"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png_bytes(img) for img in x]))
    response = stub.Predict(request, timeout=30)
    assert response.model_spec.signature_name == "image_bytes"
    assert_same_as_rest(response, rest_predict(server, x))
    big = _header_of(png_bytes(x[0]), 10000)  # two under the limit of one image (178,956,970), over it together
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([big, big]))
    e = rpc_error(stub.Predict, request)
    assert e.code() == Code.RESOURCE_EXHAUSTED and "200000000 pixels together" in e.details(), e.details()


def _header_of(png: bytes, side: int) -> bytes:
    """`png` with its IHDR saying side x side: refused or counted by the header alone."""
    return png[:16] + side.to_bytes(4, "big") * 2 + png[24:]


def test_predict_on_the_classify_signature_reads_its_examples(server, stub, exports):
    """Predict runs the `classify` signature on serialized tf.Examples as Classify does; the server's check
    before decoding looks at the images inside them, not at the Examples as if they were images."""
    from tests.data.test_streaming import animated_webp

    x = exports["x"]

    def example(encoded: bytes) -> bytes:
        feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "named", "classify"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto([example(png_bytes(img)) for img in x]))
    scores = tf.make_ndarray(stub.Predict(request, timeout=30).outputs["scores"])
    np.testing.assert_allclose(scores, [p["probabilities"] for p in rest_predict(server, x)], atol=1e-5)
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto([example(png_bytes(x[0])), example(animated_webp())]))
    e = rpc_error(stub.Predict, request)
    assert e.code() == Code.INVALID_ARGUMENT and "animated WebP (not read" in e.details(), e.details()


def test_grpc_and_rest_requests_are_batched_together(server, stub, exports):
    x = exports["x"][:1]
    batcher = server.manager.get("named")[1]
    calls0, errors, n = batcher.calls, [], 12

    def one(i):
        try:
            if i % 2:
                rest_predict(server, x)
            else:
                stub.Predict(predict_request(x), timeout=30)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert batcher.calls - calls0 < n  # some signature calls answered several requests (batch wait 20 ms)


BAD = [
    # (id, request changes, status code, words of the message)
    ("wrong-shape", dict(x=np.zeros((1, 27, 28, 1), np.uint8)), Code.INVALID_ARGUMENT, "wrong shape [1, 27, 28, 1]"),
    ("missing-channel", dict(x=np.zeros((1, 28, 28), np.uint8)), Code.INVALID_ARGUMENT, "expected [batch, 28, 28, 1]"),
    ("float", dict(x=np.zeros((1, 28, 28, 1), np.float32)), Code.INVALID_ARGUMENT, "expected uint8"),
    ("string", dict(x=np.array([[[[b"a"]] * 28] * 28])), Code.INVALID_ARGUMENT, "got string"),
    ("out-of-range", dict(x=np.full((1, 28, 28, 1), 300, np.int32)), Code.INVALID_ARGUMENT, "value 300 out of range"),
    ("negative", dict(x=np.full((1, 28, 28, 1), -1, np.int64)), Code.INVALID_ARGUMENT, "value -1 out of range"),
    ("output-filter", dict(output_filter=["logits"]), Code.INVALID_ARGUMENT, "output tensor alias not found"),
    ("signature", dict(signature="nope"), Code.FAILED_PRECONDITION, 'Serving signature key "nope" not found'),
    ("unknown-model", dict(name="nope"), Code.NOT_FOUND, "model 'nope'"),
    ("unknown-version", dict(version=7), Code.NOT_FOUND, "version 7"),
    ("unknown-label", dict(label="canary"), Code.NOT_FOUND, "canary"),
    ("no-model-name", dict(name=""), Code.INVALID_ARGUMENT, "model_spec.name"),
    ("too-many-rows", dict(x=np.zeros((MAX_ROWS + 1, 28, 28, 1), np.uint8)), Code.RESOURCE_EXHAUSTED, "--max-rows"),
    ("too-large", dict(x=np.zeros((MAX_ROWS, 64, 64, 1), np.uint8)), Code.RESOURCE_EXHAUSTED, "larger than max"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_predict_is_one_status_that_says_why(server, stub, exports, case):
    _, changes, code, words = case
    changes = dict(changes)
    x, signature = changes.pop("x", exports["x"][:1]), changes.pop("signature", None)
    request = predict_request(x, **changes)
    if signature is not None:
        request.model_spec.signature_name = signature
    e = rpc_error(stub.Predict, request)
    assert e.code() == code, e.details()
    assert words in e.details(), e.details()
    assert_same_as_rest(stub.Predict(predict_request(exports["x"]), timeout=30), rest_predict(server, exports["x"]))


def test_a_client_deadline_ends_the_call_and_the_server_lives_on(server, stub, exports):
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(predict_request(exports["x"]), timeout=0.0005)
    assert e.value.code() == Code.DEADLINE_EXCEEDED
    assert_same_as_rest(stub.Predict(predict_request(exports["x"]), timeout=30), rest_predict(server, exports["x"]))


def test_tensor_whose_values_do_not_fit_its_shape(stub):
    request = predict_request(np.zeros((1, 28, 28, 1), np.uint8))
    request.inputs["image"].tensor_content = b"\0" * 100
    e = rpc_error(stub.Predict, request)
    assert e.code() == Code.INVALID_ARGUMENT and "do not fit its shape" in e.details(), e.details()


# ----------------------------------------------------------------------------- metadata, status, regress


def test_a_uint8_tensor_with_a_value_over_255_is_invalid_argument_and_not_internal(stub):
    request = predict_request(np.zeros((1, 28, 28, 1), np.uint8))
    request.inputs["image"].ClearField("tensor_content")
    request.inputs["image"].int_val.extend([300] * 784)  # what a client writing int_val by hand sends
    e = rpc_error(stub.Predict, request)
    assert e.code() == Code.INVALID_ARGUMENT and e.details() == "input 'image': a value is out of range for dtype "\
        "uint8", e.details()
    del request.inputs["image"].int_val[:]
    request.inputs["image"].int_val.extend([0] * 785)  # 785 values for 784: no NumPy words in the answer
    e = rpc_error(stub.Predict, request)
    assert e.code() == Code.INVALID_ARGUMENT and e.details() == "input 'image': the tensor's values do not fit its "\
        "shape [1, 28, 28, 1]", e.details()


def test_reload_config_is_unimplemented_in_one_status_without_a_traceback(models, caplog):
    from tensorflow_serving.apis import model_management_pb2

    with caplog.at_level("ERROR"):
        e = rpc_error(models.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest())
    assert e.code() == Code.UNIMPLEMENTED and "--model-config-file" in e.details(), e.details()
    assert not [r for r in caplog.records if "Exception calling application" in r.getMessage()]


def test_metadata_is_a_signature_def_map(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "named"
    response = stub.GetModelMetadata(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("named", 1)
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    sig = defs.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert sig.inputs["image"].dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in sig.inputs["image"].tensor_shape.dim] == [-1, 28, 28, 1]
    assert sig.outputs["class_name"].dtype == tf.string.as_datatype_enum
    del request.metadata_field[:]
    e = rpc_error(stub.GetModelMetadata, request)
    assert e.code() == Code.INVALID_ARGUMENT and "metadata_field" in e.details()
    request.metadata_field.append("labels")
    e = rpc_error(stub.GetModelMetadata, request)
    assert e.code() == Code.INVALID_ARGUMENT and "labels is not supported" in e.details()


def test_status_is_what_rest_lists(server, models):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "named"
    response = models.GetModelStatus(request, timeout=30)
    rest = requests.get(f"{server.url}/v1/models/named", timeout=10).json()["model_version_status"]
    State = get_model_status_pb2.ModelVersionStatus.State
    got = [(str(s.version), State.Name(s.state), s.status.error_code, s.status.error_message)
           for s in response.model_version_status]
    assert got == [(r["version"], r["state"], 0, r["status"]["error_message"]) for r in rest]
    assert got == [("1", "AVAILABLE", 0, "")]
    request.model_spec.version.value = 7
    assert rpc_error(models.GetModelStatus, request).code() == Code.NOT_FOUND
    request.model_spec.name = "nope"
    assert rpc_error(models.GetModelStatus, request).code() == Code.NOT_FOUND


def test_regress_is_refused_as_tf_serving_does(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "named"
    e = rpc_error(stub.Regress, request)
    assert e.code() == Code.INVALID_ARGUMENT and "regression signature" in e.details(), e.details()
    request.model_spec.name = "nope"
    assert rpc_error(stub.Regress, request).code() == Code.NOT_FOUND


# ----------------------------------------------------------------------------- Classify


def png_bytes(img: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img[..., 0]).save(b, "PNG")
    return b.getvalue()


def test_classify_names_every_class(server, stub, exports):
    if "classify" not in server.manager.get("named")[0].signature_def_protos:
        pytest.skip("the export under test has no `classify` signature (pipelines/export.py writes none yet)")
    x = exports["x"]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "named"
    for img in x:
        feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(img)]))}
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        request.input.example_list.examples.add().CopyFrom(example)
    response = stub.Classify(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.signature_name) == ("named", "classify")
    rest = rest_predict(server, x)
    assert len(response.result.classifications) == len(x)
    for c, p in zip(response.result.classifications, rest):
        assert [k.label for k in c.classes] == NAMES
        np.testing.assert_allclose([k.score for k in c.classes], p["probabilities"], atol=1e-5)
    del request.input.example_list.examples[:]
    e = rpc_error(stub.Classify, request)
    assert e.code() == Code.INVALID_ARGUMENT and "empty" in e.details()
    for _ in range(2):
        feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[_header_of(png_bytes(x[0]), 10000)]))}
        request.input.example_list.examples.add().CopyFrom(tf.train.Example(features=tf.train.Features(
            feature=feature)))
    e = rpc_error(stub.Classify, request)
    assert e.code() == Code.RESOURCE_EXHAUSTED and "--max-request-pixels" in e.details(), e.details()
    del request.input.example_list.examples[:]
    request.model_spec.signature_name = "serving_default"
    e = rpc_error(stub.Classify, request)
    assert e.code() == Code.INVALID_ARGUMENT and "classification signature" in e.details(), e.details()


def multi_request(x, *tasks) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for name, method, sig in tasks:
        task = request.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.name, task.model_spec.signature_name = name, sig
    for img in x:
        feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(img)]))}
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        request.input.example_list.examples.add().CopyFrom(example)
    return request


def test_multi_inference_runs_the_classify_task_as_classify_does(server, stub, exports):
    x = exports["x"]
    response = stub.MultiInference(multi_request(x, ("named", "classify", "")), timeout=30)
    classify = classification_pb2.ClassificationRequest(input=multi_request(x).input)
    classify.model_spec.name = "named"
    assert len(response.results) == 1
    result = response.results[0]
    assert (result.model_spec.name, result.model_spec.signature_name) == ("named", "classify")
    assert result.model_spec.version.value == server.manager.get("named")[0].version
    assert result.classification_result == stub.Classify(classify, timeout=30).result
    assert [k.label for k in result.classification_result.classifications[0].classes] == NAMES
    cases = [  # (tasks, code, words of the message), checked in TF Serving's order: the model first
        ((), Code.INVALID_ARGUMENT, "no tasks"),
        ((("nope", "classify", ""), ("two", "classify", "")), Code.NOT_FOUND, "nope"),
        ((("named", "classify", ""), ("two", "classify", "")), Code.INVALID_ARGUMENT, "same model name"),
        ((("", "classify", ""),), Code.INVALID_ARGUMENT, "Missing ModelSpec"),
        ((("named", "classify", ""), ("", "classify", "")), Code.INVALID_ARGUMENT, "empty model name"),
        ((("named", "classify", "classify"), ("named", "classify", "")), Code.INVALID_ARGUMENT, "Duplicate"),
        ((("named", "predict", "nope"),), Code.INVALID_ARGUMENT, "Requested signature not found in model graph"),
        ((("named", "classify", ""), ("named", "regress", "")), Code.INVALID_ARGUMENT, "regression signature"),
        ((("named", "predict", ""),), Code.UNIMPLEMENTED, "Unsupported signature method_name"),
        ((("named", "classify", "serving_default"),), Code.INVALID_ARGUMENT, "classification signature"),
    ]
    for tasks, code, words in cases:
        e = rpc_error(stub.MultiInference, multi_request(x, *tasks))
        assert e.code() == code and words in e.details(), (tasks, e.code(), e.details())
    e = rpc_error(stub.MultiInference, multi_request(x[:0], ("named", "classify", "")))
    assert e.code() == Code.INVALID_ARGUMENT and "MultiInferenceRequest::input is empty" in e.details(), e.details()
    e = rpc_error(stub.MultiInference, multi_request(np.repeat(x, 6, axis=0), ("named", "classify", "")))
    assert e.code() == Code.RESOURCE_EXHAUSTED, e.details()
    text = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10).text
    assert any(line.startswith("serving_requests_total{") and 'api="multi_inference"' in line
               and 'model="named"' in line and 'code="OK"' in line for line in text.splitlines())


# ----------------------------------------------------------------------------- versions, labels, metrics


def test_versions_and_labels_of_a_model_config_file(exports, tmp_path):
    cfg = tmp_path / "models.config"
    cfg.write_text(f'model_config_list {{ config {{ name: "two" base_path: "{exports["root"]}/two" '
                   f'model_platform: "tensorflow" model_version_policy {{ all {{}} }} '
                   f'version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }} }}\n')
    with Server("unused", port=0, grpc_port=0, poll_s=60, model_config_file=str(cfg)) as s, \
            grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        x = exports["x"]
        answers = {}
        for kw, version in ((dict(label="stable"), 1), (dict(label="canary"), 2), (dict(version=1), 1), ({}, 2)):
            response = stub.Predict(predict_request(x, "two", **kw), timeout=30)
            assert response.model_spec.version.value == version, kw
            answers.setdefault(version, []).append(tf.make_ndarray(response.outputs["probabilities"]))
        np.testing.assert_array_equal(*answers[1])
        assert not np.allclose(answers[1][0], answers[2][0])
        e = rpc_error(stub.Predict, predict_request(x, "two", label="nope"))
        assert e.code() == Code.NOT_FOUND and "'nope'" in e.details()
        models = model_service_pb2_grpc.ModelServiceStub(ch)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "two"
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        got = [(v.version, v.state) for v in models.GetModelStatus(request, timeout=30).model_version_status]
        assert got == [(2, available), (1, available)]  # newest first, as REST and TF Serving
        request.model_spec.version_label = "canary"
        assert [v.version for v in models.GetModelStatus(request, timeout=30).model_version_status] == [2]


def test_grpc_requests_are_counted_in_the_metrics(server, stub, exports):
    stub.Predict(predict_request(exports["x"]), timeout=30)
    rpc_error(stub.Predict, predict_request(exports["x"], version=7))
    text = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10).text
    ok = [line for line in text.splitlines() if line.startswith("serving_requests_total{")
          and 'protocol="grpc"' in line and 'api="predict"' in line and 'model="named"' in line]
    assert any('code="OK"' in line for line in ok) and any('code="NOT_FOUND"' in line for line in ok), ok


# ----------------------------------------------------------------------------- command line, stop


def test_cli_rejects_a_bad_grpc_port(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.serve", "--exports", str(tmp_path), "--port", "0", "--grpc-port", "-5"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert "--grpc-port must be in 0..65535" in r.stderr and "Traceback" not in r.stderr


def test_a_taken_grpc_port_is_an_error_and_stop_ends_grpc(exports, server):
    with pytest.raises(OSError, match="gRPC cannot bind"):
        Server(exports["root"], port=0, grpc_port=server.grpc_port, poll_s=60).start()
    s = Server(exports["root"], port=0, grpc_port=0, poll_s=60).start()
    with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        stub.Predict(predict_request(exports["x"]), timeout=30)
        s.stop()
        assert rpc_error(stub.Predict, predict_request(exports["x"])).code() == Code.UNAVAILABLE
