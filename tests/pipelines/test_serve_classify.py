"""The export's signatures as TF Serving reads them, and TF Serving's Classify over REST.

Every export has `serving_default` (uint8 `image` -> probabilities, class_id,
class_name), `image_bytes` (encoded files -> the same) and `classify`
(method tensorflow/serving/classify: serialized tf.Examples with
`image/encoded` -> `classes`, `scores`), pipelines/signatures.py.
"""

from __future__ import annotations

import base64
import io
import json
import re

import keras
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2

from data.images import preprocess_image
from models.registry import build_model
from pipelines.export import export_model, predict_savedmodel
from pipelines.serve import Server
from pipelines.signatures import example

NAMES = ["ant", "bee", "cat"]


def png(img: np.ndarray, fmt: str = "PNG") -> bytes:
    b = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(b, fmt, **({"lossless": True} if fmt == "WEBP"
                                                                                else {}))
    return b.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("exports"))
    keras.utils.set_random_seed(5)
    model = build_model("baseline_cnn", (16, 16, 3), 3, filters=[4], dense_units=8)
    path = export_model(model, root, "rgb", class_names=NAMES,
                        extra_assets={"labels.txt": "".join(f"{n}\n" for n in NAMES)})
    x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return {"root": root, "path": path, "x": x, "ref": predict_savedmodel(path, x)}


def test_signatures_are_what_tf_serving_accepts(exported):
    proto = saved_model_pb2.SavedModel()
    with open(f"{exported['path']}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    defs = proto.meta_graphs[0].signature_def
    dt = tf.dtypes.as_dtype
    predict, classify, raw = defs["serving_default"], defs["classify"], defs["image_bytes"]
    assert predict.method_name == raw.method_name == "tensorflow/serving/predict"
    assert classify.method_name == "tensorflow/serving/classify"  # what TF Serving's Classify API requires
    assert {k: dt(v.dtype) for k, v in predict.inputs.items()} == {"image": tf.uint8}
    assert [d.size for d in predict.inputs["image"].tensor_shape.dim] == [-1, 16, 16, 3]
    assert {k: dt(v.dtype) for k, v in predict.outputs.items()} == {
        "probabilities": tf.float32, "class_id": tf.int64, "class_name": tf.string}
    assert {k: dt(v.dtype) for k, v in raw.inputs.items()} == {"image_bytes": tf.string}
    assert {k: dt(v.dtype) for k, v in classify.inputs.items()} == {"inputs": tf.string}  # kClassifyInputs
    assert {k: dt(v.dtype) for k, v in classify.outputs.items()} == {"classes": tf.string, "scores": tf.float32}


def test_encoded_and_example_signatures_answer_like_serving_default(exported):
    x, ref = exported["x"], exported["ref"]
    assert [c.decode() for c in ref["class_name"]] == [NAMES[i] for i in ref["class_id"]]
    sigs = tf.saved_model.load(exported["path"]).signatures
    out = sigs["image_bytes"](image_bytes=tf.constant([png(a) for a in x]))
    np.testing.assert_allclose(out["probabilities"].numpy(), ref["probabilities"], atol=1e-6)
    cls = sigs["classify"](inputs=tf.constant([example(png(a)) for a in x]))
    np.testing.assert_allclose(cls["scores"].numpy(), ref["probabilities"], atol=1e-6)
    assert cls["classes"].numpy().tolist() == [[n.encode() for n in NAMES]] * len(x)


def test_encoded_images_of_another_size_are_resized_as_training_reads_them(exported):
    big = np.random.default_rng(1).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    as_training = preprocess_image(tf.constant(big), (16, 16), "stretch", 3).numpy()[None]
    sigs = tf.saved_model.load(exported["path"]).signatures
    got = sigs["image_bytes"](image_bytes=tf.constant([png(big)]))["probabilities"].numpy()
    np.testing.assert_allclose(got, predict_savedmodel(exported["path"], as_training)["probabilities"], atol=1e-6)


@pytest.fixture(scope="module")
def server(exported):
    s = Server(exported["root"], port=0, poll_s=0.2).start()
    yield s
    s.stop()


def test_rest_classify_answers_class_names_with_scores(server, exported):
    x, ref = exported["x"], exported["ref"]
    body = {"examples": [{"image/encoded": {"b64": base64.b64encode(png(a)).decode()}} for a in x]}
    r = requests.post(f"{server.url}/v1/models/rgb:classify", json=body, timeout=30)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert [[c for c, _ in row] for row in result] == [NAMES] * len(x)
    np.testing.assert_allclose([[s for _, s in row] for row in result], ref["probabilities"], atol=1e-6)
    # context features merge into each example; the signature may be named
    body = {"signature_name": "classify", "context": {"image/encoded": body["examples"][0]["image/encoded"]},
            "examples": [{}]}
    r = requests.post(f"{server.url}/v1/models/rgb/versions/1:classify", json=body, timeout=30)
    assert r.status_code == 200 and len(r.json()["result"]) == 1


def test_rest_predict_on_the_image_bytes_signature_takes_files_of_any_size_as_tf_serving_reads_them(server, exported):
    x, ref = exported["x"], exported["ref"]
    b64 = [base64.b64encode(png(a)).decode() for a in x]
    url = f"{server.url}/v1/models/rgb:predict"
    for body in ({"signature_name": "image_bytes", "instances": [{"b64": s} for s in b64]},
                 {"signature_name": "image_bytes", "instances": [{"image_bytes": {"b64": s}} for s in b64]},
                 {"signature_name": "image_bytes", "inputs": {"image_bytes": [{"b64": s} for s in b64]}}):
        r = requests.post(url, json=body, timeout=30)
        assert r.status_code == 200, r.text
        out = r.json()["predictions"] if "instances" in body else r.json()["outputs"]
        probs = [p["probabilities"] for p in out] if "instances" in body else out["probabilities"]
        np.testing.assert_allclose(probs, ref["probabilities"], atol=1e-6)
    big = np.random.default_rng(1).integers(0, 256, (40, 24, 3), dtype=np.uint8)  # not the model's 16x16
    as_training = preprocess_image(tf.constant(big), (16, 16), "stretch", 3).numpy()[None]
    r = requests.post(url, json={"signature_name": "image_bytes",
                                 "instances": [{"b64": base64.b64encode(png(big)).decode()}]}, timeout=30)
    assert r.status_code == 200, r.text
    want = predict_savedmodel(exported["path"], as_training)
    assert r.json()["predictions"][0]["class_name"] == NAMES[int(want["class_id"][0])]
    np.testing.assert_allclose(r.json()["predictions"][0]["probabilities"], want["probabilities"][0], atol=1e-6)
    for body, needle in (({"signature_name": "image_bytes", "instances": [{"b64": "***"}]}, "row 0: invalid base64"),
                         ({"signature_name": "image_bytes", "instances": [[1, 2]]}, "takes {\"b64\""),
                         ({"signature_name": "image_bytes", "instances": [{"b64": base64.b64encode(b"nope").decode()}]},
                          "the model rejected the input: not a PNG, JPEG, BMP, GIF or WebP file"),
                         ({"signature_name": "bogus", "instances": [1]}, "serves 'serving_default' and 'image_bytes'")):
        r = requests.post(url, json=body, timeout=30)
        assert r.status_code == 400 and needle in r.json()["error"], r.text


@pytest.mark.parametrize("body,status,needle", [
    ({"instances": [1]}, 400, "examples"),
    ({"examples": []}, 400, "empty"),
    ({"examples": [{"label": 3}]}, 400, "image/encoded"),
    ({"examples": [{"image/encoded": {"b64": "***"}}]}, 400, "base64"),
    ({"examples": [{"image/encoded": {"b64": base64.b64encode(b"not an image").decode()}}]}, 400,
     "the model rejected the input: not a PNG, JPEG, BMP, GIF or WebP file"),  # as training names such a file
    # TensorFlow's reason, not the first line of its graph error ("Graph execution error:")
    ({"examples": [{"image/encoded": {"b64": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()}}]}, 400,
     "the model rejected the input: Invalid PNG"),
    ({"signature_name": "serving_default", "examples": [{}]}, 400, "classification"),
])
def test_bad_classify_requests_are_one_clear_error(server, body, status, needle):
    r = requests.post(f"{server.url}/v1/models/rgb:classify", json=body, timeout=30)
    assert r.status_code == status and needle in r.json()["error"], r.text


def test_classify_refuses_what_predict_refuses_with_a_400_and_keeps_the_row_limit(exported):
    """Deep nesting and an integer over int64 were 500s (a traceback per request), and :classify took more examples
    than --max-rows allows, where :predict and gRPC Classify answer 413."""
    blob = {"b64": base64.b64encode(png(exported["x"][0])).decode()}
    with Server(exported["root"], port=0, poll_s=0.2, max_rows=2) as s:
        url = f"{s.url}/v1/models/rgb:classify"
        deep = b'{"examples": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
        r = requests.post(url, data=deep, timeout=30)
        assert r.status_code == 400 and r.json()["error"] == "malformed JSON in the request body: nested too deeply"
        r = requests.post(url, data=b'{"examples": [', timeout=30)  # worded as :predict words it
        assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON in the request body: "), r.text
        for big in (2**63, -(2**63) - 1, 10**30):
            r = requests.post(url, json={"examples": [{"image/encoded": blob, "n": big}]}, timeout=30)
            assert r.status_code == 400 and r.json()["error"] == f"feature 'n': {str(big)[:40]} is out of range for "\
                "int64", r.text
        r = requests.post(url, data=b'{"examples": [{"image/encoded": ' + json.dumps(blob).encode() + b', "f": [1.5, '
                          + str(10**309).encode() + b"]}]}", timeout=30)  # an integer past float's range
        assert r.status_code == 400 and r.json()["error"] == "feature 'f': a value is out of range for float", r.text
        ok = requests.post(url, json={"examples": [{"image/encoded": blob, "n": [2**63 - 1, -(2**63)]}]}, timeout=30)
        assert ok.status_code == 200, ok.text  # int64's own ends are features like any other
        r = requests.post(url, json={"examples": [{"image/encoded": blob}] * 3}, timeout=30)
        assert r.status_code == 413 and "'examples' holds 3 rows, over the limit of 2 per request (--max-rows)" in \
            r.json()["error"], r.text
        r = requests.post(url, json={"signature_name": "classify", "examples": [{"image/encoded": blob}] * 2},
                          timeout=30)
        assert r.status_code == 200 and len(r.json()["result"]) == 2, r.text


def _post_images(url: str, model: str, signature: str, blobs: list[bytes]) -> requests.Response:
    b64 = [base64.b64encode(b).decode() for b in blobs]
    if signature == "classify":
        return requests.post(f"{url}/v1/models/{model}:classify",
                             json={"examples": [{"image/encoded": {"b64": s}} for s in b64]}, timeout=30)
    return requests.post(f"{url}/v1/models/{model}:predict",
                         json={"signature_name": signature, "instances": [{"b64": s} for s in b64]}, timeout=30)


ANIMATED_REFUSED = ("the model rejected the input: animated WebP (not read: the TensorFlow decoder corrupts memory "
                    "on animations; save one frame as PNG)")


def _refuses_animated_webp_and_goes_on(url: str, model: str, good: list[bytes], by_server: bool = True) -> None:
    """`by_server`: this server's check names the image of the request; the export's graph refuses it unnamed."""
    from tests.data.test_streaming import animated_webp

    for signature in ("classify", "image_bytes"):
        which = "example 2 of 2: " if signature == "classify" else "image 2 of 2: "
        want = ANIMATED_REFUSED.replace("input: ", f"input: {which}") if by_server else ANIMATED_REFUSED
        for _ in range(3):  # unguarded, the first of these aborts the process within a few allocations
            r = _post_images(url, model, signature, [good[0], animated_webp(size=(16, 16))])
            assert r.status_code == 400 and r.json()["error"] == want, r.text
        assert _post_images(url, model, signature, good).status_code == 200


def test_webp_files_are_read_as_training_reads_them_and_an_animated_one_is_refused_in_the_graph(server, exported,
                                                                                               monkeypatch):
    """A still WebP (RGB, or RGBA: alpha dropped) answers as the same pixels in PNG do. An animated one is refused
    by the exported graph itself (so in TensorFlow Serving too), and by this server: one 400 naming it, and the
    server goes on. TensorFlow's decoder corrupts the process's memory on one (data/images.py)."""
    from data.images import ANIMATED_WEBP
    from tests.data.test_streaming import animated_webp

    x, ref = exported["x"], exported["ref"]
    opaque = np.concatenate([x, np.full(x.shape[:-1] + (1,), 255, np.uint8)], -1)
    files = [png(a, "WEBP") for a in x[:2]] + [png(a, "WEBP") for a in opaque[2:]]
    r = _post_images(server.url, "rgb", "classify", files)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([[s for _, s in row] for row in r.json()["result"]], ref["probabilities"], atol=1e-6)
    r = _post_images(server.url, "rgb", "image_bytes", files)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([p["probabilities"] for p in r.json()["predictions"]], ref["probabilities"], atol=1e-6)
    sigs = tf.saved_model.load(exported["path"]).signatures
    for call in (lambda b: sigs["image_bytes"](image_bytes=tf.constant(b)),
                 lambda b: sigs["classify"](inputs=tf.constant([example(v) for v in b]))):
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(ANIMATED_WEBP)):
            call([files[0], animated_webp(size=(16, 16))])
    _refuses_animated_webp_and_goes_on(server.url, "rgb", files)
    import pipelines.serving.savedmodel

    monkeypatch.setattr(pipelines.serving.savedmodel, "_refuse_unsafe_images", lambda *args: None)
    _refuses_animated_webp_and_goes_on(server.url, "rgb", files, by_server=False)  # the graph's check alone


def test_an_image_declaring_more_pixels_than_training_reads_is_refused_before_it_is_decoded(server, exported):
    """A PNG whose header says 20000x20000 (a 400 KB file of such zeros took 12 s and 2.3 GB of the server to
    decode and resize): one 400 naming its size and the limit, and the server goes on."""
    from data.images import max_pixels

    from tests.data.test_streaming import gif_of_frames

    bomb = bytearray(png(exported["x"][0]))
    bomb[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR width and height: refused by the header alone
    frames = gif_of_frames(10, 13000, 13000)  # giflib unpacks every frame: 1.7 GB
    for signature in ("classify", "image_bytes"):
        for blob, size in ((bytes(bomb), "20000x20000 pixels"),
                           (frames, "13000x13000 pixels, 1690000000 in all its frames")):
            r = _post_images(server.url, "rgb", signature, [png(exported["x"][1]), blob])
            assert r.status_code == 400, r.text
            which = "example" if signature == "classify" else "image"
            assert r.json()["error"] == (f"the model rejected the input: {which} 2 of 2: too large ({size}; at most "
                                         f"{max_pixels()} pixels are read)"), r.text
        assert _post_images(server.url, "rgb", signature, [png(exported["x"][1])]).status_code == 200


def test_a_request_whose_images_hold_more_pixels_together_than_one_image_may_is_refused_before_decoding(
        server, exported):
    """Two PNG headers of 10000x10000 each, under the limit of one image (178,956,970 pixels), in one request:
    the signatures decode up to 10 images of a request at once, so 8 MB of such files (about 100 KB each of
    zeros) would cost the server gigabytes and minutes. One 413 naming the request's total and the flag, before
    anything is decoded; the same images one per request are not refused by it."""
    from data.images import header_check, max_pixels

    big = bytearray(png(exported["x"][0]))
    big[16:24] = (10000).to_bytes(4, "big") * 2  # IHDR width and height; the pixel data is the 16x16 image's
    assert header_check(bytes(big)) == (None, 10**8) and 2 * 10**8 > max_pixels()
    for signature in ("classify", "image_bytes"):
        r = _post_images(server.url, "rgb", signature, [bytes(big), bytes(big)])
        assert r.status_code == 413, r.text
        assert r.json()["error"] == (f"the request's 2 images hold 200000000 pixels together, over the limit of "
                                     f"{max_pixels()} per request (--max-request-pixels); send them in several "
                                     "requests"), r.text
        r = _post_images(server.url, "rgb", signature, [bytes(big)])
        assert r.status_code == 400 and "too large" not in r.text and "per request" not in r.text, r.text
        assert _post_images(server.url, "rgb", signature, [png(exported["x"][1])]).status_code == 200


def test_a_png_of_other_channels_or_size_on_serving_default_points_to_image_bytes(server, exported):
    """`serving_default` takes PNGs of the input's exact size and channels (uint8 pixels); another one is one 400
    that says what differs and where such files go, and there it answers as its RGB pixels do."""
    x = exported["x"]
    gray = x[0, :, :, :1]

    def predict(blob, **extra):
        body = {**extra, "instances": [{"b64": base64.b64encode(blob).decode()}]}
        return requests.post(f"{server.url}/v1/models/rgb:predict", json=body, timeout=30)

    hint = '; send files of any size and channels to the image_bytes signature ("signature_name": "image_bytes")'
    r = predict(png(gray))
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("instances[0]: image has 1 channel(s) (L), input 'image' expects 3" + hint)
    r = predict(png(np.zeros((20, 16, 3), np.uint8)))
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("instances[0]: image is 16x20 (width x height), input 'image' expects 16x16"
                                        + hint), r.text
    r = predict(png(gray), signature_name="classify")
    assert r.status_code == 400 and r.json()["error"] == (
        "unknown signature_name 'classify'; :predict here serves 'serving_default' and 'image_bytes'; its "
        "'classify' signature answers at :classify"), r.text
    r = predict(png(gray), signature_name="image_bytes")
    assert r.status_code == 200, r.text
    rgb = predict(png(np.repeat(gray, 3, axis=-1))).json()["predictions"][0]["probabilities"]
    np.testing.assert_allclose(r.json()["predictions"][0]["probabilities"], rgb, atol=1e-6)


def test_max_request_pixels_sets_the_budget_of_a_request(exported):
    """`--max-request-pixels` (`Server(max_request_pixels=...)`): three 16x16 images hold 768 pixels."""
    from pipelines.serve import parse_args

    assert parse_args(["--max-request-pixels", "700"]).max_request_pixels == 700
    files = [png(a) for a in exported["x"][:3]]
    s = Server(exported["root"], port=0, poll_s=0.2, max_request_pixels=700).start()
    try:
        for signature in ("classify", "image_bytes"):
            r = _post_images(s.url, "rgb", signature, files)
            assert r.status_code == 413 and "768 pixels together, over the limit of 700" in r.text, r.text
            assert _post_images(s.url, "rgb", signature, files[:2]).status_code == 200
            r = _post_images(s.url, "rgb", signature, [png(np.zeros((30, 30, 3), np.uint8))])
            assert r.status_code == 413 and r.json()["error"] == (
                "the image holds 900 pixels, over the limit of 700 per request (--max-request-pixels); send a "
                "smaller image"), r.text
    finally:
        s.stop()


def test_an_export_from_before_the_graphs_check_is_guarded_by_the_server(tmp_path, monkeypatch):
    import data.images

    real = data.images._webp_header
    monkeypatch.setattr(data.images, "_webp_header", lambda encoded: (real(encoded)[0], tf.constant(False)))
    keras.utils.set_random_seed(5)
    model = build_model("baseline_cnn", (16, 16, 3), 3, filters=[4], dense_units=8)
    export_model(model, str(tmp_path), "old", class_names=NAMES)
    monkeypatch.undo()
    s = Server(str(tmp_path), port=0, poll_s=0.2).start()
    try:
        good = [png(a, "WEBP") for a in np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)]
        _refuses_animated_webp_and_goes_on(s.url, "old", good)
    finally:
        s.stop()


def test_regress_names_what_to_use(server):
    r = requests.post(f"{server.url}/v1/models/rgb:regress", json={"examples": [{}]}, timeout=30)
    assert r.status_code == 400 and ":classify" in r.json()["error"]


def test_the_served_version_runs_every_signature(exported):
    from pipelines.serving.savedmodel import load_servable

    servable = load_servable("rgb", 1, exported["path"])
    assert {"serving_default", "image_bytes", "classify"} <= set(servable.signature_def_protos)
    x, ref = exported["x"], exported["ref"]
    out = servable.run_signature("image_bytes", {"image_bytes": np.array([png(a) for a in x], dtype=object)})
    np.testing.assert_allclose(out["probabilities"], ref["probabilities"], atol=1e-6)
    assert list(out["class_name"]) == [NAMES[i] for i in ref["class_id"]]
    cls = servable.classify([example(png(a)) for a in x])
    assert cls["classes"].tolist() == [NAMES] * len(x)
    with pytest.raises(KeyError):
        servable.run_signature("regress", {})


def test_labels_are_read_one_per_line_as_export_writes_them(tmp_path):
    """Class names are folder names: str.splitlines would also split at \\x85, \\u2028 or a form feed in one."""
    from pipelines.serving.savedmodel import read_labels

    names = ["Forêt", "a\x85b", "c\u2028d", "e\x0cf", "red circle"]
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / "assets.extra" / "labels.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    assert read_labels(str(tmp_path)) == names
    (tmp_path / "assets.extra" / "labels.txt").write_bytes("".join(f"{n}\r\n" for n in names).encode())
    assert read_labels(str(tmp_path)) == names  # a copy saved with Windows line ends
